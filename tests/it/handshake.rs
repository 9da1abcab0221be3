//! SPEC §3 end to end: version negotiation (RFC 6455 §4.4), the failures the gateway answers
//! itself (with the whole failure contract), and hybi versions 7/8.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[test]
fn accept_key_matches_rfc6455_sample() {
    // RFC 6455 §1.3: the helper every other assertion relies on.
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

/// RFC 6455 §4.4: an unsupported version gets the configured list, and the client retries with
/// one from it.
#[tokio::test]
async fn version_25_lists_versions_then_13_succeeds() {
    bounded("version_25_lists_versions_then_13_succeeds", async {
        let chat = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .versions(&[13, 8, 7])
            .upstream("chat", &[chat.addr()])
            .route(Route::new("/ws").sub("chat.v2", "chat"))
            .start()
            .await;
        let host = gw.addr().to_string();

        let req = ClientRequest::ws(&host, "/ws")
            .protocol("chat.v2")
            .set("Sec-WebSocket-Version", "25");
        let mut c = Client::connect(gw.addr()).await;
        let _ = c.send(&req.to_bytes()).await;
        let (head, _) = expect_failure(&mut c, 426, "version 25").await;
        assert_eq!(
            head.headers.list("sec-websocket-version"),
            ["13", "8", "7"],
            "426 must list the configured versions in order: {head:?}"
        );
        assert_eq!(
            chat.connections(),
            0,
            "the upstream was contacted for a failed handshake"
        );

        // The retry, with a real client.
        let (mut ws, resp) = ws_connect(gw.addr(), "/ws", Some("chat.v2")).await;
        assert_eq!(resp.status(), 101);
        let protocols: Vec<_> = resp
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .collect();
        assert_eq!(protocols, ["chat.v2"], "101 subprotocol");
        assert!(
            resp.headers().get("sec-websocket-version").is_none(),
            "101 carries a version"
        );
        ws.send(Message::Text("after retry".into()))
            .await
            .expect("send");
        let echo = ws.next().await.expect("echo").expect("echo frame");
        assert_eq!(echo, Message::Text("after retry".into()));
        let seen = chat.requests();
        assert_eq!(seen.len(), 1, "upstream handshakes");
        assert_eq!(seen[0].headers.all("sec-websocket-version"), ["13"]);
    })
    .await;
}

struct FailRow {
    name: &'static str,
    status: u16,
    request: fn(&str) -> ClientRequest,
    /// Extra check on the answer (head, body text).
    extra: fn(&ResponseHead, &str),
}

fn nothing(_: &ResponseHead, _: &str) {}

/// One gateway, one row per §3 failure: each must carry the full failure contract, and no byte
/// may reach any upstream.
#[tokio::test]
async fn failures_answered_by_the_gateway() {
    bounded("failures_answered_by_the_gateway", async {
        let chat = RawUpstream::start(accept_then_echo(b"")).await;
        let mqtt = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = ConfigBuilder::new()
            .versions(&[13, 8, 7])
            .limit("max_header_bytes", "8192")
            .upstream("chat", &[chat.addr()])
            .upstream("mqtt", &[mqtt.addr()])
            .route(Route::new("/ws").sub("chat.v2", "chat").sub("mqtt", "mqtt"))
            .route(
                Route::new("/strict")
                    .sub("chat.v2", "chat")
                    .origins(&["https://app.example.com"]),
            )
            .start()
            .await;
        let host = gw.addr().to_string();

        let rows = [
            FailRow {
                name: "431 on a 20 KB header with max_header_bytes 8192",
                status: 431,
                request: |h| {
                    ClientRequest::ws(h, "/ws")
                        .protocol("chat.v2")
                        .header("X-Pad", &"a".repeat(20_000))
                },
                extra: nothing,
            },
            FailRow {
                name: "400 missing Host",
                status: 400,
                request: |h| {
                    ClientRequest::ws(h, "/ws")
                        .protocol("chat.v2")
                        .remove("Host")
                },
                extra: nothing,
            },
            FailRow {
                name: "404 no route",
                status: 404,
                request: |h| ClientRequest::ws(h, "/nowhere").protocol("chat.v2"),
                extra: nothing,
            },
            FailRow {
                name: "426 plain request without an http upstream",
                status: 426,
                request: |h| ClientRequest::plain(h, "/ws"),
                extra: |head, _| {
                    assert_eq!(
                        head.headers.tokens("upgrade"),
                        ["websocket"],
                        "426 Upgrade hint: {head:?}"
                    );
                    let conn = head.headers.tokens("connection");
                    assert!(
                        conn.contains(&"upgrade".into()) && conn.contains(&"close".into()),
                        "426 Connection must list upgrade and close: {head:?}"
                    );
                },
            },
            FailRow {
                name: "405 POST",
                status: 405,
                request: |h| {
                    ClientRequest::ws(h, "/ws")
                        .protocol("chat.v2")
                        .method("POST")
                },
                extra: |head, _| {
                    assert_eq!(head.headers.list("allow"), ["GET"], "405 Allow: {head:?}")
                },
            },
            FailRow {
                name: "400 key of 15 bytes",
                status: 400,
                request: |h| {
                    ClientRequest::ws(h, "/ws")
                        .protocol("chat.v2")
                        .set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA")
                },
                extra: nothing,
            },
            FailRow {
                name: "403 origin not allowed",
                status: 403,
                request: |h| {
                    ClientRequest::ws(h, "/strict")
                        .protocol("chat.v2")
                        .header("Origin", "https://evil.example")
                },
                extra: nothing,
            },
            FailRow {
                name: "400 no offered subprotocol is mapped",
                status: 400,
                request: |h| ClientRequest::ws(h, "/ws").protocol("stomp, wamp"),
                extra: |_, body| {
                    assert!(
                        body.contains("chat.v2") && body.contains("mqtt"),
                        "body must list the route's subprotocols: {body:?}"
                    );
                },
            },
        ];
        for row in &rows {
            let req = (row.request)(&host);
            let mut c = Client::connect(gw.addr()).await;
            let _ = c.send(&req.to_bytes()).await;
            let (head, body) = expect_failure(&mut c, row.status, row.name).await;
            (row.extra)(&head, &String::from_utf8_lossy(&body));
        }
        // Nothing can be awaited for "nothing arrived": give stray bytes a moment to land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            (chat.total_bytes(), mqtt.total_bytes()),
            (0, 0),
            "bytes reached an upstream for a failed handshake"
        );
    })
    .await;
}

/// Hybi-08: accepted when configured, Sec-WebSocket-Origin checked against the allowlist and
/// forwarded as Origin, and the upstream spoken to with version 13; frames pass both ways.
#[tokio::test]
async fn version_8_origin_mapped_and_upstream_gets_13() {
    bounded("version_8_origin_mapped_and_upstream_gets_13", async {
        let chat = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .versions(&[13, 8, 7])
            .upstream("chat", &[chat.addr()])
            .route(
                Route::new("/strict")
                    .sub("chat.v2", "chat")
                    .origins(&["https://app.example.com"]),
            )
            .start()
            .await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/strict")
            .protocol("chat.v2")
            .set("Sec-WebSocket-Version", "8")
            .header("Sec-WebSocket-Origin", "https://APP.example.com");
        let (mut c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));

        let seen = chat.requests();
        assert_eq!(seen.len(), 1, "upstream handshakes");
        let up = &seen[0].headers;
        assert_eq!(
            up.all("sec-websocket-version"),
            ["13"],
            "upstream version: {up:?}"
        );
        assert_eq!(
            up.all("origin").len(),
            1,
            "Sec-WebSocket-Origin must reach the upstream as one Origin: {up:?}"
        );
        assert!(
            up.get("origin")
                .unwrap_or_default()
                .eq_ignore_ascii_case("https://app.example.com"),
            "upstream Origin: {up:?}"
        );
        assert_eq!(
            up.all("sec-websocket-key"),
            [req.key.as_str()],
            "the client's key is forwarded"
        );

        // The tunnel carries hybi-08 frames verbatim (they are framed as in version 13).
        let _ = c.send(&masked_frame(0x1, b"hybi-8 frame")).await;
        let (opcode, payload) = read_server_frame(&mut c).await;
        assert_eq!(
            (opcode, payload.as_slice()),
            (0x1, &b"hybi-8 frame"[..]),
            "echoed frame"
        );
    })
    .await;
}
