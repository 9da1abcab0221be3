//! switchyard: a reverse-proxy upgrade gateway.
//!
//! The life of a client connection, module by module:
//!
//! ```text
//! listener  accept, connection limits (503/429), TLS, the first request head (431, timeout)
//!   -> gateway   one hyper service for HTTP/1.1 and h2: routes the request, runs the handshake
//!   -> handshake PURE: Upgrade/Connection tokens, version (RFC 6455 §4.4), key, origin,
//!                subprotocol choice, the upstream request, checking the upstream's 101
//!   -> route     PURE: host/path -> route
//!   -> upstream  pick a server, dial (TCP/TLS), send the upgrade, read its answer
//!   -> tunnel    the hot path: bytes both ways, half-close, idle deadline; knows no HTTP
//!   -> access    one log event per handshake and per closed tunnel; metrics alongside
//! ```
//!
//! Failures become HTTP answers in exactly one place, [`error::Reject::response`].

pub mod access;
pub mod admin;
pub mod certs;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod handshake;
pub mod head;
pub mod io;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_protocol;
pub mod route;
pub mod run;
pub mod shutdown;
pub mod sockopt;
pub mod tls;
pub mod tunnel;
pub mod upstream;
