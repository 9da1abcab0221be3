//! The WebSocket smuggling guard (SPEC §4), on HTTP/1.1 and on h2 (RFC 8441): an upstream that
//! answers the upgrade with 200, 403 or 426, or with a 101 whose accept is wrong, never gets a
//! tunnel, and the bytes a client sends right behind its head (a second request, a fake frame)
//! never reach it raw. upstream.rs covers h1 403 and h1 bad accept; this file adds the other
//! answers on h1 and all of them on h2.

use bytes::Bytes;

use crate::support::h2_client::H2Conn;
use crate::support::*;

/// A masked WebSocket text frame followed by a second request: what a smuggling client sends
/// hoping the connection became a tunnel.
const SMUGGLE: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET /internal/admin HTTP/1.1\r\nHost: internal\r\n\r\n";

/// An upstream answer to the upgrade and what the client must get for it.
struct Refusal {
    name: &'static str,
    script: fn() -> Script,
    /// The status on h1, where a non-101 is relayed.
    h1: u16,
    /// The status on h2, where a 2xx would look like an open tunnel and becomes 502.
    h2: u16,
}

fn status_200() -> Script {
    answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
}

fn status_426() -> Script {
    answer(b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 4\r\n\r\nnope")
}

fn status_403() -> Script {
    answer(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nforbidden",
    )
}

fn bad_accept() -> Script {
    respond(|head| {
        let key = head.headers.get("sec-websocket-key").unwrap_or_default();
        response_101_with_accept(&accept_key(&format!("{key}x")), offered(head).as_deref())
    })
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        name: "200",
        script: status_200,
        h1: 200,
        h2: 502,
    },
    Refusal {
        name: "426",
        script: status_426,
        h1: 426,
        h2: 426,
    },
    Refusal {
        name: "403",
        script: status_403,
        h1: 403,
        h2: 403,
    },
    Refusal {
        name: "101 with a bad accept",
        script: bad_accept,
        h1: 502,
        h2: 502,
    },
];

fn gateway_for(up: &RawUpstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route(Route::new("/ws").sub("chat.v2", "app"))
}

/// HTTP/1.1: the client sends the smuggling bytes with its head and again after the answer; it
/// gets the answer SPEC §4 names, the connection is closed, and the upstream saw only the head.
#[tokio::test]
async fn h1_refused_upgrades_never_tunnel() {
    bounded("h1_refused_upgrades_never_tunnel", async {
        for refusal in REFUSALS {
            let what = format!("h1, upstream answers {}", refusal.name);
            let up = RawUpstream::start((refusal.script)()).await;
            let gw = gateway_for(&up).start().await;
            let req = ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2");
            let (mut c, head) = exchange(gw.addr(), &req, SMUGGLE).await;
            assert_eq!(head.status, refusal.h1, "{what}: {head:?}");
            assert!(
                head.headers
                    .tokens("connection")
                    .contains(&"close".to_string()),
                "{what}: no Connection: close in {head:?}"
            );
            assert!(
                !head.headers.has("sec-websocket-accept"),
                "{what}: {head:?}"
            );
            let _ = c.send(SMUGGLE).await;
            assert!(
                c.closed_within(IO_TIMEOUT).await,
                "{what}: the client connection stayed open"
            );
            assert_not_tunnelled(&up, &what).await;
        }
    })
    .await;
}

/// h2: DATA sent on the stream right after its HEADERS (before any answer) and after the answer
/// never reaches the upstream; the stream gets the answer and ends, the connection stays up.
#[tokio::test]
async fn h2_refused_upgrades_never_tunnel() {
    bounded("h2_refused_upgrades_never_tunnel", async {
        for refusal in REFUSALS {
            let what = format!("h2, upstream answers {}", refusal.name);
            let up = RawUpstream::start((refusal.script)()).await;
            let gw = gateway_for(&up).tls_h2().start().await;
            let mut conn = H2Conn::connect(gw.addr()).await;
            let req = conn.websocket_request("/ws", Some("chat.v2"), Some("13"));
            let mut sender = conn.sender.clone().ready().await.expect("stream slot");
            let (response, mut send) = sender.send_request(req, false).expect("send request");
            send.send_data(Bytes::from_static(SMUGGLE), false)
                .expect("DATA right after HEADERS");
            let response = tokio::time::timeout(IO_TIMEOUT, response)
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer"))
                .unwrap_or_else(|e| panic!("{what}: stream failed: {e}"));
            assert_eq!(
                response.status().as_u16(),
                refusal.h2,
                "{what}: {response:?}"
            );
            // The stream is over; sending more must not open anything (it may just fail).
            let _ = send.send_data(Bytes::from_static(SMUGGLE), true);
            let mut body = response.into_body();
            let drained = tokio::time::timeout(IO_TIMEOUT, async {
                while let Some(chunk) = body.data().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            })
            .await;
            assert!(drained.is_ok(), "{what}: the refused stream did not end");
            assert_not_tunnelled(&up, &what).await;
            // The connection survives the refused stream.
            let ok = conn.get_request("/nowhere");
            let s = conn.open(ok, true).await;
            assert_eq!(s.head.status, 404, "{what}: connection after the refusal");
        }
    })
    .await;
}
