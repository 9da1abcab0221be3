//! Raw config -> validated [`Config`], applying every rule of SPEC §2 and collecting every
//! problem instead of stopping at the first, so one `check` run shows the operator all of them.
//!
//! Problems are addressed by [`KeyPath`]; turning those into line numbers is `locate`'s job.
//! Where a value is bad, a stand-in is used so that checking can go on; it can never be seen,
//! because [`validate`] returns `Err` as soon as any problem was recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::ServerName;

use super::defaults;
use super::duration;
use super::locate::KeyPath;
use super::model::{
    AdminConfig, AuthConfig, Balance, Config, HashKey, HealthCheck, HostPattern, InspectRoute,
    Limits, ListenerConfig, ProxyVersion, RouteConfig, Select, ServerAddr, SniCert,
    SubprotocolRoute, TlsConfig, UpgradeRoute, UpstreamConfig, UpstreamTls, WebSocketConfig,
};
use super::raw::{
    RawConfig, RawDuration, RawLimits, RawListener, RawListenerTls, RawRoute, RawUpstream,
    RawWebSocket,
};
use super::syntax::{
    HASH_KEY_FORMS, is_dns_name, is_token, parse_bind, parse_hash_key, parse_host_pattern,
    parse_server,
};
use crate::tls::pem::{self, PemError};

/// One problem: where, and what is wrong (quoting the offending value).
pub(super) type Problem = (KeyPath, String);

/// Smallest accepted `limits.max_header_bytes`: below this, ordinary browser handshakes
/// (cookies, several `Sec-WebSocket-*` headers) would already be refused with 431.
const HEADER_BYTES_FLOOR: i64 = 1024;
/// Largest accepted `limits.max_header_bytes` (1 MiB): a bigger head is an attack, not a client.
const HEADER_BYTES_CEILING: i64 = 1 << 20;

/// WebSocket versions the handshake knows (RFC 6455 §4.4 and the drafts it replaced).
const KNOWN_VERSIONS: [i64; 3] = [13, 8, 7];

/// Close codes a gateway may send (SPEC §2): RFC 6455 §7.4 defines 1000-2999 for the protocol
/// and 3000-4999 for libraries and applications; 1004 is reserved, and 1005, 1006 and 1015
/// "MUST NOT be set as a status code in a Close control frame by an endpoint" (§7.4.1).
fn is_sendable_close_code(code: i64) -> bool {
    (1000..=4999).contains(&code) && !matches!(code, 1004..=1006 | 1015)
}

/// Validates `raw`, read from `source`; relative file names resolve against `base` (the config
/// file's directory, SPEC §2).
pub(super) fn validate(
    raw: &RawConfig,
    base: &Path,
    source: &Path,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        problems: Vec::new(),
        base,
    };
    let root = KeyPath::root();
    let listeners = v.listeners(&root.key("listener"), &raw.listener);
    let admin = raw.admin.as_ref().map(|admin| AdminConfig {
        bind: v.bind(&root.key("admin").key("bind"), &admin.bind),
    });
    v.duplicate_binds(raw);
    let websocket = v.websocket(&root.key("websocket"), &raw.websocket);
    let limits = v.limits(&root.key("limits"), &raw.limits);
    let upstreams = v.upstreams(&root.key("upstreams"), &raw.upstreams);
    let routes = v.routes(&root.key("route"), &raw.route, &raw.upstreams);
    let auth = v.auths(&root.key("auth"), &raw.auth);
    v.auth_refs(&root.key("route"), raw);
    v.claim_keys(&root.key("route"), &routes, &upstreams, &auth);
    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    Ok(Config {
        source: source.to_owned(),
        listeners,
        admin,
        websocket,
        limits,
        upstreams,
        routes,
        auth,
    })
}

/// Collects every problem of one file (the `[auth.NAME]` rules live in `auth.rs`).
pub(super) struct Validator<'a> {
    pub(super) problems: Vec<Problem>,
    base: &'a Path,
}

impl Validator<'_> {
    pub(super) fn bad(&mut self, at: &KeyPath, problem: impl Into<String>) {
        self.problems.push((at.clone(), problem.into()));
    }

    /// A file name from the config, relative to the config file's directory.
    pub(super) fn resolve(&self, file: &str) -> PathBuf {
        self.base.join(file)
    }

    fn bind(&mut self, at: &KeyPath, text: &str) -> SocketAddr {
        parse_bind(text).unwrap_or_else(|problem| {
            self.bad(at, problem);
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn listeners(&mut self, at: &KeyPath, raw: &[RawListener]) -> Vec<ListenerConfig> {
        if raw.is_empty() {
            self.bad(
                at,
                "no listener: at least one [[listener]] with a bind address is required",
            );
        }
        raw.iter()
            .enumerate()
            .map(|(i, listener)| {
                let at = at.index(i);
                let tls = listener
                    .tls
                    .as_ref()
                    .map(|tls| self.listener_tls(&at.key("tls"), tls));
                // QUIC is TLS 1.3 by construction (RFC 9001): no certificate, no HTTP/3.
                if listener.http3 && tls.is_none() {
                    self.bad(
                        &at.key("http3"),
                        "http3 = true needs tls: HTTP/3 runs over QUIC, which is always TLS 1.3",
                    );
                }
                ListenerConfig {
                    bind: self.bind(&at.key("bind"), &listener.bind),
                    // ALPN needs TLS, so h2 is on by default only where TLS is (SPEC §2).
                    http2: listener.http2.unwrap_or(tls.is_some()),
                    http3: listener.http3,
                    proxy_protocol: listener.proxy_protocol,
                    tls,
                }
            })
            .collect()
    }

    /// Two sockets cannot listen on one address; the listeners and `[admin]` share the space.
    /// Port 0 asks the OS for a fresh port each time, so it never collides.
    fn duplicate_binds(&mut self, raw: &RawConfig) {
        let root = KeyPath::root();
        let listeners = raw
            .listener
            .iter()
            .enumerate()
            .map(|(i, l)| (root.key("listener").index(i).key("bind"), &l.bind));
        let admin = raw
            .admin
            .iter()
            .map(|a| (root.key("admin").key("bind"), &a.bind));
        let mut seen: HashMap<SocketAddr, KeyPath> = HashMap::new();
        for (at, text) in listeners.chain(admin) {
            let Ok(addr) = parse_bind(text) else { continue };
            if addr.port() == 0 {
                continue;
            }
            match seen.get(&addr) {
                Some(first) => {
                    let problem =
                        format!("duplicate bind address {text}: already bound by {first}");
                    self.bad(&at, problem);
                }
                None => {
                    seen.insert(addr, at);
                }
            }
        }
    }

    fn listener_tls(&mut self, at: &KeyPath, raw: &RawListenerTls) -> TlsConfig {
        let cert = self.resolve(&raw.cert);
        let key = self.resolve(&raw.key);
        self.cert_pair(at, &cert, &key);
        let mut seen: HashMap<String, KeyPath> = HashMap::new();
        let mut sni = Vec::with_capacity(raw.sni.len());
        for (i, entry) in raw.sni.iter().enumerate() {
            let at = at.key("sni").index(i);
            if entry.names.is_empty() {
                self.bad(
                    &at.key("names"),
                    "empty names list: an sni entry serves at least one name",
                );
            }
            let mut names = Vec::with_capacity(entry.names.len());
            for (j, name) in entry.names.iter().enumerate() {
                let name_at = at.key("names").index(j);
                let lower = name.to_ascii_lowercase();
                // RFC 6066 §3: SNI carries DNS host names only, never IP literals.
                if !is_dns_name(&lower) {
                    self.bad(&name_at, format!("{name:?} is not a DNS name"));
                    continue;
                }
                if let Some(first) = seen.get(&lower) {
                    let problem = format!("SNI name {name:?} is already served by {first}");
                    self.bad(&name_at, problem);
                    continue;
                }
                seen.insert(lower.clone(), name_at);
                names.push(lower);
            }
            let cert = self.resolve(&entry.cert);
            let key = self.resolve(&entry.key);
            self.cert_pair(&at, &cert, &key);
            sni.push(SniCert { names, cert, key });
        }
        TlsConfig {
            cert,
            key,
            sni,
            strict_sni: raw.strict_sni.unwrap_or(defaults::STRICT_SNI),
        }
    }

    /// Loads a certificate and key as the listener will, so that an unreadable or mismatched
    /// pair fails `check` rather than the first client.
    fn cert_pair(&mut self, at: &KeyPath, cert: &Path, key: &Path) {
        let Err(err) = pem::load_certified_key(cert, key) else {
            return;
        };
        let field = match &err {
            PemError::Read { path, .. } | PemError::Malformed { path, .. } if path == cert => {
                "cert"
            }
            PemError::NoCertificate { .. } | PemError::BadCa { .. } => "cert",
            PemError::Read { .. }
            | PemError::Malformed { .. }
            | PemError::NoKey { .. }
            | PemError::BadKey { .. }
            | PemError::Mismatch { .. } => "key",
        };
        self.bad(&at.key(field), err.to_string());
    }

    fn websocket(&mut self, at: &KeyPath, raw: &RawWebSocket) -> WebSocketConfig {
        let versions = match &raw.versions {
            None => defaults::WEBSOCKET_VERSIONS.to_vec(),
            Some(list) => {
                let at = at.key("versions");
                if list.is_empty() {
                    self.bad(&at, "empty versions list: accept at least one of 13, 8, 7");
                }
                let mut versions = Vec::with_capacity(list.len());
                for (i, &version) in list.iter().enumerate() {
                    let known = KNOWN_VERSIONS.contains(&version);
                    let as_u8 = u8::try_from(version).ok().filter(|_| known);
                    match as_u8 {
                        None => self.bad(
                            &at.index(i),
                            format!("unknown WebSocket version {version}: known versions are 13, 8 and 7"),
                        ),
                        Some(v) if versions.contains(&v) => {
                            self.bad(&at.index(i), format!("version {version} is listed twice"));
                        }
                        Some(v) => versions.push(v),
                    }
                }
                versions
            }
        };
        // RFC 6455 §4.4: a server that does not speak the client's version answers with an
        // appropriate error code such as 426 and lists its versions; 400 is the common choice.
        let version_mismatch_status = match raw.version_mismatch_status {
            None => defaults::VERSION_MISMATCH_STATUS,
            Some(426) => StatusCode::UPGRADE_REQUIRED,
            Some(400) => StatusCode::BAD_REQUEST,
            Some(other) => {
                self.bad(
                    &at.key("version_mismatch_status"),
                    format!("version_mismatch_status {other} is not allowed: use 426 or 400"),
                );
                defaults::VERSION_MISMATCH_STATUS
            }
        };
        WebSocketConfig {
            versions,
            version_mismatch_status,
        }
    }

    fn limits(&mut self, at: &KeyPath, raw: &RawLimits) -> Limits {
        let max_header_bytes = match raw.max_header_bytes {
            None => defaults::MAX_HEADER_BYTES,
            Some(n @ HEADER_BYTES_FLOOR..=HEADER_BYTES_CEILING) => {
                usize::try_from(n).unwrap_or(defaults::MAX_HEADER_BYTES)
            }
            Some(n) => {
                self.bad(
                    &at.key("max_header_bytes"),
                    format!("max_header_bytes {n} is out of range: use {HEADER_BYTES_FLOOR} to {HEADER_BYTES_CEILING}"),
                );
                defaults::MAX_HEADER_BYTES
            }
        };
        let handshake_timeout = self.positive_duration(
            &at.key("handshake_timeout"),
            raw.handshake_timeout.as_ref(),
            defaults::HANDSHAKE_TIMEOUT,
        );
        let keepalive_timeout = self.positive_duration(
            &at.key("keepalive_timeout"),
            raw.keepalive_timeout.as_ref(),
            defaults::KEEPALIVE_TIMEOUT,
        );
        let upstream_connect_timeout = self.positive_duration(
            &at.key("upstream_connect_timeout"),
            raw.upstream_connect_timeout.as_ref(),
            defaults::UPSTREAM_CONNECT_TIMEOUT,
        );
        let upstream_handshake_timeout = self.positive_duration(
            &at.key("upstream_handshake_timeout"),
            raw.upstream_handshake_timeout.as_ref(),
            defaults::UPSTREAM_HANDSHAKE_TIMEOUT,
        );
        // "0s" = never (SPEC §2).
        let idle_timeout = Some(self.duration(
            &at.key("idle_timeout"),
            raw.idle_timeout.as_ref(),
            defaults::IDLE_TIMEOUT,
        ))
        .filter(|d| !d.is_zero());
        let drain_timeout = self.duration(
            &at.key("drain_timeout"),
            raw.drain_timeout.as_ref(),
            defaults::DRAIN_TIMEOUT,
        );
        let max_connections = match raw.max_connections {
            None => defaults::MAX_CONNECTIONS,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n > 0 => n,
                _ => {
                    self.bad(
                        &at.key("max_connections"),
                        format!("max_connections {n} must be at least 1"),
                    );
                    defaults::MAX_CONNECTIONS
                }
            },
        };
        let max_connections_per_ip = match raw.max_connections_per_ip {
            None => defaults::MAX_CONNECTIONS_PER_IP,
            Some(0) => None,
            Some(n) => match usize::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.bad(
                        &at.key("max_connections_per_ip"),
                        format!("max_connections_per_ip {n} must be 0 (unlimited) or more"),
                    );
                    defaults::MAX_CONNECTIONS_PER_IP
                }
            },
        };
        let connection_rate_per_ip = match raw.connection_rate_per_ip {
            None => defaults::CONNECTION_RATE_PER_IP,
            Some(0) => None,
            Some(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.bad(
                        &at.key("connection_rate_per_ip"),
                        format!(
                            "connection_rate_per_ip {n} must be 0 (unlimited) to {}",
                            u32::MAX
                        ),
                    );
                    defaults::CONNECTION_RATE_PER_IP
                }
            },
        };
        let h2_max_concurrent_streams = match raw.h2_max_concurrent_streams {
            None => defaults::H2_MAX_CONCURRENT_STREAMS,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n > 0 => n,
                _ => {
                    self.bad(
                        &at.key("h2_max_concurrent_streams"),
                        format!("h2_max_concurrent_streams {n} must be at least 1"),
                    );
                    defaults::H2_MAX_CONCURRENT_STREAMS
                }
            },
        };
        Limits {
            max_header_bytes,
            handshake_timeout,
            keepalive_timeout,
            upstream_connect_timeout,
            upstream_handshake_timeout,
            idle_timeout,
            drain_timeout,
            max_connections,
            max_connections_per_ip,
            connection_rate_per_ip,
            h2_max_concurrent_streams,
        }
    }

    pub(super) fn duration(
        &mut self,
        at: &KeyPath,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(text) => duration::parse(&text.0).unwrap_or_else(|problem| {
                self.bad(at, problem);
                default
            }),
        }
    }

    /// A duration where zero makes no sense (a timeout that fails everything, a busy loop).
    fn positive_duration(
        &mut self,
        at: &KeyPath,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        let value = self.duration(at, raw, default);
        if value.is_zero() {
            self.bad(at, "must be greater than 0s");
            return default;
        }
        value
    }

    fn upstreams(
        &mut self,
        at: &KeyPath,
        raw: &BTreeMap<String, RawUpstream>,
    ) -> BTreeMap<String, UpstreamConfig> {
        raw.iter()
            .map(|(name, upstream)| {
                let config = self.upstream(&at.key(name), name, upstream);
                (name.clone(), config)
            })
            .collect()
    }

    fn upstream(&mut self, at: &KeyPath, name: &str, raw: &RawUpstream) -> UpstreamConfig {
        if name.is_empty() {
            self.bad(at, "an upstream name must not be empty");
        }
        if raw.servers.is_empty() {
            self.bad(
                &at.key("servers"),
                format!("upstream {name:?} has no servers: list at least one HOST:PORT"),
            );
        }
        let mut servers: Vec<ServerAddr> = Vec::with_capacity(raw.servers.len());
        for (i, text) in raw.servers.iter().enumerate() {
            match parse_server(text) {
                Err(problem) => self.bad(&at.key("servers").index(i), problem),
                Ok(server) if servers.contains(&server) => self.bad(
                    &at.key("servers").index(i),
                    format!("server {text:?} is listed twice"),
                ),
                Ok(server) => servers.push(server),
            }
        }
        let balance = self.balance(at, raw);
        let tls = self.upstream_tls(at, raw);
        let send_proxy_protocol = match raw.send_proxy_protocol.as_deref() {
            None => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                self.bad(
                    &at.key("send_proxy_protocol"),
                    format!("unknown send_proxy_protocol {other:?}: expected \"v1\" or \"v2\""),
                );
                None
            }
        };
        let health = raw.health.as_ref().map(|health| {
            let at = at.key("health");
            if let Some(path) = &health.path {
                if !path.starts_with('/') {
                    self.bad(
                        &at.key("path"),
                        format!("health path {path:?} must start with \"/\""),
                    );
                }
            }
            let interval = self.positive_duration(
                &at.key("interval"),
                Some(&health.interval),
                Duration::from_secs(1),
            );
            HealthCheck {
                path: health.path.clone(),
                interval,
            }
        });
        UpstreamConfig {
            name: name.to_owned(),
            servers,
            balance,
            tls,
            send_proxy_protocol,
            health,
        }
    }

    /// `balance`, with `hash_key` exactly when it is `"hash"` (SPEC §2).
    fn balance(&mut self, at: &KeyPath, raw: &RawUpstream) -> Balance {
        let hash = raw.balance.as_deref() == Some("hash");
        if let (false, Some(key)) = (hash, &raw.hash_key) {
            self.bad(
                &at.key("hash_key"),
                format!("hash_key {key:?} is only used with balance = \"hash\""),
            );
        }
        match raw.balance.as_deref() {
            None => Balance::default(),
            Some("round_robin") => Balance::RoundRobin,
            Some("least_connections") => Balance::LeastConnections,
            Some("hash") => match raw.hash_key.as_deref().map(parse_hash_key) {
                Some(Ok(key)) => Balance::Hash(key),
                Some(Err(problem)) => {
                    self.bad(&at.key("hash_key"), problem);
                    Balance::default()
                }
                None => {
                    self.bad(
                        &at.key("balance"),
                        format!("balance = \"hash\" needs a hash_key: {HASH_KEY_FORMS}"),
                    );
                    Balance::default()
                }
            },
            Some(other) => {
                self.bad(
                    &at.key("balance"),
                    format!("unknown balance {other:?}: expected \"round_robin\", \"least_connections\" or \"hash\""),
                );
                Balance::default()
            }
        }
    }

    fn upstream_tls(&mut self, at: &KeyPath, raw: &RawUpstream) -> Option<UpstreamTls> {
        if !raw.tls {
            for (key, set) in [
                ("ca", raw.ca.is_some()),
                ("server_name", raw.server_name.is_some()),
            ] {
                if set {
                    self.bad(&at.key(key), format!("{key} is only used with tls = true"));
                }
            }
            return None;
        }
        let ca = raw.ca.as_deref().map(|file| {
            let path = self.resolve(file);
            if let Err(err) = pem::load_certs(&path) {
                self.bad(&at.key("ca"), err.to_string());
            }
            path
        });
        if let Some(name) = &raw.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                self.bad(
                    &at.key("server_name"),
                    format!("server_name {name:?} is neither a DNS name nor an IP address"),
                );
            }
        }
        Some(UpstreamTls {
            ca,
            server_name: raw.server_name.clone(),
        })
    }

    fn routes(
        &mut self,
        at: &KeyPath,
        raw: &[RawRoute],
        upstreams: &BTreeMap<String, RawUpstream>,
    ) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.len());
        for (i, route) in raw.iter().enumerate() {
            let at = at.index(i);
            let config = self.route(&at, route, upstreams);
            let same = routes
                .iter()
                .position(|r| r.host == config.host && r.path == config.path);
            if let Some(first) = same {
                self.bad(
                    &at,
                    format!(
                        "duplicate route: same host and path {:?} as route[{first}]",
                        config.path
                    ),
                );
            }
            routes.push(config);
        }
        routes
    }

    /// A route's reference to an upstream, which must be defined.
    fn upstream_ref(
        &mut self,
        at: &KeyPath,
        name: &str,
        upstreams: &BTreeMap<String, RawUpstream>,
    ) -> String {
        if !upstreams.contains_key(name) {
            self.bad(
                at,
                format!("undefined upstream {name:?}: there is no [upstreams.{name}]"),
            );
        }
        name.to_owned()
    }

    fn route(
        &mut self,
        at: &KeyPath,
        raw: &RawRoute,
        upstreams: &BTreeMap<String, RawUpstream>,
    ) -> RouteConfig {
        let host = parse_host_pattern(raw.host.as_deref().unwrap_or(defaults::ROUTE_HOST))
            .unwrap_or_else(|problem| {
                self.bad(&at.key("host"), problem);
                HostPattern::Any
            });
        let path = raw
            .path
            .clone()
            .unwrap_or_else(|| defaults::ROUTE_PATH.to_owned());
        if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace)
        {
            self.bad(
                &at.key("path"),
                format!(
                    "route path {path:?} must start with \"/\" and hold no query, fragment or space"
                ),
            );
        }
        if let Some(origins) = &raw.origins {
            if origins.is_empty() {
                self.bad(
                    &at.key("origins"),
                    "empty origins list would refuse every client: remove it to allow any origin",
                );
            }
            for (j, origin) in origins.iter().enumerate() {
                if origin.trim().is_empty() {
                    self.bad(&at.key("origins").index(j), "empty origin");
                }
            }
        }
        let select = match raw.select.as_deref() {
            None => Select::default(),
            Some("client") => Select::Client,
            Some("server") => Select::Server,
            Some(other) => {
                self.bad(
                    &at.key("select"),
                    format!("unknown select {other:?}: expected \"client\" or \"server\""),
                );
                Select::default()
            }
        };
        let fallback = raw
            .fallback
            .as_deref()
            .map(|name| self.upstream_ref(&at.key("fallback"), name, upstreams));
        let http = raw
            .http
            .as_deref()
            .map(|name| self.upstream_ref(&at.key("http"), name, upstreams));

        let mut upgrades: Vec<UpgradeRoute> = Vec::with_capacity(raw.upgrades.len());
        for (j, upgrade) in raw.upgrades.iter().enumerate() {
            let at = at.key("upgrades").index(j);
            let token = &upgrade.token;
            if !is_token(token) {
                self.bad(
                    &at.key("token"),
                    format!("upgrade token {token:?} is not an RFC 7230 token"),
                );
            } else if token.eq_ignore_ascii_case("websocket") {
                self.bad(
                    &at.key("token"),
                    "\"websocket\" is negotiated by the route's subprotocols and fallback, not tunnelled as-is",
                );
            } else if upgrades.iter().any(|u| u.token.eq_ignore_ascii_case(token)) {
                // RFC 7230 §6.7: protocol names in Upgrade compare case-insensitively.
                self.bad(
                    &at.key("token"),
                    format!("upgrade token {token:?} is listed twice"),
                );
            }
            let upstream = self.upstream_ref(&at.key("upstream"), &upgrade.upstream, upstreams);
            upgrades.push(UpgradeRoute {
                token: token.clone(),
                upstream,
            });
        }

        let mut subprotocols: Vec<SubprotocolRoute> = Vec::with_capacity(raw.subprotocol.len());
        let mut names: HashSet<&str> = HashSet::new();
        for (j, sub) in raw.subprotocol.iter().enumerate() {
            let at = at.key("subprotocol").index(j);
            let name = &sub.name;
            // RFC 6455 §4.1: each subprotocol value is a token.
            if !is_token(name) {
                self.bad(
                    &at.key("name"),
                    format!("subprotocol name {name:?} is not an RFC 7230 token"),
                );
            } else if !names.insert(name) {
                self.bad(
                    &at.key("name"),
                    format!("duplicate subprotocol {name:?} in this route"),
                );
            }
            let upstream = self.upstream_ref(&at.key("upstream"), &sub.upstream, upstreams);
            subprotocols.push(SubprotocolRoute {
                name: name.clone(),
                upstream,
            });
        }

        let inspect = self.inspect(at, raw);
        let (max_lifetime, max_lifetime_jitter) = self.lifetime(at, raw);
        RouteConfig {
            host,
            path,
            origins: raw.origins.clone(),
            select,
            fallback,
            http,
            upgrades,
            subprotocols,
            inspect,
            max_lifetime,
            max_lifetime_jitter,
            auth: raw.auth.clone(),
        }
    }

    /// Every route's `auth` must name an `[auth.NAME]` (SPEC §2).
    fn auth_refs(&mut self, at: &KeyPath, raw: &RawConfig) {
        for (i, route) in raw.route.iter().enumerate() {
            if let Some(name) = &route.auth {
                if !raw.auth.contains_key(name) {
                    self.bad(
                        &at.index(i).key("auth"),
                        format!("undefined auth {name:?}: there is no [auth.{name}]"),
                    );
                }
            }
        }
    }

    /// A `claim:` hash key reads the route's verified JWT, so every route that can send a request
    /// to such an upstream must have `jwt` auth (SPEC §2): elsewhere the key would never be there
    /// and the pool would silently balance round-robin.
    fn claim_keys(
        &mut self,
        at: &KeyPath,
        routes: &[RouteConfig],
        upstreams: &BTreeMap<String, UpstreamConfig>,
        auth: &BTreeMap<String, AuthConfig>,
    ) {
        for (i, route) in routes.iter().enumerate() {
            let jwt = route
                .auth
                .as_ref()
                .is_some_and(|name| matches!(auth.get(name), Some(AuthConfig::Jwt(_))));
            if jwt {
                continue;
            }
            let used = (route.subprotocols.iter().map(|s| &s.upstream))
                .chain(route.upgrades.iter().map(|u| &u.upstream))
                .chain(&route.fallback)
                .chain(&route.http);
            for name in used {
                let Some(Balance::Hash(HashKey::Claim(claim))) =
                    upstreams.get(name).map(|u| &u.balance)
                else {
                    continue;
                };
                let why = match &route.auth {
                    Some(a) => format!("its auth {a:?} is not jwt"),
                    None => "it has no auth".to_owned(),
                };
                self.bad(
                    &at.index(i),
                    format!(
                        "route {:?} uses upstream {name:?}, whose hash_key \"claim:{claim}\" needs a \
                         verified JWT, but {why}: give the route jwt auth or the upstream another hash_key",
                        route.path
                    ),
                );
                break;
            }
        }
    }

    /// `inspect` and the keys only an inspected route uses (SPEC §2, §9). Without
    /// `inspect = true` each of them that is set is one problem: it would silently do nothing.
    fn inspect(&mut self, at: &KeyPath, raw: &RawRoute) -> Option<InspectRoute> {
        let only = [
            ("max_message_bytes", raw.max_message_bytes.is_some()),
            ("max_frame_bytes", raw.max_frame_bytes.is_some()),
            ("ping_interval", raw.ping_interval.is_some()),
            ("ping_timeout", raw.ping_timeout.is_some()),
            ("close_code", raw.close_code.is_some()),
        ];
        if !raw.inspect.unwrap_or(defaults::INSPECT) {
            for (key, set) in only {
                if set {
                    self.bad(
                        &at.key(key),
                        format!("{key} only applies to inspected tunnels: set inspect = true on this route, or remove it"),
                    );
                }
            }
            return None;
        }
        let max_message_bytes = self.byte_limit(
            &at.key("max_message_bytes"),
            raw.max_message_bytes,
            defaults::MAX_MESSAGE_BYTES,
        );
        let max_frame_bytes = self.byte_limit(
            &at.key("max_frame_bytes"),
            raw.max_frame_bytes,
            defaults::MAX_FRAME_BYTES,
        );
        // "0s" = off (SPEC §2).
        let ping_interval = match &raw.ping_interval {
            None => defaults::PING_INTERVAL,
            Some(text) => Some(self.duration(&at.key("ping_interval"), Some(text), Duration::ZERO))
                .filter(|d| !d.is_zero()),
        };
        let ping_timeout = self.positive_duration(
            &at.key("ping_timeout"),
            raw.ping_timeout.as_ref(),
            defaults::PING_TIMEOUT,
        );
        let close_code = match raw.close_code {
            None => defaults::CLOSE_CODE,
            Some(code) if is_sendable_close_code(code) => {
                u16::try_from(code).unwrap_or(defaults::CLOSE_CODE)
            }
            Some(code) => {
                self.bad(
                    &at.key("close_code"),
                    format!("close_code {code} cannot be sent in a close frame: use 1000-4999, except 1004-1006 and 1015 (RFC 6455 §7.4)"),
                );
                defaults::CLOSE_CODE
            }
        };
        Some(InspectRoute {
            max_message_bytes,
            max_frame_bytes,
            ping_interval,
            ping_timeout,
            close_code,
        })
    }

    /// A byte count where 0 means no limit.
    fn byte_limit(&mut self, at: &KeyPath, raw: Option<i64>, default: Option<u64>) -> Option<u64> {
        match raw {
            None => default,
            Some(0) => None,
            Some(n) => u64::try_from(n).map(Some).unwrap_or_else(|_| {
                self.bad(at, format!("{n} must be 0 (no limit) or a number of bytes"));
                default
            }),
        }
    }

    /// `max_lifetime` and `max_lifetime_jitter` (SPEC §5), for any route. A jitter is refused,
    /// not clamped, unless it is shorter than the cap: a jitter as long as the cap would let a
    /// tunnel be closed right after it opened, which is never what the operator meant.
    fn lifetime(&mut self, at: &KeyPath, raw: &RawRoute) -> (Option<Duration>, Duration) {
        let before = self.problems.len();
        // "0s" = no cap (SPEC §2).
        let max_lifetime = match &raw.max_lifetime {
            None => defaults::MAX_LIFETIME,
            Some(text) => Some(self.duration(&at.key("max_lifetime"), Some(text), Duration::ZERO))
                .filter(|d| !d.is_zero()),
        };
        let jitter_at = at.key("max_lifetime_jitter");
        let Some(text) = &raw.max_lifetime_jitter else {
            return (max_lifetime, defaults::MAX_LIFETIME_JITTER);
        };
        let jitter = self.duration(&jitter_at, Some(text), defaults::MAX_LIFETIME_JITTER);
        // A malformed cap or jitter is reported already; comparing the stand-ins would only
        // add a second, misleading problem.
        if jitter.is_zero() || self.problems.len() > before {
            return (max_lifetime, defaults::MAX_LIFETIME_JITTER);
        }
        match (max_lifetime, &raw.max_lifetime) {
            (Some(cap), Some(cap_text)) if jitter >= cap => {
                self.bad(
                    &jitter_at,
                    format!(
                        "max_lifetime_jitter {:?} must be shorter than max_lifetime {:?}",
                        text.0, cap_text.0
                    ),
                );
                (max_lifetime, defaults::MAX_LIFETIME_JITTER)
            }
            (Some(_), _) => (max_lifetime, jitter),
            (None, _) => {
                self.bad(
                    &jitter_at,
                    "max_lifetime_jitter shortens max_lifetime, which this route does not set (or sets to \"0s\", no cap)",
                );
                (None, defaults::MAX_LIFETIME_JITTER)
            }
        }
    }
}
