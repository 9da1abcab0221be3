//! SPEC §5: the tunnel copies bytes verbatim both ways (early bytes included), propagates
//! half-close, closes idle tunnels, and closes the client promptly when the upstream resets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// One route `/ws`: subprotocol `echo` or no offer (fallback), both to `up`.
async fn tunnel_gateway(up: &RawUpstream, limits: &[(&str, &str)]) -> Gateway {
    let mut cfg = ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route(Route::new("/ws").sub("echo", "app").fallback("app"));
    for (k, v) in limits {
        cfg = cfg.limit(k, v);
    }
    cfg.start().await
}

/// Opens a tunnel by hand over raw TCP, sending `early` in the same write as the request head.
async fn open_tunnel(gw: &Gateway, protocol: Option<&str>, early: &[u8]) -> Client {
    let mut req = ClientRequest::ws(&gw.addr().to_string(), "/ws");
    if let Some(p) = protocol {
        req = req.protocol(p);
    }
    let (c, head) = exchange(gw.addr(), &req, early).await;
    assert_101(&head, &req.key, protocol);
    c
}

/// 16 MiB of random bytes written in random-sized writes while the echo comes back: nothing
/// lost, duplicated or reordered, in either direction; then EOF ends the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_16mib_each_way_concurrently() {
    bounded("integrity_16mib_each_way_concurrently", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = tunnel_gateway(&up, &[]).await;
        let c = open_tunnel(&gw, None, b"").await;
        let (buffered, rd, wr) = c.into_split();
        assert!(
            buffered.is_empty(),
            "bytes after the 101 before anything was sent: {buffered:?}"
        );

        let data = Arc::new(random_bytes(16 << 20, 0x5eed));
        echo_integrity(rd, wr, Arc::clone(&data), 7).await;

        let conn = up.conn(0, IO_TIMEOUT).await;
        let at_upstream = conn.after_head();
        if let Some(at) = first_difference(&at_upstream, &data) {
            panic!(
                "upstream received {} bytes, differing from the {} sent at byte {at}",
                at_upstream.len(),
                data.len()
            );
        }
    })
    .await;
}

/// RFC 6455 frames sent in the same write as each side's head are not lost: the client's follow
/// its request (held until the 101, SPEC §4), the upstream's follow its 101.
#[tokio::test]
async fn early_bytes_both_ways() {
    bounded("early_bytes_both_ways", async {
        let early_up = b"EARLY-FROM-UPSTREAM\x00\xff\x81\x05hello".to_vec();
        let mut early_client = b"EARLY-FROM-CLIENT\x00\xff".to_vec();
        early_client.extend(random_bytes(4000, 3));
        let up = RawUpstream::start(accept_then_echo(&early_up)).await;
        let gw = tunnel_gateway(&up, &[]).await;

        let mut c = open_tunnel(&gw, Some("echo"), &early_client).await;
        let got = c.read_exact(early_up.len() + early_client.len()).await;
        assert!(
            got[..early_up.len()] == early_up[..],
            "the upstream's bytes after its 101 did not arrive first: {:?}",
            String::from_utf8_lossy(&got[..early_up.len()])
        );
        assert!(
            got[early_up.len()..] == early_client[..],
            "the echo of the client's early bytes differs"
        );

        let conn = up.conn(0, IO_TIMEOUT).await;
        assert!(
            conn.before_response().is_empty(),
            "client bytes reached the upstream before its 101 (SPEC §4)"
        );
        assert!(
            conn.after_head() == early_client,
            "upstream got {} bytes after the head, not the {} sent with the request",
            conn.after_head().len(),
            early_client.len()
        );
        let (extra, _) = c.read_to_eof(Duration::from_millis(200)).await;
        assert!(
            extra.is_empty(),
            "duplicated bytes after the early ones: {}",
            extra.len()
        );
    })
    .await;
}

/// Half-close (SPEC §5): the client's shutdown(Write) reaches the upstream as EOF, and the
/// upstream can still send; the client receives it and then the upstream's EOF.
#[tokio::test]
async fn half_close_client_first() {
    bounded("half_close_client_first", async {
        let up = RawUpstream::start(script(|mut c| async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            if c.send(&response_101(&head, None)).await.is_err() {
                return;
            }
            c.read_to_eof().await;
            let _ = c.send(b"still-sending-after-your-eof").await;
            c.shutdown_write().await;
        }))
        .await;
        let gw = tunnel_gateway(&up, &[]).await;
        let mut c = open_tunnel(&gw, None, b"").await;
        let _ = c.send(b"client-data-then-eof").await;
        c.shutdown_write().await;

        let (data, closed) = c.read_to_eof(IO_TIMEOUT).await;
        assert_eq!(
            String::from_utf8_lossy(&data),
            "still-sending-after-your-eof",
            "the upstream->client direction must stay open after the client's EOF"
        );
        assert!(closed, "client saw no EOF after the upstream's shutdown");
        let conn = up.conn(0, IO_TIMEOUT).await;
        assert!(conn.eof(), "the upstream never saw the client's EOF");
        assert_eq!(conn.after_head(), b"client-data-then-eof");
    })
    .await;
}

/// idle_timeout = 300ms closes a tunnel with no traffic, both sides, and the access log records
/// it with closed_by "idle" and every SPEC §7 field.
#[tokio::test]
async fn idle_timeout_closes_and_logs_idle() {
    bounded("idle_timeout_closes_and_logs_idle", async {
        let up = RawUpstream::start(accept_then_hold()).await;
        let gw = tunnel_gateway(&up, &[("idle_timeout", "\"300ms\"")]).await;
        let mut c = open_tunnel(&gw, Some("echo"), b"").await;
        let opened = Instant::now();
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "idle tunnel still open 3s after idle_timeout = 300ms"
        );
        let idle = opened.elapsed();
        assert!(
            idle >= Duration::from_millis(250),
            "tunnel closed after {idle:?}, before idle_timeout = 300ms"
        );
        let conn = up.conn(0, IO_TIMEOUT).await;
        assert!(
            conn.wait_eof(Duration::from_secs(2)).await,
            "upstream side of the idle tunnel not closed"
        );

        let ev = gw
            .wait_log(
                "target=access closed_by=idle",
                Duration::from_secs(3),
                |e| {
                    e.get("target").and_then(|t| t.as_str()) == Some("access")
                        && e.get("closed_by").and_then(|t| t.as_str()) == Some("idle")
                },
            )
            .await;
        for field in [
            "client",
            "host",
            "path",
            "http_version",
            "ws_version",
            "subprotocol",
            "upstream",
            "status",
            "handshake_ms",
            "duration_ms",
            "bytes_up",
            "bytes_down",
            "closed_by",
        ] {
            assert!(
                ev.get(field).is_some(),
                "access event lacks top-level `{field}`: {ev}"
            );
        }
        let text = ev.to_string();
        assert!(
            text.contains("echo") && text.contains("/ws"),
            "access event misses subprotocol or path: {ev}"
        );
    })
    .await;
}

/// An upstream reset (RST) closes the client side promptly.
#[tokio::test]
async fn upstream_reset_closes_client() {
    bounded("upstream_reset_closes_client", async {
        let up = RawUpstream::start(script(|mut c| async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            if c.send(&response_101(&head, None)).await.is_err() {
                return;
            }
            c.recv_exact(b"reset-now".len()).await;
            c.abort();
        }))
        .await;
        let gw = tunnel_gateway(&up, &[]).await;
        let mut c = open_tunnel(&gw, None, b"").await;
        let _ = c.send(b"reset-now").await;
        let started = Instant::now();
        assert!(
            c.closed_within(Duration::from_secs(2)).await,
            "client still open {:?} after the upstream reset",
            started.elapsed()
        );
    })
    .await;
}

/// The access event of the next tunnel closed after `mark`.
async fn tunnel_closed_after(gw: &Gateway, mark: usize) -> serde_json::Value {
    gw.wait_log_after(mark, "tunnel closed", IO_TIMEOUT, |e| {
        e.get("target").and_then(|t| t.as_str()) == Some("access") && is_event(e, "tunnel_closed")
    })
    .await
}

/// SPEC §5: a plain ws:// tunnel (TCP on both legs) is spliced on Linux, and its access event
/// says `engine = splice`; the early bytes and echo still arrive verbatim.
#[tokio::test]
async fn plain_tunnel_is_spliced() {
    bounded("plain_tunnel_is_spliced", async {
        let up = RawUpstream::start(accept_then_echo(b"up-early")).await;
        let gw = tunnel_gateway(&up, &[]).await;
        let mark = gw.log_mark();
        let data = random_bytes(200_000, 0x5911);
        let mut c = open_tunnel(&gw, None, b"client-early").await;
        assert_eq!(c.read_exact(8).await, b"up-early");
        assert_eq!(c.read_exact(12).await, b"client-early");
        let _ = c.send(&data).await;
        assert!(c.read_exact(data.len()).await == data, "echo differs");
        c.shutdown_write().await;
        assert!(c.closed_within(IO_TIMEOUT).await, "tunnel not closed");

        let ev = tunnel_closed_after(&gw, mark).await;
        let expected = if cfg!(target_os = "linux") {
            "splice"
        } else {
            "buffered"
        };
        assert_eq!(
            ev.get("engine").and_then(|e| e.as_str()),
            Some(expected),
            "{ev}"
        );
        assert_eq!(
            ev.get("bytes_up").and_then(|b| b.as_u64()),
            Some(12 + data.len() as u64),
            "{ev}"
        );
    })
    .await;
}

/// SPEC §5: a wss:// tunnel (TLS on the client leg) falls back to the buffered engine.
#[tokio::test]
async fn tls_tunnel_is_buffered() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    bounded("tls_tunnel_is_buffered", async {
        let up = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .tls(ListenerTls::dev())
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").fallback("app"))
            .start()
            .await;
        let mark = gw.log_mark();
        let (mut ws, _) = wss_connect(gw.addr(), "localhost", "/ws", None).await;
        ws.send(Message::text("over tls")).await.unwrap();
        let echoed = tokio::time::timeout(IO_TIMEOUT, ws.next()).await.unwrap();
        assert!(
            matches!(&echoed, Some(Ok(Message::Text(t))) if t.as_str() == "over tls"),
            "{echoed:?}"
        );
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IO_TIMEOUT, ws.next()).await {}
        drop(ws);

        let ev = tunnel_closed_after(&gw, mark).await;
        assert_eq!(
            ev.get("engine").and_then(|e| e.as_str()),
            Some("buffered"),
            "{ev}"
        );
    })
    .await;
}
