//! SPEC §6 "h2 limits": the handshake budget until the first HEADERS, `keepalive_timeout` for a
//! connection without streams, RFC 8441 tunnel streams counted like connections, and GOAWAY
//! (ENHANCE_YOUR_CALM) for rapid resets, CONTINUATION past `max_header_bytes`, and PING or
//! SETTINGS floods. Hostile clients are raw frames over TLS (support::h2_frames).

use std::time::{Duration, Instant};

use crate::support::h2_client::H2Conn;
use crate::support::h2_frames::*;
use crate::support::*;
use h2::Reason;

/// `/ws` routes `chat.v2` to `chat` (an echo upstream); `/web` is the `http` upstream `web`.
fn limits_config(chat: &RawUpstream, web: &RawUpstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .tls_h2()
        .upstream("chat", &[chat.addr()])
        .upstream("web", &[web.addr()])
        .route(Route::new("/ws").sub("chat.v2", "chat"))
        .route(Route::new("/web").http("web"))
}

/// An http upstream: `200`, body `web`, one request per connection.
fn web_upstream() -> Script {
    respond(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nweb".to_vec())
}

/// An ordinary GET on `conn`, answered 200 with its whole body.
async fn get_ok(conn: &mut H2Conn) {
    let req = conn.get_request("/web");
    let mut s = conn.open(req, true).await;
    assert_eq!(s.head.status, 200, "{:?}", s.head);
    let (body, end) = s.recv_to_end().await;
    assert!(end.is_ok() && body == b"web", "{end:?} {body:?}");
}

/// Opens a `/ws` tunnel stream expected to be refused with `status`.
async fn tunnel_refused(conn: &mut H2Conn, status: u16) {
    let req = conn.websocket_request("/ws", Some("chat.v2"), Some("13"));
    let s = conn.open(req, false).await;
    assert_eq!(s.head.status, status, "{:?}", s.head);
}

/// Echo round trip through an open tunnel stream.
async fn echoes(s: &mut crate::support::h2_client::H2Stream, what: &[u8]) {
    s.send_all(what).await;
    assert_eq!(s.recv_exact(what.len()).await, what);
}

/// Silent after TLS, only the preface, only preface and SETTINGS: each is closed when the
/// handshake budget (from accept) runs out; a connection that sent a request stays.
#[tokio::test]
async fn connections_without_a_request_are_closed_at_the_handshake_budget() {
    bounded(
        "connections_without_a_request_are_closed_at_the_handshake_budget",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let budget = Duration::from_millis(700);
            let gw = limits_config(&chat, &web)
                .limit("handshake_timeout", "\"700ms\"")
                .start()
                .await;
            let mut served = H2Conn::connect(gw.addr()).await;
            get_ok(&mut served).await;
            let openings: [&[&[u8]]; 3] =
                [&[], &[PREFACE], &[PREFACE, &frame(SETTINGS, 0, 0, &[])]];
            for (i, opening) in openings.iter().enumerate() {
                let started = Instant::now();
                let mut c = RawH2::connect(gw.addr()).await;
                for bytes in *opening {
                    c.send(bytes).await.expect("send");
                }
                assert!(c.closed_within(IO_TIMEOUT).await, "opening {i}: not closed");
                let took = started.elapsed();
                assert!(
                    took >= budget - Duration::from_millis(50) && took < budget * 4,
                    "opening {i}: closed after {took:?}, budget {budget:?}"
                );
            }
            assert!(
                served
                    .ended_within(Duration::from_millis(100))
                    .await
                    .is_none(),
                "the connection that made a request was closed at the budget"
            );
            get_ok(&mut served).await;
        },
    )
    .await;
}

/// A connection whose streams have all ended goes away (GOAWAY, close) after
/// `keepalive_timeout`; one with an open tunnel stays up until the tunnel ends, then goes too.
#[tokio::test]
async fn connection_without_streams_goes_away_after_keepalive_timeout() {
    bounded(
        "connection_without_streams_goes_away_after_keepalive_timeout",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let keepalive = Duration::from_millis(500);
            let gw = limits_config(&chat, &web)
                .limit("keepalive_timeout", "\"500ms\"")
                .start()
                .await;
            let mut tunnelled = H2Conn::connect(gw.addr()).await;
            let mut tunnel = tunnelled
                .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
                .await;
            let mut idle = H2Conn::connect(gw.addr()).await;
            get_ok(&mut idle).await;
            let since = Instant::now();
            let ended = idle.ended_within(IO_TIMEOUT).await;
            assert!(
                matches!(ended, Some(Ok(()))),
                "idle connection not gone away cleanly: {ended:?}"
            );
            let took = since.elapsed();
            assert!(
                took >= keepalive - Duration::from_millis(50),
                "closed after {took:?}, before keepalive_timeout"
            );
            // Twice the timeout since the tunnel opened: its connection is still up.
            assert!(tunnelled.ended_within(keepalive).await.is_none());
            echoes(&mut tunnel, b"still-here").await;
            get_ok(&mut tunnelled).await;
            // The client ends the tunnel; then its connection is idle too.
            tunnel
                .send
                .send_data(bytes::Bytes::new(), true)
                .expect("END_STREAM");
            let (_, end) = tunnel.recv_to_end().await;
            assert!(end.is_ok(), "{end:?}");
            let ended = tunnelled.ended_within(IO_TIMEOUT).await;
            assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
        },
    )
    .await;
}

/// Each tunnel stream takes a `max_connections_per_ip` slot while it runs (the connection has
/// one); a stream over the limit gets 429 without an upstream dial and the connection stays
/// usable; ordinary streams take no slot; a tunnel's end frees its slot.
#[tokio::test]
async fn tunnel_streams_count_against_max_connections_per_ip() {
    bounded(
        "tunnel_streams_count_against_max_connections_per_ip",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let gw = limits_config(&chat, &web)
                .limit("max_connections_per_ip", "2")
                .start()
                .await;
            let mut conn = H2Conn::connect(gw.addr()).await;
            let mut first = conn
                .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
                .await;
            tunnel_refused(&mut conn, 429).await;
            tunnel_refused(&mut conn, 429).await;
            assert_eq!(
                chat.conns().len(),
                1,
                "a refused stream dialed the upstream"
            );
            get_ok(&mut conn).await;
            get_ok(&mut conn).await;
            echoes(&mut first, b"first").await;
            // Ending the first tunnel frees its slot (logged once it is free).
            first
                .send
                .send_data(bytes::Bytes::new(), true)
                .expect("END_STREAM");
            let _ = first.recv_to_end().await;
            gw.wait_log("tunnel closed", IO_TIMEOUT, |e| {
                e.get("target").and_then(|t| t.as_str()) == Some("access")
                    && e.get("closed_by").is_some()
            })
            .await;
            let mut again = conn
                .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
                .await;
            echoes(&mut again, b"again").await;
        },
    )
    .await;
}

/// Each new tunnel stream takes a `connection_rate_per_ip` token: with a rate of 1 the
/// connection took the only one, so its first tunnel gets 429; ordinary requests pass.
#[tokio::test]
async fn connection_rate_per_ip_applies_to_new_tunnel_streams() {
    bounded(
        "connection_rate_per_ip_applies_to_new_tunnel_streams",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let gw = limits_config(&chat, &web)
                .limit("connection_rate_per_ip", "1")
                .start()
                .await;
            let mut conn = H2Conn::connect(gw.addr()).await;
            tunnel_refused(&mut conn, 429).await;
            get_ok(&mut conn).await;
            assert!(
                chat.conns().is_empty(),
                "a refused stream dialed the upstream"
            );
            assert!(conn.ended_within(Duration::from_millis(50)).await.is_none());
        },
    )
    .await;
}

/// CVE-2023-44487: HEADERS then RST_STREAM in a loop gets GOAWAY(ENHANCE_YOUR_CALM); the
/// connection's tunnel ends with it, upstream side included.
#[tokio::test]
async fn rapid_reset_loop_gets_enhance_your_calm_and_ends_the_tunnels() {
    bounded(
        "rapid_reset_loop_gets_enhance_your_calm_and_ends_the_tunnels",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let gw = limits_config(&chat, &web).start().await;
            let mut conn = H2Conn::connect(gw.addr()).await;
            let mut tunnel = conn
                .websocket("/ws", Some("chat.v2"), Some("chat.v2"))
                .await;
            echoes(&mut tunnel, b"before").await;
            for _ in 0..2000 {
                let ready = tokio::time::timeout(IO_TIMEOUT, conn.sender.clone().ready()).await;
                let Ok(Ok(mut sender)) = ready else { break };
                let Ok((_response, mut stream)) =
                    sender.send_request(conn.get_request("/web"), false)
                else {
                    break;
                };
                stream.send_reset(Reason::CANCEL);
            }
            let ended = conn.ended_within(IO_TIMEOUT).await;
            let reason = match &ended {
                Some(Err(e)) if e.is_go_away() && e.is_remote() => e.reason(),
                _ => None,
            };
            assert_eq!(reason, Some(Reason::ENHANCE_YOUR_CALM), "{ended:?}");
            let (_, end) = tunnel.recv_to_end().await;
            assert!(end.is_err(), "the tunnel stream ended cleanly: {end:?}");
            assert!(
                chat.conn(0, IO_TIMEOUT).await.wait_eof(IO_TIMEOUT).await,
                "the tunnel's upstream connection is still open"
            );
        },
    )
    .await;
}

/// Sends `count` frames as one burst after the handshake; how the connection ended.
async fn flood(gw: &Gateway, one: &[u8], count: usize, within: Duration) -> Ended {
    let (mut c, _) = RawH2::handshake(gw.addr()).await;
    let burst: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * count)
        .collect();
    // The gateway may close before it has read everything.
    let _ = c.send(&burst).await;
    c.until_end(within).await
}

/// More than 1,000 PINGs within a second: GOAWAY(ENHANCE_YOUR_CALM), then the close; 900 are
/// answered and the connection stays.
#[tokio::test]
async fn ping_flood_gets_goaway_enhance_your_calm() {
    bounded("ping_flood_gets_goaway_enhance_your_calm", async {
        let (chat, web) = (
            RawUpstream::start(accept_then_echo(b"")).await,
            RawUpstream::start(web_upstream()).await,
        );
        let gw = limits_config(&chat, &web).start().await;
        let ping = frame(PING, 0, 0, &[7; 8]);
        match flood(&gw, &ping, 900, Duration::from_millis(500)).await {
            Ended::Open(seen) => {
                let pongs = seen
                    .iter()
                    .filter(|f| f.kind == PING && f.flags == 1)
                    .count();
                assert_eq!(pongs, 900);
            }
            other => panic!("900 PINGs ended the connection: {other:?}"),
        }
        let (mut c, _) = RawH2::handshake(gw.addr()).await;
        let burst: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1500)
            .collect();
        let _ = c.send(&burst).await;
        match c.until_end(IO_TIMEOUT).await {
            Ended::GoAway(code) => assert_eq!(code, ENHANCE_YOUR_CALM),
            other => panic!("no GOAWAY: {other:?}"),
        }
        assert!(c.closed_within(IO_TIMEOUT).await, "not closed after GOAWAY");
    })
    .await;
}

/// More than 1,000 SETTINGS within a second: GOAWAY(ENHANCE_YOUR_CALM).
#[tokio::test]
async fn settings_flood_gets_goaway_enhance_your_calm() {
    bounded("settings_flood_gets_goaway_enhance_your_calm", async {
        let (chat, web) = (
            RawUpstream::start(accept_then_echo(b"")).await,
            RawUpstream::start(web_upstream()).await,
        );
        let gw = limits_config(&chat, &web).start().await;
        match flood(&gw, &frame(SETTINGS, 0, 0, &[]), 1500, IO_TIMEOUT).await {
            Ended::GoAway(code) => assert_eq!(code, ENHANCE_YOUR_CALM),
            other => panic!("no GOAWAY: {other:?}"),
        }
    })
    .await;
}

/// A header block continued past `max_header_bytes` (HEADERS without END_HEADERS, then
/// CONTINUATION after CONTINUATION): GOAWAY(ENHANCE_YOUR_CALM), nothing reaches an upstream.
#[tokio::test]
async fn continuation_past_max_header_bytes_gets_goaway_enhance_your_calm() {
    bounded(
        "continuation_past_max_header_bytes_gets_goaway_enhance_your_calm",
        async {
            let (chat, web) = (
                RawUpstream::start(accept_then_echo(b"")).await,
                RawUpstream::start(web_upstream()).await,
            );
            let gw = limits_config(&chat, &web)
                .limit("max_header_bytes", "8192")
                .start()
                .await;
            let (mut c, _) = RawH2::handshake(gw.addr()).await;
            let mut wire = frame(HEADERS, END_STREAM, 1, &get_block(gw.addr().port(), "/web"));
            for i in 0..40 {
                let mut block = Vec::new();
                literal(&mut block, &format!("x-pad-{i}"), &[b'a'; 3000]);
                wire.extend(frame(CONTINUATION, 0, 1, &block));
            }
            let _ = c.send(&wire).await;
            match c.until_end(IO_TIMEOUT).await {
                Ended::GoAway(code) => assert_eq!(code, ENHANCE_YOUR_CALM),
                other => panic!("no GOAWAY: {other:?}"),
            }
            assert!(web.conns().is_empty(), "the request reached the upstream");
        },
    )
    .await;
}

/// The server's SETTINGS offer `limits.h2_max_concurrent_streams`.
#[tokio::test]
async fn settings_carry_h2_max_concurrent_streams() {
    bounded("settings_carry_h2_max_concurrent_streams", async {
        let (chat, web) = (
            RawUpstream::start(accept_then_echo(b"")).await,
            RawUpstream::start(web_upstream()).await,
        );
        let gw = limits_config(&chat, &web)
            .limit("h2_max_concurrent_streams", "7")
            .start()
            .await;
        let (_c, settings) = RawH2::handshake(gw.addr()).await;
        assert_eq!(
            settings.setting(SETTINGS_MAX_CONCURRENT_STREAMS),
            Some(7),
            "{settings:?}"
        );
    })
    .await;
}
