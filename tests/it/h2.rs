//! SPEC §6 / RFC 8441: WebSockets over h2 on a TLS listener, bridged to HTTP/1.1 upstreams.
//! The client is the `h2` crate over tokio-rustls with ALPN h2 (support::h2_client).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::h2_client::{H2Conn, H2Stream, send_all};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use h2::Reason;

/// Routes shared by most tests: `/ws` maps `chat.v2` -> chat and `mqtt` -> mqtt (client order
/// wins), `/strict` has an origin allowlist, `/web` has an `http` upstream.
fn h2_config(chat: &RawUpstream, mqtt: &RawUpstream, web: &RawUpstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .tls_h2()
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

/// An http upstream: `200`, `X-Origin: web`, body `web:<target>`.
fn web_upstream() -> Script {
    respond(|head| {
        let body = format!("web:{}", head.target);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: web\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
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

async fn metrics_text(admin: std::net::SocketAddr) -> String {
    let req = ClientRequest::plain(&admin.to_string(), "/metrics");
    let (mut c, _) = exchange(admin, &req.header("Connection", "close"), b"").await;
    let (body, _closed) = c.read_to_eof(IO_TIMEOUT).await;
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn settings_offer_extended_connect_over_alpn_h2() {
    bounded("settings_offer_extended_connect_over_alpn_h2", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&up, &up, &up).start().await;
        let conn = H2Conn::connect(gw.addr()).await;
        assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]), "ALPN");
        assert!(
            conn.extended_connect_enabled(),
            "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 missing from the server's SETTINGS"
        );
    })
    .await;
}

/// The stream is routed by subprotocol; the upstream gets an ordinary HTTP/1.1 upgrade with a
/// fresh key of its own (the client's stray key is dropped); the 200 carries the selected
/// subprotocol and the upstream's extensions; metrics count it as status 200.
#[tokio::test]
async fn extended_connect_routed_by_subprotocol_with_fresh_key() {
    bounded(
        "extended_connect_routed_by_subprotocol_with_fresh_key",
        async {
            let chat = RawUpstream::start(accept_then_echo(b"")).await;
            let mqtt = RawUpstream::start(accept_with_extension_then_echo()).await;
            let gw = h2_config(&chat, &mqtt, &chat).admin().start().await;
            let mut conn = H2Conn::connect(gw.addr()).await;
            let stray_key = new_key();
            let mut req = conn.websocket_request("/ws", Some("mqtt, chat.v2"), Some("13"));
            req.headers_mut()
                .insert("sec-websocket-key", stray_key.parse().unwrap());
            req.headers_mut().insert(
                "sec-websocket-extensions",
                "permessage-deflate".parse().unwrap(),
            );
            let mut s = conn.open(req, false).await;
            assert_eq!(s.head.status, 200, "{:?}", s.head);
            assert_eq!(s.header("sec-websocket-protocol"), Some("mqtt"));
            assert_eq!(
                s.header("sec-websocket-extensions"),
                Some("permessage-deflate")
            );
            for name in [
                "sec-websocket-version",
                "sec-websocket-accept",
                "connection",
            ] {
                assert!(!s.head.headers.contains_key(name), "{name} in {:?}", s.head);
            }
            s.send_all(b"hello-over-h2").await;
            assert_eq!(s.recv_exact(13).await, b"hello-over-h2");

            assert!(chat.conns().is_empty(), "chat upstream was dialled");
            let log = mqtt.conn(0, IO_TIMEOUT).await;
            let head = log.head().expect("request head");
            assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "/ws"));
            let raw = log.received();
            assert!(
                raw.starts_with(b"GET /ws HTTP/1.1\r\n"),
                "request line: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
            let h = &head.headers;
            assert_eq!(h.tokens("upgrade"), ["websocket"]);
            assert!(h.tokens("connection").contains(&"upgrade".to_string()));
            assert_eq!(h.all("sec-websocket-version"), ["13"]);
            assert_eq!(h.all("sec-websocket-protocol"), ["mqtt"]);
            assert_eq!(h.all("sec-websocket-extensions"), ["permessage-deflate"]);
            assert_eq!(h.all("x-forwarded-proto"), ["https"]);
            assert!(h.has("host"), "no Host: {h:?}");
            let keys = h.all("sec-websocket-key");
            assert_eq!(keys.len(), 1, "Sec-WebSocket-Key lines: {keys:?}");
            assert_ne!(keys[0], stray_key, "the client's own key was forwarded");
            let nonce = B64.decode(keys[0]).expect("key is base64");
            assert_eq!(nonce.len(), 16, "key is not a 16-byte nonce");
            assert_eq!(log.after_head(), b"hello-over-h2");

            // A second stream gets a key of its own.
            let mut s2 = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;
            s2.send_all(b"2").await;
            assert_eq!(s2.recv_exact(1).await, b"2");
            let second = mqtt.conn(1, IO_TIMEOUT).await.head().expect("head");
            assert_ne!(second.headers.get("sec-websocket-key"), Some(keys[0]));

            let metrics = metrics_text(gw.admin().expect("admin")).await;
            assert!(
                metrics.contains(r#"switchyard_handshakes_total{route="/ws",status="200"} 2"#),
                "h2 successes are not counted as status 200:\n{metrics}"
            );
        },
    )
    .await;
}

/// 4 MiB of random bytes each way at once, in random-sized writes, echoed verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_4mib_each_way() {
    bounded("integrity_4mib_each_way", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&up, &up, &up).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let H2Stream {
            mut send, mut recv, ..
        } = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        let data = Arc::new(random_bytes(4 << 20, 0x4242));
        let tx = data.clone();
        let writer = tokio::spawn(async move {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut sent = 0;
            while sent < tx.len() {
                let n = chunk_len(&mut rng, tx.len() - sent);
                send_all(&mut send, &tx[sent..sent + n]).await;
                sent += n;
            }
            send
        });
        let mut got = Vec::with_capacity(data.len());
        while got.len() < data.len() {
            let chunk =
                tokio::time::timeout(IO_TIMEOUT, crate::support::h2_client::recv_chunk(&mut recv))
                    .await
                    .expect("echo stalled")
                    .expect("stream failed")
                    .expect("stream ended early");
            got.extend_from_slice(&chunk);
        }
        assert!(got == *data, "echo differs from what was sent");
        let _send = writer.await.expect("writer");
        assert_eq!(up.conn(0, IO_TIMEOUT).await.after_head().len(), data.len());
    })
    .await;
}

/// Each failure row is answered on its own stream with SPEC §3's status and no
/// connection-specific header, the stream is then over, nothing reaches an upstream, and the
/// connection keeps serving: a tunnel opened after all the failures works.
#[tokio::test]
async fn failures_answered_per_stream_connection_survives() {
    bounded("failures_answered_per_stream_connection_survives", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&up, &up, &up).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        struct Row {
            name: &'static str,
            path: &'static str,
            protocols: Option<&'static str>,
            version: Option<&'static str>,
            origin: Option<&'static str>,
            status: u16,
        }
        let row = |name, path, protocols, version, status| Row {
            name,
            path,
            protocols,
            version,
            origin: None,
            status,
        };
        let rows = [
            row(
                "unsupported version",
                "/ws",
                Some("chat.v2"),
                Some("25"),
                426,
            ),
            row("version missing", "/ws", Some("chat.v2"), None, 426),
            row("no route", "/nowhere", Some("chat.v2"), Some("13"), 404),
            row(
                "non-token subprotocol",
                "/ws",
                Some("chat/v2"),
                Some("13"),
                400,
            ),
            row(
                "repeated subprotocol",
                "/ws",
                Some("mqtt, mqtt"),
                Some("13"),
                400,
            ),
            row(
                "unmapped subprotocol",
                "/ws",
                Some("stomp"),
                Some("13"),
                400,
            ),
            Row {
                origin: Some("https://evil.example"),
                ..row(
                    "origin not allowed",
                    "/strict",
                    Some("chat.v2"),
                    Some("13"),
                    403,
                )
            },
        ];
        for r in rows {
            let mut req = conn.websocket_request(r.path, r.protocols, r.version);
            if let Some(o) = r.origin {
                req.headers_mut().insert("origin", o.parse().unwrap());
            }
            let mut s = conn.open(req, false).await;
            assert_eq!(s.head.status, r.status, "{}: {:?}", r.name, s.head);
            assert!(
                !s.head.headers.contains_key("connection")
                    && !s.head.headers.contains_key("upgrade"),
                "{}: connection-specific header on h2: {:?}",
                r.name,
                s.head
            );
            assert!(
                s.header("content-type")
                    .unwrap_or("")
                    .starts_with("text/plain"),
                "{}: {:?}",
                r.name,
                s.head
            );
            if r.status == 426 {
                assert_eq!(
                    s.header("sec-websocket-version"),
                    Some("13, 8, 7"),
                    "{}: the configured version list",
                    r.name
                );
            }
            let (body, end) = s.recv_to_end().await;
            assert!(end.is_ok(), "{}: body ended with {end:?}", r.name);
            assert!(!body.is_empty(), "{}: empty body", r.name);
            // RFC 9113 §8.1: the request side is still open, so the server resets it.
            assert_eq!(
                s.reset_within(IO_TIMEOUT).await,
                Some(Reason::NO_ERROR),
                "{}: stream not reset after the answer",
                r.name
            );
        }
        assert!(
            up.conns().is_empty(),
            "a failed handshake reached the upstream"
        );
        let mut s = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        s.send_all(b"still-up").await;
        assert_eq!(s.recv_exact(8).await, b"still-up");
    })
    .await;
}

/// Two streams on one connection, each its own tunnel to its own upstream, bytes not crossed.
#[tokio::test]
async fn two_concurrent_streams_two_upstreams() {
    bounded("two_concurrent_streams_two_upstreams", async {
        let chat = RawUpstream::start(accept_then_echo(b"")).await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut s1 = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        let mut s2 = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;
        s1.send_all(b"to-chat-1").await;
        s2.send_all(b"to-mqtt-2").await;
        assert_eq!(s2.recv_exact(9).await, b"to-mqtt-2");
        assert_eq!(s1.recv_exact(9).await, b"to-chat-1");
        assert_eq!(chat.conn(0, IO_TIMEOUT).await.after_head(), b"to-chat-1");
        assert_eq!(mqtt.conn(0, IO_TIMEOUT).await.after_head(), b"to-mqtt-2");
        assert_eq!((chat.conns().len(), mqtt.conns().len()), (1, 1));
    })
    .await;
}

/// A client RST_STREAM closes that stream's upstream connection only.
#[tokio::test]
async fn client_reset_closes_only_its_tunnel() {
    bounded("client_reset_closes_only_its_tunnel", async {
        let chat = RawUpstream::start(accept_then_hold()).await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut s1 = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        let mut s2 = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;
        s1.send_all(b"before-reset").await;
        let log = chat.conn(0, IO_TIMEOUT).await;
        assert!(
            log.wait_after_head(12, IO_TIMEOUT).await,
            "stream 1's DATA did not reach its upstream"
        );
        s1.send.send_reset(Reason::CANCEL);
        assert!(
            log.wait_eof(IO_TIMEOUT).await,
            "upstream of the reset stream still open"
        );
        s2.send_all(b"still-fine").await;
        assert_eq!(s2.recv_exact(10).await, b"still-fine");
        assert!(
            !mqtt.conn(0, IO_TIMEOUT).await.eof(),
            "the other tunnel was closed"
        );
        gw.wait_log("tunnel closed by the client", IO_TIMEOUT, |e| {
            e.get("target").and_then(|t| t.as_str()) == Some("access")
                && e.get("closed_by").and_then(|c| c.as_str()) == Some("client")
        })
        .await;
    })
    .await;
}

/// An upstream TCP reset ends its stream with RST_STREAM (after the bytes it had sent); the
/// other stream carries on.
#[tokio::test]
async fn upstream_reset_resets_the_stream() {
    bounded("upstream_reset_resets_the_stream", async {
        let chat = RawUpstream::start(script(|mut c| async move {
            if !c.accept_upgrade().await {
                return;
            }
            c.recv_exact(9).await;
            c.abort();
        }))
        .await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut s1 = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        let mut s2 = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;
        s1.send_all(b"reset-now").await;
        let (data, _end) = s1.recv_to_end().await;
        assert!(data.is_empty(), "bytes on the reset stream: {data:?}");
        assert!(
            s1.reset_within(IO_TIMEOUT).await.is_some(),
            "upstream reset did not reset the stream"
        );
        s2.send_all(b"still-fine").await;
        assert_eq!(s2.recv_exact(10).await, b"still-fine");
    })
    .await;
}

/// END_STREAM is a half-close (SPEC §5): the upstream sees EOF, can still answer, and its own
/// EOF ends the stream cleanly, without a reset.
#[tokio::test]
async fn end_stream_is_half_close() {
    bounded("end_stream_is_half_close", async {
        let chat = RawUpstream::start(script(|mut c| async move {
            if !c.accept_upgrade().await {
                return;
            }
            let got = c.read_to_eof().await;
            let _ = c.send(format!("got {} bytes", got.len()).as_bytes()).await;
            c.shutdown_write().await;
        }))
        .await;
        let gw = h2_config(&chat, &chat, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut s = conn
            .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
            .await;
        s.send_all(b"last-words").await;
        s.send
            .send_data(bytes::Bytes::new(), true)
            .expect("END_STREAM");
        let (data, end) = s.recv_to_end().await;
        assert_eq!(data, b"got 10 bytes");
        assert!(end.is_ok(), "stream ended with {end:?}");
        assert_eq!(s.reset_within(Duration::from_millis(300)).await, None);
    })
    .await;
}

/// Ordinary h2 requests go to the route's `http` upstream; without one they get 426.
#[tokio::test]
async fn ordinary_requests_over_h2() {
    bounded("ordinary_requests_over_h2", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let web = RawUpstream::start(web_upstream()).await;
        let gw = h2_config(&up, &up, &web).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let req = conn.get_request("/web/page?q=1");
        let mut s = conn.open(req, true).await;
        assert_eq!(s.head.status, 200, "{:?}", s.head);
        assert_eq!(s.header("x-origin"), Some("web"));
        let (body, end) = s.recv_to_end().await;
        assert!(end.is_ok());
        assert_eq!(body, b"web:/web/page?q=1");

        let req = conn.get_request("/ws");
        let mut s = conn.open(req, true).await;
        assert_eq!(s.head.status, 426, "{:?}", s.head);
        assert!(!s.head.headers.contains_key("connection"));
        let (body, end) = s.recv_to_end().await;
        assert!(end.is_ok() && !body.is_empty());
        assert!(up.conns().is_empty());
    })
    .await;
}

/// An upstream answering an upgrade with a 2xx other than 101 must not look like an open
/// tunnel to an h2 client (a 2xx to CONNECT means exactly that): 502.
#[tokio::test]
async fn upstream_2xx_instead_of_101_is_502() {
    bounded("upstream_2xx_instead_of_101_is_502", async {
        let up =
            RawUpstream::start(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")).await;
        let gw = h2_config(&up, &up, &up).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let req = conn.websocket_request("/ws", Some("chat.v2"), Some("13"));
        let mut s = conn.open(req, false).await;
        assert_eq!(s.head.status, 502, "{:?}", s.head);
        let (_, end) = s.recv_to_end().await;
        assert!(end.is_ok());
    })
    .await;
}

/// Waits until `progress` has not moved for a while (the sender is blocked by backpressure),
/// or until it reaches `total`; returns its value then.
async fn settled(progress: &AtomicUsize, total: usize) -> usize {
    let mut last = usize::MAX;
    let mut still = 0;
    loop {
        let now = progress.load(Ordering::Acquire);
        if now >= total {
            return now;
        }
        still = if now == last { still + 1 } else { 0 };
        if still >= 5 {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PUSH_TOTAL: usize = 16 << 20;

/// A client that stops reading one stream: the gateway stops reading that stream's upstream
/// (bounded buffering: the upstream cannot push everything), the other stream keeps flowing,
/// and once the client reads again every byte arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_reader_pushes_back_on_its_upstream_only() {
    bounded("slow_client_reader_pushes_back_on_its_upstream_only", async {
        let pushed = Arc::new(AtomicUsize::new(0));
        let data = Arc::new(random_bytes(PUSH_TOTAL, 0x51ee));
        let (p, d) = (pushed.clone(), data.clone());
        let chat = RawUpstream::start(script(move |mut c| {
            let (p, d) = (p.clone(), d.clone());
            async move {
                if !c.accept_upgrade().await {
                    return;
                }
                for chunk in d.chunks(16 * 1024) {
                    if c.send(chunk).await.is_err() {
                        return;
                    }
                    p.fetch_add(chunk.len(), Ordering::Release);
                }
                c.read_to_eof().await;
            }
        }))
        .await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut slow = conn.websocket("/ws", Some("chat.v2"), Some("chat.v2")).await;
        let other = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;

        let stuck = settled(&pushed, PUSH_TOTAL).await;
        assert!(
            stuck < PUSH_TOTAL,
            "the upstream pushed all {PUSH_TOTAL} bytes to a client that reads nothing: unbounded buffering"
        );
        let _other = echo_probe(other, 9, "the other stream stalled behind the slow reader").await;

        let all = slow.recv_exact(PUSH_TOTAL).await;
        assert!(all == *data, "the slow stream's bytes differ once read");
    })
    .await;
}

/// Pushes `data` on `send` as fast as the peer's windows allow, counting progress in `sent`.
/// No IO_TIMEOUT on the window: waiting for it is what the caller observes.
/// Returns the stream when done: dropping it would reset the stream (and lose bytes in flight).
fn push(
    mut send: h2::SendStream<bytes::Bytes>,
    data: Arc<Vec<u8>>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<h2::SendStream<bytes::Bytes>> {
    tokio::spawn(async move {
        let mut left = &data[..];
        while !left.is_empty() {
            send.reserve_capacity(left.len().min(1 << 20));
            let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n.min(left.len()),
                other => panic!("stream failed while pushing: {other:?}"),
            };
            if n == 0 {
                continue;
            }
            send.send_data(bytes::Bytes::copy_from_slice(&left[..n]), false)
                .expect("DATA");
            left = &left[n..];
            sent.fetch_add(n, Ordering::Release);
        }
        send
    })
}

/// Upstreams that stop reading: their streams' windows close (the client cannot push without
/// bound), and the bytes held for them do not use up the connection window, so another stream
/// of the same connection keeps flowing both ways. Three stalled streams: with equal stream and
/// connection windows (hyper's defaults) they would stall the whole connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstreams_push_back_on_their_streams_only() {
    bounded("stalled_upstreams_push_back_on_their_streams_only", async {
        const STALLED: usize = 3;
        let resume = Arc::new(tokio::sync::Semaphore::new(0));
        let r = resume.clone();
        let chat = RawUpstream::start(script(move |mut c| {
            let r = r.clone();
            async move {
                if !c.accept_upgrade().await {
                    return;
                }
                let Ok(_go) = r.acquire().await else {
                    return;
                };
                while c.recv().await.is_some() {}
            }
        }))
        .await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = h2_config(&chat, &mqtt, &chat).start().await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let (mut pushers, mut receivers) = (Vec::new(), Vec::new());
        for i in 0..STALLED {
            let stalled = conn.websocket("/ws", Some("chat.v2"), Some("chat.v2")).await;
            let data = Arc::new(random_bytes(PUSH_TOTAL, 0xb10c + i as u64));
            let sent = Arc::new(AtomicUsize::new(0));
            pushers.push((push(stalled.send, data.clone(), sent.clone()), data, sent));
            receivers.push(stalled.recv);
        }
        for (i, (_, _, sent)) in pushers.iter().enumerate() {
            let stuck = settled(sent, PUSH_TOTAL).await;
            assert!(
                stuck < PUSH_TOTAL,
                "stream {i}: the client pushed all {PUSH_TOTAL} bytes towards an upstream that reads nothing"
            );
        }
        let other = conn.websocket("/ws", Some("mqtt"), Some("mqtt")).await;
        let _other = echo_probe(other, 1, "the other stream stalled behind the stalled upstreams").await;

        resume.add_permits(STALLED);
        let logs: Vec<_> = chat.conns();
        assert_eq!(logs.len(), STALLED);
        let mut open = Vec::new();
        for (pusher, _, _) in pushers.iter_mut() {
            let send = tokio::time::timeout(Duration::from_secs(15), pusher)
                .await
                .expect("pushing did not resume")
                .expect("pusher");
            open.push(send);
        }
        for log in logs {
            assert!(
                log.wait_after_head(PUSH_TOTAL, Duration::from_secs(15)).await,
                "an upstream did not get every byte"
            );
            let got = log.after_head();
            assert!(
                pushers.iter().any(|(_, data, _)| got == **data),
                "an upstream's bytes differ from every stream's"
            );
        }
        drop((open, receivers));
    })
    .await;
}

/// SPEC §6: over `max_connections` on an h2 TLS listener the first stream gets 503 with
/// Retry-After (no Connection header), then the connection goes away (GOAWAY).
#[tokio::test]
async fn connection_limit_answered_on_first_stream_then_goaway() {
    bounded(
        "connection_limit_answered_on_first_stream_then_goaway",
        async {
            let up = RawUpstream::start(accept_then_echo(b"")).await;
            let gw = h2_config(&up, &up, &up)
                .limit("max_connections", "1")
                .start()
                .await;
            let _holder = H2Conn::connect(gw.addr()).await;
            let mut refused = H2Conn::connect(gw.addr()).await;
            assert!(refused.extended_connect_enabled());
            let req = refused.websocket_request("/ws", Some("chat.v2"), Some("13"));
            let mut s = refused.open(req, false).await;
            assert_eq!(s.head.status, 503, "{:?}", s.head);
            assert_eq!(s.header("retry-after"), Some("1"));
            assert!(!s.head.headers.contains_key("connection"));
            let (body, end) = s.recv_to_end().await;
            assert!(end.is_ok() && !body.is_empty(), "{end:?} {body:?}");
            let ended = refused.ended_within(IO_TIMEOUT).await;
            assert!(
                ended.is_some(),
                "the refused connection is still open after its answer (no GOAWAY/close)"
            );
            assert!(up.conns().is_empty());
        },
    )
    .await;
}

/// Sends 1 MiB of random bytes on `stream` while reading their echo back, each chunk within
/// `IO_TIMEOUT` (else panics with `stalled`), and hands the stream back.
async fn echo_probe(stream: H2Stream, seed: u64, stalled: &str) -> H2Stream {
    let probe = random_bytes(1 << 20, seed);
    let H2Stream {
        head,
        mut send,
        mut recv,
    } = stream;
    let p2 = probe.clone();
    let writer = tokio::spawn(async move {
        send_all(&mut send, &p2).await;
        send
    });
    let mut got = Vec::new();
    while got.len() < probe.len() {
        let chunk =
            tokio::time::timeout(IO_TIMEOUT, crate::support::h2_client::recv_chunk(&mut recv))
                .await
                .expect(stalled)
                .expect("stream failed")
                .expect("stream ended");
        got.extend_from_slice(&chunk);
    }
    assert!(got == probe, "the other stream's echo differs");
    let send = writer.await.expect("writer");
    H2Stream { head, send, recv }
}
