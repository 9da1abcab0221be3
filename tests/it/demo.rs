//! `switchyard demo` end to end (SPEC §1), on port 0 instead of the fixed 8080/8443/9090: the
//! page through the `http` route on both listeners, echo.v1 and chat.v1 through the gateway to
//! the in-process upstreams, and the TLS listener's h2 with RFC 8441 extended CONNECT.

use std::net::SocketAddr;

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;

const DEMO_ARGS: [&str; 9] = [
    "--log-format",
    "json",
    "demo",
    "--http",
    "127.0.0.1:0",
    "--https",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
];

/// The demo on port 0: listeners()[0] is the plain one, [1] the TLS one (config order).
async fn start_demo() -> Gateway {
    Gateway::start_args(&DEMO_ARGS, 2, true).await
}

async fn next_text(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> String {
    loop {
        match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads text messages until one equals `want`; returns the ones skipped.
async fn until_text(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    want: &str,
) -> Vec<String> {
    let mut skipped = Vec::new();
    loop {
        let t = next_text(ws).await;
        if t == want {
            return skipped;
        }
        skipped.push(t);
    }
}

fn access_ws_handshakes(gw: &Gateway) -> Vec<Value> {
    gw.access_events()
        .into_iter()
        .filter(|e| is_event(e, "handshake") && e["path"] == "/ws")
        .collect()
}

#[tokio::test]
async fn page_is_served_at_root_through_the_http_route() {
    bounded("page_is_served_at_root_through_the_http_route", async {
        let gw = start_demo().await;
        let host = gw.addr().to_string();
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ClientRequest::plain(&host, "/").to_bytes())
            .await
            .expect("send");
        let (head, body) = c.read_response().await;
        assert_eq!(head.status, 200, "{head:?}");
        assert!(
            head.headers
                .get("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{head:?}"
        );
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("<title>switchyard demo</title>"), "{body}");
        assert!(
            body.contains("new WebSocket("),
            "the page opens a WebSocket"
        );

        // Anything else on the web upstream is its own 404, relayed.
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ClientRequest::plain(&host, "/nope").to_bytes())
            .await
            .expect("send");
        assert_eq!(c.read_response().await.0.status, 404);
    })
    .await;
}

#[tokio::test]
async fn echo_v1_is_answered_by_the_echo_upstream() {
    bounded("echo_v1_is_answered_by_the_echo_upstream", async {
        let gw = start_demo().await;
        let (mut ws, resp) = ws_connect(gw.addr(), "/ws", Some("echo.v1")).await;
        assert_eq!(resp.status(), 101);
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("echo.v1")
        );
        ws.send(Message::Text("hi".into())).await.expect("send");
        assert_eq!(next_text(&mut ws).await, "echo.v1 upstream: hi");
        ws.send(Message::Binary(vec![0, 1, 2]))
            .await
            .expect("send binary");
        match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(b, [0, 1, 2]),
            other => panic!("binary echo: {other:?}"),
        }
        let ev = gw
            .wait_log("access handshake echo.v1", IO_TIMEOUT, |e| {
                is_event(e, "handshake") && e["subprotocol"] == "echo.v1"
            })
            .await;
        assert_eq!(ev["upstream"], "echo");
        assert_eq!(ev["status"], 101);
    })
    .await;
}

#[tokio::test]
async fn client_order_selects_chat_v1_and_chat_broadcasts_to_every_client() {
    bounded(
        "client_order_selects_chat_v1_and_chat_broadcasts_to_every_client",
        async {
            let gw = start_demo().await;
            // select = "client": the first offered subprotocol that is mapped wins.
            let (mut a, resp) = ws_connect(gw.addr(), "/ws", Some("chat.v1, echo.v1")).await;
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("chat.v1")
            );
            let joined_a = next_text(&mut a).await;
            let guest_a = joined_a
                .strip_prefix("[chat.v1] ")
                .and_then(|s| s.strip_suffix(" joined"))
                .unwrap_or_else(|| panic!("first chat line is not a join: {joined_a:?}"))
                .to_owned();
            let (mut b, _) = ws_connect(gw.addr(), "/ws", Some("chat.v1")).await;
            let joined_b = next_text(&mut b).await;
            assert!(joined_b.ends_with(" joined"), "{joined_b:?}");
            // A hears B join: proof that both sit in one room before A speaks.
            until_text(&mut a, &joined_b).await;

            a.send(Message::Text("hello".into())).await.expect("send");
            let line = format!("[chat.v1] {guest_a}: hello");
            until_text(&mut a, &line).await;
            until_text(&mut b, &line).await;

            let subs: Vec<Value> = access_ws_handshakes(&gw)
                .into_iter()
                .map(|e| e["subprotocol"].clone())
                .collect();
            assert_eq!(subs, ["chat.v1", "chat.v1"]);
        },
    )
    .await;
}

/// One unmasked server frame from `buf` (RFC 6455 §5.2): (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, rest) = buf.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    assert_eq!(b1 & 0x80, 0, "server frames are not masked (RFC 6455 §5.1)");
    let (len, header) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            4,
        ),
        127 => panic!("unexpectedly large demo frame"),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(header..header + len)?.to_vec();
    Some((b0 & 0x0f, payload, header + len))
}

/// A masked client text frame (RFC 6455 §5.3), payload under 126 bytes.
fn client_text_frame(text: &str) -> Bytes {
    let mask: [u8; 4] = rand::random();
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

/// Reads frames from an RFC 8441 stream until a text frame equal to `want` arrives.
async fn h2_until_text(body: &mut h2::RecvStream, buf: &mut Vec<u8>, want: &str) {
    loop {
        while let Some((opcode, payload, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            if opcode == 0x1 && payload == want.as_bytes() {
                return;
            }
        }
        let data = match tokio::time::timeout(IO_TIMEOUT, body.data()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!("stream ended before {want:?}: {other:?}"),
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

#[tokio::test]
async fn tls_listener_serves_the_page_over_h2_and_websockets_over_rfc8441() {
    bounded(
        "tls_listener_serves_the_page_over_h2_and_websockets_over_rfc8441",
        async {
            let gw = start_demo().await;
            let addr: SocketAddr = gw.listeners()[1];
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let tls = TlsConnector::from(crate::support::h2_client::tls_config())
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .expect("TLS handshake with the dev certificate, trusting certs/ca.pem");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
            let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });

            // The page, over h2, through the `http` route.
            let get = Request::get(format!("https://{addr}/"))
                .body(())
                .expect("request");
            let (resp, _) = send.send_request(get, true).expect("send GET");
            let resp = tokio::time::timeout(IO_TIMEOUT, resp)
                .await
                .expect("GET / answered in time")
                .expect("GET / response");
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut page = Vec::new();
            while let Some(chunk) = tokio::time::timeout(IO_TIMEOUT, body.data())
                .await
                .expect("page body in time")
            {
                let chunk = chunk.expect("page body");
                let _ = body.flow_control().release_capacity(chunk.len());
                page.extend_from_slice(&chunk);
            }
            assert!(String::from_utf8_lossy(&page).contains("<title>switchyard demo</title>"));

            // RFC 8441 §3: the server's SETTINGS (seen by now) enable extended CONNECT.
            assert!(
                send.is_extended_connect_protocol_enabled(),
                "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1"
            );
            let mut connect = Request::builder()
                .method(Method::CONNECT)
                .uri(format!("https://{addr}/ws"))
                .header("sec-websocket-version", "13")
                .header("sec-websocket-protocol", "chat.v1, echo.v1")
                .body(())
                .expect("request");
            connect
                .extensions_mut()
                .insert(h2::ext::Protocol::from_static("websocket"));
            let mut send = send.ready().await.expect("h2 ready");
            let (resp, mut up) = send.send_request(connect, false).expect("send CONNECT");
            let resp = tokio::time::timeout(IO_TIMEOUT, resp)
                .await
                .expect("CONNECT answered in time")
                .expect("CONNECT response");
            assert_eq!(resp.status(), StatusCode::OK, "RFC 8441 §5: 200, not 101");
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("chat.v1")
            );
            let mut down = resp.into_body();
            let mut buf = Vec::new();
            up.send_data(client_text_frame("over h2"), false)
                .expect("send frame");
            // The join line names this client's guest number; then our own broadcast line.
            let joined = loop {
                let data = tokio::time::timeout(IO_TIMEOUT, down.data())
                    .await
                    .expect("join line in time")
                    .expect("stream open")
                    .expect("data");
                let _ = down.flow_control().release_capacity(data.len());
                buf.extend_from_slice(&data);
                if let Some((_, payload, used)) = parse_server_frame(&buf) {
                    buf.drain(..used);
                    break String::from_utf8(payload).expect("utf-8 join line");
                }
            };
            let guest = joined
                .strip_prefix("[chat.v1] ")
                .and_then(|s| s.strip_suffix(" joined"))
                .unwrap_or_else(|| panic!("not a join line: {joined:?}"));
            h2_until_text(&mut down, &mut buf, &format!("[chat.v1] {guest}: over h2")).await;

            let ev = gw
                .wait_log("access handshake over h2", IO_TIMEOUT, |e| {
                    is_event(e, "handshake") && e["path"] == "/ws"
                })
                .await;
            assert_eq!(ev["http_version"], "HTTP/2", "{ev}");
            assert_eq!(ev["status"], 200, "{ev}");
            assert_eq!(ev["upstream"], "chat", "{ev}");
        },
    )
    .await;
}

#[tokio::test]
async fn demo_exits_1_naming_the_address_when_a_port_is_taken() {
    bounded(
        "demo_exits_1_naming_the_address_when_a_port_is_taken",
        async {
            let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = taken.local_addr().expect("addr").to_string();
            let (code, _, stderr) = run_cli(&[
                "demo",
                "--http",
                &addr,
                "--https",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .await;
            assert_eq!(code, 1, "{stderr}");
            assert!(stderr.contains(&addr), "stderr names {addr}: {stderr}");
        },
    )
    .await;
}
