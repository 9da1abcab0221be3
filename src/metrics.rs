//! Prometheus metrics (SPEC §7), rendered by the admin listener's `/metrics`.
//!
//! Everything is live: gauges and counters move while tunnels run, not only when they close.
//! Tunnel bytes in particular come from one process-wide [`ByteCounters`] pair that every tunnel
//! bumps as it delivers bytes, read at scrape time by a [`Collector`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::tunnel::{ByteCounters, Engine, WsReport};

/// `route` is the route's path, or `none` when nothing matched.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    route: String,
    status: u16,
}

/// `switchyard_auth_total`: `result` is `allowed`, `denied` or `error` (SPEC §10).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    route: String,
    subprotocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    engine: &'static str,
}

/// `switchyard_ws_messages_total`: `direction` as in `switchyard_tunnel_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WsMessageLabels {
    route: RouteLabel,
    direction: &'static str,
}

/// `switchyard_ws_close_total`: the first close frame's code and sender, `none` for both when
/// an inspected tunnel ended without a close frame (the access log's `-`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WsCloseLabels {
    route: RouteLabel,
    code: CloseCode,
    initiator: &'static str,
}

/// A route label shared by a tunnel's series: cloned by reference count, not by copying.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteLabel(Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// A close code label value, or `none`; numeric without formatting a string per close.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct CloseCode(Option<u16>);

impl EncodeLabelValue for CloseCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => encoder.write_str(NONE_LABEL),
        }
    }
}

/// One server of one upstream: `server` is its `host:port` as written in the config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

/// Every metric the gateway exports, registered once at start-up and shared by all connections.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    handshakes: Family<HandshakeLabels, Counter>,
    tunnels_active: Family<TunnelLabels, Gauge>,
    /// Shared by every tunnel (`TunnelConfig::counters`) and read by [`TunnelBytes`] per scrape.
    tunnel_bytes: ByteCounters,
    upstream_connect: Histogram,
    tunnel_duration: Histogram,
    server_up: Family<ServerLabels, Gauge>,
    server_active_tunnels: Family<ServerLabels, Gauge>,
    server_connect_failures: Family<ServerLabels, Counter>,
    ws_messages: Family<WsMessageLabels, Counter>,
    ws_close: Family<WsCloseLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
}

/// Label value for a request that matched no route.
pub(crate) const NO_ROUTE: &str = "none";

/// Label value of an absent close code or initiator.
const NONE_LABEL: &str = "none";

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let tunnels_active = Family::<TunnelLabels, Gauge>::default();
        let tunnel_bytes = ByteCounters::new();
        // 1 ms .. ~16 s: connects are normally sub-millisecond on a LAN and time out at seconds.
        let upstream_connect = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // 10 ms .. ~1.5 days: tunnels live from a blink to days.
        let tunnel_duration = Histogram::new(exponential_buckets(0.01, 4.0, 13));
        registry.register(
            "switchyard_handshakes",
            "Upgrade handshakes by route and the HTTP status answered",
            handshakes.clone(),
        );
        registry.register(
            "switchyard_tunnels_active",
            "Open tunnels by route and subprotocol",
            tunnels_active.clone(),
        );
        registry.register_collector(Box::new(TunnelBytes(tunnel_bytes.clone())));
        registry.register_collector(Box::new(TunnelEngines(tunnel_bytes.clone())));
        registry.register(
            "switchyard_upstream_connect_seconds",
            "Time to connect to an upstream server (TCP, and TLS where configured)",
            upstream_connect.clone(),
        );
        registry.register(
            "switchyard_tunnel_duration_seconds",
            "Lifetime of closed tunnels",
            tunnel_duration.clone(),
        );
        let server_up = Family::<ServerLabels, Gauge>::default();
        let server_active_tunnels = Family::<ServerLabels, Gauge>::default();
        let server_connect_failures = Family::<ServerLabels, Counter>::default();
        registry.register(
            "switchyard_upstream_server_up",
            "1 while an upstream server is in rotation, 0 after a failed connect or health check",
            server_up.clone(),
        );
        registry.register(
            "switchyard_upstream_server_active_tunnels",
            "Open tunnels per upstream server",
            server_active_tunnels.clone(),
        );
        registry.register(
            "switchyard_upstream_connect_failures",
            "Failed or timed-out connects to an upstream server (traffic, not health checks)",
            server_connect_failures.clone(),
        );
        let ws_messages = Family::<WsMessageLabels, Counter>::default();
        let ws_close = Family::<WsCloseLabels, Counter>::default();
        registry.register(
            "switchyard_ws_messages",
            "WebSocket data messages through inspected tunnels, by route and direction (counted as tunnels close)",
            ws_messages.clone(),
        );
        registry.register(
            "switchyard_ws_close",
            "Inspected tunnels by route and their first close frame's code and sender (none: no close frame)",
            ws_close.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "switchyard_auth",
            "Auth checks of routes with `auth` by route and result (allowed, denied, error)",
            auth.clone(),
        );
        Metrics {
            registry,
            auth,
            ws_messages,
            ws_close,
            handshakes,
            tunnels_active,
            tunnel_bytes,
            upstream_connect,
            tunnel_duration,
            server_up,
            server_active_tunnels,
            server_connect_failures,
        }
    }
}

impl Metrics {
    /// One handshake outcome; `route` is the route's path or [`NO_ROUTE`].
    pub(crate) fn handshake(&self, route: &str, status: u16) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// One auth check's outcome on `route` (SPEC §10).
    pub(crate) fn auth(&self, route: &str, result: &'static str) {
        self.auth
            .get_or_create(&AuthLabels {
                route: route.to_owned(),
                result,
            })
            .inc();
    }

    /// A tunnel opened; the returned guard marks it closed when dropped.
    pub(crate) fn tunnel_opened(&self, route: &str, subprotocol: &str) -> ActiveTunnel {
        let gauge = self
            .tunnels_active
            .get_or_create(&TunnelLabels {
                route: route.to_owned(),
                subprotocol: subprotocol.to_owned(),
            })
            .clone();
        gauge.inc();
        ActiveTunnel { gauge }
    }

    /// The process-wide byte counters every tunnel adds to as it delivers bytes (pass them as
    /// `TunnelConfig::counters`), so `switchyard_tunnel_bytes_total` includes open tunnels.
    pub(crate) fn tunnel_counters(&self) -> ByteCounters {
        self.tunnel_bytes.clone()
    }

    /// A tunnel closed after `lifetime`.
    pub(crate) fn tunnel_closed(&self, lifetime: Duration) {
        self.tunnel_duration.observe(lifetime.as_secs_f64());
    }

    /// The series an inspected tunnel on `route` reports to, resolved once when it opens so
    /// that closing it costs no label allocation.
    pub(crate) fn ws_tunnel(&self, route: &str) -> WsTunnelMetrics {
        let route = RouteLabel(Arc::from(route));
        let messages = |direction| {
            self.ws_messages
                .get_or_create(&WsMessageLabels {
                    route: route.clone(),
                    direction,
                })
                .clone()
        };
        WsTunnelMetrics {
            messages_up: messages("client_to_upstream"),
            messages_down: messages("upstream_to_client"),
            route,
        }
    }

    /// An inspected tunnel closed having seen `report`.
    pub(crate) fn ws_tunnel_closed(&self, tunnel: &WsTunnelMetrics, report: &WsReport) {
        tunnel.messages_up.inc_by(report.messages_up);
        tunnel.messages_down.inc_by(report.messages_down);
        let labels = WsCloseLabels {
            route: tunnel.route.clone(),
            code: CloseCode(report.close.map(|c| c.code)),
            initiator: report.close.map_or(NONE_LABEL, |c| c.initiator.as_str()),
        };
        self.ws_close.get_or_create(&labels).inc();
    }

    /// The connect-time histogram, for the upstream pools that observe it.
    pub(crate) fn upstream_connect_histogram(&self) -> Histogram {
        self.upstream_connect.clone()
    }

    /// The per-server series of `server` in `upstream`, marked up: a pool built from a (re)loaded
    /// configuration starts with every server in rotation. A server kept across a reload gets the
    /// same series back, so its tunnel and failure counts carry on.
    pub(crate) fn upstream_server(&self, upstream: &str, server: &str) -> ServerMetrics {
        let labels = ServerLabels {
            upstream: upstream.to_owned(),
            server: server.to_owned(),
        };
        let up = self.server_up.get_or_create(&labels).clone();
        let active_tunnels = self.server_active_tunnels.get_or_create(&labels).clone();
        let connect_failures = self.server_connect_failures.get_or_create(&labels).clone();
        up.set(1);
        ServerMetrics {
            up,
            active_tunnels,
            connect_failures,
        }
    }

    /// Drops the series of a server that a reload removed, so `/metrics` lists only configured
    /// servers. Tunnels still open on it keep counting on their detached handles.
    pub(crate) fn forget_upstream_server(&self, upstream: &str, server: &str) {
        let labels = ServerLabels {
            upstream: upstream.to_owned(),
            server: server.to_owned(),
        };
        self.server_up.remove(&labels);
        self.server_active_tunnels.remove(&labels);
        self.server_connect_failures.remove(&labels);
    }

    /// The Prometheus text exposition of everything above.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `switchyard_tunnel_bytes_total{direction}`, read from the live [`ByteCounters`] at scrape
/// time: a registered `Counter` could only be bumped when a tunnel reports, i.e. when it closes.
#[derive(Debug)]
struct TunnelBytes(ByteCounters);

impl Collector for TunnelBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "switchyard_tunnel_bytes",
            "Bytes moved through tunnels by direction, open tunnels included",
            None,
            MetricType::Counter,
        )?;
        for (direction, bytes) in [
            ("client_to_upstream", self.0.up()),
            ("upstream_to_client", self.0.down()),
        ] {
            let labels = DirectionLabels { direction };
            ConstCounter::new(bytes).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `switchyard_tunnel_engine_total{engine}`: tunnels started per copy engine (`splice`,
/// `buffered`, `inspect`), read from the same live counters, so a plain-TCP deployment can see it splices.
#[derive(Debug)]
struct TunnelEngines(ByteCounters);

impl Collector for TunnelEngines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "switchyard_tunnel_engine",
            "Tunnels started by copy engine (splice for plain TCP legs, inspect for inspected routes, buffered otherwise)",
            None,
            MetricType::Counter,
        )?;
        for engine in Engine::ALL {
            let labels = EngineLabels {
                engine: engine.as_str(),
            };
            ConstCounter::new(self.0.tunnels(engine)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One inspected tunnel's handles on the `switchyard_ws_*` series of its route.
#[derive(Debug)]
pub(crate) struct WsTunnelMetrics {
    route: RouteLabel,
    messages_up: Counter,
    messages_down: Counter,
}

/// Keeps `switchyard_tunnels_active` up while a tunnel lives.
#[derive(Debug)]
pub(crate) struct ActiveTunnel {
    gauge: Gauge,
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Handles on one upstream server's series, held by the server itself so that the hot path
/// does no label lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerMetrics {
    up: Gauge,
    active_tunnels: Gauge,
    connect_failures: Counter,
}

impl ServerMetrics {
    /// Whether the server is in rotation.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// A tunnel to this server opened.
    pub(crate) fn tunnel_opened(&self) {
        self.active_tunnels.inc();
    }

    /// A tunnel to this server closed.
    pub(crate) fn tunnel_closed(&self) {
        self.active_tunnels.dec();
    }

    /// A connect to this server failed or timed out.
    pub(crate) fn connect_failed(&self) {
        self.connect_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_spec_names_and_labels() {
        let m = Metrics::default();
        m.handshake("/chat", 101);
        m.handshake(NO_ROUTE, 404);
        let t = m.tunnel_opened("/chat", "chat.v2");
        m.upstream_connect_histogram().observe(0.002);
        let text = m.render();
        assert!(
            text.contains(r#"switchyard_handshakes_total{route="/chat",status="101"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_handshakes_total{route="none",status="404"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_tunnels_active{route="/chat",subprotocol="chat.v2"} 1"#)
        );
        assert!(
            text.contains(r#"switchyard_tunnel_bytes_total{direction="client_to_upstream"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE switchyard_tunnel_bytes counter"),
            "{text}"
        );
        assert!(text.contains("switchyard_upstream_connect_seconds_count 1"));
        drop(t);
        assert!(
            m.render()
                .contains(r#"switchyard_tunnels_active{route="/chat",subprotocol="chat.v2"} 0"#)
        );
    }

    /// The §9 series: messages per route and direction, closes per route, code and initiator;
    /// a tunnel without a close frame counts under `none`.
    #[test]
    fn renders_ws_messages_and_closes() {
        use crate::tunnel::{CloseReason, CloseSeen, Initiator};
        let m = Metrics::default();
        let close = |code, initiator| {
            Some(CloseSeen {
                code,
                reason: CloseReason::new(b"bye"),
                initiator,
            })
        };
        let report = |up, down, close| WsReport {
            messages_up: up,
            messages_down: down,
            frames_up: up + 1,
            frames_down: down + 1,
            close,
        };
        let ws = m.ws_tunnel("/ws");
        m.ws_tunnel_closed(&ws, &report(3, 1, close(1000, Initiator::Client)));
        let ws2 = m.ws_tunnel("/ws");
        m.ws_tunnel_closed(&ws2, &report(1, 2, close(4002, Initiator::Upstream)));
        let other = m.ws_tunnel("/other");
        m.ws_tunnel_closed(&other, &report(0, 5, None));
        m.ws_tunnel_closed(&other, &report(0, 0, close(1001, Initiator::Gateway)));
        let text = m.render();
        for line in [
            r#"switchyard_ws_messages_total{route="/ws",direction="client_to_upstream"} 4"#,
            r#"switchyard_ws_messages_total{route="/ws",direction="upstream_to_client"} 3"#,
            r#"switchyard_ws_messages_total{route="/other",direction="upstream_to_client"} 5"#,
            r#"switchyard_ws_close_total{route="/ws",code="1000",initiator="client"} 1"#,
            r#"switchyard_ws_close_total{route="/ws",code="4002",initiator="upstream"} 1"#,
            r#"switchyard_ws_close_total{route="/other",code="none",initiator="none"} 1"#,
            r#"switchyard_ws_close_total{route="/other",code="1001",initiator="gateway"} 1"#,
            "# TYPE switchyard_ws_messages counter",
            "# TYPE switchyard_ws_close counter",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    /// Two tunnels share the process-wide counters; bytes show while both are still open.
    #[tokio::test]
    async fn tunnel_bytes_are_live_and_summed_over_tunnels() {
        use crate::tunnel::{self, Leg, TunnelConfig};
        use bytes::Bytes;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let m = Metrics::default();
        let cfg = TunnelConfig {
            idle_timeout: None,
            counters: Some(m.tunnel_counters()),
            ..TunnelConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (mut c1, g1) = tokio::io::duplex(1024);
        let (u1, mut s1) = tokio::io::duplex(1024);
        let (mut c2, g2) = tokio::io::duplex(1024);
        let (u2, mut s2) = tokio::io::duplex(1024);
        let never = std::future::pending::<()>();
        let tunnels = async {
            tokio::join!(
                tunnel::run(
                    Leg::stream(g1, Bytes::new()),
                    Leg::stream(u1, Bytes::new()),
                    &cfg,
                    std::future::pending(),
                    stopped
                ),
                tunnel::run(
                    Leg::stream(g2, Bytes::new()),
                    Leg::stream(u2, Bytes::new()),
                    &cfg,
                    std::future::pending(),
                    never
                ),
            )
        };
        let traffic = async {
            let mut buf = [0u8; 16];
            c1.write_all(b"abc").await.unwrap();
            s1.read_exact(&mut buf[..3]).await.unwrap();
            c2.write_all(b"d").await.unwrap();
            s2.read_exact(&mut buf[..1]).await.unwrap();
            s2.write_all(b"efgh").await.unwrap();
            c2.read_exact(&mut buf[..4]).await.unwrap();
            let text = m.render();
            assert!(
                text.contains(r#"switchyard_tunnel_bytes_total{direction="client_to_upstream"} 4"#),
                "{text}"
            );
            assert!(
                text.contains(r#"switchyard_tunnel_bytes_total{direction="upstream_to_client"} 4"#),
                "{text}"
            );
            // In-memory legs are streams, so both open tunnels count as buffered.
            assert!(
                text.contains(r#"switchyard_tunnel_engine_total{engine="buffered"} 2"#),
                "{text}"
            );
            assert!(
                text.contains(r#"switchyard_tunnel_engine_total{engine="splice"} 0"#),
                "{text}"
            );
            let _ = stop.send(());
            drop((c2, s2));
        };
        let ((out1, out2), ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(tunnels, traffic)
        })
        .await
        .unwrap();
        assert_eq!((out1.bytes_up, out2.bytes_up, out2.bytes_down), (3, 1, 4));
        // Nothing is added again when the tunnels report at their end.
        assert!(
            m.render()
                .contains(r#"switchyard_tunnel_bytes_total{direction="client_to_upstream"} 4"#)
        );
    }
}
