use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::pem::load_certs;
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
        strict_sni: true,
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

fn ca_client(versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> Arc<ClientConfig> {
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
        strict_sni: true,
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
        Err(TlsError::Pem(PemError::Mismatch { .. }))
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
    assert!(
        matches!(err, TlsError::Pem(PemError::NoCertificate { .. })),
        "{err}"
    );
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
    let err = upstream_client_config(&upstream(Some("missing.pem"), None)).expect_err("missing");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = upstream_client_config(&upstream(Some("ca-key.pem"), None)).expect_err("a key");
    assert!(
        matches!(err, TlsError::Pem(PemError::NoCertificate { .. })),
        "{err}"
    );
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
