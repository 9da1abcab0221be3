//! Clients of the gateway: a byte-exact HTTP/1.1 client for odd shapes and failure answers, the
//! SPEC §3 assertions on what it reads, and a tokio-tungstenite client over plain TCP.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frames::{accept_key, new_key};
use super::heads::{ResponseHead, parse_response_head};
use super::{IO_TIMEOUT, find};

/// A client request built from ordered header lines, duplicates allowed, so that odd shapes can
/// be sent exactly.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The `Sec-WebSocket-Key` sent (empty for a plain request).
    pub key: String,
}

impl ClientRequest {
    /// A valid version-13 upgrade for `target` with `Host: host` and a fresh key.
    pub fn ws(host: &str, target: &str) -> ClientRequest {
        let key = new_key();
        ClientRequest {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), host.into()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), key.clone()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
            key,
        }
    }

    /// An ordinary GET (no upgrade).
    pub fn plain(host: &str, target: &str) -> ClientRequest {
        ClientRequest {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), host.into()),
                ("Accept".into(), "*/*".into()),
            ],
            key: String::new(),
        }
    }

    /// Another method.
    pub fn method(mut self, method: &str) -> ClientRequest {
        self.method = method.into();
        self
    }

    /// Appends a header line.
    pub fn header(mut self, name: &str, value: &str) -> ClientRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces every line of `name` with one line (in the first one's place, else appended).
    pub fn set(mut self, name: &str, value: &str) -> ClientRequest {
        match self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(i) => {
                self.headers[i].1 = value.into();
                let mut seen = 0;
                self.headers.retain(|(n, _)| {
                    let same = n.eq_ignore_ascii_case(name);
                    seen += usize::from(same);
                    !same || seen == 1
                });
            }
            None => self.headers.push((name.into(), value.into())),
        }
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            self.key = value.into();
        }
        self
    }

    /// Removes every line of `name`.
    pub fn remove(mut self, name: &str) -> ClientRequest {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Adds a `Sec-WebSocket-Protocol` line.
    pub fn protocol(self, offer: &str) -> ClientRequest {
        self.header("Sec-WebSocket-Protocol", offer)
    }

    /// The request head as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// A raw TCP client with its own read buffer.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` in one write. Errors are returned, not fatal: a gateway may close early.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// This end's address (what the gateway sees as the client).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// `shutdown(SHUT_WR)`.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads once; 0 on EOF or reset.
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads a response head; panics with what arrived if it does not within [`IO_TIMEOUT`].
    pub async fn read_head(&mut self) -> ResponseHead {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_response_head(&raw)
                    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)));
            }
            match tokio::time::timeout(IO_TIMEOUT, self.fill()).await {
                Ok(0) => panic!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(_) => panic!(
                    "no complete response head within {IO_TIMEOUT:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads a response head and its body (by `Content-Length`, else until EOF).
    pub async fn read_response(&mut self) -> (ResponseHead, Vec<u8>) {
        let head = self.read_head().await;
        let body = match head.headers.get("content-length") {
            Some(len) => {
                let len: usize = len
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("bad Content-Length {len:?}: {e}"));
                self.read_exact(len).await
            }
            None if head.status == 101 => Vec::new(),
            None => {
                let (body, closed) = self.read_to_eof(IO_TIMEOUT).await;
                assert!(
                    closed,
                    "response without Content-Length not ended by a close"
                );
                body
            }
        };
        (head, body)
    }

    /// Exactly `n` bytes (buffered first); panics with what arrived otherwise.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match tokio::time::timeout(IO_TIMEOUT, self.fill()).await {
                Ok(0) => panic!(
                    "connection closed after {} of {n} expected bytes",
                    self.buf.len()
                ),
                Ok(_) => {}
                Err(_) => panic!(
                    "only {} of {n} expected bytes within {IO_TIMEOUT:?}",
                    self.buf.len()
                ),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Bytes already read past the last head.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Everything until EOF (or reset), and whether EOF came within `within`.
    pub async fn read_to_eof(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let closed = tokio::time::timeout(within, async { while self.fill().await > 0 {} })
            .await
            .is_ok();
        (self.take_buffered(), closed)
    }

    /// Whether the peer closed (EOF or reset) within `within`; bytes read meanwhile are dropped.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        self.read_to_eof(within).await.1
    }

    /// Resets the connection (SO_LINGER 0, then close: an RST, not a FIN).
    pub fn abort(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Splits into halves for concurrent reading and writing; returns any buffered bytes too.
    pub fn into_split(self) -> (Vec<u8>, OwnedReadHalf, OwnedWriteHalf) {
        let (r, w) = self.stream.into_split();
        (self.buf, r, w)
    }
}

/// Connects, sends `req` in one write followed by `early` in the same write, and reads the head.
pub async fn exchange(
    addr: SocketAddr,
    req: &ClientRequest,
    early: &[u8],
) -> (Client, ResponseHead) {
    let mut c = Client::connect(addr).await;
    let mut bytes = req.to_bytes();
    bytes.extend_from_slice(early);
    // A gateway rejecting a large head may close before reading it all; the answer still counts.
    let _ = c.send(&bytes).await;
    let head = c.read_head().await;
    (c, head)
}

/// Asserts SPEC §3's 101 invariants: status, the RFC 6455 §4.2.2 accept for `key`, no
/// `Sec-WebSocket-Version`, and `Sec-WebSocket-Protocol` exactly once only when selected.
pub fn assert_101(head: &ResponseHead, key: &str, protocol: Option<&str>) {
    assert_eq!(head.status, 101, "expected 101, got {head:?}");
    assert_eq!(
        head.headers.all("sec-websocket-accept"),
        vec![accept_key(key).as_str()],
        "Sec-WebSocket-Accept in {head:?}"
    );
    assert!(
        !head.headers.has("sec-websocket-version"),
        "a 101 must not carry Sec-WebSocket-Version: {head:?}"
    );
    let want: Vec<&str> = protocol.into_iter().collect();
    assert_eq!(
        head.headers.all("sec-websocket-protocol"),
        want,
        "Sec-WebSocket-Protocol lines in the 101: {head:?}"
    );
    assert!(
        head.headers.tokens("upgrade") == ["websocket"]
            && head
                .headers
                .tokens("connection")
                .contains(&"upgrade".into()),
        "101 without Upgrade: websocket / Connection: upgrade: {head:?}"
    );
}

/// Reads a failure answer and asserts SPEC §3's contract for it: `status`, `Connection: close`,
/// a non-empty `text/plain` body, and the connection closed afterwards. Returns head and body.
pub async fn expect_failure(c: &mut Client, status: u16, what: &str) -> (ResponseHead, Vec<u8>) {
    let (head, body) = c.read_response().await;
    let body_text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(
        head.status, status,
        "{what}: status; head {head:?}, body {body_text:?}"
    );
    assert!(
        head.headers
            .tokens("connection")
            .contains(&"close".to_string()),
        "{what}: no `Connection: close` in {head:?}"
    );
    let ct = head
        .headers
        .get("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        ct.starts_with("text/plain"),
        "{what}: Content-Type {ct:?} is not text/plain"
    );
    assert!(
        !body_text.trim().is_empty(),
        "{what}: empty body; it must name the reason"
    );
    let (rest, closed) = c.read_to_eof(IO_TIMEOUT).await;
    assert!(
        closed,
        "{what}: connection still open {IO_TIMEOUT:?} after the answer"
    );
    assert!(
        rest.is_empty(),
        "{what}: {} bytes after the answer: {:?}",
        rest.len(),
        String::from_utf8_lossy(&rest)
    );
    (head, body)
}

/// A tokio-tungstenite client handshake over TCP with the given subprotocol offer.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("ws request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header value"));
    }
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, tcp)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => panic!("WebSocket handshake via the gateway failed: {e}"),
        Err(_) => panic!("WebSocket handshake via the gateway timed out"),
    }
}

/// Reads a response head from any stream; returns it with the bytes read past it.
pub async fn read_head_from<S>(s: &mut S) -> (ResponseHead, Vec<u8>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = parse_response_head(&buf)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&buf)));
            return (head, rest);
        }
        let n = match tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("reading a response head: {e}"),
            Err(_) => panic!(
                "no complete response head within {IO_TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        };
        assert!(
            n > 0,
            "connection closed before a complete response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
