//! SPEC §7 and the `[limits]` of §2, end to end against the real binary: live metrics, the
//! access log's `closed_by`, SIGHUP reloads (routes, broken configs, listeners), SIGTERM/SIGINT
//! drains, connection limits answered at accept, and slow or silent clients cut off.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One route `/ws`: subprotocol `echo` or no offer (fallback), both to upstream `app` at `up`.
fn config(up: SocketAddr) -> ConfigBuilder {
    ConfigBuilder::new()
        .admin()
        .upstream("app", &[up])
        .route(Route::new("/ws").sub("echo", "app").fallback("app"))
}

/// Opens a tunnel on `addr` by hand, offering `echo`.
async fn open_tunnel(addr: SocketAddr) -> Client {
    let req = ClientRequest::ws(&addr.to_string(), "/ws").protocol("echo");
    let (c, head) = exchange(addr, &req, b"").await;
    assert_101(&head, &req.key, Some("echo"));
    c
}

/// Sends `msg` through an echoing tunnel and asserts it comes back.
async fn assert_echoes(c: &mut Client, msg: &[u8]) {
    c.send(msg)
        .await
        .unwrap_or_else(|e| panic!("writing {msg:?} into the tunnel: {e}"));
    assert_eq!(
        c.read_exact(msg.len()).await,
        msg,
        "echo through the tunnel"
    );
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            (metric == name && all).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(gw: &Gateway) -> String {
    let (status, content_type, body) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "/metrics Content-Type {content_type:?}"
    );
    body
}

/// Scrapes `/metrics` until `ready` holds for its text, at most [`IO_TIMEOUT`]: the gateway bumps
/// a byte counter after its write returns, so the peer may have read the bytes a moment before
/// they are counted, and the scrape itself is the only signal.
async fn scrape_until(gw: &Gateway, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let text = scrape(gw).await;
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics: not {what} within {IO_TIMEOUT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field<'a>(ev: &'a Value, key: &str) -> Option<&'a str> {
    ev.get(key).and_then(Value::as_str)
}

fn is_tunnel_closed(ev: &Value) -> bool {
    field(ev, "target") == Some("access") && is_event(ev, "tunnel_closed")
}

/// Waits for the next `tunnel closed` access event after `mark`.
async fn tunnel_closed_after(gw: &Gateway, mark: usize) -> Value {
    gw.wait_log_after(mark, "tunnel closed", IO_TIMEOUT, is_tunnel_closed)
        .await
}

/// Whether a TCP connect to `addr` is refused (the listener is closed).
async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) => false,
        Err(_) => panic!("connect to {addr} neither succeeded nor failed within {IO_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Counters and gauges move with real traffic, and tunnel bytes show while the tunnel is open.
#[tokio::test]
async fn metrics_move_with_real_traffic() {
    bounded("metrics_move_with_real_traffic", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(up.addr()).start().await;
        let before = scrape(&gw).await;
        let count = |text: &str, name: &str, labels: &[(&str, &str)]| {
            metric(text, name, labels) - metric(&before, name, labels)
        };

        let mut c = open_tunnel(gw.addr()).await;
        assert_echoes(&mut c, &[b'u'; 1000]).await;
        let handshakes = "switchyard_handshakes_total";
        let bytes = "switchyard_tunnel_bytes_total";
        let open = scrape_until(&gw, "1000 bytes counted each way", |text| {
            ["client_to_upstream", "upstream_to_client"]
                .iter()
                .all(|d| count(text, bytes, &[("direction", d)]) >= 1000.0)
        })
        .await;
        let active = [("route", "/ws"), ("subprotocol", "echo")];
        assert_eq!(
            count(&open, handshakes, &[("route", "/ws"), ("status", "101")]),
            1.0,
            "{open}"
        );
        assert_eq!(
            metric(&open, "switchyard_tunnels_active", &active),
            1.0,
            "{open}"
        );
        assert_eq!(
            count(&open, bytes, &[("direction", "client_to_upstream")]),
            1000.0,
            "bytes of the open tunnel, client to upstream:\n{open}"
        );
        assert_eq!(
            count(&open, bytes, &[("direction", "upstream_to_client")]),
            1000.0,
            "bytes of the open tunnel, upstream to client:\n{open}"
        );
        assert_eq!(
            count(&open, "switchyard_upstream_connect_seconds_count", &[]),
            1.0,
            "{open}"
        );

        let req = ClientRequest::ws(&gw.addr().to_string(), "/nowhere");
        let (mut c404, head) = exchange(gw.addr(), &req, b"").await;
        assert_eq!(head.status, 404);
        let _ = c404.read_to_eof(IO_TIMEOUT).await;

        let mark = gw.log_mark();
        c.shutdown_write().await;
        assert!(c.closed_within(IO_TIMEOUT).await, "tunnel not closed");
        tunnel_closed_after(&gw, mark).await;
        let closed = scrape(&gw).await;
        assert_eq!(
            count(&closed, handshakes, &[("route", "none"), ("status", "404")]),
            1.0,
            "{closed}"
        );
        assert_eq!(
            metric(&closed, "switchyard_tunnels_active", &active),
            0.0,
            "{closed}"
        );
        assert_eq!(
            count(&closed, "switchyard_tunnel_duration_seconds_count", &[]),
            1.0,
            "{closed}"
        );
        // Counted once: live while open, nothing added again at the close.
        assert_eq!(
            count(&closed, bytes, &[("direction", "client_to_upstream")]),
            1000.0,
            "{closed}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Access log: who closed the tunnel

/// How a tunnel ends, and the `closed_by` the access log must say.
struct CloseRow {
    name: &'static str,
    /// The upstream's behaviour after its 101.
    upstream: fn() -> Script,
    /// What the client does once the tunnel is open.
    client: ClientEnd,
    closed_by: &'static str,
}

#[derive(Clone, Copy)]
enum ClientEnd {
    /// Half-closes, then waits for the gateway to close.
    Eof,
    /// Resets the connection.
    Reset,
    /// Sends `bye` and waits for the gateway to close.
    SendBye,
}

/// Upstream: 101, then echo until EOF and pass the EOF on.
fn echo_up() -> Script {
    accept_then_echo(b"")
}

/// Upstream: 101, then EOF at once, then read until the gateway closes.
fn eof_up() -> Script {
    script(|mut c| async move {
        if c.accept_upgrade().await {
            c.shutdown_write().await;
            c.read_to_eof().await;
        }
    })
}

/// Upstream: 101, then a reset once `bye` arrives.
fn reset_up() -> Script {
    script(|mut c| async move {
        if c.accept_upgrade().await {
            c.recv_exact(3).await;
            c.abort();
        }
    })
}

const CLOSE_ROWS: &[CloseRow] = &[
    CloseRow {
        name: "client EOF",
        upstream: echo_up,
        client: ClientEnd::Eof,
        closed_by: "client",
    },
    CloseRow {
        name: "client reset",
        upstream: echo_up,
        client: ClientEnd::Reset,
        closed_by: "client",
    },
    CloseRow {
        name: "upstream EOF",
        upstream: eof_up,
        client: ClientEnd::Eof,
        closed_by: "upstream",
    },
    CloseRow {
        name: "upstream reset",
        upstream: reset_up,
        client: ClientEnd::SendBye,
        closed_by: "upstream",
    },
];

/// Every way a tunnel can end is logged once, with the side that ended it.
#[tokio::test]
async fn access_log_says_who_closed_the_tunnel() {
    bounded("access_log_says_who_closed_the_tunnel", async {
        for row in CLOSE_ROWS {
            let up = RawUpstream::start((row.upstream)()).await;
            let gw = config(up.addr()).start().await;
            let mark = gw.log_mark();
            let mut c = open_tunnel(gw.addr()).await;
            match row.client {
                ClientEnd::Eof => {
                    if row.closed_by == "upstream" {
                        // Let the upstream's EOF arrive first.
                        assert!(c.closed_within(IO_TIMEOUT).await, "{}: no EOF", row.name);
                    }
                    c.shutdown_write().await;
                    assert!(
                        c.closed_within(IO_TIMEOUT).await,
                        "{}: not closed",
                        row.name
                    );
                }
                ClientEnd::Reset => c.abort(),
                ClientEnd::SendBye => {
                    let _ = c.send(b"bye").await;
                    assert!(
                        c.closed_within(IO_TIMEOUT).await,
                        "{}: not closed",
                        row.name
                    );
                }
            }
            let ev = tunnel_closed_after(&gw, mark).await;
            assert_eq!(
                field(&ev, "closed_by"),
                Some(row.closed_by),
                "{}: {ev}",
                row.name
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

/// A reload swaps the route's upstream: the open tunnel keeps echoing through the old upstream,
/// a new handshake goes to the new one.
#[tokio::test]
async fn reload_swaps_upstream_while_a_tunnel_stays_up() {
    bounded("reload_swaps_upstream_while_a_tunnel_stays_up", async {
        let old = RawUpstream::start(accept_then_echo(b"")).await;
        let new = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(old.addr()).start().await;
        let mut t1 = open_tunnel(gw.addr()).await;
        assert_echoes(&mut t1, b"before").await;

        let ev = gw.reload(&config(new.addr()).build()).await;
        assert!(is_event(&ev, RELOADED), "{ev}");

        assert_echoes(&mut t1, b"after-reload").await;
        let old_conn = old.conn(0, IO_TIMEOUT).await;
        assert!(
            old_conn.after_head().ends_with(b"beforeafter-reload"),
            "the old upstream did not get the open tunnel's bytes"
        );
        let mut t2 = open_tunnel(gw.addr()).await;
        assert_echoes(&mut t2, b"new").await;
        assert_eq!(
            new.conns().len(),
            1,
            "the new handshake did not reach the new upstream"
        );
        assert_eq!(
            old.conns().len(),
            1,
            "the new handshake reached the old upstream"
        );
    })
    .await;
}

/// A config that does not parse, or does not validate, is logged as an error and changes nothing.
#[tokio::test]
async fn broken_reload_keeps_the_running_config() {
    bounded("broken_reload_keeps_the_running_config", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(up.addr()).start().await;
        let undefined = ConfigBuilder::new()
            .admin()
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").sub("echo", "no_such_upstream"))
            .build();
        let rows = [
            (
                "unparsable",
                "this is [[[ not toml\n".to_string(),
                "switchyard.toml:1",
            ),
            ("undefined upstream", undefined, "no_such_upstream"),
        ];
        for (name, text, mentions) in rows {
            let ev = gw.reload(&text).await;
            assert!(is_event(&ev, RELOAD_FAILED), "{name}: {ev}");
            assert_eq!(field(&ev, "level"), Some("ERROR"), "{name}: {ev}");
            assert!(
                ev.to_string().contains(mentions),
                "{name}: the error does not mention {mentions:?}: {ev}"
            );
            let mut c = open_tunnel(gw.addr()).await;
            assert_echoes(&mut c, name.as_bytes()).await;
            let (status, _, _) = gw.admin_get("/healthz").await;
            assert_eq!(status, 200, "{name}");
        }
        assert_eq!(up.conns().len(), 2);
    })
    .await;
}

/// A reload opens a listener added to the config and closes one removed from it; the kept one
/// keeps its socket, and a tunnel accepted on the removed one lives on.
#[tokio::test]
async fn reload_opens_and_closes_listeners() {
    bounded("reload_opens_and_closes_listeners", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let one = config(up.addr());
        let gw = one.start().await;
        let first = gw.addr();

        let mark = gw.log_mark();
        let ev = gw.reload(&one.clone().listeners(2).build()).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        let opened = gw.listening_after(mark);
        assert_eq!(
            opened.len(),
            1,
            "listening events after the reload: {opened:?}"
        );
        let (second, kind) = opened[0].clone();
        assert_eq!(kind, "listener");
        assert_ne!(second, first);
        let mut on_second = open_tunnel(second).await;
        assert_echoes(&mut on_second, b"second").await;
        let mut on_first = open_tunnel(first).await;
        assert_echoes(&mut on_first, b"first").await;

        let mark = gw.log_mark();
        let ev = gw.reload(&one.build()).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        let closed = gw
            .wait_event_after(mark, "listener_closed", IO_TIMEOUT)
            .await;
        assert_eq!(field(&closed, "addr"), Some(second.to_string().as_str()));
        assert!(
            refused(second).await,
            "removed listener {second} still accepts"
        );
        assert!(
            gw.listening_after(mark).is_empty(),
            "nothing should be opened"
        );
        assert_echoes(&mut on_second, b"still-up").await;
        assert_echoes(&mut on_first, b"first-still-up").await;
        let mut again = open_tunnel(first).await;
        assert_echoes(&mut again, b"kept").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// SIGTERM / SIGINT

/// SIGTERM with a tunnel open: /readyz 503, the listener closed, the tunnel still echoes; the
/// process exits 0 once the tunnel ends.
#[tokio::test]
async fn sigterm_drains_an_open_tunnel_then_exits_0() {
    bounded("sigterm_drains_an_open_tunnel_then_exits_0", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let mut gw = config(up.addr())
            .limit("drain_timeout", "\"20s\"")
            .start()
            .await;
        let mut t = open_tunnel(gw.addr()).await;
        let mark = gw.log_mark();
        gw.signal(Signal::Term);
        gw.wait_event_after(mark, "listener_closed", IO_TIMEOUT)
            .await;
        let (status, _, _) = gw.admin_get("/readyz").await;
        assert_eq!(status, 503, "/readyz while draining");
        let (status, _, _) = gw.admin_get("/healthz").await;
        assert_eq!(status, 200, "/healthz while draining");
        assert!(
            refused(gw.addr()).await,
            "the listener still accepts while draining"
        );
        assert_echoes(&mut t, b"draining").await;
        assert!(
            gw.wait_exit(Duration::from_millis(300)).await.is_none(),
            "exited with a tunnel open"
        );

        t.shutdown_write().await;
        let status = gw
            .wait_exit(IO_TIMEOUT)
            .await
            .expect("still running after the last tunnel ended");
        assert_eq!(status.code(), Some(0), "{status:?}");
        let ev = tunnel_closed_after(&gw, mark).await;
        assert_eq!(field(&ev, "closed_by"), Some("client"), "{ev}");
    })
    .await;
}

/// At `drain_timeout` the remaining tunnels are closed with `closed_by = "drain"` and the
/// process exits 0.
#[tokio::test]
async fn drain_timeout_closes_tunnels_and_exits_0() {
    bounded("drain_timeout_closes_tunnels_and_exits_0", async {
        let up = RawUpstream::start(accept_then_hold()).await;
        let mut gw = config(up.addr())
            .limit("drain_timeout", "\"1s\"")
            .start()
            .await;
        let mut t = open_tunnel(gw.addr()).await;
        let mark = gw.log_mark();
        gw.signal(Signal::Int);
        assert!(
            t.closed_within(IO_TIMEOUT).await,
            "tunnel open past drain_timeout"
        );
        let upstream_side = up.conn(0, IO_TIMEOUT).await;
        assert!(
            upstream_side.wait_eof(IO_TIMEOUT).await,
            "upstream side not closed"
        );
        let status = gw
            .wait_exit(IO_TIMEOUT)
            .await
            .expect("still running after the drain timeout");
        assert_eq!(status.code(), Some(0), "{status:?}");
        let ev = tunnel_closed_after(&gw, mark).await;
        assert_eq!(field(&ev, "closed_by"), Some("drain"), "{ev}");
    })
    .await;
}

/// A second signal during a drain exits at once, tunnels or not.
#[tokio::test]
async fn second_signal_exits_at_once() {
    bounded("second_signal_exits_at_once", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let mut gw = config(up.addr())
            .limit("drain_timeout", "\"60s\"")
            .start()
            .await;
        let mut t = open_tunnel(gw.addr()).await;
        let mark = gw.log_mark();
        gw.signal(Signal::Term);
        gw.wait_event_after(mark, "draining", IO_TIMEOUT).await;
        assert_echoes(&mut t, b"draining").await;
        gw.signal(Signal::Int);
        let status = gw
            .wait_exit(IO_TIMEOUT)
            .await
            .expect("a second signal did not end the drain");
        assert_eq!(status.code(), Some(0), "{status:?}");
        assert!(
            t.closed_within(IO_TIMEOUT).await,
            "tunnel open after the process exited"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Limits

/// Over `max_connections_per_ip` (429) or `max_connections` (503 + Retry-After), a connection is
/// answered at once although it sends nothing, and a slot frees when a tunnel ends.
#[tokio::test]
async fn connection_limits_answered_at_accept() {
    bounded("connection_limits_answered_at_accept", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        for (key, status, header) in [
            ("max_connections_per_ip", 429, None),
            ("max_connections", 503, Some("retry-after")),
        ] {
            let gw = config(up.addr()).limit(key, "1").start().await;
            let mut t = open_tunnel(gw.addr()).await;
            let mut over = Client::connect(gw.addr()).await;
            let (head, _) = expect_failure(&mut over, status, key).await;
            if let Some(h) = header {
                assert!(head.headers.has(h), "{key}: no {h} in {head:?}");
            }

            let mark = gw.log_mark();
            t.shutdown_write().await;
            assert!(
                t.closed_within(IO_TIMEOUT).await,
                "{key}: tunnel not closed"
            );
            tunnel_closed_after(&gw, mark).await;
            let mut next = open_tunnel(gw.addr()).await;
            assert_echoes(&mut next, key.as_bytes()).await;
        }
    })
    .await;
}

/// `connection_rate_per_ip = 2`: a burst of two connections is served, the third within the
/// same second gets 429 + `Retry-After` at accept, and a second later the address may connect
/// again (SPEC §3: a token bucket per client address, rate r, burst r).
#[tokio::test]
async fn connection_rate_answered_at_accept() {
    bounded("connection_rate_answered_at_accept", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(up.addr())
            .limit("connection_rate_per_ip", "2")
            .start()
            .await;
        let mut first = open_tunnel(gw.addr()).await;
        let _second = open_tunnel(gw.addr()).await;
        let mut over = Client::connect(gw.addr()).await;
        let (head, _) = expect_failure(&mut over, 429, "connection_rate_per_ip").await;
        assert!(
            head.headers.has("retry-after"),
            "no Retry-After in {head:?}"
        );
        assert_echoes(&mut first, b"admitted tunnels carry on").await;
        // One token comes back per half second, minus the debt of the refusal: wait for a
        // full refill rather than guessing the instant it arrives.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut again = open_tunnel(gw.addr()).await;
        assert_echoes(&mut again, b"refilled").await;
    })
    .await;
}

/// handshake_timeout = 500ms: a head dribbled a byte per 100ms is cut off long before it is
/// complete, and so is a connection that sends nothing. Neither reaches the upstream.
#[tokio::test]
async fn slow_and_silent_clients_cut_off() {
    bounded("slow_and_silent_clients_cut_off", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(up.addr())
            .limit("handshake_timeout", "\"500ms\"")
            .start()
            .await;

        let head = ClientRequest::ws(&gw.addr().to_string(), "/ws").to_bytes();
        let total = head.len();
        let (_, mut rd, mut wr) = Client::connect(gw.addr()).await.into_split();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&sent);
        let dribble = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            for byte in head {
                interval.tick().await;
                if wr.write_all(&[byte]).await.is_err() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
        let sent_at_close = sent.load(Ordering::SeqCst);
        dribble.abort();
        assert!(read.is_ok(), "slowloris connection still open after 10s");
        assert!(got.is_empty(), "slowloris got an answer: {got:?}");
        assert!(
            sent_at_close < total,
            "the whole {total}-byte head was dribbled before the cut-off"
        );

        let mut silent = Client::connect(gw.addr()).await;
        let (data, closed) = silent.read_to_eof(IO_TIMEOUT).await;
        assert!(
            closed,
            "silent connection still open {IO_TIMEOUT:?} after connecting"
        );
        assert!(data.is_empty(), "silent connection got {data:?}");
        assert_eq!(up.total_bytes(), 0, "bytes reached the upstream");
    })
    .await;
}

/// A temp dir with `switchyard certs` output for host `NAME.test` in subdirectory `NAME`.
async fn dev_certs(names: &[&str]) -> PathBuf {
    let dir = unique_temp_dir("certs");
    for name in names {
        let out = dir.join(name);
        let host = format!("{name}.test");
        let (code, _, err) =
            run_cli(&["certs", "--out", out.to_str().unwrap(), "--name", &host]).await;
        assert_eq!(code, 0, "switchyard certs: {err}");
    }
    dir
}

/// A `[[listener]]` on 127.0.0.1:0 with TLS from `dir/NAME`.
fn tls_listener(dir: &std::path::Path, name: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n\n",
        q(dir.join(name).join("server.pem").to_str().unwrap()),
        q(dir.join(name).join("server-key.pem").to_str().unwrap()),
    )
}

/// TLS handshake to `addr` with SNI `name`, trusting `ca_pems`: whether the certificate the
/// gateway serves is valid for `name`.
async fn tls_serves(addr: SocketAddr, name: &str, ca_pems: &[PathBuf]) -> bool {
    let ca_pems: Vec<&std::path::Path> = ca_pems.iter().map(PathBuf::as_path).collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&ca_pems))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    match tokio::time::timeout(IO_TIMEOUT, connector.connect(server_name, tcp)).await {
        Ok(result) => result.is_ok(),
        Err(_) => panic!("TLS handshake with {addr} for {name} hung"),
    }
}

/// A TLS listener with a `[[listener]]` added before it: the reload matches listeners by
/// address, not position, so the TLS listener keeps its socket and re-reads its certificate,
/// and the added plain listener is opened.
#[tokio::test]
async fn reload_rereads_certificates_of_a_kept_listener() {
    bounded("reload_rereads_certificates_of_a_kept_listener", async {
        let dir = dev_certs(&["one", "two"]).await;
        let install = |set: &str| {
            for file in ["server.pem", "server-key.pem"] {
                std::fs::copy(dir.join(set).join(file), dir.join(file)).unwrap();
            }
        };
        install("one");
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        // Installed at `dir/server.pem`: the paths stay, the files change.
        let tls_listener = tls_listener(&dir, "");
        let rest = config(up.addr()).listeners(0).build();
        let gw = Gateway::start(&format!("{tls_listener}{rest}")).await;
        let cas = [dir.join("one/ca.pem"), dir.join("two/ca.pem")];
        let tls_addr = gw.addr();
        assert!(tls_serves(tls_addr, "one.test", &cas).await);
        assert!(!tls_serves(tls_addr, "two.test", &cas).await);

        install("two");
        let plain_first = config(up.addr()).build();
        let mark = gw.log_mark();
        let ev = gw.reload(&format!("{plain_first}{tls_listener}")).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        assert!(
            tls_serves(tls_addr, "two.test", &cas).await,
            "the kept TLS listener still serves the old certificate"
        );
        assert!(!tls_serves(tls_addr, "one.test", &cas).await);
        let opened = gw.listening_after(mark);
        assert_eq!(
            opened.len(),
            1,
            "listening events after the reload: {opened:?}"
        );
        let mut plain = open_tunnel(opened[0].0).await;
        assert_echoes(&mut plain, b"plain").await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// Changing a listener's settings (here plain -> TLS) restarts its accept loop on the same
/// socket: the port stays, new connections get the new settings, and a tunnel accepted before
/// keeps working.
#[tokio::test]
async fn reload_restarts_a_listener_whose_settings_changed() {
    bounded("reload_restarts_a_listener_whose_settings_changed", async {
        let dir = dev_certs(&["one"]).await;
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = config(up.addr()).start().await;
        let mut before = open_tunnel(gw.addr()).await;

        let mark = gw.log_mark();
        let rest = config(up.addr()).listeners(0).build();
        let ev = gw
            .reload(&format!("{}{rest}", tls_listener(&dir, "one")))
            .await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        gw.wait_event_after(mark, "listener_restarted", IO_TIMEOUT)
            .await;
        assert!(
            gw.listening_after(mark).is_empty(),
            "no new socket expected"
        );
        let cas = [dir.join("one/ca.pem")];
        assert!(
            tls_serves(gw.addr(), "one.test", &cas).await,
            "the listener does not speak TLS after the reload"
        );
        assert_echoes(&mut before, b"accepted-before").await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
