//! The listener side: a [`ServerTls`] per TLS listener, choosing the certificate by SNI, offering
//! ALPN, and swapping its certificates on reload.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::pem::load_certified_key;
use super::{ALPN_H2, ALPN_H3, ALPN_HTTP11, TlsError, VERSIONS, provider};
use crate::config::TlsConfig;

/// A TLS listener's rustls configuration whose certificates can be swapped on SIGHUP without
/// touching connections already accepted.
#[derive(Debug)]
pub(crate) struct ServerTls {
    resolver: Arc<SniResolver>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads every certificate of `tls` (a bad file is an error naming it) and builds the server
    /// config. ALPN (RFC 7301) offers `h2` first when `alpn_h2`, then `http/1.1`; the server's
    /// order wins, so a client offering both gets h2.
    pub(crate) fn new(tls: &TlsConfig, alpn_h2: bool) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(SniResolver {
            certs: RwLock::new(Arc::new(Certs::load(tls)?)),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = if alpn_h2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
        } else {
            vec![ALPN_HTTP11.to_vec()]
        };
        Ok(ServerTls {
            resolver,
            config: Arc::new(config),
        })
    }

    /// Re-reads every certificate and key of `tls` and, only if all of them load, swaps them in
    /// at once for handshakes that start afterwards (also through acceptors made earlier). On
    /// error the old certificates stay in use. ALPN is fixed at [`ServerTls::new`].
    pub(crate) fn reload(&self, tls: &TlsConfig) -> Result<(), TlsError> {
        let certs = Arc::new(Certs::load(tls)?);
        *self
            .resolver
            .certs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certs;
        Ok(())
    }

    /// The QUIC side of this listener (SPEC §12): the same certificates and SNI rules (one
    /// resolver, so [`ServerTls::reload`] swaps them for QUIC too), TLS 1.3 only (RFC 9001 §4.2)
    /// and ALPN `h3` (RFC 9114 §3.1).
    pub(crate) fn quic(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }

    /// An acceptor for this listener; cheap (an `Arc` clone), and it follows later reloads.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// One generation of a listener's certificates.
#[derive(Debug)]
struct Certs {
    /// Served for no SNI and for names nothing else claims.
    default: Arc<CertifiedKey>,
    /// Lower-cased exact names.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` entries keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    fn load(tls: &TlsConfig) -> Result<Certs, TlsError> {
        let default = load_certified_key(&tls.cert, &tls.key)?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for sni in &tls.sni {
            let key = load_certified_key(&sni.cert, &sni.key)?;
            for name in &sni.names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                // The first entry naming a host wins, as in file order.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
        }
        Ok(Certs {
            default,
            exact,
            wildcard,
        })
    }

    /// RFC 6066 §3: SNI carries a DNS host name, compared case-insensitively (RFC 4343); an exact
    /// name beats a wildcard, and `*` covers exactly one left-most label (RFC 6125 §6.4.3).
    fn select(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        match name.split_once('.') {
            Some((label, parent)) if !label.is_empty() => {
                self.wildcard.get(parent).unwrap_or(&self.default)
            }
            _ => &self.default,
        }
    }
}

/// Picks the certificate by SNI from the current generation.
#[derive(Debug)]
struct SniResolver {
    /// Swapped whole by [`ServerTls::reload`]; a poisoned lock still holds a complete `Arc`.
    certs: RwLock<Arc<Certs>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self
            .certs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(certs.select(hello.server_name()).clone())
    }
}
