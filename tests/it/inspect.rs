//! SPEC §9 end to end: inspected tunnels through the real binary, its config, access log and
//! `/metrics`, with tokio-tungstenite clients, raw frames both ways, and an upstream driven frame
//! by frame (support::frame_upstream). The engine's logic on in-memory rigs is unit-tested in
//! `src/tunnel/inspect.rs`; these prove the wiring: route keys, signals, reload, transports.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::support::*;

/// An inspected route on `path` (fallback `app`) with extra route `keys`.
fn insp_route(path: &str, keys: &[(&str, &str)]) -> Route {
    keys.iter().fold(
        Route::new(path).fallback("app").key("inspect", "true"),
        |r, (k, v)| r.key(k, v),
    )
}

/// One inspected route `/ws` with `keys` over `up`, plus an admin listener.
async fn insp_gateway(up: &FrameUpstream, keys: &[(&str, &str)]) -> Gateway {
    ConfigBuilder::new()
        .admin()
        .upstream("app", &[up.addr()])
        .route(insp_route("/ws", keys))
        .start()
        .await
}

/// Opens a tunnel by hand over raw TCP.
async fn open_raw(gw: &Gateway, path: &str) -> Client {
    let req = ClientRequest::ws(&gw.addr().to_string(), path);
    let (c, head) = exchange(gw.addr(), &req, b"").await;
    assert_101(&head, &req.key, None);
    c
}

/// The closing access event of the tunnel opened on `path`.
async fn closed_event(gw: &Gateway, path: &str) -> Value {
    gw.wait_log(&format!("tunnel_closed for {path}"), IO_TIMEOUT, |e| {
        e.get("target").and_then(Value::as_str) == Some("access")
            && is_event(e, "tunnel_closed")
            && e.get("path").and_then(Value::as_str) == Some(path)
    })
    .await
}

/// Asserts each `(field, value)` of an access event.
fn assert_fields(ev: &Value, want: &[(&str, Value)]) {
    for (field, value) in want {
        assert_eq!(ev.get(*field), Some(value), "{field} in {ev}");
    }
}

/// The next message from a tokio-tungstenite stream, within [`IO_TIMEOUT`].
async fn next_msg<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Asserts that a raw client's next frame is a gateway close (unmasked) with `code` and
/// `reason`, and that the connection then ends with nothing after it.
async fn expect_close_then_eof(c: &mut Client, code: u16, reason: &str, what: &str) {
    let f = read_frame(c).await;
    assert!(
        f.is_close(code, reason) && f.mask.is_none(),
        "{what}: the client got {} {:?}, expected an unmasked close {code} {reason:?}",
        describe_frames(std::slice::from_ref(&f)),
        f.close_reason()
    );
    let (rest, closed) = c.read_to_eof(IO_TIMEOUT).await;
    assert!(
        closed,
        "{what}: client connection still open after the close"
    );
    assert!(
        rest.is_empty(),
        "{what}: after its close the client got {}",
        describe_frames(&parse_frames(&rest).0)
    );
}

/// The bytes after the first `\r\n\r\n` (a handshake head).
fn after_head(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    &bytes[end + 4..]
}

/// A real client (tokio-tungstenite, its socket tapped) and a driven upstream exchange messages
/// both ways, a fragmented one each way with a ping between the client's fragments; the client
/// closes with 4000 "client bye". Every byte arrives verbatim both ways; the closing event
/// counts them (`engine = inspect`), and `/metrics` shows the messages and the close.
#[tokio::test]
async fn verbatim_both_ways_counted_in_log_and_metrics() {
    bounded("verbatim_both_ways_counted_in_log_and_metrics", async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let gw = insp_gateway(&up, &[]).await;
        let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
        let (tap, wire) = Tap::new(tcp);
        let req = format!("ws://{}/ws/verbatim", gw.addr())
            .into_client_request()
            .expect("request");
        let (mut ws, _) =
            tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, tap))
                .await
                .expect("handshake in time")
                .expect("handshake");
        let peer = up.peer(0).await;

        // Upstream -> client: a text, a binary in three fragments, a 64-bit-length frame.
        let big_down = random_bytes(200_000, 0x1d);
        peer.send(&server_frame(true, op::TEXT, b"welcome"));
        peer.send(&server_frame(false, op::BINARY, b"part one,"));
        peer.send(&server_frame(false, op::CONTINUATION, b" part two,"));
        peer.send(&server_frame(true, op::CONTINUATION, b" part three"));
        peer.send(&server_frame(true, op::BINARY, &big_down));
        assert_eq!(next_msg(&mut ws).await, Message::text("welcome"));
        assert_eq!(
            next_msg(&mut ws).await,
            Message::binary(&b"part one, part two, part three"[..])
        );
        assert!(
            next_msg(&mut ws).await == Message::Binary(big_down),
            "the 200000-byte message differs"
        );

        // Client -> upstream: a text, a 16-bit-length binary, a text in three fragments with a
        // ping between them (RFC 6455 §5.4); the upstream's pong answers the ping.
        ws.send(Message::text("hello")).await.unwrap();
        ws.send(Message::binary(random_bytes(70_000, 0x2e)))
            .await
            .unwrap();
        let frag = |data: &[u8], op: Data, fin| {
            Message::Frame(WsFrame::message(data.to_vec(), OpCode::Data(op), fin))
        };
        ws.send(frag(b"frag-1 ", Data::Text, false)).await.unwrap();
        ws.send(Message::Ping(b"between".to_vec())).await.unwrap();
        ws.send(frag(b"frag-2 ", Data::Continue, false))
            .await
            .unwrap();
        ws.send(frag(b"frag-3", Data::Continue, true))
            .await
            .unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::Pong(b"between".to_vec()));
        peer.wait_frame("the last fragment", IO_TIMEOUT, |f| {
            f.opcode == op::CONTINUATION && f.fin
        })
        .await;
        let texts: Vec<Vec<u8>> = peer
            .frames()
            .into_iter()
            .filter(|f| f.opcode == op::TEXT || f.opcode == op::CONTINUATION)
            .map(|f| f.payload)
            .collect();
        assert_eq!(texts.concat(), b"hellofrag-1 frag-2 frag-3");

        let bye = CloseFrame {
            code: CloseCode::from(4000),
            reason: "client bye".into(),
        };
        ws.send(Message::Close(Some(bye.clone()))).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::Close(Some(bye)));
        let end = tokio::time::timeout(IO_TIMEOUT, ws.next()).await;
        assert!(
            matches!(end, Ok(None) | Ok(Some(Err(_)))),
            "after the close handshake: {end:?}"
        );
        drop(ws);

        let ev = closed_event(&gw, "/ws/verbatim").await;
        assert_fields(
            &ev,
            &[
                ("engine", json!("inspect")),
                ("messages_up", json!(3)),
                ("messages_down", json!(3)),
                // text, binary, 3 fragments, ping, close / text, 3 fragments, big, pong, close
                ("frames_up", json!(7)),
                ("frames_down", json!(7)),
                ("close_code", json!("4000")),
                ("close_reason", json!("client bye")),
                ("close_initiator", json!("client")),
            ],
        );
        // Verbatim: what the client wrote is what the upstream read, and the other way round.
        assert!(
            after_head(&wire.written()) == peer.received(),
            "client -> upstream bytes changed in the tunnel"
        );
        assert!(
            after_head(&wire.read()) == peer.sent(),
            "upstream -> client bytes changed in the tunnel"
        );

        for (dir, n) in [("client_to_upstream", 3.0), ("upstream_to_client", 3.0)] {
            let series =
                format!("switchyard_ws_messages_total{{route=\"/ws\",direction=\"{dir}\"}}");
            wait_metric(&gw, &series, n, IO_TIMEOUT).await;
        }
        let close = r#"switchyard_ws_close_total{route="/ws",code="4000",initiator="client"}"#;
        wait_metric(&gw, close, 1.0, IO_TIMEOUT).await;
    })
    .await;
}

/// max_frame_bytes = 600 (a client frame of 700) and max_message_bytes = 1000 (an upstream
/// message of 3 x 400): the offender gets close 1009, the other side close `close_code` 4002,
/// nothing of the oversized frame reaches it, and the event says closed_by "limit".
#[tokio::test]
async fn limits_close_1009_to_the_offender_and_forward_nothing_oversized() {
    bounded("limits_close_1009_to_the_offender", async {
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let keys = [
            ("max_frame_bytes", "600"),
            ("max_message_bytes", "1000"),
            ("close_code", "4002"),
        ];
        let gw = insp_gateway(&up, &keys).await;

        // A client frame over max_frame_bytes.
        let mut c = open_raw(&gw, "/ws/frame").await;
        let peer = up.peer(0).await;
        let ok = client_frame(true, op::TEXT, b"within the limits");
        c.send(&ok).await.unwrap();
        peer.wait_frame("the small frame", IO_TIMEOUT, |f| f.opcode == op::TEXT)
            .await;
        c.send(&client_frame(true, op::BINARY, &[7; 700]))
            .await
            .unwrap();
        expect_close_then_eof(&mut c, 1009, "too big", "frame over max_frame_bytes").await;
        let close = peer
            .wait_frame("a close", IO_TIMEOUT, |f| f.opcode == op::CLOSE)
            .await;
        assert!(
            close.is_close(4002, "going away") && close.mask.is_some(),
            "upstream close {:?} {:?}",
            close.close_code(),
            close.close_reason()
        );
        let got = peer.received();
        assert_eq!(
            parse_frames(&got),
            (vec![parse_frame(&ok).unwrap().0, close], got.len()),
            "the upstream got more than the small frame and its close"
        );
        assert!(peer.wait_eof(IO_TIMEOUT).await, "upstream not closed");
        let ev = closed_event(&gw, "/ws/frame").await;
        let limit = [
            ("closed_by", json!("limit")),
            ("close_initiator", json!("gateway")),
            ("close_code", json!("1009")),
        ];
        assert_fields(&ev, &limit);

        // An upstream message over max_message_bytes (each frame within max_frame_bytes).
        let mut c = open_raw(&gw, "/ws/message").await;
        let peer = up.peer(1).await;
        let first = [
            server_frame(false, op::BINARY, &[1; 400]),
            server_frame(false, op::CONTINUATION, &[2; 400]),
        ]
        .concat();
        peer.send(&first);
        assert!(
            c.read_exact(first.len()).await == first,
            "the first 800 bytes differ"
        );
        peer.send(&server_frame(true, op::CONTINUATION, &[3; 400]));
        expect_close_then_eof(&mut c, 4002, "going away", "message over max_message_bytes").await;
        let close = peer
            .wait_frame("a close", IO_TIMEOUT, |f| f.opcode == op::CLOSE)
            .await;
        assert!(
            close.close_code() == Some(1009) && close.mask.is_some(),
            "upstream (the offender) got {}",
            describe_frames(&peer.frames())
        );
        let ev = closed_event(&gw, "/ws/message").await;
        assert_fields(&ev, &limit);
    })
    .await;
}

/// An unmasked client frame (raw TCP): the client gets close 1002, the upstream close
/// `close_code` and nothing of the frame; closed_by "protocol".
#[tokio::test]
async fn unmasked_client_frame_is_a_protocol_violation() {
    bounded("unmasked_client_frame_is_a_protocol_violation", async {
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let gw = insp_gateway(&up, &[("close_code", "4003")]).await;
        let mut c = open_raw(&gw, "/ws/unmasked").await;
        let peer = up.peer(0).await;
        let ok = client_frame(true, op::TEXT, b"valid before the violation");
        c.send(&ok).await.unwrap();
        peer.wait_frame("the valid frame", IO_TIMEOUT, |f| f.opcode == op::TEXT)
            .await;
        c.send(&server_frame(true, op::TEXT, b"unmasked"))
            .await
            .unwrap();
        expect_close_then_eof(&mut c, 1002, "protocol error", "unmasked client frame").await;
        let close = peer
            .wait_frame("a close", IO_TIMEOUT, |f| f.opcode == op::CLOSE)
            .await;
        assert!(close.is_close(4003, "going away") && close.mask.is_some());
        let got = peer.received();
        assert_eq!(
            parse_frames(&got),
            (vec![parse_frame(&ok).unwrap().0, close], got.len()),
            "the upstream got something of the unmasked frame"
        );
        let ev = closed_event(&gw, "/ws/unmasked").await;
        assert_fields(
            &ev,
            &[
                ("closed_by", json!("protocol")),
                ("close_initiator", json!("gateway")),
                ("close_code", json!("1002")),
            ],
        );
    })
    .await;
}

/// SIGTERM while a 4 MiB upstream frame is mid-flight (close_code 1012): the idle direction's
/// close reaches the upstream at once; the client gets the whole frame first, then close 1012
/// "going away"; after both close replies the process exits 0 (drain_timeout is 20 s).
#[tokio::test]
async fn sigterm_drain_lets_a_large_frame_finish_first() {
    bounded("sigterm_drain_lets_a_large_frame_finish_first", async {
        let up = FrameUpstream::start(PeerBehaviour {
            answer_pings: true,
            answer_close: false,
        })
        .await;
        let mut gw = ConfigBuilder::new()
            .limit("drain_timeout", "\"20s\"")
            .upstream("app", &[up.addr()])
            .route(insp_route("/ws", &[("close_code", "1012")]))
            .start()
            .await;
        let mut c = open_raw(&gw, "/ws/drain").await;
        let peer = up.peer(0).await;
        let big = server_frame(true, op::BINARY, &random_bytes(4 << 20, 0x4d));
        let cut = 1 << 20;
        peer.send(&big[..cut]);
        let head = c.read_exact(200_000).await;

        gw.signal(Signal::Term);
        let close = peer
            .wait_frame("a close after SIGTERM", IO_TIMEOUT, |f| {
                f.opcode == op::CLOSE
            })
            .await;
        assert!(close.is_close(1012, "going away") && close.mask.is_some());
        peer.send(&big[cut..]);
        let rest = c.read_exact(big.len() - head.len()).await;
        assert!(
            [head, rest].concat() == big,
            "the frame in flight at SIGTERM did not arrive whole and first"
        );
        let f = read_frame(&mut c).await;
        assert!(
            f.is_close(1012, "going away") && f.mask.is_none(),
            "after the frame the client got {}",
            describe_frames(&[f])
        );

        c.send(&client_frame(true, op::CLOSE, &close_payload(1012, b"")))
            .await
            .unwrap();
        peer.send(&server_frame(true, op::CLOSE, &close_payload(1012, b"")));
        peer.close();
        let (extra, closed) = c.read_to_eof(IO_TIMEOUT).await;
        assert!(
            closed && extra.is_empty(),
            "client: {extra:?}, closed {closed}"
        );
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "exit after the close handshake (drain_timeout 20s): {status:?}\n{}",
            gw.stderr_text()
        );
        let ev = closed_event(&gw, "/ws/drain").await;
        assert_fields(
            &ev,
            &[
                ("closed_by", json!("drain")),
                ("close_initiator", json!("gateway")),
                ("close_code", json!("1012")),
                ("close_reason", json!("going away")),
            ],
        );
    })
    .await;
}

/// ping_interval = 300ms, ping_timeout = 1s: a silent tokio-tungstenite client that answers
/// pings (as tungstenite does while read) is kept for five intervals; the upstream (silent too)
/// is pinged masked and never sees the client's answering pongs; messages still pass after.
#[tokio::test]
async fn keepalive_keeps_a_silent_answering_client() {
    bounded("keepalive_keeps_a_silent_answering_client", async {
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let keys = [("ping_interval", "\"300ms\""), ("ping_timeout", "\"1s\"")];
        let gw = insp_gateway(&up, &keys).await;
        let (mut ws, _) = ws_connect(gw.addr(), "/ws/alive", None).await;
        let peer = up.peer(0).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        while let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await {
            match next {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("the silent client got {other:?}"),
            }
        }
        assert!(
            pings >= 2,
            "{pings} gateway pings in 1.5s (ping_interval 300ms)"
        );

        ws.send(Message::text("still here")).await.unwrap();
        peer.wait_frame("the client's message", IO_TIMEOUT, |f| f.opcode == op::TEXT)
            .await;
        peer.send(&server_frame(true, op::TEXT, b"and here"));
        loop {
            match next_msg(&mut ws).await {
                Message::Ping(_) => {}
                m => {
                    assert_eq!(m, Message::text("and here"));
                    break;
                }
            }
        }
        let frames = peer.frames();
        let to_up: Vec<_> = frames.iter().filter(|f| f.opcode == op::PING).collect();
        assert!(
            frames.iter().all(|f| f.opcode != op::PONG),
            "pongs answering gateway pings reached the upstream: {}",
            describe_frames(&frames)
        );
        assert!(
            !to_up.is_empty() && to_up.iter().all(|f| f.mask.is_some()),
            "gateway pings to the silent upstream: {}",
            describe_frames(&frames)
        );
    })
    .await;
}

/// ping_interval = ping_timeout = 300ms: a raw client that never reads or answers is given up
/// after ping_interval + ping_timeout (not sooner, and within 700ms of slack): the live upstream
/// gets close 1001 (masked), the dead client's unread bytes hold a ping and close 1001, both are
/// closed, and the event says closed_by "ping_timeout".
#[tokio::test]
async fn keepalive_closes_a_dead_client_within_interval_plus_timeout() {
    bounded("keepalive_closes_a_dead_client", async {
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let keys = [
            ("ping_interval", "\"300ms\""),
            ("ping_timeout", "\"300ms\""),
        ];
        let gw = insp_gateway(&up, &keys).await;
        let before = Instant::now();
        let mut c = open_raw(&gw, "/ws/dead").await;
        let peer = up.peer(0).await;
        let close = peer
            .wait_frame("a close", Duration::from_secs(3), |f| f.opcode == op::CLOSE)
            .await;
        let after = before.elapsed();
        assert!(
            close.close_code() == Some(1001) && close.mask.is_some(),
            "upstream got {}",
            describe_frames(&peer.frames())
        );
        assert!(
            after >= Duration::from_millis(590) && after <= Duration::from_millis(1300),
            "ended {after:?} after the client's last byte; expected 600ms (+700ms slack)"
        );
        let (unread, closed) = c.read_to_eof(IO_TIMEOUT).await;
        assert!(closed, "the dead client's connection is still open");
        let (frames, used) = parse_frames(&unread);
        assert_eq!(used, unread.len(), "a partial frame to the dead client");
        let pings = frames.iter().filter(|f| f.opcode == op::PING).count();
        assert!(
            pings >= 1
                && frames.iter().all(|f| f.mask.is_none())
                && frames.last().and_then(Frame::close_code) == Some(1001),
            "the dead client's unread bytes: {}",
            describe_frames(&frames)
        );
        let ev = closed_event(&gw, "/ws/dead").await;
        assert_fields(
            &ev,
            &[
                ("closed_by", json!("ping_timeout")),
                ("close_initiator", json!("gateway")),
                ("close_code", json!("1001")),
            ],
        );
    })
    .await;
}

/// SIGHUP with a config that drops route /gone: its tunnel gets close `close_code` 4001 "going
/// away" on both sides (closed_by "drain"); the tunnel on /keep carries messages on untouched.
#[tokio::test]
async fn reload_removing_a_route_closes_its_tunnel_politely() {
    bounded(
        "reload_removing_a_route_closes_its_tunnel_politely",
        async {
            let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
            let keys = [("close_code", "4001")];
            let keep = ConfigBuilder::new()
                .upstream("app", &[up.addr()])
                .route(insp_route("/keep", &keys));
            let gw = keep.clone().route(insp_route("/gone", &keys)).start().await;
            let mut gone = open_raw(&gw, "/gone/x").await;
            let gone_up = up.peer(0).await;
            let mut kept = open_raw(&gw, "/keep/x").await;
            let kept_up = up.peer(1).await;

            let ev = gw.reload(&keep.build()).await;
            assert!(is_event(&ev, RELOADED), "reload: {ev}");
            let f = read_frame(&mut gone).await;
            assert!(
                f.is_close(4001, "going away") && f.mask.is_none(),
                "/gone client got {}",
                describe_frames(&[f])
            );
            let close = gone_up
                .wait_frame("a close", IO_TIMEOUT, |f| f.opcode == op::CLOSE)
                .await;
            assert!(close.is_close(4001, "going away") && close.mask.is_some());
            gone.send(&client_frame(true, op::CLOSE, &close_payload(4001, b"")))
                .await
                .unwrap();
            assert!(
                gone.closed_within(IO_TIMEOUT).await,
                "/gone tunnel not ended"
            );
            let ev = closed_event(&gw, "/gone/x").await;
            // Both peers answered at once (the upstream first): no wait for the 5 s give-up.
            let lived = ev.get("duration_ms").and_then(Value::as_u64);
            assert!(
                lived.is_some_and(|ms| ms < 2500),
                "the /gone tunnel lived {lived:?} ms after both close replies came: {ev}"
            );
            assert_fields(
                &ev,
                &[
                    ("closed_by", json!("drain")),
                    ("close_initiator", json!("gateway")),
                    ("close_code", json!("4001")),
                ],
            );

            let up_msg = client_frame(true, op::TEXT, b"after the reload");
            kept.send(&up_msg).await.unwrap();
            kept_up
                .wait_frame("the /keep message", IO_TIMEOUT, |f| f.opcode == op::TEXT)
                .await;
            assert_eq!(kept_up.received(), up_msg, "/keep upstream got more");
            let down = server_frame(true, op::TEXT, b"still here");
            kept_up.send(&down);
            assert_eq!(
                kept.read_exact(down.len()).await,
                down,
                "/keep client got something else first"
            );
        },
    )
    .await;
}

/// An inspected tunnel on a TLS listener (wss, tokio-tungstenite both ends): messages echoed,
/// then a client close 1000 "done"; the event counts them with engine "inspect".
#[tokio::test]
async fn inspected_tunnel_over_tls_is_counted() {
    bounded("inspected_tunnel_over_tls_is_counted", async {
        let up = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::dev())
            .upstream("app", &[up.addr()])
            .route(insp_route("/ws", &[]))
            .start()
            .await;
        let (mut ws, _) = wss_connect(gw.addr(), "localhost", "/ws/tls", None).await;
        for m in [
            Message::text("one"),
            Message::binary(random_bytes(100_000, 7)),
            Message::text("three"),
        ] {
            ws.send(m.clone()).await.unwrap();
            assert!(next_msg(&mut ws).await == m, "echo differs");
        }
        let done = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        ws.send(Message::Close(Some(done))).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IO_TIMEOUT, ws.next()).await {}
        drop(ws);
        let ev = closed_event(&gw, "/ws/tls").await;
        assert_fields(
            &ev,
            &[
                ("engine", json!("inspect")),
                ("messages_up", json!(3)),
                ("messages_down", json!(3)),
                ("frames_up", json!(4)),
                ("frames_down", json!(4)),
                ("close_code", json!("1000")),
                ("close_reason", json!("done")),
                ("close_initiator", json!("client")),
            ],
        );
    })
    .await;
}

/// Beside an inspected route, an opaque one keeps the splice engine (Linux) and its event has
/// none of §9's fields.
#[tokio::test]
async fn opaque_route_beside_an_inspected_one_is_spliced() {
    bounded("opaque_route_beside_an_inspected_one_is_spliced", async {
        let up = FrameUpstream::start(PeerBehaviour::LIVE).await;
        let gw = ConfigBuilder::new()
            .upstream("app", &[up.addr()])
            .route(insp_route("/ws", &[]))
            .route(Route::new("/plain").fallback("app"))
            .start()
            .await;
        for (i, path) in ["/ws/insp", "/plain/x"].into_iter().enumerate() {
            let mut c = open_raw(&gw, path).await;
            let peer = up.peer(i).await;
            c.send(&client_frame(true, op::CLOSE, &close_payload(1000, b"")))
                .await
                .unwrap();
            peer.wait_frame("the close", IO_TIMEOUT, |f| f.opcode == op::CLOSE)
                .await;
            let (reply, closed) = c.read_to_eof(IO_TIMEOUT).await;
            assert!(closed, "{path}: tunnel not ended after the close handshake");
            assert_eq!(
                reply,
                server_frame(true, op::CLOSE, &close_payload(1000, b"")),
                "{path}: the close reply"
            );
        }
        let insp = closed_event(&gw, "/ws/insp").await;
        assert_fields(
            &insp,
            &[("engine", json!("inspect")), ("close_code", json!("1000"))],
        );
        let plain = closed_event(&gw, "/plain/x").await;
        let engine = if cfg!(target_os = "linux") {
            "splice"
        } else {
            "buffered"
        };
        assert_fields(&plain, &[("engine", json!(engine))]);
        for field in [
            "messages_up",
            "frames_down",
            "close_code",
            "close_initiator",
        ] {
            assert!(plain.get(field).is_none(), "{field} in {plain}");
        }
    })
    .await;
}
