//! switchyard: a reverse-proxy upgrade gateway.
//!
//! The life of a client connection, module by module:
//!
//! ```text
//! listener  accept, connection limits (503/429), PROXY header, TLS, request-head limits (431)
//!   -> gateway   one hyper service for HTTP/1.1 and h2: routes the request, runs the handshake
//!   -> handshake PURE: Upgrade/Connection tokens, version (RFC 6455 §4.4), key, origin,
//!                subprotocol choice, the upstream request, checking the upstream's 101
//!   -> route     PURE: host/path -> route
//!   -> upstream  pick a server, dial (TCP/TLS), send the upgrade, read its answer
//!   -> tunnel    the hot path: bytes both ways, half-close, idle deadline; knows no HTTP
//!   -> access log and metrics
//! ```
//!
//! Failures become HTTP answers in exactly one place, [`error::Reject::response`].

pub mod config;
pub mod error;
pub mod handshake;
pub mod route;
pub mod tls;
