//! The access log (SPEC §7): one `tracing` event with target `access` per handshake outcome and
//! one per closed tunnel, with the same field names in both so they can be joined.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::tunnel::TunnelOutcome;

/// What is known about one request as it goes through the gateway. Absent values log as `-`.
#[derive(Debug, Clone)]
pub(crate) struct AccessRecord {
    pub(crate) client: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) http_version: &'static str,
    pub(crate) host: String,
    pub(crate) path: String,
    /// The matched route's path (the metrics `route` label); `None` when nothing matched.
    pub(crate) route: Option<String>,
    pub(crate) ws_version: Option<u8>,
    pub(crate) subprotocol: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) status: u16,
    /// Time from the request head to the answer.
    pub(crate) handshake: Duration,
}

const NONE: &str = "-";

impl AccessRecord {
    /// Starts a record for a request from `client`.
    pub(crate) fn new(client: SocketAddr, http_version: &'static str) -> Self {
        AccessRecord {
            client,
            started: Instant::now(),
            http_version,
            host: NONE.into(),
            path: NONE.into(),
            route: None,
            ws_version: None,
            subprotocol: None,
            upstream: None,
            status: 0,
            handshake: Duration::ZERO,
        }
    }

    /// The metrics `route` label.
    pub(crate) fn route_label(&self) -> &str {
        self.route.as_deref().unwrap_or(crate::metrics::NO_ROUTE)
    }

    /// Logs the handshake outcome (`status` is what the client was answered).
    pub(crate) fn log_handshake(&mut self, status: u16) {
        self.status = status;
        self.handshake = self.started.elapsed();
        self.emit("handshake", "handshake", self.handshake, 0, 0, NONE, None);
    }

    /// Logs a closed tunnel opened by this handshake.
    pub(crate) fn log_tunnel(&self, outcome: &TunnelOutcome) {
        let closed_by = outcome.closed_by.to_string();
        self.emit(
            "tunnel_closed",
            "tunnel closed",
            outcome.duration,
            outcome.bytes_up,
            outcome.bytes_down,
            &closed_by,
            Some(outcome.engine.as_str()),
        );
    }

    /// `event` is the stable name tests and tools match on; `message` the text for people.
    /// `engine` (tunnels only) is left out of the event when `None`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        event: &'static str,
        message: &str,
        duration: Duration,
        bytes_up: u64,
        bytes_down: u64,
        closed_by: &str,
        engine: Option<&'static str>,
    ) {
        tracing::info!(
            target: "access",
            event,
            client = %self.client,
            host = %self.host,
            path = %self.path,
            http_version = self.http_version,
            ws_version = %OrDash(self.ws_version),
            subprotocol = self.subprotocol.as_deref().unwrap_or(NONE),
            upstream = self.upstream.as_deref().unwrap_or(NONE),
            status = self.status,
            handshake_ms = millis(self.handshake),
            duration_ms = millis(duration),
            bytes_up,
            bytes_down,
            closed_by,
            engine,
            "{message}"
        );
    }
}

/// Formats the value, or `-` when absent, without building a string per event.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str(NONE),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
