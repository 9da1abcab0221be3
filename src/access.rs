//! The access log (SPEC §7): one `tracing` event with target `access` per handshake outcome and
//! one per closed tunnel, with the same field names in both so they can be joined.
//!
//! The closing event of an inspected tunnel (SPEC §9) also has `messages_up`, `messages_down`,
//! `frames_up`, `frames_down`, `close_code`, `close_reason` and `close_initiator`; other
//! events leave them out.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::tunnel::{TunnelOutcome, WsReport};

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
    /// The route's auth outcome (SPEC §10: `allowed`, `denied`, `error`); never a credential.
    pub(crate) auth: Option<&'static str>,
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
            auth: None,
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
        self.emit(
            "handshake",
            "handshake",
            self.handshake,
            0,
            0,
            NONE,
            None,
            None,
        );
    }

    /// Logs a closed tunnel opened by this handshake.
    pub(crate) fn log_tunnel(&self, outcome: &TunnelOutcome) {
        self.emit(
            "tunnel_closed",
            "tunnel closed",
            outcome.duration,
            outcome.bytes_up,
            outcome.bytes_down,
            outcome.closed_by.as_str(),
            Some(outcome.engine.as_str()),
            outcome.ws.as_ref(),
        );
    }

    /// `event` is the stable name tests and tools match on; `message` the text for people.
    /// `engine` (tunnels only) and the `ws` fields (inspected tunnels only) are left out of the
    /// event when `None`.
    ///
    /// `close_reason` is passed as a `&str`, not `%`-formatted, so that each format escapes it
    /// its own way: JSON as a JSON string, text as a quoted Rust string literal (`\n`, `\"`,
    /// `\u{7}`), so a reason from the network can never break a line. A reason that is not
    /// UTF-8 (RFC 6455 §7.1.6 requires it) has its bad bytes replaced by U+FFFD.
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
        ws: Option<&WsReport>,
    ) {
        let close = ws.and_then(|w| w.close);
        let reason: Option<Cow<'_, str>> = ws.map(|_| match &close {
            Some(c) => String::from_utf8_lossy(c.reason.as_bytes()),
            None => Cow::Borrowed(NONE),
        });
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
            auth = self.auth.unwrap_or(NONE),
            status = self.status,
            handshake_ms = millis(self.handshake),
            duration_ms = millis(duration),
            bytes_up,
            bytes_down,
            closed_by,
            engine,
            messages_up = ws.map(|w| w.messages_up),
            messages_down = ws.map(|w| w.messages_down),
            frames_up = ws.map(|w| w.frames_up),
            frames_down = ws.map(|w| w.frames_down),
            close_code = ws.map(|_| tracing::field::display(OrDash(close.map(|c| c.code)))),
            close_reason = reason.as_deref(),
            close_initiator = ws.map(|_| close.map_or(NONE, |c| c.initiator.as_str())),
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::tunnel::{CloseReason, CloseSeen, ClosedBy, Engine, Initiator};

    /// Everything a subscriber writes, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The lines `rec.log_tunnel(outcome)` writes as JSON (as `--log-format json` sets it up)
    /// and as text.
    fn logged(rec: &AccessRecord, outcome: &TunnelOutcome) -> (serde_json::Value, String) {
        let json = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(json.clone())
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || rec.log_tunnel(outcome));
        let text = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(text.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || rec.log_tunnel(outcome));
        let json = json.text();
        assert_eq!(json.lines().count(), 1, "{json}");
        (serde_json::from_str(&json).unwrap(), text.text())
    }

    fn record() -> AccessRecord {
        let mut rec = AccessRecord::new("127.0.0.1:5000".parse().unwrap(), "HTTP/1.1");
        rec.path = "/ws/x".into();
        rec.route = Some("/ws".into());
        rec
    }

    fn outcome(ws: Option<WsReport>) -> TunnelOutcome {
        TunnelOutcome {
            bytes_up: 10,
            bytes_down: 20,
            closed_by: ClosedBy::Client,
            duration: Duration::from_millis(1500),
            engine: Engine::Buffered,
            ws,
        }
    }

    const WS_FIELDS: [&str; 7] = [
        "messages_up",
        "messages_down",
        "frames_up",
        "frames_down",
        "close_code",
        "close_reason",
        "close_initiator",
    ];

    #[test]
    fn opaque_tunnel_event_has_no_ws_fields() {
        let (json, text) = logged(&record(), &outcome(None));
        assert_eq!(json["closed_by"], "client");
        assert_eq!(json["bytes_down"], 20);
        for field in WS_FIELDS {
            assert!(json.get(field).is_none(), "{field} in {json}");
            assert!(!text.contains(&format!("{field}=")), "{field} in {text}");
        }
    }

    #[test]
    fn inspected_tunnel_event_has_counts_and_the_first_close() {
        let reason = "quote \" backslash \\ newline \n tab \t bell \x07 end";
        let ws = WsReport {
            messages_up: 3,
            messages_down: 2,
            frames_up: 6,
            frames_down: 4,
            close: Some(CloseSeen {
                code: 1000,
                reason: CloseReason::new(reason.as_bytes()),
                initiator: Initiator::Client,
            }),
        };
        let (json, text) = logged(&record(), &outcome(Some(ws)));
        assert_eq!(json["messages_up"], 3);
        assert_eq!(json["messages_down"], 2);
        assert_eq!(json["frames_up"], 6);
        assert_eq!(json["frames_down"], 4);
        assert_eq!(json["close_code"], "1000");
        // JSON carries the reason itself, escaped by the JSON encoder.
        assert_eq!(json["close_reason"], reason);
        assert_eq!(json["close_initiator"], "client");
        // Text: one line, the reason as an escaped literal.
        assert_eq!(text.lines().count(), 1, "{text}");
        for part in [
            "messages_up=3",
            "messages_down=2",
            "frames_up=6",
            "frames_down=4",
            "close_code=1000",
            r#"close_reason="quote \" backslash \\ newline \n tab \t bell \u{7} end""#,
            "close_initiator=\"client\"",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
    }

    #[test]
    fn empty_reason_is_an_empty_string_and_no_close_is_a_dash() {
        let empty = WsReport {
            close: Some(CloseSeen {
                code: 1005,
                reason: CloseReason::new(b""),
                initiator: Initiator::Gateway,
            }),
            ..WsReport::default()
        };
        let (json, text) = logged(&record(), &outcome(Some(empty)));
        assert_eq!(json["close_code"], "1005");
        assert_eq!(json["close_reason"], "");
        assert_eq!(json["close_initiator"], "gateway");
        assert!(text.contains("close_reason=\"\""), "{text}");

        let (json, _) = logged(&record(), &outcome(Some(WsReport::default())));
        assert_eq!(json["close_code"], "-");
        assert_eq!(json["close_reason"], "-");
        assert_eq!(json["close_initiator"], "-");
        assert_eq!(json["messages_up"], 0);

        let bad_utf8 = WsReport {
            close: Some(CloseSeen {
                code: 4000,
                reason: CloseReason::new(b"ok\xffend"),
                initiator: Initiator::Upstream,
            }),
            ..WsReport::default()
        };
        let (json, _) = logged(&record(), &outcome(Some(bad_utf8)));
        assert_eq!(json["close_reason"], "ok\u{fffd}end");
    }
}
