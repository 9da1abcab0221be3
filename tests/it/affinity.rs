//! Hash affinity (SPEC §10 "Affinity", `balance = "hash"`): real upstreams that record every
//! request, real clients. The same key always reaches the same server and different keys
//! spread; two gateways agree; a stopped server's keys go to their next server in hash order
//! (the server a config without it gives them) and come back when it listens again; requests
//! without the key take turns; every key form (query, header, cookie, client address from the
//! PROXY header, a verified JWT claim) and ordinary requests through the route's `http` upstream.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

/// Script: answers every request on the connection; an upgrade with a correct 101 (then
/// echo), an ordinary request with 200 and the body `tag`.
fn tagged(tag: &'static str) -> Script {
    script(move |mut c| async move {
        while let Some(head) = c.read_head().await {
            if head.headers.has("upgrade") {
                if c.send(&response_101(&head, None)).await.is_ok() {
                    c.echo().await;
                }
                return;
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
                tag.len()
            );
            if c.send(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
}

const TAGS: [&str; 4] = ["a", "b", "c", "d"];

async fn servers(n: usize) -> Vec<RawUpstream> {
    let mut ups = Vec::new();
    for tag in &TAGS[..n] {
        ups.push(RawUpstream::start(tagged(tag)).await);
    }
    ups
}

fn addrs(ups: &[RawUpstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr().to_string()).collect()
}

/// `[upstreams.pool]` over `servers`, hashed by `hash_key`; `/ws` falls back to it and sends
/// ordinary requests to it.
fn hash_config(servers: &[String], hash_key: &str, extra: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .upstream_with(
            "pool",
            servers,
            &format!("balance = \"hash\"\nhash_key = \"{hash_key}\"\n{extra}"),
        )
        .route(Route::new("/ws").fallback("pool").http("pool"))
}

/// Which of `ups` received the handshake with this `Sec-WebSocket-Key`.
fn landed(ups: &[RawUpstream], key: &str) -> Option<usize> {
    ups.iter().position(|u| {
        u.conns().iter().any(|c| {
            c.head()
                .is_some_and(|h| h.headers.get("sec-websocket-key") == Some(key))
        })
    })
}

/// A handshake for `target` with `headers` (sent after `prefix`, e.g. a PROXY header) that must
/// succeed; which of `ups` it reached.
async fn handshake_to(
    gw: &Gateway,
    ups: &[RawUpstream],
    prefix: &[u8],
    target: &str,
    headers: &[(&str, &str)],
) -> usize {
    let mut req = ClientRequest::ws(&gw.addr().to_string(), target);
    for (n, v) in headers {
        req = req.header(n, v);
    }
    let mut c = Client::connect(gw.addr()).await;
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&req.to_bytes());
    c.send(&bytes).await.expect("send");
    let head = c.read_head().await;
    assert_101(&head, &req.key, None);
    landed(ups, &req.key).unwrap_or_else(|| panic!("{target}: no upstream got the handshake"))
}

async fn room(gw: &Gateway, ups: &[RawUpstream], room: &str) -> usize {
    handshake_to(gw, ups, b"", &format!("/ws?room={room}"), &[]).await
}

/// The server each of `rooms` reaches through `gw`.
async fn map_rooms(gw: &Gateway, ups: &[RawUpstream], rooms: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    for r in rooms {
        out.push(room(gw, ups, r).await);
    }
    out
}

fn rooms(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i:02}")).collect()
}

fn up_series(addr: SocketAddr) -> String {
    format!(r#"switchyard_upstream_server_up{{upstream="pool",server="{addr}"}}"#)
}

#[tokio::test]
async fn same_key_same_server_different_keys_spread_and_replicas_agree() {
    bounded(
        "same_key_same_server_different_keys_spread_and_replicas_agree",
        async {
            let ups = servers(3).await;
            let cfg = hash_config(&addrs(&ups), "query:room", "");
            let gw = cfg.start().await;
            for r in ["lobby", "kitchen", "attic"] {
                let mut seen = BTreeSet::new();
                for i in 0..5 {
                    // Other parameters before and after the key do not matter.
                    let target = if i % 2 == 0 {
                        format!("/ws?room={r}&n={i}")
                    } else {
                        format!("/ws?n={i}&room={r}")
                    };
                    seen.insert(handshake_to(&gw, &ups, b"", &target, &[]).await);
                }
                assert_eq!(seen.len(), 1, "room {r} reached servers {seen:?}");
            }
            let keys = rooms("spread", 30);
            let first = map_rooms(&gw, &ups, &keys).await;
            let used: BTreeSet<usize> = first.iter().copied().collect();
            assert_eq!(used.len(), 3, "30 rooms reached only {used:?}: {first:?}");
            // A second gateway (another replica, or this one after a restart) agrees on every key.
            let replica = cfg.start().await;
            assert_eq!(map_rooms(&replica, &ups, &keys).await, first);
        },
    )
    .await;
}

#[tokio::test]
async fn requests_without_the_key_take_turns() {
    bounded("requests_without_the_key_take_turns", async {
        let ups = servers(3).await;
        let gw = hash_config(&addrs(&ups), "query:room", "").start().await;
        let mut counts = [0; 3];
        for _ in 0..9 {
            counts[handshake_to(&gw, &ups, b"", "/ws?other=1", &[]).await] += 1;
        }
        assert_eq!(counts, [3, 3, 3], "9 keyless handshakes over 3 servers");
        // An empty value is no key either.
        let mut counts = [0; 3];
        for _ in 0..3 {
            counts[handshake_to(&gw, &ups, b"", "/ws?room=", &[]).await] += 1;
        }
        assert_eq!(counts, [1, 1, 1], "3 handshakes with an empty room");
    })
    .await;
}

#[tokio::test]
async fn a_stopped_servers_keys_fail_over_in_hash_order_and_come_back() {
    bounded(
        "a_stopped_servers_keys_fail_over_in_hash_order_and_come_back",
        async {
            let mut ups = servers(3).await;
            let all = addrs(&ups);
            // Fast TCP health checks notice the return; metrics say when.
            let gw = hash_config(&all, "query:room", "health = { interval = \"100ms\" }")
                .admin()
                .start()
                .await;
            let keys = rooms("down", 30);
            let before = map_rooms(&gw, &ups, &keys).await;
            assert!(before.contains(&0), "no key on server a: {before:?}");
            // Stop server 0 (first in the list, so the others' positions shift without it).
            let victim = 0;
            let addr = ups[victim].addr();
            ups[victim] = RawUpstream::start(tagged("gone")).await;
            wait_refused(addr, IO_TIMEOUT).await;
            let during = map_rooms(&gw, &ups, &keys).await;
            for (i, k) in keys.iter().enumerate() {
                assert_ne!(during[i], victim, "{k} reached the stopped server");
                if before[i] != victim {
                    assert_eq!(
                        during[i], before[i],
                        "{k} moved off a server that stayed up"
                    );
                }
            }
            // The next in hash order is the server a config without the stopped one picks.
            let without = hash_config(&all[1..], "query:room", "").start().await;
            let rest: Vec<usize> = map_rooms(&without, &ups, &keys).await;
            assert_eq!(
                during, rest,
                "failover order differs from the config without it"
            );
            // It listens again: once a health check has seen it, its keys are back.
            wait_metric(&gw, &up_series(addr), 0.0, IO_TIMEOUT).await;
            ups[victim] = RawUpstream::start_at(addr, tagged("a")).await;
            wait_metric(&gw, &up_series(addr), 1.0, IO_TIMEOUT).await;
            assert_eq!(map_rooms(&gw, &ups, &keys).await, before);
        },
    )
    .await;
}

#[tokio::test]
async fn adding_a_server_moves_keys_only_to_it() {
    bounded("adding_a_server_moves_keys_only_to_it", async {
        let ups = servers(4).await;
        let all = addrs(&ups);
        let keys = rooms("grow", 40);
        let three = hash_config(&all[..3], "query:room", "").start().await;
        let before = map_rooms(&three, &ups, &keys).await;
        // The new server is listed first: positions must not matter.
        let order = [
            all[3].clone(),
            all[0].clone(),
            all[1].clone(),
            all[2].clone(),
        ];
        let four = hash_config(&order, "query:room", "").start().await;
        let after = map_rooms(&four, &ups, &keys).await;
        let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
        assert!(
            moved.iter().all(|&i| after[i] == 3),
            "keys moved between the old servers: {before:?} -> {after:?}"
        );
        assert!(
            (1..=20).contains(&moved.len()),
            "{} of 40 keys moved to the 4th server",
            moved.len()
        );
    })
    .await;
}

/// Asserts that `send(value)` lands every value on one server, and 30 values on all three.
async fn sticky_and_spread<F, Fut>(what: &str, send: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    for v in ["one", "two"] {
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            seen.insert(send(v.to_owned()).await);
        }
        assert_eq!(seen.len(), 1, "{what}: {v} reached servers {seen:?}");
    }
    let mut used = BTreeSet::new();
    for i in 0..30 {
        used.insert(send(format!("value-{i}")).await);
    }
    assert_eq!(used.len(), 3, "{what}: 30 values reached only {used:?}");
}

#[tokio::test]
async fn header_cookie_and_client_ip_keys() {
    bounded("header_cookie_and_client_ip_keys", async {
        let ups = servers(3).await;
        let gw = hash_config(&addrs(&ups), "header:X-Room", "").start().await;
        sticky_and_spread("header", |v| {
            let (gw, ups) = (&gw, &ups);
            async move { handshake_to(gw, ups, b"", "/ws", &[("x-ROOM", &v)]).await }
        })
        .await;
        drop(gw);

        let gw = hash_config(&addrs(&ups), "cookie:room", "").start().await;
        sticky_and_spread("cookie", |v| {
            let (gw, ups) = (&gw, &ups);
            async move {
                // Other cookies around it, and the value in the second of two Cookie lines.
                let lines = [
                    ("Cookie", "theme=dark"),
                    ("Cookie", &format!("a=1; room={v}")),
                ];
                handshake_to(gw, ups, b"", "/ws", &lines).await
            }
        })
        .await;
        drop(gw);

        // client_ip: the PROXY header's source is the client.
        let gw = hash_config(&addrs(&ups), "client_ip", "")
            .proxy_protocol()
            .start()
            .await;
        let from = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 80\r\n").into_bytes();
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            seen.insert(handshake_to(&gw, &ups, &from("203.0.113.7"), "/ws", &[]).await);
        }
        assert_eq!(seen.len(), 1, "one client address reached {seen:?}");
        let mut used = BTreeSet::new();
        for i in 1..=30 {
            let ip = format!("198.51.100.{i}");
            used.insert(handshake_to(&gw, &ups, &from(&ip), "/ws", &[]).await);
        }
        assert_eq!(used.len(), 3, "30 client addresses reached only {used:?}");
    })
    .await;
}

/// An ordinary GET through the route's `http` upstream on a fresh client connection; the tag
/// of the server that answered.
async fn plain_to(gw: &Gateway, target: &str) -> String {
    let mut c = Client::connect(gw.addr()).await;
    let req = ClientRequest::plain(&gw.addr().to_string(), target);
    c.send(&req.to_bytes()).await.expect("send");
    let (head, body) = c.read_response().await;
    assert_eq!(head.status, 200, "{target}: {head:?}");
    String::from_utf8(body).expect("tag")
}

#[tokio::test]
async fn ordinary_requests_follow_the_key_too() {
    bounded("ordinary_requests_follow_the_key_too", async {
        let mut ups = servers(3).await;
        let all = addrs(&ups);
        let cfg = hash_config(&all, "query:room", "health = { interval = \"100ms\" }").admin();
        let gw = cfg.start().await;
        let keys = rooms("plain", 30);
        let mut before = Vec::new();
        for k in &keys {
            // The same server as the key's handshakes, also over a reused connection.
            let tag = plain_to(&gw, &format!("/ws?room={k}")).await;
            assert_eq!(tag, TAGS[room(&gw, &ups, k).await], "{k}");
            assert_eq!(
                plain_to(&gw, &format!("/ws?room={k}&again=1")).await,
                tag,
                "{k}"
            );
            before.push(tag);
        }
        let used: BTreeSet<&String> = before.iter().collect();
        assert_eq!(used.len(), 3, "30 rooms reached only {used:?}");
        let plain_conns: usize = ups
            .iter()
            .flat_map(|u| u.conns())
            .filter(|c| c.head().is_some_and(|h| !h.headers.has("upgrade")))
            .count();
        assert!(
            plain_conns < 30,
            "{plain_conns} upstream connections for 60 requests"
        );
        assert!(!plain_to(&gw, "/ws").await.is_empty(), "a keyless request");
        drop(gw);
        // Server b stops. On a gateway without pooled connections to it, its keys fail over
        // (the connector's first dial refused) to their next server in hash order, as their
        // handshakes do; the other keys stay.
        let addr = ups[1].addr();
        ups[1] = RawUpstream::start(tagged("gone")).await;
        wait_refused(addr, IO_TIMEOUT).await;
        let gw = cfg.start().await;
        for (k, tag) in keys.iter().zip(&before) {
            let now = plain_to(&gw, &format!("/ws?room={k}")).await;
            if tag == "b" {
                assert_eq!(
                    now,
                    TAGS[room(&gw, &ups, k).await],
                    "{k}: as its handshakes"
                );
                assert_ne!(now, "gone", "{k}");
            } else {
                assert_eq!(&now, tag, "{k} moved off a server that stayed up");
            }
        }
        // b listens again: its keys come back, not kept on the failover connections.
        wait_metric(&gw, &up_series(addr), 0.0, IO_TIMEOUT).await;
        ups[1] = RawUpstream::start_at(addr, tagged("b")).await;
        wait_metric(&gw, &up_series(addr), 1.0, IO_TIMEOUT).await;
        for (k, tag) in keys.iter().zip(&before) {
            assert_eq!(
                &plain_to(&gw, &format!("/ws?room={k}")).await,
                tag,
                "{k} after b is back"
            );
        }
    })
    .await;
}

/// `claim:sub`: the key is the verified token's subject, whichever token carries it and from
/// whichever source; every token of one user reaches one server, users spread, and a token
/// that does not verify reaches none (the check runs before the pick).
#[tokio::test]
async fn claim_keys_follow_the_verified_subject() {
    bounded("claim_keys_follow_the_verified_subject", async {
        let ups = servers(3).await;
        let keys = JwtKeys::new();
        let dir = unique_temp_dir("claim-affinity");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, keys.jwks(&["RS256", "EdDSA"])).expect("write jwks");
        let base = ConfigBuilder::new()
            .upstream_with(
                "pool",
                &addrs(&ups),
                "balance = \"hash\"\nhash_key = \"claim:sub\"\n",
            )
            .route(
                Route::new("/ws")
                    .fallback("pool")
                    .key("auth", "\"api\""),
            )
            .build();
        let jwks = q(&jwks.display().to_string());
        let cfg = format!(
            "{base}\n[auth.api]\njwt = {{ jwks = {jwks}, issuer = \"https://id.test\", audience = \"chat\" }}\n"
        );
        let gw = Gateway::start(&cfg).await;
        let mut first = Vec::new();
        for i in 0..12 {
            let user = format!("user-{i:02}");
            let mut seen = BTreeSet::new();
            for (n, alg) in [Algorithm::RS256, Algorithm::EdDSA].into_iter().enumerate() {
                // Tokens differ (algorithm, a jti) but carry the same subject.
                let token = keys.sign(alg, &claims(json!({"sub": user, "jti": n})));
                let auth = format!("Bearer {token}");
                seen.insert(handshake_to(&gw, &ups, b"", "/ws", &[("Authorization", &auth)]).await);
                let query = format!("/ws?access_token={token}");
                seen.insert(handshake_to(&gw, &ups, b"", &query, &[]).await);
            }
            assert_eq!(seen.len(), 1, "{user} reached servers {seen:?}");
            first.extend(seen);
        }
        let used: BTreeSet<usize> = first.iter().copied().collect();
        assert!(used.len() >= 2, "12 users all reached server {used:?}");

        let before: usize = ups.iter().map(|u| u.conns().len()).sum();
        let forged = keys.hs256_confusion(&claims(json!({"sub": "user-00"})));
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws")
            .header("Authorization", &format!("Bearer {forged}"));
        let mut c = Client::connect(gw.addr()).await;
        c.send(&req.to_bytes()).await.expect("send");
        let (head, _) = c.read_response().await;
        assert_eq!(head.status, 401, "a forged token: {head:?}");
        let after: usize = ups.iter().map(|u| u.conns().len()).sum();
        assert_eq!(after, before, "a refused token reached an upstream");
    })
    .await;
}
