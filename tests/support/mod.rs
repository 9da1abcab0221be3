//! Shared support for the integration tests: the real `switchyard` binary started on port 0,
//! fake upstreams with exact scripted answers, and a byte-exact HTTP/1.1 client (STYLE example 11).
//!
//! Everything binds 127.0.0.1:0; readiness comes from the gateway's own `listening` log events,
//! never from sleeps. Every upstream records what it received so that tests can prove what did
//! (and did not) reach it.

// Each test file uses a different part of this module.
#![allow(dead_code)]

pub mod h2_client;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// The binary under test, built by cargo for integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Upper bound for a whole test; a hang becomes a failure with this name, never a stuck run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(25);

/// Upper bound for one network step (a response head, an expected close).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the gateway may take to log every `listening` event.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 6455 §1.3: the GUID appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Runs a test body under [`TEST_TIMEOUT`] so that a hang fails with the test's name.
pub async fn bounded<F: Future>(name: &str, body: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(out) => out,
        Err(_) => panic!("{name}: did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// `Sec-WebSocket-Accept` for a client key, as RFC 6455 §4.2.2 step 5.4 defines it.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    B64.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 §4.1 item 7).
pub fn new_key() -> String {
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    B64.encode(nonce)
}

/// `n` pseudo-random bytes from `seed`, so that a failure can be replayed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// A directory of our own under the system temp dir; removed by its owner.
pub fn unique_temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("switchyard-test-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
    dir
}

/// An address nothing listens on: bound to learn a free port, then released, so a connect is
/// refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// An address where a TCP connect hangs: a listener with backlog 0 whose accept queue is already
/// full, so Linux drops further SYNs. Keep the guard alive as long as the address is used.
pub fn stalled_addr() -> (StalledAddr, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into()).expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        // In progress or refused: either way the queue fills up.
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    (
        StalledAddr {
            _sockets: std::iter::once(listener).chain(fillers).collect(),
        },
        addr,
    )
}

/// Keeps a [`stalled_addr`] stalled.
pub struct StalledAddr {
    _sockets: Vec<socket2::Socket>,
}

/// Waits up to `within` until connects to `addr` are refused (a closed upstream's listener is
/// really gone), so that a test does not race the close.
pub async fn wait_refused(addr: SocketAddr, within: Duration) {
    let wait = async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    if tokio::time::timeout(within, wait).await.is_err() {
        panic!("{addr} still accepts connections after {within:?}");
    }
}

/// The value of the `/metrics` sample whose line starts with `series` (name and labels
/// exactly as rendered), if present.
pub async fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    let (_, _, text) = gw.admin_get("/metrics").await;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits up to `within` until the `/metrics` sample `series` equals `want`.
pub async fn wait_metric(gw: &Gateway, series: &str, want: f64, within: Duration) {
    let wait = async {
        loop {
            if metric(gw, series).await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(within, wait).await.is_err() {
        let (_, _, text) = gw.admin_get("/metrics").await;
        panic!("{series} did not become {want} within {within:?}; /metrics:\n{text}");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the record from the assertion that follows.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Headers

/// Header lines in wire order, names as sent; lookups are case-insensitive (RFC 9110 §5.1).
#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Every line's value for `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first line's value for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Whether any line carries `name`.
    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The comma-separated list over all lines of `name`, trimmed, empty elements dropped
    /// (RFC 9110 §5.6.1).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// [`Headers::list`] lower-cased: for token headers such as `Connection` and `Upgrade`.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.list(name)
            .into_iter()
            .map(|t| t.to_ascii_lowercase())
            .collect()
    }

    /// Lower-cased names of every line.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
    }
}

/// A request head as an upstream saw it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form: path and query).
    pub target: String,
    pub headers: Headers,
}

/// A response head as the client saw it.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

fn header_pairs(headers: &[httparse::Header<'_>]) -> Headers {
    Headers(
        headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    )
}

/// Parses a complete request head (through the blank line).
pub fn parse_request_head(raw: &[u8]) -> Result<RequestHead, String> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(_)) => Ok(RequestHead {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers: header_pairs(req.headers),
        }),
        Ok(httparse::Status::Partial) => Err("partial request head".to_string()),
        Err(e) => Err(format!("bad request head: {e}")),
    }
}

/// Parses a complete response head (through the blank line).
pub fn parse_response_head(raw: &[u8]) -> Result<ResponseHead, String> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(_)) => Ok(ResponseHead {
            status: resp.code.unwrap_or_default(),
            headers: header_pairs(resp.headers),
        }),
        Ok(httparse::Status::Partial) => Err("partial response head".to_string()),
        Err(e) => Err(format!("bad response head: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// What the background stderr reader has collected.
#[derive(Default)]
struct LogBook {
    /// Every stderr line, for failure messages.
    lines: Mutex<Vec<String>>,
    /// The lines that parsed as JSON objects.
    events: Mutex<Vec<Value>>,
    /// Set once stderr reached EOF (the process exited or closed it).
    eof: Mutex<bool>,
    /// Woken on every new line and at EOF.
    changed: Notify,
}

impl LogBook {
    fn text(&self) -> String {
        lock(&self.lines).join("\n")
    }
}

async fn read_stderr(stderr: ChildStderr, book: Arc<LogBook>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
            lock(&book.events).push(v);
        }
        lock(&book.lines).push(line);
        book.changed.notify_waiters();
    }
    *lock(&book.eof) = true;
    book.changed.notify_waiters();
}

/// A running `switchyard run` child process, killed when dropped.
pub struct Gateway {
    child: Child,
    dir: PathBuf,
    config_path: PathBuf,
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    book: Arc<LogBook>,
}

/// How many `[[listener]]` entries and whether an `[admin]` section the config declares; the
/// gateway logs one `listening` event for each.
fn expected_binds(config_toml: &str) -> (usize, bool) {
    let table: toml::Table = config_toml
        .parse()
        .unwrap_or_else(|e| panic!("test config is not valid TOML: {e}\n{config_toml}"));
    let listeners = table
        .get("listener")
        .and_then(|l| l.as_array())
        .map_or(0, Vec::len);
    (listeners, table.contains_key("admin"))
}

fn event_str<'a>(ev: &'a Value, key: &str) -> Option<&'a str> {
    ev.get(key).and_then(Value::as_str)
}

impl Gateway {
    /// Writes `config_toml` to a fresh temp dir, starts `switchyard --log-format json run`, and
    /// waits (at most [`READY_TIMEOUT`]) until every listener and the admin listener are bound.
    pub async fn start(config_toml: &str) -> Gateway {
        let (want_listeners, want_admin) = expected_binds(config_toml);
        let dir = unique_temp_dir("gw");
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let path = config_path.clone().into_os_string();
        let args = [
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ];
        let what = format!("config:\n{config_toml}");
        Gateway::spawn(&args, dir, config_path, want_listeners, want_admin, &what).await
    }

    /// Starts the binary with `args` (which should include `--log-format json`) and waits like
    /// [`Gateway::start`] for `want_listeners` listeners and, if `want_admin`, the admin listener;
    /// for commands that build their own config, such as `demo`.
    pub async fn start_args(args: &[&str], want_listeners: usize, want_admin: bool) -> Gateway {
        let dir = unique_temp_dir("gw");
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let what = format!("args: {args:?}");
        Gateway::spawn(
            &args,
            dir,
            PathBuf::new(),
            want_listeners,
            want_admin,
            &what,
        )
        .await
    }

    async fn spawn(
        args: &[&std::ffi::OsStr],
        dir: PathBuf,
        config_path: PathBuf,
        want_listeners: usize,
        want_admin: bool,
        what: &str,
    ) -> Gateway {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            // Anything the process puts in the temp dir (e.g. `demo`'s config) goes in ours,
            // removed on drop even though the process is killed, not drained.
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let book = Arc::new(LogBook::default());
        tokio::spawn(read_stderr(stderr, book.clone()));
        let mut gw = Gateway {
            child,
            dir,
            config_path,
            listeners: Vec::new(),
            admin: None,
            book,
        };
        let ready =
            tokio::time::timeout(READY_TIMEOUT, gw.wait_listening(want_listeners, want_admin))
                .await;
        match ready {
            Ok(Ok((listeners, admin))) => {
                gw.listeners = listeners;
                gw.admin = admin;
                gw
            }
            Ok(Err(why)) => {
                let status =
                    match tokio::time::timeout(Duration::from_secs(2), gw.child.wait()).await {
                        Ok(Ok(status)) => format!("exited with {status}"),
                        Ok(Err(e)) => format!("wait failed: {e}"),
                        Err(_) => "still running".to_string(),
                    };
                panic!(
                    "gateway did not become ready: {why} ({status})\n{what}\nstderr:\n{}",
                    gw.book.text()
                )
            }
            Err(_) => panic!(
                "gateway logged no `listening` event for all {want_listeners} listener(s){} within {READY_TIMEOUT:?}\n{what}\nstderr:\n{}",
                if want_admin {
                    " and the admin listener"
                } else {
                    ""
                },
                gw.book.text()
            ),
        }
    }

    async fn wait_listening(
        &self,
        want_listeners: usize,
        want_admin: bool,
    ) -> Result<(Vec<SocketAddr>, Option<SocketAddr>), String> {
        loop {
            let woken = self.book.changed.notified();
            let mut listeners = Vec::new();
            let mut admin = None;
            for ev in lock(&self.book.events).iter() {
                if event_str(ev, "message") != Some("listening") {
                    continue;
                }
                let addr = event_str(ev, "addr")
                    .ok_or_else(|| format!("`listening` event without a string `addr`: {ev}"))?;
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| format!("`listening` addr {addr:?} is not ip:port: {e}"))?;
                match event_str(ev, "kind") {
                    Some("listener") => listeners.push(addr),
                    Some("admin") => admin = Some(addr),
                    other => return Err(format!("`listening` event with kind {other:?}: {ev}")),
                }
            }
            if listeners.len() >= want_listeners && (admin.is_some() || !want_admin) {
                return Ok((listeners, admin));
            }
            if *lock(&self.book.eof) {
                return Err(format!(
                    "stderr closed after {} of {want_listeners} listener event(s)",
                    listeners.len()
                ));
            }
            woken.await;
        }
    }

    /// The first listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    /// Every listener's bound address, in config order.
    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// The admin listener's bound address, when the config has `[admin]`.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The config file the gateway runs on.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends `SIGHUP` (reload, SPEC §7). Readiness afterwards comes from the gateway's own
    /// reload log events.
    pub async fn sighup(&self) {
        self.signal(Signal::Hup);
    }

    /// Every JSON log event so far.
    pub fn logs(&self) -> Vec<Value> {
        lock(&self.book.events).clone()
    }

    /// Every stderr line so far, for failure messages.
    pub fn stderr_text(&self) -> String {
        self.book.text()
    }

    /// The access-log events so far (SPEC §7: `target = "access"`).
    pub fn access_events(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|e| event_str(e, "target") == Some("access"))
            .collect()
    }

    /// Waits up to `within` for a log event matching `pred`; panics naming `what` otherwise.
    pub async fn wait_log(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let search = async {
            loop {
                let woken = self.book.changed.notified();
                if let Some(ev) = lock(&self.book.events).iter().find(|e| pred(e)) {
                    return ev.clone();
                }
                woken.await;
            }
        };
        match tokio::time::timeout(within, search).await {
            Ok(ev) => ev,
            Err(_) => panic!(
                "no log event {what} within {within:?}\nstderr:\n{}",
                self.stderr_text()
            ),
        }
    }
}

/// Signals the tests send to the gateway (via kill(1), so no unsafe code and no extra crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Term,
    Int,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Hup => "-HUP",
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
        }
    }
}

/// Message of the event the gateway logs after a successful reload.
pub const RELOADED: &str = "configuration reloaded";

/// Prefix of the message the gateway logs when a reload is refused.
pub const RELOAD_FAILED: &str = "reload failed";

impl Gateway {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("the gateway has already been waited for")
    }

    /// Sends `sig` to the gateway.
    pub fn signal(&self, sig: Signal) {
        let status = std::process::Command::new("kill")
            .arg(sig.flag())
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(
            status.success(),
            "kill {} {} failed",
            sig.flag(),
            self.pid()
        );
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Some(status.unwrap_or_else(|e| panic!("waiting for the gateway: {e}"))),
            Err(_) => None,
        }
    }

    /// How many JSON log events have arrived so far: a mark for [`Gateway::wait_log_after`].
    pub fn log_mark(&self) -> usize {
        lock(&self.book.events).len()
    }

    /// Like [`Gateway::wait_log`], among the events logged after `mark`.
    pub async fn wait_log_after(
        &self,
        mark: usize,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let search = async {
            loop {
                let woken = self.book.changed.notified();
                if let Some(ev) = lock(&self.book.events)
                    .get(mark..)
                    .unwrap_or_default()
                    .iter()
                    .find(|e| pred(e))
                {
                    return ev.clone();
                }
                woken.await;
            }
        };
        match tokio::time::timeout(within, search).await {
            Ok(ev) => ev,
            Err(_) => panic!(
                "no log event {what} within {within:?}\nstderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Rewrites the config file, sends SIGHUP, and returns the event that says how the reload
    /// went (message [`RELOADED`], or starting with [`RELOAD_FAILED`]).
    pub async fn reload(&self, config_toml: &str) -> Value {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
        let mark = self.log_mark();
        self.signal(Signal::Hup);
        self.wait_log_after(mark, "after SIGHUP", READY_TIMEOUT, |e| {
            event_str(e, "message").is_some_and(|m| m == RELOADED || m.starts_with(RELOAD_FAILED))
        })
        .await
    }

    /// The `listening` events (bound address and kind) logged after `mark`.
    pub fn listening_after(&self, mark: usize) -> Vec<(SocketAddr, String)> {
        lock(&self.book.events)
            .get(mark..)
            .unwrap_or_default()
            .iter()
            .filter(|e| event_str(e, "message") == Some("listening"))
            .filter_map(|e| {
                let addr = event_str(e, "addr")?.parse().ok()?;
                Some((addr, event_str(e, "kind")?.to_string()))
            })
            .collect()
    }

    /// `GET path` on the admin listener over HTTP/1.1: (status, content type, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String, String) {
        let admin = self.admin.expect("the config has no [admin] listener");
        let mut c = Client::connect(admin).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        c.send(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("sending GET {path} to the admin listener: {e}"));
        let (head, body) = c.read_response().await;
        (
            head.status,
            head.headers
                .get("content-type")
                .unwrap_or_default()
                .to_string(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // kill_on_drop also does this; being explicit keeps the order (kill, then remove files).
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary with `args` to completion (bounded by [`IO_TIMEOUT`] x2) and returns
/// (exit code, stdout, stderr).
pub async fn run_cli(args: &[&str]) -> (i32, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let out = match tokio::time::timeout(IO_TIMEOUT * 2, child.wait_with_output()).await {
        Ok(out) => {
            out.unwrap_or_else(|e| panic!("waiting for `switchyard {}`: {e}", args.join(" ")))
        }
        Err(_) => panic!(
            "`switchyard {}` still running after {:?}",
            args.join(" "),
            IO_TIMEOUT * 2
        ),
    };
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "`switchyard {}` killed by a signal: {:?}",
            args.join(" "),
            out.status
        )
    });
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Config builder

/// A TOML basic string with the escaping TOML requires.
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One `[[route]]` of a test config.
#[derive(Debug, Clone)]
pub struct Route {
    path: String,
    host: Option<String>,
    origins: Option<Vec<String>>,
    select_server: bool,
    fallback: Option<String>,
    http: Option<String>,
    subprotocols: Vec<(String, String)>,
    /// `upgrades = [{ token, upstream }]`.
    upgrades: Vec<(String, String)>,
}

impl Route {
    /// A route on `path` for any host, select = client, no fallback, no subprotocols.
    pub fn new(path: &str) -> Route {
        Route {
            path: path.to_string(),
            host: None,
            origins: None,
            select_server: false,
            fallback: None,
            http: None,
            subprotocols: Vec::new(),
            upgrades: Vec::new(),
        }
    }

    /// `http = "UPSTREAM"`: ordinary requests are reverse-proxied there.
    pub fn http(mut self, upstream: &str) -> Route {
        self.http = Some(upstream.to_string());
        self
    }

    /// Adds `{ token = TOKEN, upstream = UPSTREAM }` to `upgrades`.
    pub fn upgrade(mut self, token: &str, upstream: &str) -> Route {
        self.upgrades
            .push((token.to_string(), upstream.to_string()));
        self
    }

    /// Restricts the route to a host pattern (`name`, `*.suffix`).
    pub fn host(mut self, host: &str) -> Route {
        self.host = Some(host.to_string());
        self
    }

    /// Maps a subprotocol to an upstream (config order matters for select = server).
    pub fn sub(mut self, name: &str, upstream: &str) -> Route {
        self.subprotocols
            .push((name.to_string(), upstream.to_string()));
        self
    }

    /// The upstream for requests offering no mapped subprotocol.
    pub fn fallback(mut self, upstream: &str) -> Route {
        self.fallback = Some(upstream.to_string());
        self
    }

    /// An `Origin` allowlist.
    pub fn origins(mut self, origins: &[&str]) -> Route {
        self.origins = Some(origins.iter().map(|o| o.to_string()).collect());
        self
    }

    /// `select = "server"`.
    pub fn select_server(mut self) -> Route {
        self.select_server = true;
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("[[route]]\n");
        if let Some(host) = &self.host {
            out.push_str(&format!("host = {}\n", q(host)));
        }
        out.push_str(&format!("path = {}\n", q(&self.path)));
        if let Some(origins) = &self.origins {
            let list: Vec<String> = origins.iter().map(|o| q(o)).collect();
            out.push_str(&format!("origins = [{}]\n", list.join(", ")));
        }
        out.push_str(&format!(
            "select = {}\n",
            q(if self.select_server {
                "server"
            } else {
                "client"
            })
        ));
        if let Some(fb) = &self.fallback {
            out.push_str(&format!("fallback = {}\n", q(fb)));
        }
        if let Some(http) = &self.http {
            out.push_str(&format!("http = {}\n", q(http)));
        }
        if !self.upgrades.is_empty() {
            let list: Vec<String> = self
                .upgrades
                .iter()
                .map(|(t, u)| format!("{{ token = {}, upstream = {} }}", q(t), q(u)))
                .collect();
            out.push_str(&format!("upgrades = [{}]\n", list.join(", ")));
        }
        for (name, upstream) in &self.subprotocols {
            out.push_str(&format!(
                "[[route.subprotocol]]\nname = {}\nupstream = {}\n",
                q(name),
                q(upstream)
            ));
        }
        out.push('\n');
    }
}

/// A test config: one listener on 127.0.0.1:0 unless told otherwise.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    listeners: usize,
    admin: bool,
    versions: Option<Vec<u8>>,
    limits: Vec<(String, String)>,
    upstreams: Vec<(String, Vec<String>)>,
    /// Extra `key = value` lines (value is TOML) per upstream name.
    upstream_options: Vec<(String, String, String)>,
    /// `tls = true` settings by upstream name.
    upstream_tls: Vec<(String, UpstreamTlsOpts)>,
    /// TLS for the first listener.
    tls: Option<ListenerTls>,
    routes: Vec<Route>,
    proxy_protocol: bool,
    /// Upstream tables with settings beyond `servers`, rendered whole.
    upstream_tables: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            listeners: 1,
            admin: false,
            versions: None,
            limits: Vec::new(),
            upstreams: Vec::new(),
            upstream_options: Vec::new(),
            upstream_tls: Vec::new(),
            tls: None,
            routes: Vec::new(),
            proxy_protocol: false,
            upstream_tables: Vec::new(),
        }
    }
}

impl ConfigBuilder {
    /// One listener, no admin, defaults everywhere else.
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// `n` listeners, each on 127.0.0.1:0.
    pub fn listeners(mut self, n: usize) -> ConfigBuilder {
        self.listeners = n;
        self
    }

    /// Adds an `[admin]` listener on 127.0.0.1:0.
    pub fn admin(mut self) -> ConfigBuilder {
        self.admin = true;
        self
    }

    /// Makes the first listener a TLS listener with `http2 = true`, serving the committed dev
    /// certificate `certs/server.pem` (localhost, 127.0.0.1, ::1; trust `certs/ca.pem`).
    pub fn tls_h2(self) -> ConfigBuilder {
        let dev = ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem"));
        self.tls(dev.http2(true))
    }

    /// `[websocket] versions`.
    pub fn versions(mut self, versions: &[u8]) -> ConfigBuilder {
        self.versions = Some(versions.to_vec());
        self
    }

    /// A `[limits]` entry; `value` is TOML (`"300ms"` must be passed quoted, `8192` bare).
    pub fn limit(mut self, key: &str, value: &str) -> ConfigBuilder {
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    /// An `[upstreams.NAME]` with these servers (round robin).
    pub fn upstream(mut self, name: &str, servers: &[SocketAddr]) -> ConfigBuilder {
        self.upstreams.push((
            name.to_string(),
            servers.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// An extra line in `[upstreams.NAME]`; `value` is TOML (`"\"v2\""` for a string).
    pub fn upstream_option(mut self, name: &str, key: &str, value: &str) -> ConfigBuilder {
        self.upstream_options
            .push((name.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// `proxy_protocol = true` on every listener: connections must start with a PROXY header.
    pub fn proxy_protocol(mut self) -> ConfigBuilder {
        self.proxy_protocol = true;
        self
    }

    /// An `[upstreams.NAME]` whose servers are written as given (IPs or host names) followed by
    /// `settings`, raw TOML lines such as `balance = "least_connections"`.
    pub fn upstream_with(
        mut self,
        name: &str,
        servers: &[String],
        settings: &str,
    ) -> ConfigBuilder {
        let list: Vec<String> = servers.iter().map(|s| q(s)).collect();
        self.upstream_tables.push(format!(
            "[upstreams.{name}]\nservers = [{}]\n{settings}\n\n",
            list.join(", ")
        ));
        self
    }

    /// Appends a route.
    pub fn route(mut self, route: Route) -> ConfigBuilder {
        self.routes.push(route);
        self
    }

    /// Makes the first listener a TLS listener with these files.
    pub fn tls(mut self, tls: ListenerTls) -> ConfigBuilder {
        self.tls = Some(tls);
        self
    }

    /// `tls = true` for upstream `name` (added with [`ConfigBuilder::upstream`]), verifying
    /// against `ca` (else the public roots) under `server_name` (else the server's host).
    pub fn upstream_tls(
        mut self,
        name: &str,
        ca: Option<&Path>,
        server_name: Option<&str>,
    ) -> ConfigBuilder {
        self.upstream_tls.push((
            name.to_string(),
            UpstreamTlsOpts {
                ca: ca.map(Path::to_path_buf),
                server_name: server_name.map(str::to_string),
            },
        ));
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut out = String::new();
        for i in 0..self.listeners {
            out.push_str("[[listener]]\nbind = \"127.0.0.1:0\"\n");
            if self.proxy_protocol {
                out.push_str("proxy_protocol = true\n");
            }
            if let (0, Some(tls)) = (i, &self.tls) {
                tls.render(&mut out);
            }
            out.push('\n');
        }
        if self.admin {
            out.push_str("[admin]\nbind = \"127.0.0.1:0\"\n\n");
        }
        if let Some(versions) = &self.versions {
            let list: Vec<String> = versions.iter().map(u8::to_string).collect();
            out.push_str(&format!(
                "[websocket]\nversions = [{}]\n\n",
                list.join(", ")
            ));
        }
        if !self.limits.is_empty() {
            out.push_str("[limits]\n");
            for (k, v) in &self.limits {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        for (name, servers) in &self.upstreams {
            let list: Vec<String> = servers.iter().map(|s| q(s)).collect();
            out.push_str(&format!(
                "[upstreams.{name}]\nservers = [{}]\n",
                list.join(", ")
            ));
            for (_, key, value) in self.upstream_options.iter().filter(|(n, ..)| n == name) {
                out.push_str(&format!("{key} = {value}\n"));
            }
            if let Some((_, tls)) = self.upstream_tls.iter().find(|(n, _)| n == name) {
                tls.render(&mut out);
            }
            out.push('\n');
        }
        out.extend(self.upstream_tables.iter().map(String::as_str));
        for route in &self.routes {
            route.render(&mut out);
        }
        out
    }

    /// Builds and starts a gateway on it.
    pub async fn start(&self) -> Gateway {
        Gateway::start(&self.build()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream (a): a real WebSocket echo server

#[derive(Default)]
struct WsState {
    requests: Mutex<Vec<RequestHead>>,
    accepted: AtomicUsize,
}

/// A WebSocket echo upstream (tokio-tungstenite): picks the first offered subprotocol, echoes
/// every data message and records every request head it accepted.
pub struct WsUpstream {
    addr: SocketAddr,
    state: Arc<WsState>,
    task: JoinHandle<()>,
}

impl WsUpstream {
    /// Listens on 127.0.0.1:0.
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(WsState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(ws_echo(stream, st.clone()));
            }
        });
        WsUpstream { addr, state, task }
    }

    /// Listens on 127.0.0.1:0 and speaks TLS with `config` (e.g. [`tls_server_config`]) before
    /// the WebSocket handshake: an upstream for `tls = true`. A failed TLS handshake is dropped
    /// and records no request.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls ws upstream");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(WsState::default());
        let st = state.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let accepted = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await;
                    if let Ok(Ok(tls)) = accepted {
                        ws_echo(tls, st).await;
                    }
                });
            }
        });
        WsUpstream { addr, state, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far (a failed handshake must leave this at 0).
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Request heads of completed handshakes, in order.
    pub fn requests(&self) -> Vec<RequestHead> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_echo<S>(stream: S, state: Arc<WsState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The error type is tungstenite's `Callback` signature, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let headers = Headers(
            req.headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        );
        // The gateway forwards only the selected subprotocol: echo it back.
        if let Some(chosen) = headers.list("sec-websocket-protocol").first() {
            if let Ok(value) = chosen.parse() {
                resp.headers_mut().insert("sec-websocket-protocol", value);
            }
        }
        lock(&state.requests).push(RequestHead {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            headers,
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream (b): a raw scripted upstream that records every byte

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
    /// Received and not yet consumed by the script.
    buf: Vec<u8>,
}

impl RawConn {
    /// This connection's record.
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
        self.log.changed.notify_waiters();
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
    accepted: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Listens on 127.0.0.1:0 and runs `script` for each accepted connection.
    pub async fn start(script: Script) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("local_addr");
        let conns: Arc<Mutex<Vec<Arc<ConnLog>>>> = Arc::default();
        let accepted = Arc::new(Notify::new());
        let (c2, a2) = (conns.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::new(ConnLog::default());
                lock(&c2).push(log.clone());
                a2.notify_waiters();
                let conn = RawConn {
                    stream,
                    log,
                    buf: Vec::new(),
                };
                tokio::spawn(script(conn));
            }
        });
        RawUpstream {
            addr,
            conns,
            accepted,
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
                let woken = self.accepted.notified();
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
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The client

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

// ---------------------------------------------------------------------------------------------
// WebSocket frames, for the tunnels a test drives by hand

/// A masked client frame (RFC 6455 §5.2, §5.3) with FIN set; payloads up to 65535 bytes.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::thread_rng().r#gen();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame with a short payload; returns (opcode, payload).
pub async fn read_server_frame(c: &mut Client) -> (u8, Vec<u8>) {
    let hdr = c.read_exact(2).await;
    assert_eq!(
        hdr[1] & 0x80,
        0,
        "server frame is masked (RFC 6455 §5.1): {hdr:?}"
    );
    let len = match hdr[1] & 0x7f {
        126 => {
            let ext = c.read_exact(2).await;
            usize::from(u16::from_be_bytes([ext[0], ext[1]]))
        }
        127 => panic!("unexpected 64-bit frame length in a test echo"),
        n => usize::from(n),
    };
    (hdr[0] & 0x0f, c.read_exact(len).await)
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

/// Random write sizes for stream tests: 1..=64 KiB.
pub fn chunk_len(rng: &mut impl Rng, left: usize) -> usize {
    rng.gen_range(1..=65536).min(left)
}

/// Where two byte strings first differ (a length difference counts at the shorter length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Through an echo tunnel: writes `data` into `wr` in random-sized writes (`seed`) while reading
/// the echo from `rd`, checked byte for byte; then shuts `wr` down and expects the echo to end
/// with nothing more. Panics at the first lost, extra or different byte, or a stall.
pub async fn echo_integrity<R, W>(mut rd: R, mut wr: W, data: Arc<Vec<u8>>, seed: u64)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tx = Arc::clone(&data);
    let writer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sent = 0;
        while sent < tx.len() {
            let n = chunk_len(&mut rng, tx.len() - sent);
            wr.write_all(&tx[sent..sent + n])
                .await
                .expect("write into the tunnel");
            sent += n;
        }
        wr
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < data.len() {
        let n = tokio::time::timeout(IO_TIMEOUT, rd.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("echo stalled after {got} bytes"))
            .expect("read from the tunnel");
        assert!(
            n > 0,
            "tunnel closed after {got} of {} echoed bytes",
            data.len()
        );
        assert!(got + n <= data.len(), "more bytes echoed than sent");
        if let Some(at) = first_difference(&buf[..n], &data[got..got + n]) {
            panic!(
                "echoed stream differs from what was sent at byte {}",
                got + at
            );
        }
        got += n;
    }
    let mut wr = writer.await.expect("writer task");
    // Client EOF -> upstream EOF -> the echo upstream's EOF -> the client's EOF.
    wr.shutdown().await.expect("shutdown(Write)");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(IO_TIMEOUT, rd.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "tunnel did not end after both EOFs: {ended:?}"
    );
    assert!(rest.is_empty(), "{} extra bytes after the echo", rest.len());
}

// ---------------------------------------------------------------------------------------------
// TLS: config pieces, certificates, clients and the upstream side

/// A file of the committed development certificates (`certs/`, see its README).
pub fn dev_cert(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(file)
}

/// A TLS listener's files for a test config, rendered as SPEC §2's `[listener.tls]` sub-table.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    /// (names, cert, key) per `sni` entry.
    sni: Vec<(Vec<String>, PathBuf, PathBuf)>,
    http2: Option<bool>,
}

impl ListenerTls {
    /// A default certificate and key; no SNI entries; `http2` left to its default.
    pub fn new(cert: &Path, key: &Path) -> ListenerTls {
        ListenerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            sni: Vec::new(),
            http2: None,
        }
    }

    /// `certs/server.pem` (localhost, 127.0.0.1, ::1) as the default and `certs/chat.pem` for
    /// `chat.example.com`, as in SPEC §2's example.
    pub fn dev() -> ListenerTls {
        ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem")).sni(
            &["chat.example.com"],
            &dev_cert("chat.pem"),
            &dev_cert("chat-key.pem"),
        )
    }

    /// Adds an `sni` entry.
    pub fn sni(mut self, names: &[&str], cert: &Path, key: &Path) -> ListenerTls {
        self.sni.push((
            names.iter().map(|n| n.to_string()).collect(),
            cert.to_path_buf(),
            key.to_path_buf(),
        ));
        self
    }

    /// The listener's `http2` key.
    pub fn http2(mut self, on: bool) -> ListenerTls {
        self.http2 = Some(on);
        self
    }

    /// Lines for the `[[listener]]` just opened.
    fn render(&self, out: &mut String) {
        let path = |p: &Path| q(&p.to_string_lossy());
        if let Some(on) = self.http2 {
            out.push_str(&format!("http2 = {on}\n"));
        }
        out.push_str(&format!(
            "[listener.tls]\ncert = {}\nkey = {}\n",
            path(&self.cert),
            path(&self.key)
        ));
        if !self.sni.is_empty() {
            let entries: Vec<String> = self
                .sni
                .iter()
                .map(|(names, cert, key)| {
                    let names: Vec<String> = names.iter().map(|n| q(n)).collect();
                    format!(
                        "{{ names = [{}], cert = {}, key = {} }}",
                        names.join(", "),
                        path(cert),
                        path(key)
                    )
                })
                .collect();
            out.push_str(&format!("sni = [{}]\n", entries.join(", ")));
        }
    }
}

/// An upstream's `tls = true` settings in a test config.
#[derive(Debug, Clone)]
struct UpstreamTlsOpts {
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

impl UpstreamTlsOpts {
    /// Lines for the `[upstreams.NAME]` just opened.
    fn render(&self, out: &mut String) {
        out.push_str("tls = true\n");
        if let Some(ca) = &self.ca {
            out.push_str(&format!("ca = {}\n", q(&ca.to_string_lossy())));
        }
        if let Some(name) = &self.server_name {
            out.push_str(&format!("server_name = {}\n", q(name)));
        }
    }
}

/// The first (leaf) certificate of a PEM file, as DER, to compare with what a peer served.
pub fn pem_leaf(path: &Path) -> Vec<u8> {
    switchyard::tls::load_certs(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .swap_remove(0)
        .to_vec()
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config for a test upstream serving `cert`/`key` with ALPN `http/1.1`, built by
/// the gateway's own loader (TLS 1.2 and 1.3).
pub fn tls_server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let tls = switchyard::config::TlsConfig {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        sni: Vec::new(),
    };
    switchyard::tls::ServerTls::new(&tls, false)
        .unwrap_or_else(|e| panic!("test upstream certificate: {e}"))
        .server_config()
}

/// A real rustls client trusting only `ca`, limited to `versions`, offering `alpn`.
pub fn tls_client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in switchyard::tls::load_certs(ca).unwrap_or_else(|e| panic!("{e}")) {
        roots.add(cert).expect("CA certificate usable as a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A client trusting the dev CA (`certs/ca.pem`), TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn dev_client_config() -> Arc<rustls::ClientConfig> {
    tls_client_config(
        &dev_cert("ca.pem"),
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &["http/1.1"],
    )
}

/// Accepts any server certificate (handshake signatures are still checked), so that a test can
/// look at the certificate served for a name it does not cover (unknown SNI).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that accepts any certificate (see [`AnyCert`]); ALPN `http/1.1`.
pub fn any_cert_client_config() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(ring())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS stream to the gateway.
pub type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS handshake with `addr` for `name`: a DNS name is sent as SNI; an IP literal is verified
/// against the certificate's IP SANs and sends no SNI (RFC 6066 §3), the "no SNI" case.
pub async fn tls_try_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsClient> {
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .unwrap_or_else(|e| panic!("{name:?} as a TLS server name: {e}"));
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} timed out"))
}

/// [`tls_try_connect`] that must succeed.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> TlsClient {
    tls_try_connect(addr, config, name)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {name:?}: {e}"))
}

/// The leaf certificate the server presented, as DER.
pub fn peer_leaf(tls: &TlsClient) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server presented a certificate")
        .to_vec()
}

/// A tokio-tungstenite client handshake over an established TLS stream (`wss://`), offering
/// `protocol`; `Host` is `host`.
pub async fn wss_handshake(
    tls: TlsClient,
    host: &str,
    path: &str,
    protocol: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<TlsClient>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    Box<tokio_tungstenite::tungstenite::Error>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://{host}{path}")
        .into_client_request()
        .expect("wss request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header value"));
    }
    match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, tls)).await {
        Ok(done) => done.map_err(Box::new),
        Err(_) => panic!("wss handshake via the gateway timed out"),
    }
}

/// Connects with the dev CA as `name` and completes a `wss` handshake that must succeed.
pub async fn wss_connect(
    addr: SocketAddr,
    name: &str,
    path: &str,
    protocol: Option<&str>,
) -> (
    tokio_tungstenite::WebSocketStream<TlsClient>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tls = tls_connect(addr, dev_client_config(), name).await;
    wss_handshake(tls, name, path, protocol)
        .await
        .unwrap_or_else(|e| panic!("wss handshake via the gateway failed: {e}"))
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
