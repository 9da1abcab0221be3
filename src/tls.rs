//! TLS material: PEM files -> rustls types, always as a `Result` (a bad file is a config error,
//! never a panic); the listener side ([`ServerTls`]: SNI, ALPN, reload) and the upstream side
//! ([`upstream_client_config`]).
//!
//! Owns certificate selection and protocol versions; knows nothing of sockets or HTTP. TLS 1.2
//! and 1.3 only (SPEC §6; RFC 8996 deprecates 1.0 and 1.1).
//!
//! Every config here is built with the ring provider passed explicitly, so nothing is installed
//! process-wide (no `CryptoProvider::install_default`) and tests or embedders cannot race on it.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::{TlsConfig, UpstreamTls};

/// A certificate or key file that cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: unsupported private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key}: private key does not match certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: not a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{name:?}: not a valid TLS server name (DNS name or IP address)")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a certificate chain and its private key and checks that they belong together, so that a
/// mismatched pair is reported by `check` rather than by the first client.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let read = |source| TlsError::Read {
        path: key.to_owned(),
        source,
    };
    let file = File::open(key).map_err(read)?;
    let der = rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(read)?
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_owned(),
        })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| {
        TlsError::BadKey {
            path: key.to_owned(),
            source,
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
    })?;
    Ok(Arc::new(certified))
}

/// The only protocol versions spoken, on both sides (SPEC §6).
static VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// RFC 7301 protocol IDs.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS listener's rustls configuration whose certificates can be swapped on SIGHUP without
/// touching connections already accepted.
#[derive(Debug)]
pub struct ServerTls {
    resolver: Arc<SniResolver>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads every certificate of `tls` (a bad file is an error naming it) and builds the server
    /// config. ALPN (RFC 7301) offers `h2` first when `alpn_h2`, then `http/1.1`; the server's
    /// order wins, so a client offering both gets h2.
    pub fn new(tls: &TlsConfig, alpn_h2: bool) -> Result<ServerTls, TlsError> {
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
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), TlsError> {
        let certs = Arc::new(Certs::load(tls)?);
        *self
            .resolver
            .certs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certs;
        Ok(())
    }

    /// An acceptor for this listener; cheap (an `Arc` clone), and it follows later reloads.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The rustls config behind [`ServerTls::acceptor`], for callers that drive rustls
    /// themselves (e.g. `LazyConfigAcceptor`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
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

/// The client config for an upstream with `tls = true`: verifies against `ca` when set, else the
/// Mozilla roots of `webpki-roots`; offers ALPN `http/1.1` only, since the upstream hop is always
/// an HTTP/1.1 upgrade (SPEC §4).
pub fn upstream_client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The name an upstream's certificate is checked against (and sent as SNI when it is a DNS
/// name): `server_name` when set, else the server's host. IP literals are matched against the
/// certificate's IP SANs (RFC 6125 §1.7.2 leaves them out of SNI).
pub fn server_name_for(tls: &UpstreamTls, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let invalid = || TlsError::ServerName {
        name: name.to_owned(),
    };
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    match ServerName::try_from(name.to_owned()) {
        Ok(ServerName::DnsName(dns)) => Ok(ServerName::DnsName(dns)),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::certs::tests::TempDir;
    use crate::config::{SniCert, TlsConfig, UpstreamTls};

    fn committed(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs")
            .join(file)
    }

    fn leaf(file: &str) -> CertificateDer<'static> {
        load_certs(&committed(file))
            .expect("committed cert")
            .swap_remove(0)
    }

    /// The default certificate plus chat.example.com by SNI, as in SPEC §2's example.
    fn listener_tls() -> TlsConfig {
        TlsConfig {
            cert: committed("server.pem"),
            key: committed("server-key.pem"),
            sni: vec![SniCert {
                names: vec!["chat.example.com".to_owned()],
                cert: committed("chat.pem"),
                key: committed("chat-key.pem"),
            }],
        }
    }

    /// Accepts any certificate (signatures still checked), so a test can see which certificate a
    /// name that the certificate does not cover is served.
    #[derive(Debug)]
    struct AnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn any_cert_client(alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn ca_client(
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(leaf("ca.pem")).expect("ca");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    struct Outcome {
        /// The certificate the client was served, when the client finished its handshake.
        client: Result<Vec<CertificateDer<'static>>, std::io::Error>,
        server: Result<(Option<Vec<u8>>, Option<ProtocolVersion>), std::io::Error>,
    }

    /// One TLS handshake over an in-memory pipe, bounded by a timeout.
    async fn handshake(acceptor: TlsAcceptor, client: Arc<ClientConfig>, name: &str) -> Outcome {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = TlsConnector::from(client);
        let run = async move {
            let (client, server) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
            Outcome {
                client: client.map(|t| t.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec()),
                server: server.map(|t| {
                    let conn = t.get_ref().1;
                    (
                        conn.alpn_protocol().map(<[u8]>::to_vec),
                        conn.protocol_version(),
                    )
                }),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("handshake timed out")
    }

    async fn served(acceptor: TlsAcceptor, sni: &str) -> CertificateDer<'static> {
        let out = handshake(acceptor, any_cert_client(&[]), sni).await;
        out.client.expect("client handshake").swap_remove(0)
    }

    #[tokio::test]
    async fn sni_selects_certificate_and_verifies_against_ca() {
        let tls = ServerTls::new(&listener_tls(), true).expect("server tls");
        for (sni, want) in [
            ("chat.example.com", "chat.pem"),
            ("localhost", "server.pem"),
        ] {
            let out = handshake(tls.acceptor(), ca_client(VERSIONS, &[]), sni).await;
            let chain = out.client.expect(sni);
            assert_eq!(chain[0], leaf(want), "{sni}");
            out.server.expect(sni);
        }
    }

    #[tokio::test]
    async fn sni_is_case_insensitive_and_unknown_or_absent_gets_default() {
        let tls = ServerTls::new(&listener_tls(), true).expect("server tls");
        assert_eq!(
            served(tls.acceptor(), "Chat.Example.COM").await,
            leaf("chat.pem")
        );
        assert_eq!(
            served(tls.acceptor(), "unknown.test").await,
            leaf("server.pem")
        );
        assert_eq!(
            served(tls.acceptor(), "example.com").await,
            leaf("server.pem")
        );
        // Connecting by IP sends no SNI (RFC 6066 §3).
        assert_eq!(
            served(tls.acceptor(), "127.0.0.1").await,
            leaf("server.pem")
        );
        // And verified end to end: the default certificate covers the IP.
        let out = handshake(tls.acceptor(), ca_client(VERSIONS, &[]), "::1").await;
        assert_eq!(out.client.expect("no SNI")[0], leaf("server.pem"));
    }

    #[tokio::test]
    async fn wildcard_names_cover_one_label_and_exact_names_win() {
        let mut config = listener_tls();
        config.sni = vec![
            SniCert {
                names: vec!["*.example.com".to_owned()],
                cert: committed("chat.pem"),
                key: committed("chat-key.pem"),
            },
            SniCert {
                names: vec!["www.example.com".to_owned()],
                cert: committed("ca.pem"),
                key: committed("ca-key.pem"),
            },
        ];
        let tls = ServerTls::new(&config, false).expect("server tls");
        assert_eq!(
            served(tls.acceptor(), "a.example.com").await,
            leaf("chat.pem")
        );
        assert_eq!(
            served(tls.acceptor(), "www.example.com").await,
            leaf("ca.pem")
        );
        assert_eq!(
            served(tls.acceptor(), "a.b.example.com").await,
            leaf("server.pem")
        );
        assert_eq!(
            served(tls.acceptor(), "example.com").await,
            leaf("server.pem")
        );
    }

    #[tokio::test]
    async fn alpn_prefers_h2_only_when_enabled() {
        let h2 = ServerTls::new(&listener_tls(), true).expect("h2");
        let h1 = ServerTls::new(&listener_tls(), false).expect("h1");
        /// (listener, client's ALPN offer, protocol the server picks)
        type Case<'a> = (&'a ServerTls, &'a [&'a [u8]], Option<&'a [u8]>);
        let cases: [Case; 5] = [
            (&h2, &[b"h2", b"http/1.1"], Some(b"h2")),
            (&h2, &[b"http/1.1", b"h2"], Some(b"h2")),
            (&h2, &[b"http/1.1"], Some(b"http/1.1")),
            (&h1, &[b"h2", b"http/1.1"], Some(b"http/1.1")),
            (&h2, &[], None),
        ];
        for (tls, offered, want) in cases {
            let out = handshake(tls.acceptor(), ca_client(VERSIONS, offered), "localhost").await;
            let (alpn, _) = out.server.expect("handshake");
            assert_eq!(alpn.as_deref(), want, "offered {offered:?}");
        }
        // A client offering only h2 to an h1 listener: no common protocol (RFC 7301 §3.2).
        let out = handshake(h1.acceptor(), ca_client(VERSIONS, &[b"h2"]), "localhost").await;
        assert!(out.server.is_err());
    }

    #[tokio::test]
    async fn tls12_and_tls13_clients_are_served() {
        let tls = ServerTls::new(&listener_tls(), true).expect("server tls");
        for (versions, want) in [
            (&[&TLS12][..], ProtocolVersion::TLSv1_2),
            (&[&TLS13][..], ProtocolVersion::TLSv1_3),
        ] {
            let out = handshake(tls.acceptor(), ca_client(versions, &[]), "localhost").await;
            let (_, version) = out.server.expect("handshake");
            assert_eq!(version, Some(want));
        }
    }

    #[tokio::test]
    async fn reload_swaps_certificates_for_new_connections_and_keeps_them_on_error() {
        let tmp = TempDir::new("tls-reload");
        let cert = tmp.0.join("live.pem");
        let key = tmp.0.join("live-key.pem");
        let install = |from_cert: &str, from_key: &str| {
            std::fs::copy(committed(from_cert), &cert).expect("copy cert");
            std::fs::copy(committed(from_key), &key).expect("copy key");
        };
        install("server.pem", "server-key.pem");
        let config = TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            sni: Vec::new(),
        };
        let tls = ServerTls::new(&config, true).expect("server tls");
        let acceptor = tls.acceptor(); // made before the reload, used after it
        assert_eq!(
            served(acceptor.clone(), "localhost").await,
            leaf("server.pem")
        );

        install("chat.pem", "chat-key.pem");
        assert_eq!(
            served(acceptor.clone(), "localhost").await,
            leaf("server.pem")
        );
        tls.reload(&config).expect("reload");
        assert_eq!(
            served(acceptor.clone(), "localhost").await,
            leaf("chat.pem")
        );

        std::fs::remove_file(&key).expect("remove key");
        let err = tls.reload(&config).expect_err("missing key");
        assert!(err.to_string().contains("live-key.pem"), "{err}");
        assert_eq!(
            served(acceptor.clone(), "localhost").await,
            leaf("chat.pem")
        );

        // A mismatched pair is refused too, and the old pair stays.
        std::fs::copy(committed("server-key.pem"), &key).expect("copy key");
        assert!(matches!(
            tls.reload(&config),
            Err(TlsError::Mismatch { .. })
        ));
        assert_eq!(served(acceptor, "localhost").await, leaf("chat.pem"));
    }

    #[test]
    fn bad_sni_files_are_named() {
        let mut config = listener_tls();
        config.sni[0].key = committed("no-such-key.pem");
        let err = ServerTls::new(&config, true).expect_err("missing sni key");
        assert!(err.to_string().contains("no-such-key.pem"), "{err}");
        let mut config = listener_tls();
        config.sni[0].cert = committed("chat-key.pem");
        let err = ServerTls::new(&config, true).expect_err("key as cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    fn upstream(ca: Option<&str>, server_name: Option<&str>) -> UpstreamTls {
        UpstreamTls {
            ca: ca.map(committed),
            server_name: server_name.map(str::to_owned),
        }
    }

    /// Dials a gateway-like TLS server on the committed certificates as an upstream would.
    async fn dial_upstream(tls: &UpstreamTls, host: &str) -> Result<Vec<u8>, std::io::Error> {
        let server = ServerTls::new(&listener_tls(), true).expect("server tls");
        let client = upstream_client_config(tls).expect("client config");
        let name = server_name_for(tls, host).expect("server name");
        let (c, s) = tokio::io::duplex(64 * 1024);
        let run = async move {
            let acceptor = server.acceptor();
            let (client, _server) = tokio::join!(
                TlsConnector::from(client).connect(name, c),
                acceptor.accept(s)
            );
            client.map(|t| t.get_ref().1.alpn_protocol().unwrap_or_default().to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("handshake timed out")
    }

    #[tokio::test]
    async fn upstream_verifies_with_ca_and_server_name() {
        let alpn = dial_upstream(&upstream(Some("ca.pem"), None), "127.0.0.1").await;
        assert_eq!(alpn.expect("by IP"), b"http/1.1");
        dial_upstream(&upstream(Some("ca.pem"), None), "localhost")
            .await
            .expect("by host");
        dial_upstream(
            &upstream(Some("ca.pem"), Some("chat.example.com")),
            "127.0.0.1",
        )
        .await
        .expect("by server_name");
        let err = dial_upstream(
            &upstream(Some("ca.pem"), Some("wrong.example")),
            "127.0.0.1",
        )
        .await
        .expect_err("wrong server_name");
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // Without `ca` only the public roots count, and they never signed the dev CA.
        let err = dial_upstream(&upstream(None, None), "localhost")
            .await
            .expect_err("public roots");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn upstream_ca_problems_are_named() {
        let err =
            upstream_client_config(&upstream(Some("missing.pem"), None)).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = upstream_client_config(&upstream(Some("ca-key.pem"), None)).expect_err("a key");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        upstream_client_config(&upstream(None, None)).expect("public roots");
    }

    #[test]
    fn server_names() {
        let tls = upstream(None, None);
        let ip = |s: &str| ServerName::from(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            server_name_for(&tls, "127.0.0.1").expect("v4"),
            ip("127.0.0.1")
        );
        assert_eq!(server_name_for(&tls, "::1").expect("v6"), ip("::1"));
        assert_eq!(
            server_name_for(&tls, "[::1]").expect("bracketed"),
            ip("::1")
        );
        assert_eq!(
            server_name_for(&tls, "chat.internal").expect("dns"),
            ServerName::try_from("chat.internal").expect("dns")
        );
        let named = upstream(None, Some("chat.internal"));
        assert_eq!(
            server_name_for(&named, "127.0.0.1").expect("server_name wins"),
            ServerName::try_from("chat.internal").expect("dns")
        );
        for bad in ["", "bad name", "a..b", "[bad]"] {
            let err = server_name_for(&tls, bad).expect_err(bad);
            assert!(matches!(err, TlsError::ServerName { .. }), "{bad}: {err}");
        }
    }
}
