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
    pub source: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub websocket: WebSocketConfig,
    pub limits: Limits,
    /// Upstreams by name; every name a route mentions is a key here.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// Offer `h2` by ALPN and accept RFC 8441 extended CONNECT. Default: true with TLS, else false.
    pub http2: bool,
    /// Expect a PROXY v1/v2 header before anything else. Default false.
    pub proxy_protocol: bool,
    pub tls: Option<TlsConfig>,
}

/// A listener's certificates; paths are already resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Default certificate chain (PEM), served for no or unknown SNI.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniCert>,
}

/// A certificate served to clients asking for one of `names` by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lower-cased DNS names.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[admin]`: /healthz, /readyz, /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// `[websocket]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// Accepted `Sec-WebSocket-Version` values in advertised order; each is 13, 8 or 7.
    /// Default [`defaults::WEBSOCKET_VERSIONS`].
    pub versions: Vec<u8>,
    /// 426 or 400 (RFC 6455 §4.4). Default [`defaults::VERSION_MISMATCH_STATUS`].
    pub version_mismatch_status: StatusCode,
}

/// `[limits]`; defaults are those of SPEC §2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default [`defaults::MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// Default [`defaults::HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Default [`defaults::UPSTREAM_CONNECT_TIMEOUT`].
    pub upstream_connect_timeout: Duration,
    /// Default [`defaults::UPSTREAM_HANDSHAKE_TIMEOUT`].
    pub upstream_handshake_timeout: Duration,
    /// Default [`defaults::IDLE_TIMEOUT`]; `None` ("0s") means never.
    pub idle_timeout: Option<Duration>,
    /// Default [`defaults::DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Default [`defaults::MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Default [`defaults::MAX_CONNECTIONS_PER_IP`]; 0 (unlimited) is written as `None`.
    pub max_connections_per_ip: Option<usize>,
}

/// One `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    /// At least one.
    pub servers: Vec<ServerAddr>,
    pub balance: Balance,
    /// `Some` when `tls = true`.
    pub tls: Option<UpstreamTls>,
    pub send_proxy_protocol: Option<ProxyVersion>,
    pub health: Option<HealthCheck>,
}

/// `host:port` of an upstream server; the host may be an IP literal or a DNS name, resolved when
/// connecting so that a name can move.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// IP literal (without brackets) or DNS name.
    pub host: String,
    pub port: u16,
}

/// How the next server of an upstream is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Fewest open tunnels.
    LeastConnections,
}

/// TLS towards an upstream (`tls = true`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// CA bundle to verify the upstream with; when `None`, the Mozilla root bundle compiled in
    /// from `webpki-roots` (the host's trust store is never read).
    pub ca: Option<PathBuf>,
    /// Name for SNI and verification; the server's host when `None`.
    pub server_name: Option<String>,
}

/// PROXY protocol version sent to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP GET this path; TCP connect only when `None`.
    pub path: Option<String>,
    pub interval: Duration,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Default [`defaults::ROUTE_HOST`], i.e. [`HostPattern::Any`].
    pub host: HostPattern,
    /// Path prefix matched on segment boundaries; starts with `/`. Default [`defaults::ROUTE_PATH`].
    pub path: String,
    /// Allowed `Origin` values (compared case-insensitively); `None` allows any.
    pub origins: Option<Vec<String>>,
    pub select: Select,
    pub fallback: Option<String>,
    pub http: Option<String>,
    pub upgrades: Vec<UpgradeRoute>,
    pub subprotocols: Vec<SubprotocolRoute>,
}

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`
    Any,
    /// `*.example.com`, stored lower-cased with the leading dot: `.example.com`.
    Suffix(String),
    /// An exact host name, lower-cased.
    Exact(String),
}

/// Who decides between several mapped subprotocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Select {
    /// First client-offered subprotocol that is mapped.
    #[default]
    Client,
    /// First mapped subprotocol (in config order) that the client offered.
    Server,
}

/// A non-WebSocket `Upgrade` token tunnelled as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRoute {
    pub token: String,
    pub upstream: String,
}

/// `[[route.subprotocol]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubprotocolRoute {
    pub name: String,
    pub upstream: String,
}
