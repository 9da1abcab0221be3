//! TLS on both hops: [`pem`] turns PEM files into rustls types, always as a `Result` (a bad file
//! is a config error, never a panic); `server` is the listener side ([`ServerTls`]: SNI, ALPN,
//! reload); `client` the upstream side (`upstream_client_config`, `server_name_for`).
//!
//! Owns certificate selection and protocol versions; knows nothing of sockets or HTTP. TLS 1.2
//! and 1.3 only (SPEC §6; RFC 8996 deprecates 1.0 and 1.1). `pem` is a leaf that `config` may
//! use; `server` and `client` read `config` types, so `config` must import nothing else of here.
//!
//! Every config here is built with the ring provider passed explicitly, so nothing is installed
//! process-wide (no `CryptoProvider::install_default`) and tests or embedders cannot race on it.

mod client;
pub(crate) mod pem;
mod server;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};

pub(crate) use client::{server_name_for, upstream_client_config};
pub(crate) use pem::PemError;
pub(crate) use server::ServerTls;

/// TLS material that cannot be loaded, or a rustls config that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{name:?}: not a valid TLS server name (DNS name or IP address)")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The rustls config cannot carry QUIC (no TLS 1.3 cipher suite QUIC's initial keys need).
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The only protocol versions spoken, on both sides (SPEC §6).
static VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// RFC 7301 protocol IDs.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";
const ALPN_H3: &[u8] = b"h3";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
