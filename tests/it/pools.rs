//! Upstream pools (SPEC §4, issue 6): balance modes over real servers, failover when a server
//! dies, 502 at once when all are down, active health checks taking a server out and back, host
//! names, ordinary requests through the `http` upstream (streaming, keep-alive, failover, 502/504),
//! other upgrade tokens, and the per-server metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::support::*;

/// A version-13 upgrade for `/ws` offering chat.v2.
fn ws_request(gw: &Gateway) -> ClientRequest {
    ClientRequest::ws(&gw.addr().to_string(), "/ws").protocol("chat.v2")
}

/// One successful handshake through `gw`; the client is returned with its tunnel open.
async fn open_tunnel(gw: &Gateway) -> Client {
    let req = ws_request(gw);
    let (c, head) = exchange(gw.addr(), &req, b"").await;
    assert_101(&head, &req.key, Some("chat.v2"));
    c
}

/// `[upstreams.pool]` over `servers` with extra `settings`, and `/ws` mapping chat.v2 to it.
fn pool_config(servers: &[String], settings: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .admin()
        .upstream_with("pool", servers, settings)
        .route(Route::new("/ws").sub("chat.v2", "pool"))
}

fn addrs(ups: &[&RawUpstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr().to_string()).collect()
}

/// WebSocket handshakes (not health checks) each raw upstream has received.
fn handshakes(ups: &[&RawUpstream]) -> Vec<usize> {
    ups.iter()
        .map(|u| {
            u.conns()
                .iter()
                .filter(|c| c.head().is_some_and(|h| !h.target.starts_with("/health")))
                .count()
        })
        .collect()
}

/// The series name of `metric` for server `addr` of upstream `pool`, as /metrics renders it.
fn series(metric: &str, addr: &str) -> String {
    format!(r#"{metric}{{upstream="pool",server="{addr}"}}"#)
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_servers() {
    bounded("round_robin_spreads_evenly_over_three_servers", async {
        let ups = [
            WsUpstream::start().await,
            WsUpstream::start().await,
            WsUpstream::start().await,
        ];
        let servers: Vec<String> = ups.iter().map(|u| u.addr().to_string()).collect();
        let gw = pool_config(&servers, r#"balance = "round_robin""#)
            .start()
            .await;
        for _ in 0..9 {
            drop(open_tunnel(&gw).await);
        }
        let got: Vec<usize> = ups.iter().map(|u| u.requests().len()).collect();
        assert_eq!(got, [3, 3, 3], "9 handshakes over 3 servers");
    })
    .await;
}

#[tokio::test]
async fn least_connections_sends_new_tunnels_to_the_least_loaded_server() {
    bounded(
        "least_connections_sends_new_tunnels_to_the_least_loaded_server",
        async {
            let a = RawUpstream::start(accept_then_hold()).await;
            let b = RawUpstream::start(accept_then_hold()).await;
            let c = RawUpstream::start(accept_then_hold()).await;
            let all = [&a, &b, &c];
            let gw = pool_config(&addrs(&all), r#"balance = "least_connections""#)
                .start()
                .await;
            // Six tunnels held open: always the least loaded server, so 2/2/2; remember where each went.
            let mut tunnels: Vec<(usize, Client)> = Vec::new();
            for _ in 0..6 {
                let before = handshakes(&all);
                let client = open_tunnel(&gw).await;
                let after = handshakes(&all);
                let server = (0..3)
                    .find(|&i| after[i] == before[i] + 1)
                    .expect("one server got the handshake");
                tunnels.push((server, client));
            }
            assert_eq!(handshakes(&all), [2, 2, 2], "6 open tunnels");
            // Close both tunnels on b; once the gateway has released them, b has the fewest.
            tunnels.retain(|(server, _)| *server != 1);
            let b_active = series(
                "switchyard_upstream_server_active_tunnels",
                &b.addr().to_string(),
            );
            wait_metric(&gw, &b_active, 0.0, IO_TIMEOUT).await;
            for i in 0..2 {
                tunnels.push((1, open_tunnel(&gw).await));
                assert_eq!(
                    handshakes(&all),
                    [2, 3 + i, 2],
                    "new tunnel {i} goes to the server with the fewest open tunnels"
                );
            }
            wait_metric(&gw, &b_active, 2.0, IO_TIMEOUT).await;
            let a_active = series(
                "switchyard_upstream_server_active_tunnels",
                &a.addr().to_string(),
            );
            assert_eq!(metric(&gw, &a_active).await, Some(2.0));
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_killed_mid_test_is_failed_over() {
    bounded("a_server_killed_mid_test_is_failed_over", async {
        let a = WsUpstream::start().await;
        let b = WsUpstream::start().await;
        let b_addr = b.addr();
        let gw = pool_config(
            &[a.addr().to_string(), b_addr.to_string()],
            r#"balance = "round_robin""#,
        )
        .start()
        .await;
        // An open tunnel on b survives the kill of b's listener; new handshakes avoid b.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(open_tunnel(&gw).await);
        }
        assert_eq!((a.requests().len(), b.requests().len()), (2, 2));
        drop(b);
        wait_refused(b_addr, IO_TIMEOUT).await;
        for i in 0..6 {
            let req = ws_request(&gw);
            let (_c, head) = exchange(gw.addr(), &req, b"").await;
            assert_eq!(head.status, 101, "handshake {i} after b died: {head:?}");
            assert_101(&head, &req.key, Some("chat.v2"));
        }
        assert_eq!(
            a.requests().len(),
            8,
            "every handshake after the kill went to a"
        );
        let b_label = b_addr.to_string();
        let failures = metric(
            &gw,
            &series("switchyard_upstream_connect_failures_total", &b_label),
        )
        .await
        .expect("connect failures series for b");
        assert!(failures >= 1.0, "b's failed connects counted: {failures}");
        assert_eq!(
            metric(&gw, &series("switchyard_upstream_server_up", &b_label)).await,
            Some(0.0)
        );
        assert_eq!(
            metric(
                &gw,
                &series("switchyard_upstream_server_up", &a.addr().to_string())
            )
            .await,
            Some(1.0)
        );
    })
    .await;
}

#[tokio::test]
async fn all_servers_down_is_502_at_once() {
    bounded("all_servers_down_is_502_at_once", async {
        let (_s1, one) = stalled_addr();
        let (_s2, two) = stalled_addr();
        let gw = ConfigBuilder::new()
            .limit("upstream_connect_timeout", "\"1s\"")
            .upstream("pool", &[one, two])
            .route(Route::new("/ws").sub("chat.v2", "pool"))
            .start()
            .await;
        // The first handshake finds out: both connects time out, the last timed out: 504.
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ws_request(&gw).to_bytes()).await.expect("send");
        expect_failure(&mut c, 504, "both servers time out").await;
        // Now both are marked down (for 1s from the end of that attempt): 502 without waiting
        // for any connect timeout.
        let started = Instant::now();
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ws_request(&gw).to_bytes()).await.expect("send");
        let (head, _) = c.read_response().await;
        let took = started.elapsed();
        assert_eq!(head.status, 502, "all servers down: {head:?}");
        assert!(
            took < Duration::from_millis(800),
            "502 took {took:?}: all servers are down, no connect timeout (1s) should be waited"
        );
    })
    .await;
}

/// A raw upstream answering `GET /health` with the status in `status` (then closing) and every
/// other request as a WebSocket upgrade held open.
fn health_and_hold(status: Arc<AtomicU16>) -> Script {
    script(move |mut c| {
        let status = status.clone();
        async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            if head.target.starts_with("/health") {
                let code = status.load(Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {code} Check\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = c.send(answer.as_bytes()).await;
                return;
            }
            if c.send(&response_101(&head, offered(&head).as_deref()))
                .await
                .is_ok()
            {
                c.read_to_eof().await;
            }
        }
    })
}

#[tokio::test]
async fn health_check_takes_a_server_out_and_back() {
    bounded("health_check_takes_a_server_out_and_back", async {
        let a_status = Arc::new(AtomicU16::new(200));
        let a = RawUpstream::start(health_and_hold(a_status.clone())).await;
        let b = RawUpstream::start(health_and_hold(Arc::new(AtomicU16::new(200)))).await;
        let all = [&a, &b];
        let gw = pool_config(
            &addrs(&all),
            r#"health = { path = "/health", interval = "200ms" }"#,
        )
        .start()
        .await;
        let a_up = series("switchyard_upstream_server_up", &a.addr().to_string());
        // The checks reach both servers with the configured request.
        let first = a.conn(0, IO_TIMEOUT).await;
        first.wait_eof(IO_TIMEOUT).await;
        let head = first.head().expect("a check request");
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("GET", "/health")
        );
        assert_eq!(
            head.headers.get("host"),
            Some(a.addr().to_string().as_str())
        );
        assert!(
            head.headers
                .tokens("connection")
                .contains(&"close".to_string())
        );
        b.conn(0, IO_TIMEOUT).await;

        a_status.store(500, Ordering::SeqCst);
        wait_metric(&gw, &a_up, 0.0, IO_TIMEOUT).await;
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(open_tunnel(&gw).await);
        }
        assert_eq!(
            handshakes(&all),
            [0, 6],
            "a failed its check: every handshake on b"
        );

        a_status.store(200, Ordering::SeqCst);
        wait_metric(&gw, &a_up, 1.0, IO_TIMEOUT).await;
        for _ in 0..6 {
            held.push(open_tunnel(&gw).await);
        }
        assert_eq!(handshakes(&all), [3, 9], "a is back in the rotation");
    })
    .await;
}

/// Health checks with `target` among `conns`.
fn count_checks(conns: &[Arc<ConnLog>], target: &str) -> usize {
    conns
        .iter()
        .filter(|c| c.head().is_some_and(|h| h.target == target))
        .count()
}

/// Health checks with `target` that `up` has received.
fn checks_of(up: &RawUpstream, target: &str) -> usize {
    count_checks(&up.conns(), target)
}

/// Waits until `up` has received `n` checks of `target`.
async fn wait_checks(up: &RawUpstream, target: &str, n: usize) {
    up.wait_until(&format!("{n} checks of {target}"), IO_TIMEOUT, |conns| {
        count_checks(conns, target) >= n
    })
    .await;
}

#[tokio::test]
async fn reload_replaces_the_health_checks() {
    bounded("reload_replaces_the_health_checks", async {
        let up = RawUpstream::start(health_and_hold(Arc::new(AtomicU16::new(200)))).await;
        let config = |path: &str| {
            pool_config(
                &[up.addr().to_string()],
                &format!(r#"health = {{ path = "{path}", interval = "100ms" }}"#),
            )
        };
        let gw = config("/health").start().await;
        wait_checks(&up, "/health", 2).await;
        // A client connection that has not sent its head yet keeps the first generation alive
        // (for handshake_timeout, 10s): its checks must stop anyway.
        let _held = Client::connect(gw.addr()).await;
        gw.reload(&config("/health-v2").build()).await;
        // The new generation checks; once it has twice, the old generation's task is gone.
        wait_checks(&up, "/health-v2", 2).await;
        let old = checks_of(&up, "/health");
        let new = checks_of(&up, "/health-v2");
        wait_checks(&up, "/health-v2", new + 3).await;
        assert_eq!(
            checks_of(&up, "/health"),
            old,
            "the replaced configuration still checks"
        );
        // A reload to a configuration without checks stops them all.
        gw.reload(&pool_config(&[up.addr().to_string()], "").build())
            .await;
        let stopped = checks_of(&up, "/health-v2");
        // Absence can only be shown by letting time pass: five intervals of the removed check.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            checks_of(&up, "/health-v2") <= stopped + 1,
            "checks went on after a reload removed them"
        );
    })
    .await;
}

#[tokio::test]
async fn tcp_health_check_without_path_notices_a_dead_server() {
    bounded(
        "tcp_health_check_without_path_notices_a_dead_server",
        async {
            let a = WsUpstream::start().await;
            let b = WsUpstream::start().await;
            let a_addr = a.addr();
            let gw = pool_config(
                &[a_addr.to_string(), b.addr().to_string()],
                r#"health = { interval = "200ms" }"#,
            )
            .start()
            .await;
            let a_up = series("switchyard_upstream_server_up", &a_addr.to_string());
            assert_eq!(metric(&gw, &a_up).await, Some(1.0));
            drop(a);
            wait_refused(a_addr, IO_TIMEOUT).await;
            // No traffic at all: the check alone takes a out.
            wait_metric(&gw, &a_up, 0.0, IO_TIMEOUT).await;
            let failures = series(
                "switchyard_upstream_connect_failures_total",
                &a_addr.to_string(),
            );
            for _ in 0..4 {
                drop(open_tunnel(&gw).await);
            }
            assert_eq!(b.requests().len(), 4);
            assert_eq!(
                metric(&gw, &failures).await,
                Some(0.0),
                "traffic never tried the server the check took out"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn host_names_resolve_and_unresolvable_ones_fail_over() {
    bounded(
        "host_names_resolve_and_unresolvable_ones_fail_over",
        async {
            let up = WsUpstream::start().await;
            let by_name = format!("localhost:{}", up.addr().port());
            let gw = pool_config(&["no-such-host.invalid:9".to_string(), by_name.clone()], "")
                .upstream_with("nowhere", &["no-such-host.invalid:9".to_string()], "")
                .route(Route::new("/nowhere").sub("chat.v2", "nowhere"))
                .start()
                .await;
            gw.wait_log("warning for the unresolvable name", IO_TIMEOUT, |e| {
                is_event(e, "upstream_unresolved")
                    && e.get("level").and_then(|l| l.as_str()) == Some("WARN")
                    && e.get("server").and_then(|s| s.as_str()) == Some("no-such-host.invalid:9")
            })
            .await;
            for i in 0..3 {
                let req = ws_request(&gw);
                let (_c, head) = exchange(gw.addr(), &req, b"").await;
                assert_eq!(head.status, 101, "handshake {i} via {by_name}: {head:?}");
            }
            assert_eq!(up.requests().len(), 3);
            let req = ClientRequest::ws(&gw.addr().to_string(), "/nowhere").protocol("chat.v2");
            let mut c = Client::connect(gw.addr()).await;
            c.send(&req.to_bytes()).await.expect("send");
            expect_failure(&mut c, 502, "only an unresolvable server").await;
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Ordinary requests through the `http` upstream

/// A gateway whose route `/` sends ordinary requests to `[upstreams.web]` over `servers`.
async fn http_gateway(servers: &[String], limits: &[(&str, &str)]) -> Gateway {
    let mut cfg = ConfigBuilder::new()
        .upstream_with("web", servers, "")
        .route(Route::new("/").http("web"));
    for (k, v) in limits {
        cfg = cfg.limit(k, v);
    }
    cfg.start().await
}

/// Script: answer every request head on the connection with `200` and a body naming its target.
fn keep_alive_answers() -> Script {
    script(|mut c| async move {
        while let Some(head) = c.read_head().await {
            let body = format!("you asked for {}", head.target);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=30\r\nX-Up: yes\r\n\r\n{body}",
                body.len()
            );
            if c.send(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
}

/// Every request head received on `conn`, in order (GETs without bodies, so heads back to back).
fn heads_on(conn: &ConnLog) -> Vec<RequestHead> {
    let raw = conn.received();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split_inclusive("\r\n\r\n")
        .filter(|h| h.ends_with("\r\n\r\n"))
        .map(|h| parse_request_head(h.as_bytes()).expect("request head"))
        .collect()
}

#[tokio::test]
async fn plain_requests_reuse_one_upstream_connection() {
    bounded("plain_requests_reuse_one_upstream_connection", async {
        let up = RawUpstream::start(keep_alive_answers()).await;
        let gw = http_gateway(&[up.addr().to_string()], &[]).await;
        let host = gw.addr().to_string();
        let mut c = Client::connect(gw.addr()).await;
        for path in ["/a", "/b"] {
            let req = ClientRequest::plain(&host, path)
                .set("Connection", "keep-alive, X-Hop")
                .header("X-Hop", "drop me")
                .header("Keep-Alive", "timeout=5")
                .header("X-End", "keep me");
            c.send(&req.to_bytes()).await.expect("send");
            let (head, body) = c.read_response().await;
            assert_eq!(head.status, 200, "{path}: {head:?}");
            assert_eq!(body, format!("you asked for {path}").as_bytes());
            assert_eq!(head.headers.get("x-up"), Some("yes"));
            assert!(
                !head.headers.has("keep-alive"),
                "hop-by-hop relayed: {head:?}"
            );
        }
        // A second client connection also lands on the idle pooled connection.
        let mut c2 = Client::connect(gw.addr()).await;
        c2.send(&ClientRequest::plain(&host, "/c").to_bytes())
            .await
            .expect("send");
        let (head, _) = c2.read_response().await;
        assert_eq!(head.status, 200);
        let conns = up.conns();
        assert_eq!(conns.len(), 1, "three requests, one upstream connection");
        let heads = heads_on(&conns[0]);
        let targets: Vec<&str> = heads.iter().map(|h| h.target.as_str()).collect();
        assert_eq!(targets, ["/a", "/b", "/c"]);
        let first = &heads[0].headers;
        assert_eq!(first.get("host"), Some(host.as_str()), "client's Host kept");
        assert_eq!(first.get("x-end"), Some("keep me"));
        assert!(
            !first.has("x-hop") && !first.has("keep-alive"),
            "hop-by-hop forwarded: {first:?}"
        );
        assert_eq!(first.get("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(first.get("x-forwarded-proto"), Some("http"));
        assert_eq!(first.get("x-forwarded-host"), Some(host.as_str()));
        assert!(
            first
                .get("forwarded")
                .is_some_and(|f| f.contains("for=127.0.0.1")),
            "{first:?}"
        );
    })
    .await;
}

const BIG: usize = 8 * 1024 * 1024;
const FIRST_CHUNK: usize = 64 * 1024;

#[tokio::test]
async fn large_post_and_response_stream_through_the_http_upstream() {
    bounded(
        "large_post_and_response_stream_through_the_http_upstream",
        async {
            let request_body = random_bytes(BIG, 61);
            let response_body = Arc::new(random_bytes(BIG, 62));
            let upstream_got_first = Arc::new(Notify::new());
            let client_got_first = Arc::new(Notify::new());
            let (got_first, client_first, body_out) = (
                upstream_got_first.clone(),
                client_got_first.clone(),
                response_body.clone(),
            );
            let up = RawUpstream::start(script(move |mut c| {
                let (got_first, client_first, body_out) =
                    (got_first.clone(), client_first.clone(), body_out.clone());
                async move {
                    let Some(head) = c.read_head().await else {
                        return;
                    };
                    let len: usize = head
                        .headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let first = c.recv_exact(FIRST_CHUNK.min(len)).await;
                    got_first.notify_one();
                    let rest = c.recv_exact(len - first.len()).await;
                    if first.len() + rest.len() != len {
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                    if c.send(head.as_bytes()).await.is_err()
                        || c.send(&body_out[..FIRST_CHUNK]).await.is_err()
                    {
                        return;
                    }
                    client_first.notified().await;
                    for chunk in body_out[FIRST_CHUNK..].chunks(256 * 1024) {
                        if c.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    c.read_to_eof().await;
                }
            }))
            .await;
            let gw = http_gateway(&[up.addr().to_string()], &[]).await;
            let req = ClientRequest::plain(&gw.addr().to_string(), "/upload")
                .method("POST")
                .header("Content-Length", &BIG.to_string())
                .header("Content-Type", "application/octet-stream");
            let mut c = Client::connect(gw.addr()).await;
            c.send(&[req.to_bytes(), request_body[..FIRST_CHUNK].to_vec()].concat())
                .await
                .expect("send head and first chunk");
            // Streaming, not buffering: the upstream has the first chunk while we still hold the rest.
            tokio::time::timeout(IO_TIMEOUT, upstream_got_first.notified())
                .await
                .expect("the first chunk reached the upstream before the client sent the rest");
            for chunk in request_body[FIRST_CHUNK..].chunks(128 * 1024) {
                c.send(chunk).await.expect("send body");
            }
            let head = c.read_head().await;
            assert_eq!(head.status, 200, "{head:?}");
            assert_eq!(
                head.headers.get("content-length"),
                Some(BIG.to_string().as_str())
            );
            // And back: the client has the first chunk of the answer before the upstream sends more.
            let first = c.read_exact(FIRST_CHUNK).await;
            assert!(
                first == response_body[..FIRST_CHUNK],
                "first response chunk differs"
            );
            client_got_first.notify_one();
            let rest = c.read_exact(BIG - FIRST_CHUNK).await;
            assert!(
                rest == response_body[FIRST_CHUNK..],
                "response body differs"
            );
            let conn = up.conn(0, IO_TIMEOUT).await;
            let after = conn.after_head();
            assert_eq!(after.len(), BIG, "request body length at the upstream");
            assert!(
                after == request_body,
                "request body differs at the upstream"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn http_upstream_fails_over_and_answers_502_and_504() {
    bounded("http_upstream_fails_over_and_answers_502_and_504", async {
        // [refused, good]: every request answered by the good server.
        let good = RawUpstream::start(keep_alive_answers()).await;
        let gw = http_gateway(&[refused_addr().to_string(), good.addr().to_string()], &[]).await;
        for i in 0..4 {
            let mut c = Client::connect(gw.addr()).await;
            c.send(&ClientRequest::plain(&gw.addr().to_string(), &format!("/{i}")).to_bytes())
                .await
                .expect("send");
            let (head, _) = c.read_response().await;
            assert_eq!(
                head.status, 200,
                "request {i} with one server refused: {head:?}"
            );
        }
        drop(gw);

        // Nothing listening: 502.
        let gw = http_gateway(&[refused_addr().to_string()], &[]).await;
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ClientRequest::plain(&gw.addr().to_string(), "/").to_bytes())
            .await
            .expect("send");
        expect_failure(&mut c, 502, "http upstream refused").await;
        drop(gw);

        // Silent upstream: 504 after upstream_handshake_timeout.
        let silent = RawUpstream::start(stall()).await;
        let gw = http_gateway(
            &[silent.addr().to_string()],
            &[("upstream_handshake_timeout", "\"300ms\"")],
        )
        .await;
        let started = Instant::now();
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ClientRequest::plain(&gw.addr().to_string(), "/").to_bytes())
            .await
            .expect("send");
        expect_failure(&mut c, 504, "silent http upstream").await;
        assert!(started.elapsed() >= Duration::from_millis(250));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Other upgrade tokens

#[tokio::test]
async fn generic_upgrade_token_is_tunnelled_verbatim() {
    bounded("generic_upgrade_token_is_tunnelled_verbatim", async {
        let up = RawUpstream::start(script(|mut c| async move {
            if c.read_head().await.is_none() {
                return;
            }
            let answer =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n";
            if c.send(answer).await.is_ok() {
                c.echo().await;
            }
        }))
        .await;
        let gw = ConfigBuilder::new()
            .upstream("raw", &[up.addr()])
            .route(Route::new("/tun").upgrade("tcp", "raw"))
            .start()
            .await;
        let req = ClientRequest::plain(&gw.addr().to_string(), "/tun")
            .header("Upgrade", "example/1, tcp, websocket")
            .header("Connection", "Upgrade");
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_eq!(head.status, 101, "{head:?}");
        assert_eq!(
            head.headers.tokens("upgrade"),
            ["tcp"],
            "first mapped token in client order"
        );
        let sent = up.conn(0, IO_TIMEOUT).await.head().expect("upstream head");
        assert_eq!(sent.headers.tokens("upgrade"), ["tcp"]);
        assert!(
            sent.headers
                .tokens("connection")
                .contains(&"upgrade".to_string())
        );

        let data = random_bytes(3 * 1024 * 1024 / 2, 63);
        let (buffered, mut rd, mut wr) = c.into_split();
        assert!(
            buffered.is_empty(),
            "bytes before any were sent: {buffered:?}"
        );
        let to_send = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in to_send.chunks(48 * 1024) {
                wr.write_all(chunk).await.expect("write through the tunnel");
            }
            wr.shutdown().await.expect("half-close");
            wr
        });
        let mut echoed = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut echoed))
            .await
            .expect("echo ends after the half-close")
            .expect("read the echo");
        let _wr = writer.await.expect("writer");
        assert_eq!(echoed.len(), data.len(), "echoed length");
        assert!(echoed == data, "echoed bytes differ");
    })
    .await;
}
