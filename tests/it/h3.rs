//! SPEC §12 / RFC 9220: WebSockets over HTTP/3 on a TLS listener with `http3 = true`, bridged
//! to HTTP/1.1 upstreams. The client is quinn with the gateway's own h3 layer
//! (support::h3_client).

use std::sync::Arc;
use std::time::Duration;

use crate::support::h2_client::H2Conn;
use crate::support::h3_client::{End, H3Conn};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use h3::ext::Protocol;

/// `/ws` maps `chat.v2` -> chat and `mqtt` -> mqtt (client order wins), `/strict` has an
/// origin allowlist, `/web` has an `http` upstream; the listener serves h2 and h3.
fn h3_config(chat: &RawUpstream, mqtt: &RawUpstream, web: &RawUpstream) -> ConfigBuilder {
    let tls = ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem"))
        .http2(true)
        .http3(true);
    ConfigBuilder::new()
        .tls(tls)
        .versions(&[13, 8, 7])
        .upstream("chat", &[chat.addr()])
        .upstream("mqtt", &[mqtt.addr()])
        .upstream("web", &[web.addr()])
        .route(Route::new("/ws").sub("chat.v2", "chat").sub("mqtt", "mqtt"))
        .route(
            Route::new("/strict")
                .sub("chat.v2", "chat")
                .origins(&["https://app.example.com"]),
        )
        .route(Route::new("/web").http("web"))
}

/// An http upstream: `200`, `X-Origin: web`, body `web:<target>:<request body length>`.
fn web_upstream() -> Script {
    script(|mut c| async move {
        while let Some(head) = c.read_head().await {
            let len: usize = head
                .headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let got = if len > 0 {
                c.recv_exact(len).await.len()
            } else {
                0
            };
            let body = format!("web:{}:{got}", head.target);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: web\r\n\r\n{body}",
                body.len()
            );
            if c.send(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
}

/// A correct 101 that also negotiates `permessage-deflate`, then echo.
fn accept_with_extension_then_echo() -> Script {
    script(|mut c| async move {
        let Some(head) = c.read_head().await else {
            return;
        };
        let ok = String::from_utf8(response_101(&head, offered(&head).as_deref()))
            .expect("ascii")
            .replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            );
        if c.send(ok.as_bytes()).await.is_ok() {
            c.echo().await;
        }
    })
}

fn header<'a>(res: &'a http::Response<()>, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The extended CONNECT gets 200 with the selected subprotocol and the upstream's extensions,
/// the upstream an HTTP/1.1 upgrade with a fresh key (the client's own one dropped), bytes flow
/// both ways; metrics count it as status 200 and the access log says HTTP/3; the listener's h1
/// and h2 answers announce it with Alt-Svc.
#[tokio::test]
async fn extended_connect_200_fresh_key_metrics_log_and_alt_svc() {
    bounded(
        "extended_connect_200_fresh_key_metrics_log_and_alt_svc",
        async {
            let chat = RawUpstream::start(accept_then_echo(b"")).await;
            let mqtt = RawUpstream::start(accept_with_extension_then_echo()).await;
            let web = RawUpstream::start(web_upstream()).await;
            let gw = h3_config(&chat, &mqtt, &web).admin().start().await;
            let mut conn = H3Conn::connect(gw.addr()).await;
            let stray_key = new_key();
            let authority = conn.authority().to_string();
            let (res, mut s) = conn
                .connect_with(
                    &authority,
                    "/ws/room?x=1",
                    Protocol::WEBSOCKET,
                    &[
                        ("sec-websocket-version", "13"),
                        ("sec-websocket-protocol", "mqtt, chat.v2"),
                        ("sec-websocket-key", &stray_key),
                        ("sec-websocket-extensions", "permessage-deflate"),
                    ],
                )
                .await;
            assert_eq!(res.status(), 200, "{res:?}");
            assert_eq!(header(&res, "sec-websocket-protocol"), Some("mqtt"));
            assert_eq!(
                header(&res, "sec-websocket-extensions"),
                Some("permessage-deflate")
            );
            for name in [
                "sec-websocket-version",
                "sec-websocket-accept",
                "connection",
            ] {
                assert!(!res.headers().contains_key(name), "{name} in {res:?}");
            }
            s.send(b"hello-over-h3").await;
            assert_eq!(s.recv_exact(13).await, b"hello-over-h3");

            assert!(chat.conns().is_empty(), "chat upstream was dialled");
            let log = mqtt.conn(0, IO_TIMEOUT).await;
            let head = log.head().expect("request head");
            assert_eq!(
                (head.method.as_str(), head.target.as_str()),
                ("GET", "/ws/room?x=1")
            );
            let h = &head.headers;
            assert_eq!(h.tokens("upgrade"), ["websocket"]);
            assert!(h.tokens("connection").contains(&"upgrade".to_string()));
            assert_eq!(h.all("sec-websocket-version"), ["13"]);
            assert_eq!(h.all("sec-websocket-protocol"), ["mqtt"]);
            assert_eq!(h.all("x-forwarded-proto"), ["https"]);
            let keys = h.all("sec-websocket-key");
            assert_eq!(keys.len(), 1, "Sec-WebSocket-Key lines: {keys:?}");
            assert_ne!(keys[0], stray_key, "the client's own key was forwarded");
            assert_eq!(B64.decode(keys[0]).expect("base64").len(), 16);
            assert_eq!(log.after_head(), b"hello-over-h3");

            wait_metric(
                &gw,
                r#"switchyard_tunnels_active{route="/ws",subprotocol="mqtt"}"#,
                1.0,
                IO_TIMEOUT,
            )
            .await;
            assert_eq!(
                metric(
                    &gw,
                    r#"switchyard_handshakes_total{route="/ws",status="200"}"#
                )
                .await,
                Some(1.0)
            );
            s.finish().await;
            let (_, end) = s.read_to_end(IO_TIMEOUT).await;
            assert_eq!(end, End::Fin, "the tunnel did not end cleanly");
            let closed = gw
                .wait_log("the h3 tunnel's access event", IO_TIMEOUT, |e| {
                    e.get("target").and_then(|t| t.as_str()) == Some("access")
                        && e.to_string().contains("/ws/room")
                        && e.to_string().contains("closed_by")
                })
                .await;
            assert!(
                closed.to_string().contains(r#""http_version":"HTTP/3""#),
                "{closed}"
            );
            let handshake_events: Vec<_> = gw
                .access_events()
                .into_iter()
                .filter(|e| e.to_string().contains("/ws/room"))
                .collect();
            assert!(
                handshake_events
                    .iter()
                    .all(|e| e.to_string().contains(r#""http_version":"HTTP/3""#)),
                "{handshake_events:?}"
            );

            // Alt-Svc on the TCP side: a relayed h2 answer and a gateway 404 over HTTP/1.1.
            let want = format!("h3=\":{}\"", gw.addr().port());
            let mut h2 = H2Conn::connect(gw.addr()).await;
            let req = h2.get_request("/web/page");
            let s2 = h2.open(req, true).await;
            assert_eq!(s2.head.status, 200);
            assert_eq!(s2.header("alt-svc"), Some(want.as_str()));
            let tls = tls_connect(gw.addr(), dev_client_config(), "localhost").await;
            let (head, _) = http1_over(tls, "/nowhere").await;
            assert_eq!(head.status, 404);
            assert_eq!(head.headers.get("alt-svc"), Some(want.as_str()));
        },
    )
    .await;
}

/// One HTTP/1.1 GET over `tls`; the response head and body.
async fn http1_over(mut tls: TlsClient, path: &str) -> (ResponseHead, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("send");
    read_head_from(&mut tls).await
}

/// 4 MiB of random bytes each way at once, echoed verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_4mib_each_way() {
    bounded("integrity_4mib_each_way", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h3_config(&up, &up, &up).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (res, s) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200);
        let data = Arc::new(random_bytes(4 << 20, 0x4343));
        let (mut send, mut recv) = s.stream.split();
        let tx = Arc::clone(&data);
        let writer = tokio::spawn(async move {
            for chunk in tx.chunks(50_000) {
                send.send_data(bytes::Bytes::copy_from_slice(chunk))
                    .await
                    .expect("send");
            }
            send
        });
        let mut got = Vec::with_capacity(data.len());
        while got.len() < data.len() {
            use bytes::Buf;
            let mut chunk = tokio::time::timeout(IO_TIMEOUT, recv.recv_data())
                .await
                .expect("echo stalled")
                .expect("stream failed")
                .expect("stream ended early");
            got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert!(
            got == *data,
            "echo differs at {:?}",
            first_difference(&got, &data)
        );
        let _send = writer.await.expect("writer");
        assert_eq!(up.conn(0, IO_TIMEOUT).await.after_head().len(), data.len());
    })
    .await;
}

/// The client's FIN is the upstream's EOF (after the data); the upstream can still answer, and
/// its EOF ends the stream with FIN, not a reset.
#[tokio::test]
async fn fin_is_half_close() {
    bounded("fin_is_half_close", async {
        let chat = RawUpstream::start(script(|mut c| async move {
            if !c.accept_upgrade().await {
                return;
            }
            let got = c.read_to_eof().await;
            let _ = c.send(format!("got {} bytes", got.len()).as_bytes()).await;
            c.shutdown_write().await;
        }))
        .await;
        let gw = h3_config(&chat, &chat, &chat).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (res, mut s) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200);
        s.send(b"last-words").await;
        s.finish().await;
        let (data, end) = s.read_to_end(IO_TIMEOUT).await;
        assert_eq!(data, b"got 10 bytes");
        assert_eq!(end, End::Fin);
    })
    .await;
}

/// A stream reset by the client closes its upstream only; an upstream reset resets its stream;
/// two streams on one connection each reach their own upstream.
#[tokio::test]
async fn resets_either_way_end_only_their_stream() {
    bounded("resets_either_way_end_only_their_stream", async {
        let chat = RawUpstream::start(accept_then_hold()).await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h3_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (_, mut s1) = conn.connect_ws("/ws", Some("chat.v2")).await;
        let (_, mut s2) = conn.connect_ws("/ws", Some("mqtt")).await;
        s1.send(b"to-chat-1").await;
        s2.send(b"to-mqtt-2").await;
        assert_eq!(s2.recv_exact(9).await, b"to-mqtt-2");
        let log = chat.conn(0, IO_TIMEOUT).await;
        assert!(
            log.wait_after_head(9, IO_TIMEOUT).await,
            "stream 1's DATA lost"
        );
        assert_eq!(log.after_head(), b"to-chat-1");
        s1.reset();
        assert!(
            log.wait_eof(IO_TIMEOUT).await,
            "upstream of the reset stream still open"
        );
        s2.send(b"still-fine").await;
        assert_eq!(s2.recv_exact(10).await, b"still-fine");
        gw.wait_log("tunnel closed by the client", IO_TIMEOUT, |e| {
            e.get("target").and_then(|t| t.as_str()) == Some("access")
                && e.get("closed_by").and_then(|c| c.as_str()) == Some("client")
        })
        .await;

        let resetting = RawUpstream::start(script(|mut c| async move {
            if !c.accept_upgrade().await {
                return;
            }
            c.recv_exact(9).await;
            c.abort();
        }))
        .await;
        let gw = h3_config(&resetting, &mqtt, &chat).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (_, mut s1) = conn.connect_ws("/ws", Some("chat.v2")).await;
        let (_, mut s2) = conn.connect_ws("/ws", Some("mqtt")).await;
        s1.send(b"reset-now").await;
        let (data, end) = s1.read_to_end(IO_TIMEOUT).await;
        assert!(data.is_empty(), "bytes on the reset stream: {data:?}");
        assert!(
            matches!(end, End::Reset(_)),
            "upstream reset ended the stream with {end:?}"
        );
        s2.send(b"still-fine").await;
        assert_eq!(s2.recv_exact(10).await, b"still-fine");
    })
    .await;
}

/// (what, path, `:protocol`, headers, expected status).
type FailureRow<'a> = (&'a str, &'a str, Protocol, Vec<(&'a str, &'a str)>, u16);

/// Each failure is answered on its own stream with the §3 status (501 for a `:protocol` the
/// gateway does not serve), the stream then ends, nothing reaches an upstream for the
/// gateway's own answers, and the connection keeps serving.
#[tokio::test]
async fn failures_answered_per_stream_connection_survives() {
    bounded("failures_answered_per_stream_connection_survives", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let refusing = RawUpstream::start(answer(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 16\r\n\r\nupstream says no",
        ))
        .await;
        let gw = h3_config(&up, &refusing, &up).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let authority = conn.authority().to_string();
        let v13 = ("sec-websocket-version", "13");
        let rows: Vec<FailureRow> = vec![
            ("no route", "/nowhere", Protocol::WEBSOCKET, vec![v13], 404),
            ("version missing", "/ws", Protocol::WEBSOCKET, vec![], 426),
            (
                "origin not allowed",
                "/strict",
                Protocol::WEBSOCKET,
                vec![v13, ("origin", "https://evil.example")],
                403,
            ),
            (
                "subprotocol not mapped",
                "/ws",
                Protocol::WEBSOCKET,
                vec![v13, ("sec-websocket-protocol", "stomp")],
                400,
            ),
            (
                "unknown :protocol",
                "/ws",
                Protocol::CONNECT_UDP,
                vec![v13],
                501,
            ),
        ];
        for (what, path, protocol, headers, status) in rows {
            let (res, mut s) = conn
                .connect_with(&authority, path, protocol, &headers)
                .await;
            assert_eq!(res.status(), status, "{what}: {res:?}");
            assert!(!res.headers().contains_key("connection"), "{what}");
            if status == 426 {
                assert_eq!(header(&res, "sec-websocket-version"), Some("13, 8, 7"));
            }
            let (body, end) = s.read_to_end(IO_TIMEOUT).await;
            assert!(!body.is_empty(), "{what}: no reason in the body");
            assert_ne!(end, End::Open, "{what}: stream still open after the answer");
        }
        assert_eq!(up.total_bytes(), 0, "a gateway answer reached an upstream");

        let (res, mut s) = conn.connect_ws("/ws", Some("mqtt")).await;
        assert_eq!(res.status(), 403, "the upstream's refusal is relayed");
        let (body, _) = s.read_to_end(IO_TIMEOUT).await;
        assert_eq!(body, b"upstream says no");

        let (res, mut s) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200, "a tunnel after the failures");
        s.send(b"connection-still-up").await;
        assert_eq!(s.recv_exact(19).await, b"connection-still-up");
    })
    .await;
}

/// Ordinary requests go to the route's `http` upstream with their bodies; without one, 426.
#[tokio::test]
async fn ordinary_requests_over_h3() {
    bounded("ordinary_requests_over_h3", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let web = RawUpstream::start(web_upstream()).await;
        let gw = h3_config(&up, &up, &web).start().await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (res, body) = conn.get("/web/page?q=1").await;
        assert_eq!(res.status(), 200, "{res:?}");
        assert_eq!(header(&res, "x-origin"), Some("web"));
        assert_eq!(body, b"web:/web/page?q=1:0");

        let post = http::Request::post(format!("https://{}/web/upload", conn.authority()))
            .header("content-length", "5")
            .body(())
            .expect("request");
        let (res, mut s) = {
            let mut stream = conn.sender.send_request(post).await.expect("sent");
            stream
                .send_data(bytes::Bytes::from_static(b"hello"))
                .await
                .expect("body");
            stream.finish().await.expect("fin");
            let res = stream.recv_response().await.expect("response");
            (res, crate::support::h3_client::H3Stream { stream })
        };
        assert_eq!(res.status(), 200, "{res:?}");
        let (body, end) = s.read_to_end(IO_TIMEOUT).await;
        assert_eq!(
            (body.as_slice(), end),
            (&b"web:/web/upload:5"[..], End::Fin)
        );

        let (res, body) = conn.get("/ws").await;
        assert_eq!(res.status(), 426, "{res:?}");
        assert!(!body.is_empty());
        assert!(up.conns().is_empty());
    })
    .await;
}

/// `h2_max_concurrent_streams` caps open request streams (a third waits for one to end); a
/// tunnel stream counts for `max_connections_per_ip` beside its connection (429 on the stream,
/// the connection stays up).
#[tokio::test]
async fn stream_and_connection_limits() {
    bounded("stream_and_connection_limits", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h3_config(&up, &up, &up)
            .limit("h2_max_concurrent_streams", "2")
            .start()
            .await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (_, mut s1) = conn.connect_ws("/ws", Some("chat.v2")).await;
        let (_, mut s2) = conn.connect_ws("/ws", Some("chat.v2")).await;
        let mut sender = conn.sender.clone();
        let authority = conn.authority().to_string();
        let third = tokio::spawn(async move {
            let req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(format!("https://{authority}/ws"))
                .extension(Protocol::WEBSOCKET)
                .header("sec-websocket-version", "13")
                .header("sec-websocket-protocol", "chat.v2")
                .body(())
                .expect("request");
            let mut stream = sender.send_request(req).await.expect("sent");
            let res = stream.recv_response().await.expect("response");
            (res.status(), stream)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !third.is_finished(),
            "a third stream was served while two were open"
        );
        s1.finish().await;
        assert_eq!(s1.read_to_end(IO_TIMEOUT).await.1, End::Fin);
        let (status, _s3) = tokio::time::timeout(IO_TIMEOUT, third)
            .await
            .expect("the third stream was not served after one ended")
            .expect("task");
        assert_eq!(status, 200);
        s2.send(b"second").await;
        assert_eq!(s2.recv_exact(6).await, b"second");

        let gw = h3_config(&up, &up, &up)
            .limit("max_connections_per_ip", "2")
            .start()
            .await;
        let before = up.conns().len();
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (res, mut s1) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200);
        let (res, _) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 429, "the connection and one tunnel make 2");
        assert_eq!(
            up.conns().len(),
            before + 1,
            "the refused stream reached an upstream"
        );
        // A second QUIC connection is over the limit itself: its first request gets the 429,
        // then the connection is closed.
        let mut over = H3Conn::connect(gw.addr()).await;
        let (res, _) = over.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(
            res.status(),
            429,
            "a connection over max_connections_per_ip"
        );
        assert!(
            over.closed_within(IO_TIMEOUT).await.is_some(),
            "the refused QUIC connection was not closed after its answer"
        );
        assert_eq!(
            up.conns().len(),
            before + 1,
            "the refused connection reached an upstream"
        );
        s1.send(b"first").await;
        assert_eq!(s1.recv_exact(5).await, b"first");
        s1.finish().await;
        assert_eq!(s1.read_to_end(IO_TIMEOUT).await.1, End::Fin);
        // The tunnel's slot is freed once its task has logged it.
        gw.wait_access_count("the first tunnel's close", 1, IO_TIMEOUT, |e| {
            e.get("closed_by").is_some()
        })
        .await;
        let (res, _) = conn.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200, "a tunnel once the first one ended");
    })
    .await;
}

/// `keepalive_timeout`: a QUIC connection without streams is closed after it; one with an open
/// but silent tunnel is kept up (QUIC PINGs) and the tunnel ends by `idle_timeout` instead.
#[tokio::test]
async fn keepalive_and_idle_timeouts() {
    bounded("keepalive_and_idle_timeouts", async {
        let up = RawUpstream::start(accept_then_hold()).await;
        let gw = h3_config(&up, &up, &up)
            .limit("keepalive_timeout", "\"1s\"")
            .limit("idle_timeout", "\"3s\"")
            .start()
            .await;
        let started = tokio::time::Instant::now();
        let idle = H3Conn::connect(gw.addr()).await;
        let mut busy = H3Conn::connect(gw.addr()).await;
        let (res, mut s) = busy.connect_ws("/ws", Some("chat.v2")).await;
        assert_eq!(res.status(), 200);
        s.send(b"x").await;
        assert!(
            idle.closed_within(Duration::from_secs(4)).await.is_some(),
            "a connection without streams still up 4s in (keepalive_timeout 1s)"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "closed too early"
        );
        assert!(
            busy.closed_within(Duration::from_millis(10))
                .await
                .is_none(),
            "the connection with an open tunnel was closed with the idle one"
        );
        let (_, end) = s.read_to_end(Duration::from_secs(5)).await;
        assert_ne!(
            end,
            End::Open,
            "the silent tunnel outlived idle_timeout (3s)"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(2500),
            "the tunnel ended before idle_timeout"
        );
        assert!(
            busy.quic.close_reason().is_none(),
            "the connection ended with its tunnel, not by the tunnel's idle_timeout"
        );
        assert!(
            busy.closed_within(Duration::from_secs(4)).await.is_some(),
            "the connection outlived keepalive_timeout once its tunnel ended"
        );
    })
    .await;
}

/// SIGHUP swaps the QUIC certificate for new connections: a name only the renewed certificate
/// covers fails before and verifies after.
#[tokio::test]
async fn sighup_swaps_quic_certificate() {
    bounded("sighup_swaps_quic_certificate", async {
        let dir = unique_temp_dir("h3-sighup");
        let (live_cert, live_key) = (dir.join("live.pem"), dir.join("live-key.pem"));
        std::fs::copy(dev_cert("server.pem"), &live_cert).expect("copy");
        std::fs::copy(dev_cert("server-key.pem"), &live_key).expect("copy");
        let renewed = dir.join("renewed");
        std::fs::create_dir_all(&renewed).expect("dir");
        for f in ["ca.pem", "ca-key.pem"] {
            std::fs::copy(dev_cert(f), renewed.join(f)).expect("copy the dev CA");
        }
        let out = renewed.to_string_lossy().into_owned();
        let (code, stdout, stderr) =
            run_cli(&["certs", "--out", &out, "--name", "rotated.test"]).await;
        assert_eq!(code, 0, "certs: {stdout} {stderr}");

        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::new(&live_cert, &live_key).http3(true))
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").fallback("app"))
            .start()
            .await;
        let ca = dev_cert("ca.pem");
        let before = H3Conn::connect_as(gw.addr(), "rotated.test", &ca).await;
        assert!(before.is_err(), "rotated.test verified before the renewal");
        let mut kept = H3Conn::connect(gw.addr()).await;
        let (res, mut s) = kept.connect_ws("/ws", None).await;
        assert_eq!(res.status(), 200);

        for (from, to) in [("server.pem", &live_cert), ("server-key.pem", &live_key)] {
            let tmp = to.with_extension("new");
            std::fs::copy(renewed.join(from), &tmp).expect("copy");
            std::fs::rename(&tmp, to).expect("rename");
        }
        let mark = gw.log_mark();
        gw.sighup().await;
        gw.wait_event_after(mark, RELOADED, IO_TIMEOUT).await;
        let after = H3Conn::connect_as(gw.addr(), "rotated.test", &ca).await;
        assert!(
            after.is_ok(),
            "rotated.test after SIGHUP: {:?}",
            after.err()
        );
        s.send(b"kept").await;
        assert_eq!(
            s.recv_exact(4).await,
            b"kept",
            "the open tunnel was touched"
        );
    })
    .await;
}

/// SIGTERM: the h3 connection gets GOAWAY, its open tunnel keeps working, and the gateway
/// exits 0 once that tunnel has ended.
#[tokio::test]
async fn sigterm_sends_goaway_and_tunnels_live_on() {
    bounded("sigterm_sends_goaway_and_tunnels_live_on", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let mut gw = h3_config(&up, &up, &up)
            .limit("drain_timeout", "\"10s\"")
            .start()
            .await;
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (_, mut s) = conn.connect_ws("/ws", Some("chat.v2")).await;
        s.send(b"before").await;
        assert_eq!(s.recv_exact(6).await, b"before");
        gw.signal(Signal::Term);
        assert!(
            conn.goaway_within(Duration::from_secs(2)).await,
            "no GOAWAY within 2s of SIGTERM"
        );
        s.send(b"draining").await;
        assert_eq!(s.recv_exact(8).await, b"draining");
        s.finish().await;
        assert_eq!(s.read_to_end(IO_TIMEOUT).await.1, End::Fin);
        let status = gw
            .wait_exit(IO_TIMEOUT)
            .await
            .expect("exited after the drain");
        assert!(status.success(), "{status:?}");
    })
    .await;
}

/// `switchyard bench` over h2 and h3 (`--http 2|3`, a `wss://` target): handshakes and bulk
/// against the gateway in front of an echoing upstream, every operation succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_h2_and_h3_tunnels() {
    bounded("bench_measures_h2_and_h3_tunnels", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h3_config(&up, &up, &up)
            .route(Route::new("/bench").fallback("chat"))
            .start()
            .await;
        let target = format!("wss://localhost:{}/bench", gw.addr().port());
        let ca = dev_cert("ca.pem").to_string_lossy().into_owned();
        for http in ["2", "3"] {
            // Few workers and a whole second: a debug build's QUIC handshakes in a loaded
            // test run must not take the whole measurement.
            for (mode, width) in [("handshakes", "--workers"), ("bulk", "--tunnels")] {
                let args = [
                    "bench",
                    mode,
                    "--target",
                    &target,
                    "--http",
                    http,
                    "--ca",
                    &ca,
                    "--duration",
                    "1s",
                    width,
                    "2",
                ];
                let (code, stdout, stderr) = run_cli(&args).await;
                assert_eq!(code, 0, "bench {mode} --http {http}: {stdout} {stderr}");
                let line: serde_json::Value =
                    serde_json::from_str(stdout.trim()).expect("one JSON line");
                assert!(
                    line["count"].as_u64() > Some(0),
                    "--http {http} {mode}: {line} {stderr}"
                );
                assert_eq!(line["failures"], 0, "--http {http} {mode}: {line}");
            }
        }
    })
    .await;
}

/// SIGHUP toggles `http3`: turned off, Alt-Svc goes and QUIC is no longer served (the TCP
/// side keeps its socket); turned on again, the UDP socket is bound at the same port and both
/// come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_http3_off_and_on() {
    bounded("sighup_turns_http3_off_and_on", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let on = h3_config(&up, &up, &up).build();
        let off = on.replacen("http3 = true\n", "", 1);
        assert_ne!(on, off);
        let gw = Gateway::start(&on).await;
        let want = format!("h3=\":{}\"", gw.addr().port());
        let alt_svc = || async {
            let mut h2 = H2Conn::connect(gw.addr()).await;
            let req = h2.get_request("/ws");
            h2.open(req, true)
                .await
                .header("alt-svc")
                .map(str::to_owned)
        };
        let echo_over_h3 = || async {
            let mut conn = H3Conn::connect(gw.addr()).await;
            let (res, mut s) = conn.connect_ws("/ws", Some("chat.v2")).await;
            assert_eq!(res.status(), 200);
            s.send(b"h3").await;
            assert_eq!(s.recv_exact(2).await, b"h3");
            conn.quic.close(0u32.into(), b"");
        };
        echo_over_h3().await;
        assert_eq!(alt_svc().await.as_deref(), Some(want.as_str()));

        assert!(is_event(&gw.reload(&off).await, RELOADED));
        assert_eq!(alt_svc().await, None, "Alt-Svc still sent with http3 off");
        let ca = dev_cert("ca.pem");
        assert!(
            H3Conn::connect_as(gw.addr(), "localhost", &ca)
                .await
                .is_err(),
            "QUIC still served with http3 off"
        );

        assert!(is_event(&gw.reload(&on).await, RELOADED));
        assert_eq!(alt_svc().await.as_deref(), Some(want.as_str()));
        echo_over_h3().await;
    })
    .await;
}
