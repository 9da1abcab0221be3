//! SPEC §6 (rustls side) and §1 `certs`: wss with subprotocol routing, certificates by SNI, TLS
//! versions and ALPN, bad TLS input bounded by `handshake_timeout`, certificates re-read on
//! SIGHUP, tunnel integrity over TLS, TLS upstreams, and `check` on bad cert/key pairs.
//!
//! Clients are real rustls clients trusting the committed dev CA (`certs/ca.pem`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The dev server certificate covers these; the chat certificate covers `chat.example.com`.
const CHAT: &str = "chat.example.com";

/// Sends `text` over a WebSocket and expects it echoed.
async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.expect("send a message");
    let got = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .unwrap_or_else(|_| panic!("no echo of {text:?} within {IO_TIMEOUT:?}"));
    match got {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text, "echoed message"),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// One TLS listener with the dev certificates, route `/ws` mapping `chat.v2` and `echo.v1` to
/// `up` (and no offer as fallback).
async fn dev_tls_gateway(up: SocketAddr, limits: &[(&str, &str)]) -> Gateway {
    let mut cfg = ConfigBuilder::new()
        .tls(ListenerTls::dev())
        .upstream("app", &[up])
        .route(
            Route::new("/ws")
                .sub("chat.v2", "app")
                .sub("echo.v1", "app")
                .fallback("app"),
        );
    for (k, v) in limits {
        cfg = cfg.limit(k, v);
    }
    cfg.start().await
}

// ---------------------------------------------------------------------------------------------
// wss, routing, forwarded headers

/// Over wss the offered subprotocol picks the upstream, the upstream sees
/// `X-Forwarded-Proto: https` (SPEC §4) and messages are echoed end to end.
#[tokio::test]
async fn wss_routes_by_subprotocol_and_forwards_proto_https() {
    bounded(
        "wss_routes_by_subprotocol_and_forwards_proto_https",
        async {
            let chat = WsUpstream::start().await;
            let echo_up = WsUpstream::start().await;
            let gw = ConfigBuilder::new()
                .tls(ListenerTls::dev())
                .upstream("chat", &[chat.addr()])
                .upstream("echo", &[echo_up.addr()])
                .route(
                    Route::new("/ws")
                        .sub("chat.v2", "chat")
                        .sub("echo.v1", "echo"),
                )
                .start()
                .await;

            let (mut ws, resp) = wss_connect(gw.addr(), "localhost", "/ws", Some("chat.v2")).await;
            assert_eq!(resp.status(), 101);
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"chat.v2"[..]),
                "selected subprotocol in the 101: {resp:?}"
            );
            let alpn = ws.get_ref().get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN");
            echo(&mut ws, "to chat").await;

            let (mut ws2, resp2) =
                wss_connect(gw.addr(), "localhost", "/ws", Some("echo.v1")).await;
            assert_eq!(
                resp2
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"echo.v1"[..]),
                "selected subprotocol in the 101: {resp2:?}"
            );
            echo(&mut ws2, "to echo").await;

            let (chat_reqs, echo_reqs) = (chat.requests(), echo_up.requests());
            assert_eq!(chat_reqs.len(), 1, "chat upstream handshakes");
            assert_eq!(echo_reqs.len(), 1, "echo upstream handshakes");
            for (req, sub) in [(&chat_reqs[0], "chat.v2"), (&echo_reqs[0], "echo.v1")] {
                assert_eq!(
                    req.headers.all("x-forwarded-proto"),
                    vec!["https"],
                    "X-Forwarded-Proto at the {sub} upstream: {req:?}"
                );
                assert_eq!(
                    req.headers.list("sec-websocket-protocol"),
                    vec![sub.to_string()],
                    "only the selected subprotocol is forwarded: {req:?}"
                );
                let forwarded = req
                    .headers
                    .get("forwarded")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                assert!(
                    forwarded.contains("proto=https"),
                    "Forwarded without proto=https: {forwarded:?}"
                );
            }
            echo(&mut ws, "chat still open").await;
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Certificates by SNI, versions, ALPN

/// RFC 6066 §3: the certificate follows SNI; no SNI (an IP literal) and unknown names get the
/// default. Each is compared byte for byte with the PEM file it must come from.
#[tokio::test]
async fn sni_picks_certificate_and_default_covers_the_rest() {
    bounded("sni_picks_certificate_and_default_covers_the_rest", async {
        let up = WsUpstream::start().await;
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        let server = pem_leaf(&dev_cert("server.pem"));
        let chat = pem_leaf(&dev_cert("chat.pem"));
        assert_ne!(server, chat, "the two dev certificates differ");

        // Verified against the dev CA: the chat certificate really covers chat.example.com.
        let tls = tls_connect(gw.addr(), dev_client_config(), CHAT).await;
        assert!(peer_leaf(&tls) == chat, "SNI {CHAT} not served chat.pem");
        let (mut ws, _) = wss_handshake(tls, CHAT, "/ws", Some("chat.v2"))
            .await
            .expect("wss over the SNI certificate");
        echo(&mut ws, "over the chat certificate").await;

        for name in ["localhost", "127.0.0.1"] {
            let tls = tls_connect(gw.addr(), dev_client_config(), name).await;
            assert!(peer_leaf(&tls) == server, "{name}: not served server.pem");
        }
        // Names the default does not cover: looked at without verification.
        for name in ["unknown.test", "other.example.com"] {
            let tls = tls_connect(gw.addr(), any_cert_client_config(), name).await;
            assert!(
                peer_leaf(&tls) == server,
                "unknown SNI {name}: not the default"
            );
        }
        // RFC 4343: DNS names compare case-insensitively.
        let tls = tls_connect(gw.addr(), any_cert_client_config(), "Chat.Example.COM").await;
        assert!(
            peer_leaf(&tls) == chat,
            "mixed-case SNI not served chat.pem"
        );
    })
    .await;
}

/// SPEC §3 `strict_sni`: a request whose host is not the SNI name of its connection is 421
/// (domain fronting across tenants), the port and case not counting; a connection without SNI
/// (an IP literal) is not checked; with `strict_sni = false` the host routes as sent.
#[tokio::test]
async fn strict_sni_refuses_a_host_other_than_the_sni_name() {
    bounded("strict_sni_refuses_a_host_other_than_the_sni_name", async {
        let up = WsUpstream::start().await;
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        let port = gw.addr().port();
        let tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
        let err = wss_handshake(tls, &format!("{CHAT}:{port}"), "/ws", Some("chat.v2"))
            .await
            .expect_err("host other than the SNI name");
        assert!(err.to_string().contains("421"), "{err}");
        let tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
        let (mut ws, _) = wss_handshake(tls, &format!("LocalHost:{port}"), "/ws", Some("echo.v1"))
            .await
            .expect("same name, other case and a port");
        echo(&mut ws, "same tenant").await;
        let tls = tls_connect(gw.addr(), dev_client_config(), "127.0.0.1").await;
        let (mut ws, _) = wss_handshake(tls, CHAT, "/ws", Some("echo.v1"))
            .await
            .expect("no SNI sent: nothing to compare");
        echo(&mut ws, "no sni").await;

        let lax = ConfigBuilder::new()
            .tls(ListenerTls::dev().strict_sni(false))
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").sub("echo.v1", "app"))
            .start()
            .await;
        let tls = tls_connect(lax.addr(), dev_client_config(), "localhost").await;
        let (mut ws, _) = wss_handshake(tls, CHAT, "/ws", Some("echo.v1"))
            .await
            .expect("strict_sni = false routes the host as sent");
        echo(&mut ws, "lax").await;
    })
    .await;
}

/// A minimal ClientHello offering only `version` (0x0301 TLS 1.0, 0x0302 TLS 1.1), built by
/// hand so that the test does not depend on a client library still able to send one
/// (RFC 5246 §7.4.1.2 layout, RFC 6066 SNI).
fn legacy_client_hello(version: u16, sni: &str) -> Vec<u8> {
    fn u16b(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits u16").to_be_bytes()
    }
    let ciphers: [u16; 9] = [
        0xC02B, 0xC02F, 0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035, 0x000A,
    ];
    let name = sni.as_bytes();
    let mut ext = Vec::new();
    // server_name
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&u16b(name.len() + 5));
    ext.extend_from_slice(&u16b(name.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&u16b(name.len()));
    ext.extend_from_slice(name);
    // supported_groups: x25519, secp256r1, secp384r1
    ext.extend_from_slice(&[0, 10, 0, 8, 0, 6, 0x00, 0x1D, 0x00, 0x17, 0x00, 0x18]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
    // renegotiation_info, empty
    ext.extend_from_slice(&[0xFF, 0x01, 0, 1, 0]);

    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&random_bytes(32, u64::from(version)));
    body.push(0); // no session id
    body.extend_from_slice(&u16b(2 * ciphers.len()));
    for c in ciphers {
        body.extend_from_slice(&c.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    body.extend_from_slice(&u16b(ext.len()));
    body.extend_from_slice(&ext);

    let mut hs = vec![1]; // client_hello
    hs.extend_from_slice(&u32::try_from(body.len()).expect("fits").to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16b(hs.len()));
    record.extend_from_slice(&hs);
    record
}

/// What a server answered to a raw ClientHello.
#[derive(Debug, PartialEq)]
enum HelloAnswer {
    /// A ServerHello and the version it chose (legacy field).
    ServerHello(u16),
    /// An alert record and its description (RFC 8446 §6).
    Alert(u8),
    Closed,
    Other(Vec<u8>),
}

async fn probe_hello(addr: SocketAddr, hello: &[u8]) -> HelloAnswer {
    let mut c = Client::connect(addr).await;
    c.send(hello).await.expect("send the ClientHello");
    let (got, _) = c.read_to_eof(IO_TIMEOUT).await;
    match got.as_slice() {
        [] => HelloAnswer::Closed,
        [0x15, _, _, _, _, _level, desc, ..] => HelloAnswer::Alert(*desc),
        [0x16, _, _, _, _, 0x02, _, _, _, v1, v2, ..] => {
            HelloAnswer::ServerHello(u16::from_be_bytes([*v1, *v2]))
        }
        other => HelloAnswer::Other(other.iter().take(16).copied().collect()),
    }
}

/// RFC 8996: TLS 1.0 and 1.1 hellos get an alert (protocol_version) or a close, never a
/// ServerHello; TLS 1.2-only and 1.3-only rustls clients both complete a wss handshake.
#[tokio::test]
async fn tls11_and_tls10_refused_tls12_and_tls13_served() {
    bounded("tls11_and_tls10_refused_tls12_and_tls13_served", async {
        let up = WsUpstream::start().await;
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        for (version, label) in [(0x0302u16, "TLS 1.1"), (0x0301, "TLS 1.0")] {
            let answer = probe_hello(gw.addr(), &legacy_client_hello(version, "localhost")).await;
            assert!(
                matches!(answer, HelloAnswer::Alert(_) | HelloAnswer::Closed),
                "{label} ClientHello: expected an alert or a close, got {answer:?}"
            );
        }

        for (version, want) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let config = tls_client_config(&dev_cert("ca.pem"), &[version], &["http/1.1"]);
            let tls = tls_connect(gw.addr(), config, "localhost").await;
            assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
            let (mut ws, _) = wss_handshake(tls, "localhost", "/ws", Some("chat.v2"))
                .await
                .unwrap_or_else(|e| panic!("wss over {want:?}: {e}"));
            echo(&mut ws, "versioned").await;
        }
    })
    .await;
}

/// RFC 7301: a TLS listener offers h2 (http2 defaults to true with TLS) before http/1.1, and
/// only http/1.1 with `http2 = false`.
#[tokio::test]
async fn alpn_h2_only_when_http2() {
    bounded("alpn_h2_only_when_http2", async {
        let up = WsUpstream::start().await;
        let both = || {
            tls_client_config(
                &dev_cert("ca.pem"),
                &[&rustls::version::TLS13, &rustls::version::TLS12],
                &["h2", "http/1.1"],
            )
        };
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        let tls = tls_connect(gw.addr(), both(), "localhost").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        let gw = ConfigBuilder::new()
            .tls(ListenerTls::dev().http2(false))
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").fallback("app"))
            .start()
            .await;
        let tls = tls_connect(gw.addr(), both(), "localhost").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// Plaintext HTTP, garbage, a hello cut short and a silent client on the TLS port are each
/// closed within `handshake_timeout` (500ms here; the 5s bound is half the default), with no
/// HTTP answer in plaintext, while an open wss tunnel keeps working and new ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_input_dropped_within_handshake_timeout() {
    bounded("bad_tls_input_dropped_within_handshake_timeout", async {
        let up = WsUpstream::start().await;
        let gw = dev_tls_gateway(up.addr(), &[("handshake_timeout", "\"500ms\"")]).await;
        let (mut good, _) = wss_connect(gw.addr(), "localhost", "/ws", Some("chat.v2")).await;
        echo(&mut good, "before").await;

        let hello = legacy_client_hello(0x0303, "localhost");
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            (
                "plaintext HTTP",
                b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n".to_vec(),
            ),
            ("garbage", b"\x00\xffnot TLS at all\r\n\x13\x37".repeat(8)),
            ("a ClientHello cut short", hello[..hello.len() / 2].to_vec()),
            ("a record header only", hello[..5].to_vec()),
            ("nothing at all", Vec::new()),
        ];
        let probes = inputs.into_iter().map(|(what, bytes)| {
            let addr = gw.addr();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                if !bytes.is_empty() {
                    // The gateway may close before reading everything; that is fine.
                    let _ = c.send(&bytes).await;
                }
                let start = Instant::now();
                let (got, closed) = c.read_to_eof(IO_TIMEOUT).await;
                (what, got, closed, start.elapsed())
            })
        });
        let results = futures_util::future::join_all(probes).await;
        for result in results {
            let (what, got, closed, took) = result.expect("probe task");
            assert!(
                closed,
                "{what}: still open after {took:?} (handshake_timeout is 500ms)"
            );
            assert!(
                !got.starts_with(b"HTTP/"),
                "{what}: answered in plaintext HTTP: {:?}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                got.is_empty() || got[0] == 0x15,
                "{what}: got {} bytes that are not a TLS alert: {:?}",
                got.len(),
                &got[..got.len().min(16)]
            );
        }

        // Every probe lasted at least as long as the silent one (>= 500ms): the established
        // tunnel is not subject to handshake_timeout, and a new connection is still served.
        echo(&mut good, "after").await;
        let (mut fresh, _) = wss_connect(gw.addr(), "localhost", "/ws", Some("echo.v1")).await;
        echo(&mut fresh, "fresh").await;
        echo(&mut good, "still").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

/// Makes a new server certificate for localhost/127.0.0.1/::1 signed by the dev CA, with
/// `switchyard certs` reusing the CA (SPEC §1); returns (cert, key).
async fn reissue_dev_server_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).expect("create cert dir");
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dev_cert(f), dir.join(f)).expect("copy the dev CA");
    }
    let out = dir.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_cli(&["certs", "--out", &out]).await;
    assert_eq!(code, 0, "certs --out {out}: {stdout} {stderr}");
    (dir.join("server.pem"), dir.join("server-key.pem"))
}

/// Replaces `to` with a copy of `from` by rename, as a certificate renewal tool would.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// SPEC §6/§7: SIGHUP re-reads certificates. A new connection gets the renewed certificate, an
/// open wss tunnel is untouched; an unreadable key on a later SIGHUP is logged (naming the
/// file) and the renewed certificate stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_certificate_for_new_connections_only() {
    bounded("sighup_swaps_certificate_for_new_connections_only", async {
        let dir = unique_temp_dir("tls-sighup");
        let (live_cert, live_key) = (dir.join("live.pem"), dir.join("live-key.pem"));
        replace_file(&dev_cert("server.pem"), &live_cert);
        replace_file(&dev_cert("server-key.pem"), &live_key);
        let (cert_b, key_b) = reissue_dev_server_cert(&dir.join("b")).await;
        let (der_a, der_b) = (pem_leaf(&live_cert), pem_leaf(&cert_b));
        assert_ne!(der_a, der_b, "the reissued certificate differs");

        let up = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::new(&live_cert, &live_key))
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").fallback("app"))
            .start()
            .await;
        let (mut open, _) = wss_connect(gw.addr(), "localhost", "/ws", None).await;
        assert!(
            peer_leaf(open.get_ref()) == der_a,
            "before the reload: not certificate A"
        );
        echo(&mut open, "A").await;

        replace_file(&cert_b, &live_cert);
        replace_file(&key_b, &live_key);
        let mark = gw.log_mark();
        gw.sighup().await;
        gw.wait_event_after(mark, RELOADED, IO_TIMEOUT).await;
        let tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
        assert!(
            peer_leaf(&tls) == der_b,
            "a new connection after SIGHUP did not get certificate B"
        );
        let (mut fresh, _) = wss_handshake(tls, "localhost", "/ws", None)
            .await
            .expect("wss over certificate B");
        echo(&mut fresh, "B").await;
        assert!(
            peer_leaf(open.get_ref()) == der_a,
            "the open tunnel's session changed"
        );
        echo(&mut open, "A still open").await;

        std::fs::remove_file(&live_key).expect("remove the key");
        let mark = gw.log_mark();
        gw.sighup().await;
        let failed = gw.wait_event_after(mark, RELOAD_FAILED, IO_TIMEOUT).await;
        assert_eq!(failed["level"], "ERROR", "{failed}");
        assert!(
            failed.to_string().contains("live-key.pem"),
            "the error does not name the unreadable key: {failed}"
        );
        let tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
        assert!(
            peer_leaf(&tls) == der_b,
            "after a failed reload the certificate is no longer B"
        );
        echo(&mut open, "A after the failed reload").await;
        echo(&mut fresh, "B after the failed reload").await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// Two TLS listeners with different certificates on two loopback addresses (port 0, so the bind
/// addresses differ by IP: all of 127/8 is loopback on Linux); the reloaded config lists them
/// in the other order. Each listener must keep its own certificate (paired by bind address,
/// not by position).
#[tokio::test]
async fn sighup_pairs_listeners_by_bind_address() {
    bounded("sighup_pairs_listeners_by_bind_address", async {
        let up = WsUpstream::start().await;
        let path = |f: &str| q(&dev_cert(f).to_string_lossy());
        let server = format!(
            "[[listener]]\nbind = {}\ntls = {{ cert = {}, key = {} }}\n\n",
            q("127.0.0.1:0"),
            path("server.pem"),
            path("server-key.pem")
        );
        let chat = format!(
            "[[listener]]\nbind = {}\ntls = {{ cert = {}, key = {} }}\n\n",
            q("127.0.0.2:0"),
            path("chat.pem"),
            path("chat-key.pem")
        );
        let rest = format!(
            "[upstreams.app]\nservers = [{}]\n\n[[route]]\npath = \"/ws\"\nfallback = \"app\"\n",
            q(&up.addr().to_string())
        );
        let gw = Gateway::start(&format!("{server}{chat}{rest}")).await;
        let (p1, p2) = (gw.listeners()[0], gw.listeners()[1]);
        assert_eq!(
            p2.ip().to_string(),
            "127.0.0.2",
            "listeners in config order"
        );
        let (want1, want2) = (
            pem_leaf(&dev_cert("server.pem")),
            pem_leaf(&dev_cert("chat.pem")),
        );
        let served = |addr| async move {
            peer_leaf(&tls_connect(addr, any_cert_client_config(), "localhost").await)
        };
        assert!(served(p1).await == want1, "{p1} before the reload");
        assert!(served(p2).await == want2, "{p2} before the reload");

        std::fs::write(gw.config_path(), format!("{chat}{server}{rest}")).expect("rewrite");
        let mark = gw.log_mark();
        gw.sighup().await;
        gw.wait_event_after(mark, RELOADED, IO_TIMEOUT).await;
        assert!(
            served(p1).await == want1,
            "{p1} serves another listener's certificate after a reordering reload\n{}",
            gw.stderr_text()
        );
        assert!(
            served(p2).await == want2,
            "{p2} serves another listener's certificate after a reordering reload"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Tunnel integrity over TLS

/// 4 MiB of random bytes each way through a wss tunnel, written in random-sized writes while
/// the echo comes back: nothing lost, duplicated or reordered; then close_notify/EOF ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_tunnel_integrity_4mib_each_way() {
    bounded("wss_tunnel_integrity_4mib_each_way", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        let mut tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
        let req = ClientRequest::ws("localhost", "/ws").protocol("chat.v2");
        tls.write_all(&req.to_bytes()).await.expect("send request");
        let (head, buffered) = read_head_from(&mut tls).await;
        assert_101(&head, &req.key, Some("chat.v2"));
        assert!(buffered.is_empty(), "bytes after the 101: {buffered:?}");

        let (rd, wr) = tokio::io::split(tls);
        let data = Arc::new(random_bytes(4 << 20, 0x7151));
        echo_integrity(rd, wr, Arc::clone(&data), 11).await;

        let at_upstream = up.conn(0, IO_TIMEOUT).await.after_head();
        if let Some(at) = first_difference(&at_upstream, &data) {
            panic!(
                "upstream received {} bytes, differing from the {} sent at byte {at}",
                at_upstream.len(),
                data.len()
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// TLS upstreams

/// `tls = true`: verified against `ca`, by the server's IP (IP SAN) or by `server_name`; the
/// gateway's own listener is TLS as well, so it is wss on both hops.
#[tokio::test]
async fn tls_upstream_reached_by_ip_and_by_server_name() {
    bounded("tls_upstream_reached_by_ip_and_by_server_name", async {
        let by_ip = WsUpstream::start_tls(tls_server_config(
            &dev_cert("server.pem"),
            &dev_cert("server-key.pem"),
        ))
        .await;
        let by_name = WsUpstream::start_tls(tls_server_config(
            &dev_cert("chat.pem"),
            &dev_cert("chat-key.pem"),
        ))
        .await;
        let ca = dev_cert("ca.pem");
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::dev())
            .limit("upstream_handshake_timeout", "\"5s\"")
            .upstream("ip", &[by_ip.addr()])
            .upstream_tls("ip", Some(&ca), None)
            .upstream("named", &[by_name.addr()])
            .upstream_tls("named", Some(&ca), Some(CHAT))
            .route(
                Route::new("/ws")
                    .sub("ip.v1", "ip")
                    .sub("named.v1", "named"),
            )
            .start()
            .await;

        let (mut a, _) = wss_connect(gw.addr(), "localhost", "/ws", Some("ip.v1")).await;
        echo(&mut a, "over TLS by IP").await;
        let (mut b, _) = wss_connect(gw.addr(), "localhost", "/ws", Some("named.v1")).await;
        echo(&mut b, "over TLS by server_name").await;
        let payload = random_bytes(256 << 10, 3);
        b.send(Message::binary(payload.clone()))
            .await
            .expect("send");
        match tokio::time::timeout(IO_TIMEOUT, b.next()).await {
            Ok(Some(Ok(Message::Binary(got)))) => {
                assert!(got[..] == payload[..], "256 KiB echo differs")
            }
            other => panic!("expected a binary echo, got {other:?}"),
        }
        assert_eq!(by_ip.requests().len(), 1);
        assert_eq!(by_name.requests().len(), 1);
        assert_eq!(
            by_name.requests()[0].headers.all("x-forwarded-proto"),
            vec!["https"]
        );
    })
    .await;
}

/// SPEC §4: TLS verification failure is a failed connect: 502, and no request reaches the
/// upstream. Cases: a CA that did not sign the upstream's certificate, and a `server_name` the
/// certificate does not cover.
#[tokio::test]
async fn tls_upstream_untrusted_or_wrong_name_is_502() {
    bounded("tls_upstream_untrusted_or_wrong_name_is_502", async {
        let other = unique_temp_dir("tls-other-ca");
        let out = other.to_string_lossy().into_owned();
        let (code, stdout, stderr) = run_cli(&["certs", "--out", &out]).await;
        assert_eq!(code, 0, "certs: {stdout} {stderr}");

        let up = WsUpstream::start_tls(tls_server_config(
            &dev_cert("server.pem"),
            &dev_cert("server-key.pem"),
        ))
        .await;
        let cases = [
            ("untrusted CA", Some(other.join("ca.pem")), None),
            (
                "wrong server_name",
                Some(dev_cert("ca.pem")),
                Some("wrong.example.com"),
            ),
            // Not among the public roots at all.
            ("public roots only", None, None),
        ];
        for (what, ca, server_name) in cases {
            let gw = ConfigBuilder::new()
                .upstream("app", &[up.addr()])
                .upstream_tls("app", ca.as_deref(), server_name)
                .route(Route::new("/ws").sub("chat.v2", "app"))
                .start()
                .await;
            let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
            let mut c = Client::connect(gw.addr()).await;
            c.send(&req.to_bytes()).await.expect("send");
            expect_failure(&mut c, 502, what).await;
            assert!(
                up.requests().is_empty(),
                "{what}: a request reached the upstream"
            );
        }
        let _ = std::fs::remove_dir_all(&other);
    })
    .await;
}

/// SPEC §4: the upstream's TLS handshake counts as part of the connect. An upstream that takes
/// the ClientHello (sent with `server_name` as SNI) and never answers is 504 after
/// `upstream_connect_timeout`, with nothing but the hello sent to it.
#[tokio::test]
async fn tls_upstream_silent_handshake_is_504() {
    bounded("tls_upstream_silent_handshake_is_504", async {
        let up = RawUpstream::start(script(|mut c| async move {
            c.read_to_eof().await;
        }))
        .await;
        let gw = ConfigBuilder::new()
            .limit("upstream_connect_timeout", "\"300ms\"")
            .upstream("app", &[up.addr()])
            .upstream_tls("app", Some(&dev_cert("ca.pem")), Some(CHAT))
            .route(Route::new("/ws").sub("chat.v2", "app"))
            .start()
            .await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let mut c = Client::connect(gw.addr()).await;
        c.send(&req.to_bytes()).await.expect("send");
        expect_failure(&mut c, 504, "silent TLS upstream").await;
        let hello = up.conn(0, IO_TIMEOUT).await.received();
        assert!(
            hello.starts_with(&[0x16, 0x03]) && hello.get(5) == Some(&0x01),
            "the upstream did not get a TLS ClientHello: {:?}",
            &hello[..hello.len().min(16)]
        );
        assert!(
            hello.windows(CHAT.len()).any(|w| w == CHAT.as_bytes()),
            "server_name {CHAT} not sent as SNI"
        );
        assert!(
            !hello.windows(4).any(|w| w == b"GET "),
            "the request was sent in plaintext"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// `certs` and `check`

/// SPEC §1: `certs --out DIR --name a.test` writes the four files; the server certificate
/// verifies against the new CA for a.test only (the names replace the defaults), keys are
/// private, and a gateway serving them completes a wss handshake for a.test.
#[tokio::test]
async fn certs_cli_writes_a_ca_and_a_server_certificate() {
    bounded("certs_cli_writes_a_ca_and_a_server_certificate", async {
        use rustls::client::WebPkiServerVerifier;
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use std::os::unix::fs::PermissionsExt;

        let dir = unique_temp_dir("tls-certs-cli");
        let out = dir.join("made");
        let out_s = out.to_string_lossy().into_owned();
        let (code, stdout, stderr) = run_cli(&["certs", "--out", &out_s, "--name", "a.test"]).await;
        assert_eq!(code, 0, "certs: {stdout} {stderr}");
        for f in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"] {
            let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(meta.len() > 0, "{f} is empty");
            if f.ends_with("key.pem") {
                assert_eq!(
                    meta.permissions().mode() & 0o077,
                    0,
                    "{f} readable by others"
                );
            }
        }

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pem_leaf(&out.join("ca.pem"))))
            .expect("the new CA as a root");
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let leaf = CertificateDer::from(pem_leaf(&out.join("server.pem")));
        let verify = |name: &str| {
            verifier.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_string()).expect("name"),
                &[],
                UnixTime::now(),
            )
        };
        verify("a.test").expect("server.pem verifies for a.test against ca.pem");
        assert!(
            verify("localhost").is_err(),
            "--name replaces the default names"
        );

        let up = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::new(
                &out.join("server.pem"),
                &out.join("server-key.pem"),
            ))
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").fallback("app"))
            .start()
            .await;
        let client = tls_client_config(
            &out.join("ca.pem"),
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &["http/1.1"],
        );
        let tls = tls_connect(gw.addr(), client, "a.test").await;
        let (mut ws, _) = wss_handshake(tls, "a.test", "/ws", None)
            .await
            .expect("wss with the made certificates");
        echo(&mut ws, "a.test").await;
        drop(gw);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// SPEC §2: `check` rejects a TLS listener whose cert/key cannot be read or do not match, exit
/// 2, with a message naming the file; for `sni` entries too.
#[tokio::test]
async fn check_rejects_unreadable_or_mismatched_cert_and_key() {
    bounded(
        "check_rejects_unreadable_or_mismatched_cert_and_key",
        async {
            let dir = unique_temp_dir("tls-check");
            let missing = dir.join("missing-key.pem");
            let garbage = dir.join("garbage.pem");
            std::fs::write(&garbage, "not a certificate\n").expect("write garbage");
            let server = (dev_cert("server.pem"), dev_cert("server-key.pem"));
            let cases = [
                (
                    "mismatched key",
                    ListenerTls::new(&server.0, &dev_cert("chat-key.pem")),
                    "chat-key.pem",
                ),
                (
                    "missing key",
                    ListenerTls::new(&server.0, &missing),
                    "missing-key.pem",
                ),
                (
                    "not a certificate",
                    ListenerTls::new(&garbage, &server.1),
                    "garbage.pem",
                ),
                (
                    "mismatched sni pair",
                    ListenerTls::new(&server.0, &server.1).sni(
                        &[CHAT],
                        &dev_cert("chat.pem"),
                        &dev_cert("server-key.pem"),
                    ),
                    "server-key.pem",
                ),
            ];
            for (i, (what, tls, names)) in cases.into_iter().enumerate() {
                let toml = ConfigBuilder::new()
                    .tls(tls)
                    .upstream("app", &[refused_addr()])
                    .route(Route::new("/ws").fallback("app"))
                    .build();
                let path = dir.join(format!("case{i}.toml"));
                std::fs::write(&path, toml).expect("write config");
                let path = path.to_string_lossy().into_owned();
                let (code, out, err) = run_cli(&["check", "--config", &path]).await;
                assert_eq!(code, 2, "{what}: exit code; stdout {out:?} stderr {err:?}");
                assert!(
                    err.contains(names),
                    "{what}: the message does not name {names}: {err:?}"
                );
            }
            // The good pair passes, so the failures above are about the files.
            let toml = ConfigBuilder::new()
                .tls(ListenerTls::dev())
                .upstream("app", &[refused_addr()])
                .route(Route::new("/ws").fallback("app"))
                .build();
            let path = dir.join("good.toml");
            std::fs::write(&path, toml).expect("write config");
            let path = path.to_string_lossy().into_owned();
            let (code, out, err) = run_cli(&["check", "--config", &path]).await;
            assert_eq!(code, 0, "good TLS config: stdout {out:?} stderr {err:?}");
            let _ = std::fs::remove_dir_all(&dir);
        },
    )
    .await;
}

/// A plain-TCP sanity check for the raw ClientHello builder: with TLS 1.2 offered the same
/// bytes do get a ServerHello, so the refusals above are about the version, not a broken hello.
#[tokio::test]
async fn raw_tls12_hello_gets_a_server_hello() {
    bounded("raw_tls12_hello_gets_a_server_hello", async {
        let up = WsUpstream::start().await;
        let gw = dev_tls_gateway(up.addr(), &[]).await;
        let mut hello = legacy_client_hello(0x0303, "localhost");
        // TLS 1.2 needs signature_algorithms (RFC 5246 §7.4.1.4.1): ecdsa_secp256r1_sha256,
        // rsa_pss_rsae_sha256, rsa_pkcs1_sha256. Appended as the last extension.
        let sigs = [0u8, 13, 0, 8, 0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01];
        append_extension(&mut hello, &sigs);
        let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
        tcp.write_all(&hello).await.expect("send hello");
        let mut first = [0u8; 11];
        tokio::time::timeout(IO_TIMEOUT, tcp.read_exact(&mut first))
            .await
            .expect("answer within IO_TIMEOUT")
            .expect("an answer of at least one record header and ServerHello start");
        assert_eq!(first[0], 0x16, "handshake record: {first:?}");
        assert_eq!(first[5], 0x02, "ServerHello: {first:?}");
        assert_eq!(
            u16::from_be_bytes([first[9], first[10]]),
            0x0303,
            "TLS 1.2 chosen"
        );
    })
    .await;
}

/// Appends `ext` to the extensions of a single-record ClientHello built by
/// [`legacy_client_hello`], fixing the three length fields.
fn append_extension(hello: &mut Vec<u8>, ext: &[u8]) {
    hello.extend_from_slice(ext);
    let bump = |bytes: &mut [u8]| {
        let mut n = 0usize;
        for b in bytes.iter() {
            n = n << 8 | usize::from(*b);
        }
        n += ext.len();
        for (i, b) in bytes.iter_mut().rev().enumerate() {
            *b = (n >> (8 * i)) as u8;
        }
    };
    bump(&mut hello[3..5]); // record length
    bump(&mut hello[6..9]); // handshake length
    // Extensions length: after version(2) random(32) session(1) ciphers(2+n) compression(2).
    let ciphers_len = usize::from(u16::from_be_bytes([hello[9 + 35], hello[9 + 36]]));
    let at = 9 + 35 + 2 + ciphers_len + 2;
    bump(&mut hello[at..at + 2]);
}
