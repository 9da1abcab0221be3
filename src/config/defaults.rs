//! Every default of SPEC §2, named once: `validate` applies these when a key is absent, and the
//! docs of the `model` types link here instead of restating the values.
//!
//! Not here: an enum's default is its `#[default]` variant (`Balance`, `Select`), and
//! `listener.http2` defaults to whether the listener has TLS (ALPN needs it), a rule in `validate`.

use std::time::Duration;

use http::StatusCode;

/// `websocket.versions`: `[13]`, RFC 6455's version; 8 and 7 are drafts only old clients speak.
pub(crate) const WEBSOCKET_VERSIONS: &[u8] = &[13];

/// `websocket.version_mismatch_status`: 426 Upgrade Required, the code RFC 6455 §4.4 names.
pub(crate) const VERSION_MISMATCH_STATUS: StatusCode = StatusCode::UPGRADE_REQUIRED;

/// `limits.max_header_bytes`: 16384 (16 KiB), room for a browser handshake with cookies while
/// bounding what an unrouted client can make the gateway buffer.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// `limits.handshake_timeout`: 10s from accept to the first request head, so a silent or
/// slow-drip client (slowloris) cannot hold a connection slot.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `limits.keepalive_timeout`: 60s, what browsers and nginx (`keepalive_timeout 75s`) keep an
/// unused connection for, so a page's follow-up requests reuse it while idle clients do not pin
/// connection slots.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// `limits.upstream_connect_timeout`: 5s, several TCP SYN retransmissions (RFC 6298 §2: 1s
/// initial RTO, doubling), far beyond what a reachable upstream needs.
pub(crate) const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `limits.upstream_handshake_timeout`: 10s for the upstream's TLS and 101, the same as a client
/// gets for its side of the handshake.
pub(crate) const UPSTREAM_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `limits.idle_timeout`: 5m, well above usual WebSocket ping intervals (30-60s), so only
/// tunnels nobody keeps alive are closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// `limits.drain_timeout`: 30s, Kubernetes' default termination grace period.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `limits.max_connections`: 100000, a guard against running out of file descriptors that normal
/// load never reaches.
pub(crate) const MAX_CONNECTIONS: usize = 100_000;

/// `limits.max_connections_per_ip`: 0, unlimited (`None`), because clients behind one NAT or load
/// balancer share an address; a per-address cap is opt-in.
pub(crate) const MAX_CONNECTIONS_PER_IP: Option<usize> = None;

/// `limits.connection_rate_per_ip`: 0, unlimited (`None`), for the same NAT reason as
/// [`MAX_CONNECTIONS_PER_IP`].
pub(crate) const CONNECTION_RATE_PER_IP: Option<u32> = None;

/// `limits.h2_max_concurrent_streams`: 128, the RFC 9113 §6.5.2 recommended minimum of 100 with
/// room; each stream can be a tunnel with its own upstream connection.
pub(crate) const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// `listener.tls.strict_sni`: true, so a certificate shared by several tenants cannot carry
/// requests across them (SPEC §3, 421).
pub(crate) const STRICT_SNI: bool = true;

/// `route.host`: `"*"`, every host.
pub(crate) const ROUTE_HOST: &str = "*";

/// `route.path`: `"/"`, every path.
pub(crate) const ROUTE_PATH: &str = "/";

/// `route.inspect`: false, so a route keeps the opaque zero-copy tunnel (SPEC §5) unless it asks
/// for frame inspection (§9).
pub(crate) const INSPECT: bool = false;

/// `route.max_message_bytes`: 0, no limit (`None`): message sizes are the application's business
/// unless the operator caps them.
pub(crate) const MAX_MESSAGE_BYTES: Option<u64> = None;

/// `route.max_frame_bytes`: 0, no limit (`None`), for the same reason.
pub(crate) const MAX_FRAME_BYTES: Option<u64> = None;

/// `route.ping_interval`: "0s", off (`None`): most applications ping on their own, and the
/// gateway's pings are opt-in.
pub(crate) const PING_INTERVAL: Option<Duration> = None;

/// `route.ping_timeout`: 10s, several round trips on a slow mobile link, short enough that a
/// dead peer does not hold a tunnel for long.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// `route.close_code`: 1001 "going away" (RFC 6455 §7.4.1), what a server says when it goes
/// down or a browser navigates away; 1012 "service restart" suits deploys.
pub(crate) const CLOSE_CODE: u16 = 1001;

/// `route.max_lifetime`: "0s", no cap (`None`).
pub(crate) const MAX_LIFETIME: Option<Duration> = None;

/// `route.max_lifetime_jitter`: "0s", every tunnel gets the full `max_lifetime`.
pub(crate) const MAX_LIFETIME_JITTER: Duration = Duration::ZERO;

/// `forward.timeout` of an `[auth.NAME]`: 2s; an auth service is a local, fast lookup, and a
/// handshake waits on it.
pub(crate) const FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `forward.forward_headers`: the two headers that carry browser credentials.
pub(crate) const FORWARD_AUTH_HEADERS: &[&str] = &["cookie", "authorization"];

/// `jwt.algorithms`: the asymmetric algorithms common identity providers sign with.
pub(crate) const JWT_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
];

/// `jwt.leeway`: 60s of clock skew allowed on `exp` and `nbf`.
pub(crate) const JWT_LEEWAY: Duration = Duration::from_secs(60);

/// `jwt.from`: the Authorization header, then `?access_token=` (RFC 6750 §2.3), then a
/// `bearer.` subprotocol element (what browsers can send on a WebSocket).
pub(crate) const JWT_FROM: &[&str] = &[
    "header:authorization",
    "query:access_token",
    "subprotocol:bearer.",
];
