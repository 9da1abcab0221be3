//! The configuration file exactly as written: serde structs mirroring SPEC §2's TOML.
//!
//! Only the TOML shape is checked here (unknown keys, wrong types, missing required keys); every
//! value stays as written (strings for durations, addresses and enum-like words, `i64` for
//! numbers) so that `validate` can report all bad values at once instead of serde's first.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(crate) listener: Vec<RawListener>,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) websocket: RawWebSocket,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub(crate) route: Vec<RawRoute>,
    /// `[auth.NAME]` (SPEC §10).
    #[serde(default)]
    pub(crate) auth: BTreeMap<String, RawAuth>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(crate) bind: String,
    pub(crate) http2: Option<bool>,
    #[serde(default)]
    pub(crate) http3: bool,
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    /// Either the `[listener.tls]` sub-table or an inline `tls = { ... }`: the same TOML value.
    pub(crate) tls: Option<RawListenerTls>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    pub(crate) cert: String,
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) sni: Vec<RawSni>,
    pub(crate) strict_sni: Option<bool>,
}

/// One entry of `sni = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub(crate) names: Vec<String>,
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(crate) bind: String,
}

/// `[websocket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    pub(crate) versions: Option<Vec<i64>>,
    pub(crate) version_mismatch_status: Option<i64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(crate) max_header_bytes: Option<i64>,
    pub(crate) handshake_timeout: Option<RawDuration>,
    pub(crate) keepalive_timeout: Option<RawDuration>,
    pub(crate) upstream_connect_timeout: Option<RawDuration>,
    pub(crate) upstream_handshake_timeout: Option<RawDuration>,
    pub(crate) idle_timeout: Option<RawDuration>,
    pub(crate) drain_timeout: Option<RawDuration>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_connections_per_ip: Option<i64>,
    pub(crate) connection_rate_per_ip: Option<i64>,
    pub(crate) h2_max_concurrent_streams: Option<i64>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(crate) servers: Vec<String>,
    pub(crate) balance: Option<String>,
    pub(crate) hash_key: Option<String>,
    #[serde(default)]
    pub(crate) tls: bool,
    pub(crate) ca: Option<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) send_proxy_protocol: Option<String>,
    pub(crate) health: Option<RawHealth>,
}

/// `health = { path, interval }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(crate) path: Option<String>,
    pub(crate) interval: RawDuration,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(crate) host: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) origins: Option<Vec<String>>,
    pub(crate) select: Option<String>,
    pub(crate) fallback: Option<String>,
    pub(crate) http: Option<String>,
    #[serde(default)]
    pub(crate) upgrades: Vec<RawUpgrade>,
    #[serde(default)]
    pub(crate) subprotocol: Vec<RawSubprotocol>,
    // SPEC §9: inspected tunnels, and the age cap that also applies without inspection.
    pub(crate) inspect: Option<bool>,
    pub(crate) max_message_bytes: Option<i64>,
    pub(crate) max_frame_bytes: Option<i64>,
    pub(crate) ping_interval: Option<RawDuration>,
    pub(crate) ping_timeout: Option<RawDuration>,
    pub(crate) close_code: Option<i64>,
    pub(crate) max_lifetime: Option<RawDuration>,
    pub(crate) max_lifetime_jitter: Option<RawDuration>,
    /// SPEC §10: the `[auth.NAME]` check run before any upstream is dialed.
    pub(crate) auth: Option<String>,
}

/// One entry of `upgrades = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgrade {
    pub(crate) token: String,
    pub(crate) upstream: String,
}

/// `[[route.subprotocol]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubprotocol {
    pub(crate) name: String,
    pub(crate) upstream: String,
}

/// `[auth.NAME]`: exactly one of `forward` and `jwt` (checked in `validate`, so that both and
/// neither get a message naming the table).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(crate) forward: Option<RawForwardAuth>,
    pub(crate) jwt: Option<RawJwtAuth>,
}

/// `forward = { url, timeout, forward_headers, copy_headers }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    pub(crate) url: String,
    pub(crate) timeout: Option<RawDuration>,
    pub(crate) forward_headers: Option<Vec<String>>,
    pub(crate) copy_headers: Option<Vec<String>>,
}

/// `jwt = { jwks, issuer, audience, algorithms, leeway, from, claims_to_headers }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwtAuth {
    pub(crate) jwks: String,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) algorithms: Option<Vec<String>>,
    pub(crate) leeway: Option<RawDuration>,
    pub(crate) from: Option<Vec<String>>,
    pub(crate) claims_to_headers: Option<BTreeMap<String, String>>,
}

/// A duration exactly as written. Only a string is accepted, so that a bare number (`10`) fails
/// with a message asking for a unit rather than being silently read as seconds (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationText;

        impl Visitor<'_> for DurationText {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, such as \"10s\" or \"250ms\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationText)
    }
}
