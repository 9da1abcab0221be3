//! SPEC §4: what the gateway does with the upstream's answer — relay a non-101 and never tunnel
//! it (the WebSocket smuggling guard), reject a bad 101, 502/504 for unreachable or silent
//! upstreams, and fail over to the next server.

use std::time::{Duration, Instant};

use crate::support::*;

/// A masked WebSocket text frame followed by an HTTP request: what a smuggling client sends
/// hoping the connection became a tunnel.
const SMUGGLE: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET /internal/admin HTTP/1.1\r\nHost: internal\r\n\r\n";

/// One route `/ws` mapping chat.v2 to `up`.
async fn one_upstream_gateway(up: &RawUpstream) -> Gateway {
    ConfigBuilder::new()
        .limit("upstream_handshake_timeout", "\"5s\"")
        .upstream("app", &[up.addr()])
        .route(Route::new("/ws").sub("chat.v2", "app"))
        .start()
        .await
}

/// A non-101 (with keep-alive and a body) is relayed with `Connection: close`, body intact, then
/// the client is closed; frame bytes sent with the head and after the answer never reach the
/// upstream.
#[tokio::test]
async fn non_101_relayed_closed_and_not_tunnelled() {
    bounded("non_101_relayed_closed_and_not_tunnelled", async {
        let up = RawUpstream::start(answer(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Upstream: yes\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nnope!",
        ))
        .await;
        let gw = one_upstream_gateway(&up).await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let (mut c, head) = exchange(gw.addr(), &req, SMUGGLE).await;
        assert_eq!(head.status, 403, "upstream's status relayed: {head:?}");
        let conn = head.headers.tokens("connection");
        assert!(
            conn.contains(&"close".to_string()) && !conn.contains(&"keep-alive".to_string()),
            "relayed non-101 must say Connection: close, not keep-alive: {head:?}"
        );
        assert_eq!(head.headers.get("x-upstream"), Some("yes"), "upstream headers relayed: {head:?}");
        assert!(!head.headers.has("sec-websocket-accept"), "{head:?}");
        let body = c.read_exact(5).await;
        assert_eq!(body, b"nope!", "body relayed intact");
        let _ = c.send(SMUGGLE).await;
        let (rest, closed) = c.read_to_eof(Duration::from_secs(2)).await;
        assert!(closed, "client connection still open 2s after the relayed 403");
        assert!(rest.is_empty(), "bytes after the relayed response: {rest:?}");
        assert_not_tunnelled(&up, "relayed 403").await;
    })
    .await;
}

/// A 101 whose `Sec-WebSocket-Accept` is not the one for the client's key: 502, no tunnel.
#[tokio::test]
async fn upstream_101_wrong_accept_is_502() {
    bounded("upstream_101_wrong_accept_is_502", async {
        let up = RawUpstream::start(respond(|head| {
            let key = head.headers.get("sec-websocket-key").unwrap_or_default();
            response_101_with_accept(&accept_key(&format!("{key}x")), offered(head).as_deref())
        }))
        .await;
        let gw = one_upstream_gateway(&up).await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let mut c = Client::connect(gw.addr()).await;
        let _ = c.send(&[req.to_bytes(), SMUGGLE.to_vec()].concat()).await;
        expect_failure(&mut c, 502, "upstream 101 with a wrong accept").await;
        assert_not_tunnelled(&up, "wrong accept").await;
    })
    .await;
}

/// A 101 selecting a subprotocol other than the one forwarded: 502, no tunnel.
#[tokio::test]
async fn upstream_101_other_subprotocol_is_502() {
    bounded("upstream_101_other_subprotocol_is_502", async {
        let up = RawUpstream::start(respond(|head| response_101(head, Some("mqtt")))).await;
        let gw = one_upstream_gateway(&up).await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let mut c = Client::connect(gw.addr()).await;
        let _ = c.send(&[req.to_bytes(), SMUGGLE.to_vec()].concat()).await;
        expect_failure(&mut c, 502, "upstream 101 with another subprotocol").await;
        assert_not_tunnelled(&up, "other subprotocol").await;
    })
    .await;
}

/// Every server refuses the connection: 502.
#[tokio::test]
async fn refused_upstream_is_502() {
    bounded("refused_upstream_is_502", async {
        let gw = ConfigBuilder::new()
            .upstream("gone", &[refused_addr()])
            .route(Route::new("/ws").sub("chat.v2", "gone"))
            .start()
            .await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let mut c = Client::connect(gw.addr()).await;
        let _ = c.send(&req.to_bytes()).await;
        expect_failure(&mut c, 502, "refused upstream").await;
    })
    .await;
}

/// The upstream accepts the request and never answers: 504 (with the whole failure contract)
/// once upstream_handshake_timeout (300ms) has passed, not before, and not much later.
#[tokio::test]
async fn silent_upstream_is_504_after_handshake_timeout() {
    bounded("silent_upstream_is_504_after_handshake_timeout", async {
        let up = RawUpstream::start(stall()).await;
        let gw = ConfigBuilder::new()
            .limit("upstream_handshake_timeout", "\"300ms\"")
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").sub("chat.v2", "app"))
            .start()
            .await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
        let mut c = Client::connect(gw.addr()).await;
        let started = Instant::now();
        let _ = c.send(&req.to_bytes()).await;
        expect_failure(&mut c, 504, "silent upstream").await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited <= Duration::from_secs(3),
            "504 after {waited:?}; upstream_handshake_timeout is 300ms"
        );
        let conn = up.conn(0, IO_TIMEOUT).await;
        assert!(
            conn.head().is_some(),
            "the silent upstream never got the request"
        );
        assert!(
            conn.wait_eof(Duration::from_secs(2)).await,
            "the gateway kept the silent upstream's connection open after its 504"
        );
    })
    .await;
}

/// servers = [refused, good]: every handshake succeeds, all on the good server.
#[tokio::test]
async fn failover_past_a_refused_server() {
    bounded("failover_past_a_refused_server", async {
        let good = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .upstream("pool", &[refused_addr(), good.addr()])
            .route(Route::new("/ws").sub("chat.v2", "pool"))
            .start()
            .await;
        for i in 0..4 {
            let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
            let (_c, head) = exchange(gw.addr(), &req, b"").await;
            assert_eq!(
                head.status, 101,
                "handshake {i} with one server down: {head:?}"
            );
            assert_101(&head, &req.key, Some("chat.v2"));
        }
        assert_eq!(
            good.requests().len(),
            4,
            "the live server got every handshake"
        );
    })
    .await;
}
