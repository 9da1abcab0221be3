//! A raw scripted upstream that records every byte it receives: exact answers (a correct or a
//! broken 101, a non-101, silence) and a record per connection to prove what reached it and when.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::IO_TIMEOUT;
use super::frames::accept_key;
use super::heads::{RequestHead, parse_request_head};
use super::{find, lock};

#[derive(Default)]
struct ConnRecord {
    /// Every byte received on this connection.
    received: Vec<u8>,
    /// Length of the request head once it was read.
    head_len: Option<usize>,
    /// `received.len()` when this upstream first wrote (its response).
    respond_mark: Option<usize>,
    eof: bool,
}

/// The record of one upstream connection, shared with the test.
#[derive(Default)]
pub struct ConnLog {
    record: Mutex<ConnRecord>,
    changed: Notify,
}

impl ConnLog {
    /// Every byte received so far.
    pub fn received(&self) -> Vec<u8> {
        lock(&self.record).received.clone()
    }

    /// The request head, parsed, once it was read.
    pub fn head(&self) -> Option<RequestHead> {
        let rec = lock(&self.record);
        rec.head_len
            .and_then(|n| parse_request_head(&rec.received[..n]).ok())
    }

    /// Bytes received after the request head.
    pub fn after_head(&self) -> Vec<u8> {
        let rec = lock(&self.record);
        rec.received[rec.head_len.unwrap_or(rec.received.len())..].to_vec()
    }

    /// Bytes that had arrived after the head before this upstream answered (SPEC §4: must be none).
    pub fn before_response(&self) -> Vec<u8> {
        let rec = lock(&self.record);
        match (rec.head_len, rec.respond_mark) {
            (Some(h), Some(r)) if r > h => rec.received[h..r].to_vec(),
            _ => Vec::new(),
        }
    }

    /// Whether the gateway closed (or reset) its side.
    pub fn eof(&self) -> bool {
        lock(&self.record).eof
    }

    /// Waits up to `within` until at least `n` bytes arrived after the request head; returns
    /// whether they did.
    pub async fn wait_after_head(&self, n: usize, within: Duration) -> bool {
        let wait = async {
            loop {
                let woken = self.changed.notified();
                {
                    let rec = lock(&self.record);
                    if rec.head_len.is_some_and(|h| rec.received.len() - h >= n) {
                        return;
                    }
                }
                woken.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Waits up to `within` until `cond` holds for the bytes received after the request head
    /// (checked at every read); returns whether it did.
    pub async fn wait_for(&self, within: Duration, cond: impl Fn(&[u8]) -> bool) -> bool {
        let wait = async {
            loop {
                let woken = self.changed.notified();
                if cond(&self.after_head()) {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Waits up to `within` for EOF from the gateway; returns whether it came.
    pub async fn wait_eof(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let woken = self.changed.notified();
                if self.eof() {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

/// One accepted upstream connection, handed to the script.
pub struct RawConn {
    stream: TcpStream,
    log: Arc<ConnLog>,
    /// The upstream's [`RawUpstream::wait_until`] wake-up, shared by all its connections.
    activity: Arc<Notify>,
    /// Received and not yet consumed by the script.
    buf: Vec<u8>,
}

impl RawConn {
    /// Wakes everyone waiting on this connection's record or on the upstream's.
    fn changed(&self) {
        self.log.changed.notify_waiters();
        self.activity.notify_waiters();
    }

    /// This connection's record, as the test sees it.
    pub fn log(&self) -> Arc<ConnLog> {
        self.log.clone()
    }

    /// Reads once into the buffer, recording; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        {
            let mut rec = lock(&self.log.record);
            if n == 0 {
                rec.eof = true;
            } else {
                rec.received.extend_from_slice(&chunk[..n]);
            }
        }
        self.changed();
        if n > 0 {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        n > 0
    }

    /// Reads the request head and answers a correct 101 that selects the offered subprotocol, as
    /// a well-behaved upstream would; `false` if no head came or the answer could not be sent.
    pub async fn accept_upgrade(&mut self) -> bool {
        let Some(head) = self.read_head().await else {
            return false;
        };
        self.send(&response_101(&head, offered(&head).as_deref()))
            .await
            .is_ok()
    }

    /// Reads the request head; `None` if the connection ended first or the head is malformed.
    pub async fn read_head(&mut self) -> Option<RequestHead> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                lock(&self.log.record).head_len = Some(raw.len());
                self.changed();
                return parse_request_head(&raw).ok();
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next bytes (buffered first); `None` on EOF.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() && !self.fill().await {
            return None;
        }
        Some(std::mem::take(&mut self.buf))
    }

    /// Exactly `n` bytes, or fewer if the connection ended.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if !self.fill().await {
                break;
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// Everything until EOF.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        while self.fill().await {
            all.append(&mut self.buf);
        }
        all
    }

    /// Writes `bytes` in one write; the first write marks where the response began.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        {
            let mut rec = lock(&self.log.record);
            if rec.respond_mark.is_none() {
                rec.respond_mark = Some(rec.received.len());
            }
        }
        self.stream.write_all(bytes).await
    }

    /// Echoes every byte until EOF, then shuts down its write side (half-close propagation).
    pub async fn echo(&mut self) {
        while let Some(data) = self.recv().await {
            if self.stream.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = self.stream.shutdown().await;
    }

    /// `shutdown(SHUT_WR)`: EOF towards the gateway, reading stays open.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Resets the connection (SO_LINGER 0, then close: an RST, not a FIN).
    pub fn abort(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

/// A boxed per-connection script.
pub type Script = Arc<dyn Fn(RawConn) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Boxes an async closure into a [`Script`].
pub fn script<F, Fut>(f: F) -> Script
where
    F: Fn(RawConn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |conn| Box::pin(f(conn)))
}

/// A hand-written 101 answering `head` with the correct accept and, if given, a subprotocol.
pub fn response_101(head: &RequestHead, protocol: Option<&str>) -> Vec<u8> {
    let key = head.headers.get("sec-websocket-key").unwrap_or_default();
    response_101_with_accept(&accept_key(key), protocol)
}

/// A hand-written 101 with an arbitrary `Sec-WebSocket-Accept` value.
pub fn response_101_with_accept(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The subprotocol the gateway forwarded (it forwards only the selected one).
pub fn offered(head: &RequestHead) -> Option<String> {
    head.headers
        .list("sec-websocket-protocol")
        .into_iter()
        .next()
}

/// Script: a correct 101 (echoing the forwarded subprotocol) plus `early` in the same write,
/// then echo raw bytes until EOF.
pub fn accept_then_echo(early: &[u8]) -> Script {
    let early = early.to_vec();
    script(move |mut c| {
        let early = early.clone();
        async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            let mut out = response_101(&head, offered(&head).as_deref());
            out.extend_from_slice(&early);
            if c.send(&out).await.is_ok() {
                c.echo().await;
            }
        }
    })
}

/// Script: a correct 101, then hold the connection (recording) until the gateway closes it.
pub fn accept_then_hold() -> Script {
    script(|mut c| async move {
        if c.accept_upgrade().await {
            c.read_to_eof().await;
        }
    })
}

/// Script: answer the head with `answer(head)` in one write, then keep recording until EOF.
pub fn respond(answer: impl Fn(&RequestHead) -> Vec<u8> + Send + Sync + 'static) -> Script {
    let answer = Arc::new(answer);
    script(move |mut c| {
        let answer = answer.clone();
        async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            if c.send(&answer(&head)).await.is_ok() {
                c.read_to_eof().await;
            }
        }
    })
}

/// Script: fixed bytes after the head, then keep recording until EOF.
pub fn answer(bytes: &[u8]) -> Script {
    let bytes = bytes.to_vec();
    respond(move |_| bytes.clone())
}

/// Script: read the request head (so it is recorded), then never answer.
pub fn stall() -> Script {
    script(|mut c| async move {
        if c.read_head().await.is_some() {
            c.read_to_eof().await;
        }
    })
}

/// A raw upstream running one [`Script`] per connection and recording every byte it receives.
pub struct RawUpstream {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<ConnLog>>>>,
    /// Woken at every accept and every change of a connection's record.
    activity: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Listens on 127.0.0.1:0 and runs `script` for each accepted connection.
    pub async fn start(script: Script) -> RawUpstream {
        RawUpstream::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), script).await
    }

    /// Listens on `addr` (with SO_REUSEADDR, so a stopped upstream's port can be taken again
    /// while its old connections linger) and runs `script` for each accepted connection.
    pub async fn start_at(addr: SocketAddr, script: Script) -> RawUpstream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind raw upstream");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("local_addr");
        let conns: Arc<Mutex<Vec<Arc<ConnLog>>>> = Arc::default();
        let activity = Arc::new(Notify::new());
        let (c2, a2) = (conns.clone(), activity.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::new(ConnLog::default());
                lock(&c2).push(log.clone());
                a2.notify_waiters();
                let conn = RawConn {
                    stream,
                    log,
                    activity: a2.clone(),
                    buf: Vec::new(),
                };
                tokio::spawn(script(conn));
            }
        });
        RawUpstream {
            addr,
            conns,
            activity,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The records of every accepted connection, in accept order.
    pub fn conns(&self) -> Vec<Arc<ConnLog>> {
        lock(&self.conns).clone()
    }

    /// Bytes received over all connections (a failed handshake must leave this at 0).
    pub fn total_bytes(&self) -> usize {
        self.conns().iter().map(|c| c.received().len()).sum()
    }

    /// Waits up to `within` for connection number `index` (0-based).
    pub async fn conn(&self, index: usize, within: Duration) -> Arc<ConnLog> {
        let wait = async {
            loop {
                let woken = self.activity.notified();
                if let Some(c) = lock(&self.conns).get(index) {
                    return c.clone();
                }
                woken.await;
            }
        };
        match tokio::time::timeout(within, wait).await {
            Ok(c) => c,
            Err(_) => panic!(
                "upstream {} accepted no connection #{index} within {within:?}",
                self.addr
            ),
        }
    }

    /// Waits up to `within` until `cond` holds for the connection records (checked at every
    /// accept and every byte received); panics naming `what` otherwise.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&[Arc<ConnLog>]) -> bool,
    ) {
        let wait = async {
            loop {
                let woken = self.activity.notified();
                if cond(&self.conns()) {
                    return;
                }
                woken.await;
            }
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            panic!("upstream {}: not {what} within {within:?}", self.addr);
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The smuggling guard seen from the upstream (SPEC §4): after a refused or failed upgrade its
/// only connection got the request head and nothing after it (no byte the client sent with or
/// after its head), and was closed.
pub async fn assert_not_tunnelled(up: &RawUpstream, what: &str) {
    let conn = up.conn(0, IO_TIMEOUT).await;
    assert!(
        conn.wait_eof(IO_TIMEOUT).await,
        "{what}: the upstream connection is still open after a refused upgrade"
    );
    assert!(
        conn.head().is_some(),
        "{what}: the upstream never got the request head"
    );
    let leaked = conn.after_head();
    assert!(
        leaked.is_empty(),
        "{what}: SMUGGLING: {} client bytes after the head reached the upstream: {:?}",
        leaked.len(),
        String::from_utf8_lossy(&leaked)
    );
    assert_eq!(
        up.conns().len(),
        1,
        "{what}: more upstream connections than handshakes"
    );
}
