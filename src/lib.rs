//! switchyard: a reverse-proxy upgrade gateway.
//!
//! The life of a client connection, module by module (no module reaches up into one above it):
//!
//! ```text
//! listener   accept, PROXY header (proxy_protocol), admission (limits: 503/429), TLS (tls:
//!            SNI cert, ALPN), the first HTTP/1 head (head: 431, timeout), then hyper h1 | h2
//!            (h2_flood: control-frame flood guard under hyper; h2_watch: open streams, idle close)
//! h3_listener  an `http3` listener's UDP socket and QUIC endpoint: admission, QUIC handshake,
//!            SNI, idle close, drain GOAWAY; each request stream to gateway::h3_front
//!   -> gateway    hyper_front, h3_front: one thin front per carrier turning its requests into
//!                 dispatch:  the carrier-neutral step (route, §3 checks, subprotocol,
//!                            upstream choice, upstream upgrade, checked 101) -> typed outcome
//!                 tunnels:   the task that runs and logs a switched handshake's tunnel
//!   -> auth       the route's `[auth.NAME]` check before any upstream is chosen (SPEC §10):
//!                 token sources and claim mapping (PURE), JWT verification, forward auth
//!   -> handshake  PURE: Upgrade/Connection tokens, version (RFC 6455 §4.4), key, origin,
//!                 subprotocol choice, the upstream request, checking the upstream's 101
//!   -> route      PURE: host/path -> route
//!   -> upstream   pool (verdicts, leases), balance (pick order), dial (Connect: TCP, PROXY
//!                 header, TLS), upgrade (one head out, one answer in), http (keep-alive
//!                 proxy for ordinary requests), health (active checks)
//!   -> io         stream adapters: Rewind, UpstreamStream, hyper's Upgraded and h3 request
//!                 streams -> tunnel Leg
//!   -> tunnel     the hot path: policy (deadlines, drain, outcome), legs (raw TCP + early
//!                 bytes | any stream), one file per copy engine; knows no HTTP
//!   -> ws         PURE: WebSocket frame follower and control-frame writer for the inspecting
//!                 engine (SPEC §9)
//!   -> access     one log event per handshake and per closed tunnel; metrics alongside
//! ```
//!
//! Around it: `config` (raw serde -> validated model; defaults named once), `error` (every
//! failure and the ONLY failure -> HTTP answer mapping, [`error::Reject::response`]; the
//! `Carrier`), `run` (bind or take systemd's sockets, SIGHUP reload, drain, SIGUSR2 hand-over, sd_notify), `shutdown`, `admin` (/healthz /readyz
//! /metrics), `metrics`, `proxy_protocol`, `sockopt`, `limits`, `certs` (dev certificates), `demo` and
//! `bench` (the load generator of BENCHMARKS.md). Only what `main.rs` calls is public.

mod access;
mod admin;
mod auth;
pub mod bench;
pub mod certs;
pub mod config;
pub mod demo;
mod error;
/// Thin wrappers that let `fuzz/` drive the crate-private parsers; only with feature `fuzzing`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod h1_gate;
mod h2_flood;
mod h2_watch;
mod h3_listener;
mod handshake;
mod head;
mod io;
mod limits;
mod listener;
mod metrics;
mod proxy_protocol;
mod route;
pub mod run;
mod shutdown;
mod sockopt;
mod tls;
mod tunnel;
mod upstream;
mod ws;
