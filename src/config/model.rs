//! The validated configuration: what the rest of the gateway runs on.
//!
//! Nothing here is read from disk or checked; `config::load` builds these types only after every
//! rule of SPEC §2 has passed, so code holding a `Config` never re-validates it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

// Only linked from the docs: each default is stated once, there.
#[cfg(doc)]
use super::defaults;

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (reloaded from there on SIGHUP).
    pub(crate) source: PathBuf,
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) admin: Option<AdminConfig>,
    pub(crate) websocket: WebSocketConfig,
    pub(crate) limits: Limits,
    /// Upstreams by name; every name a route mentions is a key here.
    pub(crate) upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub(crate) routes: Vec<RouteConfig>,
    /// `[auth.NAME]` checks by name; every name a route mentions is a key here (SPEC §10).
    pub(crate) auth: BTreeMap<String, AuthConfig>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerConfig {
    pub(crate) bind: SocketAddr,
    /// Offer `h2` by ALPN and accept RFC 8441 extended CONNECT. Default: true with TLS, else false.
    pub(crate) http2: bool,
    /// Also serve HTTP/3 on UDP at the same address (SPEC §12); needs `tls`. Default false.
    pub(crate) http3: bool,
    /// Expect a PROXY v1/v2 header before anything else. Default false.
    pub(crate) proxy_protocol: bool,
    pub(crate) tls: Option<TlsConfig>,
}

/// A listener's certificates; paths are already resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsConfig {
    /// Default certificate chain (PEM), served for no or unknown SNI.
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) sni: Vec<SniCert>,
    /// Answer 421 to a request whose host is not the SNI name the client sent (SPEC §3), so one
    /// tenant's connection cannot reach another tenant's routes (domain fronting). Default
    /// [`defaults::STRICT_SNI`].
    pub(crate) strict_sni: bool,
}

/// A certificate served to clients asking for one of `names` by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SniCert {
    /// Lower-cased DNS names.
    pub(crate) names: Vec<String>,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `[admin]`: /healthz, /readyz, /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    pub(crate) bind: SocketAddr,
}

/// `[websocket]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebSocketConfig {
    /// Accepted `Sec-WebSocket-Version` values in advertised order; each is 13, 8 or 7.
    /// Default [`defaults::WEBSOCKET_VERSIONS`].
    pub(crate) versions: Vec<u8>,
    /// 426 or 400 (RFC 6455 §4.4). Default [`defaults::VERSION_MISMATCH_STATUS`].
    pub(crate) version_mismatch_status: StatusCode,
}

/// `[limits]`; defaults are those of SPEC §2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Default [`defaults::MAX_HEADER_BYTES`].
    pub(crate) max_header_bytes: usize,
    /// Default [`defaults::HANDSHAKE_TIMEOUT`].
    pub(crate) handshake_timeout: Duration,
    /// Default [`defaults::KEEPALIVE_TIMEOUT`].
    pub(crate) keepalive_timeout: Duration,
    /// Default [`defaults::UPSTREAM_CONNECT_TIMEOUT`].
    pub(crate) upstream_connect_timeout: Duration,
    /// Default [`defaults::UPSTREAM_HANDSHAKE_TIMEOUT`].
    pub(crate) upstream_handshake_timeout: Duration,
    /// Default [`defaults::IDLE_TIMEOUT`]; `None` ("0s") means never.
    pub(crate) idle_timeout: Option<Duration>,
    /// Default [`defaults::DRAIN_TIMEOUT`].
    pub(crate) drain_timeout: Duration,
    /// Default [`defaults::MAX_CONNECTIONS`].
    pub(crate) max_connections: usize,
    /// Default [`defaults::MAX_CONNECTIONS_PER_IP`]; 0 (unlimited) is written as `None`.
    pub(crate) max_connections_per_ip: Option<usize>,
    /// New connections (and h2 tunnel streams) per second per client address, burst the same.
    /// Default [`defaults::CONNECTION_RATE_PER_IP`]; 0 (unlimited) is written as `None`.
    pub(crate) connection_rate_per_ip: Option<u32>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS offered on h2. Default [`defaults::H2_MAX_CONCURRENT_STREAMS`].
    pub(crate) h2_max_concurrent_streams: u32,
}

#[cfg(test)]
impl Limits {
    /// Every key at its default, for unit tests that build limits without a file.
    pub(crate) fn defaults_for_tests() -> Self {
        use super::defaults as d;
        Limits {
            max_header_bytes: d::MAX_HEADER_BYTES,
            handshake_timeout: d::HANDSHAKE_TIMEOUT,
            keepalive_timeout: d::KEEPALIVE_TIMEOUT,
            upstream_connect_timeout: d::UPSTREAM_CONNECT_TIMEOUT,
            upstream_handshake_timeout: d::UPSTREAM_HANDSHAKE_TIMEOUT,
            idle_timeout: Some(d::IDLE_TIMEOUT),
            drain_timeout: d::DRAIN_TIMEOUT,
            max_connections: d::MAX_CONNECTIONS,
            max_connections_per_ip: d::MAX_CONNECTIONS_PER_IP,
            connection_rate_per_ip: d::CONNECTION_RATE_PER_IP,
            h2_max_concurrent_streams: d::H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// One `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamConfig {
    pub(crate) name: String,
    /// At least one.
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) balance: Balance,
    /// `Some` when `tls = true`.
    pub(crate) tls: Option<UpstreamTls>,
    pub(crate) send_proxy_protocol: Option<ProxyVersion>,
    pub(crate) health: Option<HealthCheck>,
}

/// `host:port` of an upstream server; the host may be an IP literal or a DNS name, resolved when
/// connecting so that a name can move.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServerAddr {
    /// IP literal (without brackets) or DNS name.
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// How the next server of an upstream is picked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Balance {
    #[default]
    RoundRobin,
    /// Fewest open tunnels.
    LeastConnections,
    /// Rendezvous hashing of the request's `hash_key` value (SPEC §10 "Affinity"); round robin
    /// for a request without it.
    Hash(HashKey),
}

/// Where a `balance = "hash"` upstream finds a request's affinity key (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// `header:NAME`; the name is stored lower-cased (header names are case-insensitive).
    Header(http::HeaderName),
    /// `cookie:NAME`, compared exactly (RFC 6265 cookie names are case-sensitive).
    Cookie(String),
    /// `query:NAME`, a query parameter, compared after percent-decoding.
    Query(String),
    /// `claim:NAME`, a claim of the route's verified JWT (string or number).
    Claim(String),
    /// `client_ip`: the client's address (the PROXY header's source when there is one).
    ClientIp,
}

/// TLS towards an upstream (`tls = true`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct UpstreamTls {
    /// CA bundle to verify the upstream with; when `None`, the Mozilla root bundle compiled in
    /// from `webpki-roots` (the host's trust store is never read).
    pub(crate) ca: Option<PathBuf>,
    /// Name for SNI and verification; the server's host when `None`.
    pub(crate) server_name: Option<String>,
}

/// PROXY protocol version sent to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyVersion {
    V1,
    V2,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthCheck {
    /// HTTP GET this path; TCP connect only when `None`.
    pub(crate) path: Option<String>,
    pub(crate) interval: Duration,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteConfig {
    /// Default [`defaults::ROUTE_HOST`], i.e. [`HostPattern::Any`].
    pub(crate) host: HostPattern,
    /// Path prefix matched on segment boundaries; starts with `/`. Default [`defaults::ROUTE_PATH`].
    pub(crate) path: String,
    /// Allowed `Origin` values (compared case-insensitively); `None` allows any.
    pub(crate) origins: Option<Vec<String>>,
    pub(crate) select: Select,
    pub(crate) fallback: Option<String>,
    pub(crate) http: Option<String>,
    pub(crate) upgrades: Vec<UpgradeRoute>,
    pub(crate) subprotocols: Vec<SubprotocolRoute>,
    /// `inspect = true`: WebSocket tunnels follow frame headers with these settings (SPEC §9);
    /// `None` ([`defaults::INSPECT`]) keeps the opaque tunnel. Tunnels of `upgrades` tokens are
    /// never inspected: they carry no WebSocket frames.
    pub(crate) inspect: Option<InspectRoute>,
    /// Every tunnel's age cap (SPEC §5), inspected or not. Default [`defaults::MAX_LIFETIME`];
    /// `None` ("0s") means no cap.
    pub(crate) max_lifetime: Option<Duration>,
    /// Each tunnel's cap is shortened by a uniformly random amount up to this. Always shorter
    /// than `max_lifetime`, and zero without it. Default [`defaults::MAX_LIFETIME_JITTER`].
    pub(crate) max_lifetime_jitter: Duration,
    /// The `[auth.NAME]` every request of this route must pass (SPEC §10).
    pub(crate) auth: Option<String>,
}

/// The inspect-only keys of a route with `inspect = true` (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InspectRoute {
    /// Default [`defaults::MAX_MESSAGE_BYTES`]; `None` (0) means no limit.
    pub(crate) max_message_bytes: Option<u64>,
    /// Default [`defaults::MAX_FRAME_BYTES`]; `None` (0) means no limit.
    pub(crate) max_frame_bytes: Option<u64>,
    /// Default [`defaults::PING_INTERVAL`]; `None` ("0s") means no keepalive pings.
    pub(crate) ping_interval: Option<Duration>,
    /// Greater than zero. Default [`defaults::PING_TIMEOUT`].
    pub(crate) ping_timeout: Duration,
    /// 1000-4999, never 1004-1006 or 1015. Default [`defaults::CLOSE_CODE`].
    pub(crate) close_code: u16,
}

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// `*`
    Any,
    /// `*.example.com`, stored lower-cased with the leading dot: `.example.com`.
    Suffix(String),
    /// An exact host name, lower-cased.
    Exact(String),
}

/// Who decides between several mapped subprotocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Select {
    /// First client-offered subprotocol that is mapped.
    #[default]
    Client,
    /// First mapped subprotocol (in config order) that the client offered.
    Server,
}

/// A non-WebSocket `Upgrade` token tunnelled as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpgradeRoute {
    pub(crate) token: String,
    pub(crate) upstream: String,
}

/// `[[route.subprotocol]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubprotocolRoute {
    pub(crate) name: String,
    pub(crate) upstream: String,
}

/// One `[auth.NAME]` (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthConfig {
    Forward(ForwardAuth),
    Jwt(JwtAuth),
}

/// `forward = { ... }`: ask an HTTP service about each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardAuth {
    /// The service's `http://` or `https://` URL, as written.
    pub(crate) url: http::Uri,
    /// Host and port of `url` (80 or 443 when absent).
    pub(crate) server: ServerAddr,
    /// `https://`: TLS verified against the compiled-in Mozilla roots, as for `tls` upstreams.
    pub(crate) tls: bool,
    /// Default [`defaults::FORWARD_AUTH_TIMEOUT`].
    pub(crate) timeout: Duration,
    /// Client headers sent to the service (those present). Default
    /// [`defaults::FORWARD_AUTH_HEADERS`].
    pub(crate) forward_headers: Vec<http::HeaderName>,
    /// Headers of a 2xx answer set on the upstream request; a client's own are always removed.
    pub(crate) copy_headers: Vec<http::HeaderName>,
}

/// `jwt = { ... }`: verify a JWT locally against a JWKS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwtAuth {
    /// The JWKS file, resolved against the config file's directory.
    pub(crate) jwks: PathBuf,
    /// Its usable public keys, read when the configuration was loaded (so SIGHUP re-reads them).
    pub(crate) keys: Vec<jsonwebtoken::jwk::Jwk>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    /// Never `none` or an HMAC algorithm. Default [`defaults::JWT_ALGORITHMS`].
    pub(crate) algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Default [`defaults::JWT_LEEWAY`].
    pub(crate) leeway: Duration,
    /// Where the token is looked for, first present wins. Default [`defaults::JWT_FROM`].
    pub(crate) from: Vec<TokenSource>,
    /// `(claim, header)` pairs, in file order.
    pub(crate) claims_to_headers: Vec<(String, http::HeaderName)>,
}

/// One element of a JWT auth's `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `header:NAME`; for `authorization` only with the `Bearer` scheme.
    Header(http::HeaderName),
    /// `query:NAME`: a query parameter, removed before forwarding.
    Query(String),
    /// `subprotocol:PREFIX`: an offered subprotocol element starting with PREFIX, removed from
    /// the offer before selection.
    Subprotocol(String),
}
