//! SPEC §5: a route's `max_lifetime` caps a tunnel's age, shortened per tunnel by a random share
//! of `max_lifetime_jitter`; an opaque tunnel at its cap is closed plainly (nothing added) with
//! `closed_by = "lifetime"`.

use std::time::{Duration, Instant};

use crate::support::*;

/// One route `/ws` (fallback `app`) with `keys`, over an upstream that accepts and echoes.
async fn lifetime_gateway(up: &RawUpstream, keys: &[(&str, &str)]) -> Gateway {
    let mut route = Route::new("/ws").fallback("app");
    for (k, v) in keys {
        route = route.key(k, v);
    }
    ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route(route)
        .start()
        .await
}

async fn open(gw: &Gateway) -> Client {
    let req = ClientRequest::ws(&gw.addr().to_string(), "/ws");
    let (c, head) = exchange(gw.addr(), &req, b"").await;
    assert_101(&head, &req.key, None);
    c
}

/// max_lifetime = 600ms: a tunnel with traffic flowing is closed at the cap, both sides, with
/// no byte added, and logged with closed_by "lifetime".
#[tokio::test]
async fn max_lifetime_closes_an_opaque_tunnel_plainly() {
    bounded("max_lifetime_closes_an_opaque_tunnel_plainly", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = lifetime_gateway(&up, &[("max_lifetime", "\"600ms\"")]).await;
        let before = Instant::now();
        let mut c = open(&gw).await;
        c.send(b"traffic does not extend a lifetime").await.unwrap();
        let echo = c.read_exact(34).await;
        assert_eq!(echo, b"traffic does not extend a lifetime");
        let (rest, closed) = c.read_to_eof(Duration::from_secs(3)).await;
        let lived = before.elapsed();
        assert!(closed, "tunnel still open 3s after max_lifetime = 600ms");
        assert!(rest.is_empty(), "bytes added at the plain close: {rest:?}");
        assert!(
            lived >= Duration::from_millis(590),
            "closed after {lived:?}, before max_lifetime = 600ms"
        );
        let conn = up.conn(0, IO_TIMEOUT).await;
        assert!(
            conn.wait_eof(Duration::from_secs(2)).await,
            "upstream side not closed with the client's"
        );
        gw.wait_log(
            "target=access closed_by=lifetime",
            Duration::from_secs(3),
            |e| {
                e.get("target").and_then(|t| t.as_str()) == Some("access")
                    && e.get("closed_by").and_then(|t| t.as_str()) == Some("lifetime")
            },
        )
        .await;
        // An opaque tunnel's closing event has none of §9's fields.
        let ev = gw
            .access_events()
            .into_iter()
            .find(|e| e.get("closed_by").and_then(|t| t.as_str()) == Some("lifetime"))
            .unwrap();
        for field in ["messages_up", "close_code", "close_initiator"] {
            assert!(
                ev.get(field).is_none(),
                "{field} in an opaque tunnel's event: {ev}"
            );
        }
    })
    .await;
}

/// max_lifetime = 1s, max_lifetime_jitter = 800ms, ten tunnels opened together: each ends
/// between 200ms and 1s after it opened (plus slack), and their lifetimes spread over at least
/// 200ms. (Ten uniform draws from 800ms all within 200ms: probability about 4e-5.)
#[tokio::test]
async fn max_lifetime_jitter_spreads_the_ends() {
    bounded("max_lifetime_jitter_spreads_the_ends", async {
        let up = RawUpstream::start(accept_then_hold()).await;
        let gw = lifetime_gateway(
            &up,
            &[
                ("max_lifetime", "\"1s\""),
                ("max_lifetime_jitter", "\"800ms\""),
            ],
        )
        .await;
        let one = || async {
            let before = Instant::now();
            let mut c = open(&gw).await;
            let opened = before.elapsed();
            let (_, closed) = c.read_to_eof(Duration::from_secs(3)).await;
            assert!(
                closed,
                "tunnel still open 3s after it opened (max_lifetime = 1s)"
            );
            (before.elapsed(), opened)
        };
        let mut lives = Vec::new();
        let runs = futures_util::future::join_all((0..10).map(|_| one())).await;
        for (lived, opened) in runs {
            assert!(
                lived >= Duration::from_millis(190)
                    && lived <= Duration::from_millis(1500) + opened,
                "a tunnel lived {lived:?}; expected 200ms-1s (max_lifetime 1s, jitter 800ms)"
            );
            lives.push(lived);
        }
        lives.sort();
        let spread = lives[9] - lives[0];
        assert!(
            spread >= Duration::from_millis(200),
            "ten tunnels ended within {spread:?} of each other: {lives:?}"
        );
        gw.wait_access_count("closed_by lifetime", 10, Duration::from_secs(3), |e| {
            e.get("closed_by").and_then(|t| t.as_str()) == Some("lifetime")
        })
        .await;
    })
    .await;
}
