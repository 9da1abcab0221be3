//! Hostile HTTP/1.1 clients (issue 12): a corpus of malformed and hostile request heads sent over
//! raw TCP, each answered exactly as SPEC §3 says (a status in the full failure form, or a close),
//! with the same gateway serving a good WebSocket handshake right after every one; a slowloris
//! client cut off at `handshake_timeout`; and a client that never reads a relayed answer cut off
//! at `idle_timeout` (SPEC §5, last bullet), its connection slot freed.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// What SPEC §3 says the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A gateway-made failure: this status, `Connection: close`, a `text/plain` body naming the
    /// reason, then the connection closed.
    Status(u16),
    /// No answer at all: the connection is closed (no complete head within
    /// `handshake_timeout`).
    Closed,
    /// Not hostile after all: a 101 from the upstream (guards against over-eager checks).
    Switched,
}

/// How a row's bytes are made: a template (`{host}` becomes the listener's address, `{ws}` the
/// headers of a good version-13 upgrade offering `chat.v2`), or a generator for large heads.
enum Bytes {
    T(&'static [u8]),
    Gen(fn(&str) -> Vec<u8>),
}

struct Row {
    name: &'static str,
    bytes: Bytes,
    expect: Expect,
    /// (header, token) pairs the answer must carry, compared case-insensitively per list element.
    must: &'static [(&'static str, &'static str)],
}

const WS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v2\r\n";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

fn t(name: &'static str, tpl: &'static [u8], expect: Expect) -> Row {
    Row {
        name,
        bytes: Bytes::T(tpl),
        expect,
        must: &[],
    }
}

fn g(name: &'static str, gen_: fn(&str) -> Vec<u8>, expect: Expect) -> Row {
    Row {
        name,
        bytes: Bytes::Gen(gen_),
        expect,
        must: &[],
    }
}

impl Row {
    fn must(mut self, must: &'static [(&'static str, &'static str)]) -> Row {
        self.must = must;
        self
    }

    fn render(&self, host: &str) -> Vec<u8> {
        match self.bytes {
            Bytes::T(tpl) => {
                let with_host = replace(tpl, b"{host}", host.as_bytes());
                replace(&with_host, b"{ws}", WS.as_bytes())
            }
            Bytes::Gen(f) => f(host),
        }
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + to.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

use Expect::{Closed, Status, Switched};

const ALLOW_GET: &[(&str, &str)] = &[("allow", "GET")];
const UPGRADE_HINT: &[(&str, &str)] = &[("upgrade", "websocket"), ("connection", "upgrade")];
const VERSIONS: &[(&str, &str)] = &[("sec-websocket-version", "13")];

/// The corpus. `max_header_bytes` is 8192 on the gateway under test.
fn corpus() -> Vec<Row> {
    vec![
        // Not HTTP at all: a head that does not parse.
        t("NUL bytes", b"\0\0\0\0\0\0\0\0\r\n\r\n", Status(400)),
        t("garbage word", b"GARBAGE\r\n\r\n", Status(400)),
        t("binary garbage", b"\xff\xfe\xfd\xfc\r\n\r\n", Status(400)),
        t(
            "TLS ClientHello on the plain port",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\r\n\r\n",
            Status(400),
        ),
        t("HTTP/0.9 request line", b"GET /ws\r\n\r\n", Status(400)),
        t(
            "unknown HTTP version 2.0 in an HTTP/1 request line",
            b"GET /ws HTTP/2.0\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "lower-case http/1.1",
            b"GET /ws http/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "extra word in the request line",
            b"GET /ws HTTP/1.1 extra\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "two spaces in the request line",
            b"GET  /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "NUL in the request target",
            b"GET /ws\0 HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "NUL in a header value",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-Nul: a\0b\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "NUL in a header name",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-N\0ul: a\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "0xff in a header name",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-\xff: a\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "non-token character in a header name",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX(y): z\r\n{ws}\r\n",
            Status(400),
        ),
        // Line structure (RFC 9112 §2.2, §5).
        t(
            "bare CR inside a header value",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-A: a\rb\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "bare CR as a line end",
            b"GET /ws HTTP/1.1\r\nHost: {host}\rX-A: b\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "bare CR ending the request line",
            b"GET /ws HTTP/1.1\rHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "obs-fold continuation line",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-Fold: a\r\n b\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "obs-fold with a tab on Host",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\n\tevil.example\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "whitespace before the first header line",
            b"GET /ws HTTP/1.1\r\n Host: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "header line without a colon",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nX-No-Colon\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "space before the colon (RFC 9112 §5.1)",
            b"GET /ws HTTP/1.1\r\nHost : {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "tab before the colon",
            b"GET /ws HTTP/1.1\r\nHost\t: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "space before the colon of Transfer-Encoding",
            b"GET /web HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        t(
            "empty header name",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\n: empty\r\n{ws}\r\n",
            Status(400),
        ),
        // Size limits (max_header_bytes = 8192).
        g(
            "request line over max_header_bytes",
            |h| format!("GET /ws?{} HTTP/1.1\r\nHost: {h}\r\n{WS}\r\n", "a".repeat(9000)).into_bytes(),
            Status(431),
        ),
        g(
            "one header line over max_header_bytes",
            |h| format!("GET /ws HTTP/1.1\r\nHost: {h}\r\nX-Long: {}\r\n{WS}\r\n", "b".repeat(9000)).into_bytes(),
            Status(431),
        ),
        g(
            "20 KiB without a line end",
            |_| vec![b'A'; 20_000],
            Status(431),
        ),
        g(
            "2000 header lines (over max_header_bytes)",
            |h| many_headers(h, 2000),
            Status(431),
        ),
        // 300 short lines are under max_header_bytes but over the header count the gateway parses;
        // SPEC §3 does not name this case: 431 is RFC 6585 §5's answer (what Envoy sends too).
        g(
            "300 header lines within max_header_bytes",
            |h| many_headers(h, 300),
            Status(431),
        ),
        // No complete head: closed at handshake_timeout, without an answer.
        t("only empty lines", b"\r\n\r\n", Closed),
        t(
            "head never finished",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n",
            Closed,
        ),
        t("request line only, no line end", b"GET /ws HTTP/1.1", Closed),
        // Host (RFC 9112 §3.2, RFC 3986 §3.2.2).
        t(
            "missing Host",
            b"GET /ws HTTP/1.1\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "duplicate Host, same value",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "duplicate Host, different values",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n{ws}\r\n",
            Status(400),
        ),
        t("empty Host", b"GET /ws HTTP/1.1\r\nHost: \r\n{ws}\r\n", Status(400)),
        t("Host: a, b", b"GET /ws HTTP/1.1\r\nHost: a, b\r\n{ws}\r\n", Status(400)),
        t("Host: a@b", b"GET /ws HTTP/1.1\r\nHost: a@b\r\n{ws}\r\n", Status(400)),
        t(
            "Host with userinfo before the real host",
            b"GET /ws HTTP/1.1\r\nHost: user:pw@{host}\r\n{ws}\r\n",
            Status(400),
        ),
        t("Host: a b", b"GET /ws HTTP/1.1\r\nHost: a b\r\n{ws}\r\n", Status(400)),
        t("Host: a/b", b"GET /ws HTTP/1.1\r\nHost: a/b\r\n{ws}\r\n", Status(400)),
        t("Host: a: (empty port)", b"GET /ws HTTP/1.1\r\nHost: a:\r\n{ws}\r\n", Status(400)),
        t("Host: a:99999", b"GET /ws HTTP/1.1\r\nHost: a:99999\r\n{ws}\r\n", Status(400)),
        t("Host: a:0", b"GET /ws HTTP/1.1\r\nHost: a:0\r\n{ws}\r\n", Status(400)),
        t("Host: a:12x", b"GET /ws HTTP/1.1\r\nHost: a:12x\r\n{ws}\r\n", Status(400)),
        t("Host: [::1", b"GET /ws HTTP/1.1\r\nHost: [::1\r\n{ws}\r\n", Status(400)),
        t(
            "Host with raw UTF-8",
            b"GET /ws HTTP/1.1\r\nHost: \xc3\xbc.example\r\n{ws}\r\n",
            Status(400),
        ),
        // Absolute-form targets (RFC 9112 §3.2.2): the authority is checked like Host.
        t(
            "absolute-form target with a good authority",
            b"GET http://{host}/ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Switched,
        ),
        t(
            "absolute-form target with userinfo",
            b"GET http://user:pw@{host}/ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "absolute-form target a@b",
            b"GET http://a@b/ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "absolute-form target with a bad port",
            b"GET http://a:99999/ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "absolute-form target without Host",
            b"GET http://{host}/ws HTTP/1.1\r\n{ws}\r\n",
            Status(400),
        ),
        // Paths (RFC 3986 §5.2.4): dot segments, also percent-encoded, and %00.
        t(
            "/ws/../ws",
            b"GET /ws/../ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "/ws/%2e%2E/x",
            b"GET /ws/%2e%2E/x HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t("/./ws", b"GET /./ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n", Status(400)),
        t("/ws/.", b"GET /ws/. HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n", Status(400)),
        t("/ws/..", b"GET /ws/.. HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n", Status(400)),
        t(
            "/ws/%2E",
            b"GET /ws/%2E HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "/ws/.%2e/x?q",
            b"GET /ws/.%2e/x?q HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "%00 in the path",
            b"GET /ws/a%00b HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "dots that are not dot segments",
            b"GET /ws/.well-known/... HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Switched,
        ),
        // Bodies and framing (RFC 9112 §6).
        t(
            "upgrade with Content-Length 5",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n{ws}\r\nhello",
            Status(400),
        ),
        t(
            "upgrade with Transfer-Encoding: chunked",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n{ws}\r\n0\r\n\r\n",
            Status(400),
        ),
        t(
            "upgrade with Content-Length and Transfer-Encoding",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n{ws}\r\n0\r\n\r\n",
            Status(400),
        ),
        t(
            "Content-Length and Transfer-Encoding on an ordinary request",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        t(
            "two different Content-Lengths",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Status(400),
        ),
        t(
            "Content-Length list 5, 6",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 6\r\n\r\nhello!",
            Status(400),
        ),
        t(
            "negative Content-Length",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n",
            Status(400),
        ),
        t(
            "non-numeric Content-Length",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\n",
            Status(400),
        ),
        t(
            "hex Content-Length",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0x10\r\n\r\n",
            Status(400),
        ),
        t(
            "Transfer-Encoding on HTTP/1.0",
            b"POST /web HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        t(
            "Transfer-Encoding not ending in chunked",
            b"POST /web HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        // Methods.
        t(
            "ordinary CONNECT, origin form, on a route with an http upstream",
            b"CONNECT /web HTTP/1.1\r\nHost: {host}\r\n\r\n",
            Status(405),
        ),
        t(
            "ordinary CONNECT, authority form",
            b"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            Status(405),
        ),
        t(
            "CONNECT with Upgrade: websocket",
            b"CONNECT /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(405),
        )
        .must(ALLOW_GET),
        t(
            "POST upgrade",
            b"POST /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(405),
        )
        .must(ALLOW_GET),
        t(
            "HEAD upgrade",
            b"HEAD /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(405),
        )
        .must(ALLOW_GET),
        t(
            "lower-case get (methods are case-sensitive)",
            b"get /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(405),
        )
        .must(ALLOW_GET),
        t(
            "unknown method",
            b"BREW /ws HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(405),
        )
        .must(ALLOW_GET),
        // HTTP/1.0 upgrades (RFC 6455 §4.1: HTTP/1.1 or higher).
        t(
            "HTTP/1.0 upgrade",
            b"GET /ws HTTP/1.0\r\nHost: {host}\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "HTTP/1.0 upgrade without Host",
            b"GET /ws HTTP/1.0\r\n{ws}\r\n",
            Status(400),
        ),
        // Upgrade and WebSocket header rules.
        t(
            "Upgrade without Connection: upgrade",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v2\r\n\r\n",
            Status(400),
        ),
        t(
            "Upgrade: h2c only",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            Status(400),
        ),
        t(
            "no Upgrade on a route without an http upstream",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n",
            Status(426),
        )
        .must(UPGRADE_HINT),
        t(
            "Sec-WebSocket-Version missing",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat.v2\r\n\r\n",
            Status(426),
        )
        .must(VERSIONS),
        t(
            "Sec-WebSocket-Version twice",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nSec-WebSocket-Version: 13\r\n{ws}\r\n",
            Status(400),
        )
        .must(VERSIONS),
        t(
            "Sec-WebSocket-Key twice",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "Sec-WebSocket-Key not base64",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!!not-base64!!!!!!!==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v2\r\n\r\n",
            Status(400),
        ),
        t(
            "subprotocol offered twice",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nSec-WebSocket-Protocol: chat.v2\r\n{ws}\r\n",
            Status(400),
        ),
        t(
            "non-token subprotocol",
            b"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat/v2\r\n\r\n",
            Status(400),
        ),
        t(
            "no route",
            b"GET /nowhere HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(404),
        ),
        t(
            "asterisk-form target",
            b"GET * HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n",
            Status(404),
        ),
    ]
}

/// A good upgrade head padded with `n` short header lines.
fn many_headers(host: &str, n: usize) -> Vec<u8> {
    let mut head = format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n");
    for i in 0..n {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str(WS);
    head.push_str("\r\n");
    head.into_bytes()
}

/// What the gateway sent on one connection: everything read until EOF (or reset) or a 101 head,
/// and whether that came within `within`.
async fn read_all(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            // A tunnel stays open: no use waiting for its close.
            if got.starts_with(b"HTTP/1.1 101 ") && find_end(&got).is_some() {
                return;
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Checks what the gateway did with `row`; `Err` says what was wrong.
async fn check_row(addr: std::net::SocketAddr, host: &str, row: &Row) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A gateway refusing a large head may close before reading all of it; its answer counts.
    let _ = s.write_all(&row.render(host)).await;
    let within = match row.expect {
        Closed => HANDSHAKE_TIMEOUT + Duration::from_secs(2),
        _ => IO_TIMEOUT,
    };
    let started = Instant::now();
    if row.expect == Switched {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while find_end(&got).is_none() {
            match tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await {
                Ok(Ok(n @ 1..)) => got.extend_from_slice(&chunk[..n]),
                other => return Err(format!("no 101 head ({other:?}); got {:?}", lossy(&got))),
            }
        }
        let head = parse_response_head(&got[..find_end(&got).unwrap_or(0)])?;
        return match head.status {
            101 => Ok(()),
            other => Err(format!("expected 101, got {other}: {:?}", lossy(&got))),
        };
    }
    let (got, closed) = read_all(&mut s, within).await;
    if let Some(end) = find_end(&got).filter(|_| got.starts_with(b"HTTP/1.1 101 ")) {
        return Err(format!("switched instead: {:?}", lossy(&got[..end])));
    }
    if !closed {
        return Err(format!(
            "connection still open after {within:?}; got {:?}",
            lossy(&got)
        ));
    }
    let want = match row.expect {
        Closed if got.is_empty() => return Ok(()),
        Closed => {
            return Err(format!(
                "expected a close without an answer, got {:?}",
                lossy(&got)
            ));
        }
        Status(want) => want,
        Switched => unreachable!("handled above"),
    };
    let Some(end) = find_end(&got) else {
        return Err(format!(
            "expected {want}, closed after {:?} without a complete head: {:?}",
            started.elapsed(),
            lossy(&got)
        ));
    };
    let head = parse_response_head(&got[..end])?;
    let body = &got[end..];
    let mut wrong = Vec::new();
    if head.status != want {
        wrong.push(format!("status {} instead of {want}", head.status));
    }
    if !head
        .headers
        .tokens("connection")
        .contains(&"close".to_string())
    {
        wrong.push("no `Connection: close`".to_string());
    }
    let ct = head.headers.get("content-type").unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("text/plain") {
        wrong.push(format!("Content-Type {ct:?} is not text/plain"));
    }
    let declared: Option<usize> = head
        .headers
        .get("content-length")
        .and_then(|l| l.trim().parse().ok());
    // A response to HEAD declares its body but carries none (RFC 9110 §9.3.2).
    let sent = if row.render(host).starts_with(b"HEAD ") {
        declared.filter(|_| body.is_empty()).unwrap_or(0)
    } else {
        body.len()
    };
    if declared != Some(sent)
        || declared == Some(0)
        || (!body.is_empty() && body.iter().all(u8::is_ascii_whitespace))
    {
        wrong.push(format!(
            "body {:?} (Content-Length {declared:?}) is not one short reason",
            lossy(body)
        ));
    }
    for (name, token) in row.must {
        if !head
            .headers
            .tokens(name)
            .contains(&token.to_ascii_lowercase())
        {
            wrong.push(format!("no `{name}: {token}`"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; answer {:?}", wrong.join(", "), lossy(&got)))
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn lossy(b: &[u8]) -> String {
    let shown = &b[..b.len().min(300)];
    String::from_utf8_lossy(shown).into_owned()
}

/// A good WebSocket handshake and one echoed message through the same gateway.
async fn good_handshake(addr: std::net::SocketAddr, after: &str) {
    let (mut ws, resp) = ws_connect(addr, "/ws", Some("chat.v2")).await;
    assert_eq!(resp.status(), 101, "good handshake after {after:?}");
    ws.send(Message::Text("still serving".into()))
        .await
        .unwrap_or_else(|e| panic!("send after {after:?}: {e}"));
    let echo = tokio::time::timeout(IO_TIMEOUT, ws.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "still serving"),
        "echo after {after:?}: {echo:?}"
    );
    let _ = ws.close(None).await;
}

/// Every row of the corpus gets its SPEC §3 answer, the gateway serves a good handshake right
/// after each one, and nothing of a failed request reaches an upstream.
#[tokio::test]
async fn malformed_and_hostile_heads_get_their_answers() {
    let rows = corpus();
    assert!(rows.len() >= 60, "the corpus has only {} rows", rows.len());
    // Rows run one after another: allow each its own timeout.
    let limit = Duration::from_secs(60) + HANDSHAKE_TIMEOUT * rows.len() as u32;
    tokio::time::timeout(limit, async {
        let chat = WsUpstream::start().await;
        let web =
            RawUpstream::start(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        let gw = ConfigBuilder::new()
            .limit("max_header_bytes", "8192")
            .limit("handshake_timeout", "\"1s\"")
            .upstream("chat", &[chat.addr()])
            .upstream("web", &[web.addr()])
            .route(Route::new("/ws").sub("chat.v2", "chat"))
            .route(Route::new("/web").http("web"))
            .start()
            .await;
        let host = gw.addr().to_string();
        let mut failures = Vec::new();
        for row in &rows {
            if let Err(why) = check_row(gw.addr(), &host, row).await {
                failures.push(format!("{} (want {:?}): {why}", row.name, row.expect));
            }
            good_handshake(gw.addr(), row.name).await;
        }
        let switched = rows.iter().filter(|r| r.expect == Switched).count();
        let upgrades = chat.requests().len();
        if upgrades != rows.len() + switched {
            failures.push(format!(
                "the WebSocket upstream got {upgrades} handshakes, want {} (one per good follow-up \
                 handshake, {switched} for the good rows): failed requests reached it",
                rows.len() + switched
            ));
        }
        if web.total_bytes() != 0 {
            let seen: Vec<_> = web.conns().iter().map(|c| lossy(&c.received())).collect();
            failures.push(format!(
                "the http upstream got bytes of failed requests: {seen:?}"
            ));
        }
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    })
    .await
    .expect("the corpus did not finish in time");
}

/// Slowloris: a head sent one byte every 300 ms never completes within handshake_timeout (1s),
/// so the connection is closed without an answer at about 1s, while other clients are served.
#[tokio::test]
async fn slowloris_is_cut_off_at_handshake_timeout() {
    bounded("slowloris_is_cut_off_at_handshake_timeout", async {
        let chat = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .limit("handshake_timeout", "\"1s\"")
            .upstream("chat", &[chat.addr()])
            .route(Route::new("/ws").sub("chat.v2", "chat"))
            .start()
            .await;
        let head = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n{WS}\r\n", gw.addr());
        let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
        let started = Instant::now();
        let mut sent = 0;
        let mut closed_at = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(300));
        for byte in head.bytes() {
            ticker.tick().await;
            // The gateway may have closed: a write error or a readable EOF says so.
            if s.write_all(&[byte]).await.is_err() {
                closed_at = Some(started.elapsed());
                break;
            }
            sent += 1;
            let mut probe = [0u8; 1];
            if let Ok(read) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
            {
                assert!(
                    !matches!(read, Ok(1..)),
                    "the gateway answered a head it never got complete"
                );
                closed_at = Some(started.elapsed());
                break;
            }
            if sent == 3 {
                // Meanwhile a good client is served at once.
                good_handshake(gw.addr(), "slowloris in progress").await;
            }
        }
        let closed_at = closed_at.expect("the slowloris client sent its whole head");
        assert!(
            closed_at >= Duration::from_millis(900) && closed_at <= Duration::from_millis(2500),
            "slowloris cut off after {closed_at:?} ({sent} bytes); handshake_timeout is 1s"
        );
        assert_eq!(
            chat.requests().len(),
            1,
            "only the good client reached the upstream"
        );
    })
    .await;
}

/// Slow read (SPEC §5, last bullet): an upstream answers the upgrade with a 403 and a 16 MiB body
/// to a client that never reads. With idle_timeout = 500ms the gateway abandons the answer and
/// closes both connections, and the one connection slot (max_connections = 1) is free again.
#[tokio::test]
async fn client_that_never_reads_a_relayed_answer_is_cut_off() {
    bounded("client_that_never_reads_a_relayed_answer_is_cut_off", async {
        const BODY: usize = 16 << 20;
        let big = RawUpstream::start(script(|mut c| async move {
            if c.read_head().await.is_none() {
                return;
            }
            let mut answer = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/octet-stream\r\nContent-Length: {BODY}\r\n\r\n"
            )
            .into_bytes();
            answer.resize(answer.len() + BODY, b'x');
            // Blocks once the gateway stops reading; fails once it closes.
            let _ = c.send(&answer).await;
            c.read_to_eof().await;
        }))
        .await;
        let chat = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .limit("idle_timeout", "\"500ms\"")
            .limit("max_connections", "1")
            .upstream("big", &[big.addr()])
            .upstream("chat", &[chat.addr()])
            .route(Route::new("/big").sub("chat.v2", "big"))
            .route(Route::new("/ws").sub("chat.v2", "chat"))
            .start()
            .await;
        let host = gw.addr().to_string();
        let mut stalled = Client::connect(gw.addr()).await;
        let req = ClientRequest::ws(&host, "/big").protocol("chat.v2");
        let _ = stalled.send(&req.to_bytes()).await;
        let started = Instant::now();
        let upstream = big.conn(0, IO_TIMEOUT).await;
        // While the answer is stuck, the slot is taken.
        let mut refused = Client::connect(gw.addr()).await;
        let _ = refused
            .send(&ClientRequest::ws(&host, "/ws").protocol("chat.v2").to_bytes())
            .await;
        expect_failure(&mut refused, 503, "second connection while the slot is held").await;
        assert!(
            upstream.wait_eof(Duration::from_secs(4)).await,
            "the gateway still holds the upstream connection of an answer nobody reads, {:?} in",
            started.elapsed()
        );
        let abandoned = started.elapsed();
        assert!(
            abandoned <= Duration::from_secs(3),
            "abandoned after {abandoned:?}; idle_timeout is 500ms"
        );
        // The client end is closed too: reading now ends well short of the whole body.
        let (got, closed) = stalled.read_to_eof(IO_TIMEOUT).await;
        assert!(closed, "the stalled client's connection is still open");
        assert!(got.len() < BODY, "the whole answer was delivered ({} bytes)", got.len());
        assert!(got.starts_with(b"HTTP/1.1 403 "), "{:?}", lossy(&got));
        // The slot is free again. It is released with the connection task, so allow that task a
        // moment after the sockets closed.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (mut c, head) = exchange(
                gw.addr(),
                &ClientRequest::ws(&host, "/ws").protocol("chat.v2"),
                b"",
            )
            .await;
            if head.status == 101 {
                break;
            }
            assert!(
                head.status == 503 && Instant::now() < deadline,
                "the slot was not freed: {head:?}"
            );
            let _ = c.read_to_eof(IO_TIMEOUT).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// SPEC §3 "on the first request of a connection and on later keep-alive requests alike": after
/// a good ordinary request on a kept-alive connection, a malformed or oversized head gets the
/// gateway's own answer (status, `Connection: close`, text body), never hyper's bare one, and a
/// body that looks like a request head is forwarded as body, not served as a request.
#[tokio::test]
async fn later_keep_alive_heads_get_the_gateways_own_answers() {
    bounded("later_keep_alive_heads_get_the_gateways_own_answers", async {
        // One answer per upstream connection, so none is pooled for the next client.
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        let web = RawUpstream::start(answer(ok)).await;
        let gw = ConfigBuilder::new()
            .limit("max_header_bytes", "4096")
            .upstream("web", &[web.addr()])
            .route(Route::new("/web").http("web"))
            .start()
            .await;
        let host = gw.addr().to_string();
        let first = format!("GET /web HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let big = "x".repeat(5000);
        let rows: [(&str, String, u16); 5] = [
            ("two Content-Lengths", format!("GET /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400),
            ("CL and TE", format!("POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
            ("TE on HTTP/1.0", format!("POST /web HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
            ("garbage", "\x16\x03\x01 nonsense\r\n\r\n".to_owned(), 400),
            ("over max_header_bytes", format!("GET /web HTTP/1.1\r\nHost: {host}\r\nX: {big}\r\n\r\n"), 431),
        ];
        for (name, second, status) in rows {
            let mut c = Client::connect(gw.addr()).await;
            c.send(first.as_bytes()).await.expect("first request");
            let (head, body) = c.read_response().await;
            assert_eq!(head.status, 200, "{name}: first request");
            assert_eq!(body, b"ok");
            c.send(second.as_bytes()).await.expect("second request");
            let (head, body) = expect_failure(&mut c, status, name).await;
            assert!(
                head.headers.get("content-type").is_some_and(|v| v.starts_with("text/plain")),
                "{name}: not the gateway's own answer: {head:?}"
            );
            assert!(!body.is_empty(), "{name}: empty body");
            let (_, closed) = c.read_to_eof(IO_TIMEOUT).await;
            assert!(closed, "{name}: connection not closed after the answer");
        }
        // A body shaped like a request head is the first request's body.
        let smuggle = format!(
            "POST /web HTTP/1.1\r\nHost: {host}\r\nContent-Length: 38\r\n\r\nGET /other HTTP/1.1\r\nHost: evil\r\n\r\n"
        );
        let mut c = Client::connect(gw.addr()).await;
        c.send(smuggle.as_bytes()).await.expect("request");
        let (head, _) = c.read_response().await;
        assert_eq!(head.status, 200);
        let conn = web.conn(web.conns().len() - 1, IO_TIMEOUT).await;
        let seen = lossy(&conn.received());
        assert!(
            seen.starts_with("POST /web HTTP/1.1\r\n")
                && seen.ends_with("\r\n\r\nGET /other HTTP/1.1\r\nHost: evil\r\n\r\n"),
            "not forwarded as one request with its body: {seen:?}"
        );
        let (more, _) = c.read_to_eof(Duration::from_millis(300)).await;
        assert!(more.is_empty(), "a second answer: {:?}", lossy(&more));
    })
    .await;
}

/// `keepalive_timeout` on HTTP/1.1: after a response, a connection that sends nothing, or only
/// part of its next head, is closed after the timeout (the gate holds a partial head back from
/// hyper, whose header timer still runs from the end of the previous response).
#[tokio::test]
async fn idle_and_half_sent_keep_alive_connections_are_closed() {
    bounded(
        "idle_and_half_sent_keep_alive_connections_are_closed",
        async {
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let web = RawUpstream::start(answer(ok)).await;
            let gw = ConfigBuilder::new()
                .limit("keepalive_timeout", "\"500ms\"")
                .upstream("web", &[web.addr()])
                .route(Route::new("/web").http("web"))
                .start()
                .await;
            let host = gw.addr().to_string();
            for partial in ["", "GET /web HTTP/1.1\r\nHost: "] {
                let mut c = Client::connect(gw.addr()).await;
                c.send(format!("GET /web HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                    .await
                    .expect("request");
                let (head, _) = c.read_response().await;
                assert_eq!(head.status, 200);
                let answered = Instant::now();
                c.send(partial.as_bytes()).await.expect("partial head");
                let (data, closed) = c.read_to_eof(Duration::from_secs(5)).await;
                let after = answered.elapsed();
                assert!(closed, "{partial:?}: still open 5s after the response");
                assert!(data.is_empty(), "{partial:?}: got {:?}", lossy(&data));
                assert!(
                    after >= Duration::from_millis(400),
                    "{partial:?}: closed after {after:?}, before keepalive_timeout"
                );
            }
        },
    )
    .await;
}
