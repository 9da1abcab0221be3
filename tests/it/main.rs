//! The integration tests, one binary for all (one link, one build): each module starts the real
//! `switchyard` binary on port 0 with real upstreams and clients. `cargo test handshake::` runs
//! one module.
//!
//! Tests run concurrently on threads of this one process; nothing here is process-global (each
//! gateway is its own child process, signals go to that child, temp dirs are per gateway).

mod support;

mod affinity;
mod auth;
mod churn;
mod cli;
mod demo;
mod h2;
mod h2_limits;
mod h3;
mod handover;
mod handshake;
mod hostile;
mod inspect;
mod lifetime;
mod negotiation;
mod ops;
mod pools;
mod proxy_protocol;
mod smuggling;
mod systemd;
mod tls;
mod tunnel;
mod upstream;
