//! TLS for the tests: the committed dev certificates, rustls client configs (trusting the dev CA,
//! or any certificate), a rustls server config for TLS upstreams, and `wss` clients. PEM files are
//! read with rustls' own `PemObject`, not the gateway's loader.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use super::IO_TIMEOUT;

/// A file of the committed development certificates (`certs/`, see its README).
pub fn dev_cert(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(file)
}

/// Every certificate of a PEM file, in file order; panics naming the file.
pub fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!certs.is_empty(), "{}: no certificate", path.display());
    certs
}

/// The first (leaf) certificate of a PEM file, as DER, to compare with what a peer served.
pub fn pem_leaf(path: &Path) -> Vec<u8> {
    pem_certs(path).swap_remove(0).to_vec()
}

/// A root store of every certificate in each of `ca_pems`.
pub fn roots(ca_pems: &[&Path]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_pems.iter().flat_map(|p| pem_certs(p)) {
        roots.add(cert).expect("CA certificate usable as a root");
    }
    roots
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The versions the gateway speaks (SPEC §6), offered by the test clients and servers.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A rustls server config for a test upstream serving `cert`/`key` (TLS 1.2 and 1.3, ALPN
/// `http/1.1`).
pub fn tls_server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(VERSIONS)
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(pem_certs(cert), key)
        .unwrap_or_else(|e| panic!("test upstream certificate {}: {e}", cert.display()));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A real rustls client trusting only `ca`, limited to `versions`, offering `alpn`.
pub fn tls_client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots(&[ca]))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A client trusting the dev CA (`certs/ca.pem`), TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn dev_client_config() -> Arc<rustls::ClientConfig> {
    tls_client_config(&dev_cert("ca.pem"), VERSIONS, &["http/1.1"])
}

/// Accepts any server certificate (handshake signatures are still checked), so that a test can
/// look at the certificate served for a name it does not cover (unknown SNI).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that accepts any certificate (see [`AnyCert`]); ALPN `http/1.1`.
pub fn any_cert_client_config() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(VERSIONS)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(ring())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS stream to the gateway.
pub type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS handshake with `addr` for `name`: a DNS name is sent as SNI; an IP literal is verified
/// against the certificate's IP SANs and sends no SNI (RFC 6066 §3), the "no SNI" case.
pub async fn tls_try_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsClient> {
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .unwrap_or_else(|e| panic!("{name:?} as a TLS server name: {e}"));
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} timed out"))
}

/// [`tls_try_connect`] that must succeed.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> TlsClient {
    tls_try_connect(addr, config, name)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {name:?}: {e}"))
}

/// The leaf certificate the server presented, as DER.
pub fn peer_leaf(tls: &TlsClient) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server presented a certificate")
        .to_vec()
}

/// A tokio-tungstenite client handshake over an established TLS stream (`wss://`), offering
/// `protocol`; `Host` is `host`.
pub async fn wss_handshake(
    tls: TlsClient,
    host: &str,
    path: &str,
    protocol: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<TlsClient>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    Box<tokio_tungstenite::tungstenite::Error>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://{host}{path}")
        .into_client_request()
        .expect("wss request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header value"));
    }
    match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, tls)).await {
        Ok(done) => done.map_err(Box::new),
        Err(_) => panic!("wss handshake via the gateway timed out"),
    }
}

/// Connects with the dev CA as `name` and completes a `wss` handshake that must succeed.
pub async fn wss_connect(
    addr: SocketAddr,
    name: &str,
    path: &str,
    protocol: Option<&str>,
) -> (
    tokio_tungstenite::WebSocketStream<TlsClient>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tls = tls_connect(addr, dev_client_config(), name).await;
    wss_handshake(tls, name, path, protocol)
        .await
        .unwrap_or_else(|e| panic!("wss handshake via the gateway failed: {e}"))
}
