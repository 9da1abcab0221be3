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
    pub listener: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub bind: String,
    pub http2: Option<bool>,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Either the `[listener.tls]` sub-table or an inline `tls = { ... }`: the same TOML value.
    pub tls: Option<RawListenerTls>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub sni: Vec<RawSni>,
}

/// One entry of `sni = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub bind: String,
}

/// `[websocket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    pub versions: Option<Vec<i64>>,
    pub version_mismatch_status: Option<i64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_header_bytes: Option<i64>,
    pub handshake_timeout: Option<RawDuration>,
    pub upstream_connect_timeout: Option<RawDuration>,
    pub upstream_handshake_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub drain_timeout: Option<RawDuration>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub servers: Vec<String>,
    pub balance: Option<String>,
    #[serde(default)]
    pub tls: bool,
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub send_proxy_protocol: Option<String>,
    pub health: Option<RawHealth>,
}

/// `health = { path, interval }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub path: Option<String>,
    pub interval: RawDuration,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<String>,
    pub path: Option<String>,
    pub origins: Option<Vec<String>>,
    pub select: Option<String>,
    pub fallback: Option<String>,
    pub http: Option<String>,
    #[serde(default)]
    pub upgrades: Vec<RawUpgrade>,
    #[serde(default)]
    pub subprotocol: Vec<RawSubprotocol>,
}

/// One entry of `upgrades = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgrade {
    pub token: String,
    pub upstream: String,
}

/// `[[route.subprotocol]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubprotocol {
    pub name: String,
    pub upstream: String,
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
