//! Shared support for the integration tests: the real `switchyard` binary started on port 0,
//! fake upstreams with exact scripted answers, and byte-exact clients (STYLE example 12).
//!
//! Everything binds 127.0.0.1:0; readiness comes from the gateway's own log events (matched on
//! their `event` field, never on message text), not from sleeps. Every upstream records what it
//! received so that tests can prove what did (and did not) reach it.
//!
//! One module per kind of helper; the test modules import them all through this one:
//!
//! - [`gateway`]: the gateway process (start, logs, signals, metrics) and one-shot CLI runs
//! - [`config`]: the test config builder (listeners, upstreams, routes, TLS sub-tables)
//! - [`ws_upstream`]: a real WebSocket echo upstream, plain or TLS
//! - [`raw_upstream`]: a scripted upstream that records every byte, and its scripts
//! - [`client`]: the raw HTTP/1.1 client, SPEC §3 answer assertions, a tungstenite client
//! - [`heads`]: HTTP/1.1 header lines and heads as parsed from the wire
//! - [`frames`]: RFC 6455 key/accept, hand-built frames of every form, and a frame parser
//! - [`frame_upstream`]: an upstream driven frame by frame, for inspected tunnels (SPEC §9)
//! - [`stream`]: seeded payloads, byte-for-byte echo checks, a recording stream wrapper
//! - [`net`]: addresses that refuse or stall connects
//! - [`tls`]: dev certificates, rustls client/server configs, `wss` clients
//! - [`h2_client`]: the RFC 8441 client over the `h2` crate
//! - [`h2_frames`]: raw h2 frames over TLS, for floods and silence the `h2` crate would not send
//! - [`auth_service`]: a forward-auth service (SPEC §10) and JWT signing keys with their JWKS
//! - [`h3_client`]: the RFC 9220 client over quinn and the gateway's h3 layer

pub mod auth_service;
pub mod client;
pub mod config;
pub mod frame_upstream;
pub mod frames;
pub mod gateway;
pub mod h2_client;
pub mod h2_frames;
pub mod h3_client;
pub mod heads;
pub mod net;
pub mod raw_upstream;
pub mod stream;
pub mod tls;
pub mod ws_upstream;

pub use auth_service::*;
pub use client::*;
pub use config::*;
pub use frame_upstream::*;
pub use frames::*;
pub use gateway::*;
pub use heads::*;
pub use net::*;
pub use raw_upstream::*;
pub use stream::*;
pub use tls::*;
pub use ws_upstream::*;

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Upper bound for a whole test; a hang becomes a failure with this name, never a stuck run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(25);

/// Upper bound for one network step (a response head, an expected close).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the gateway may take to log every `listening` event.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a test body under [`TEST_TIMEOUT`] so that a hang fails with the test's name.
pub async fn bounded<F: Future>(name: &str, body: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(out) => out,
        Err(_) => panic!("{name}: did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// Locks a record shared with a test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the record from the assertion that follows.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where `needle` first occurs in `hay` (the end of a head: `\r\n\r\n`).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
