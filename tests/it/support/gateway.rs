//! The gateway under test: the real `switchyard` binary as a child process, its JSON log
//! events read from stderr (readiness comes from them, never from sleeps), signals, `/metrics`
//! samples, and one-shot CLI runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::Notify;

use super::client::Client;
use super::{IO_TIMEOUT, READY_TIMEOUT, lock};

/// The binary under test, built by cargo for integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

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

/// Whether `ev` carries `event = name`: the stable name the gateway gives every event that tests
/// and tools wait on (README, "Operating it"), so that no test depends on message text.
pub fn is_event(ev: &Value, name: &str) -> bool {
    event_str(ev, "event") == Some(name)
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

/// The `event` the gateway logs after a successful reload.
pub const RELOADED: &str = "config_reloaded";

/// The `event` the gateway logs when a reload is refused (the running config stays).
pub const RELOAD_FAILED: &str = "reload_failed";

impl Gateway {
    /// Writes `config_toml` to a fresh temp dir, starts `switchyard --log-format json run`, and
    /// waits (at most [`READY_TIMEOUT`]) until every listener and the admin listener are bound.
    pub async fn start(config_toml: &str) -> Gateway {
        Gateway::start_wrapped(config_toml, |args| {
            let mut command = Command::new(BIN);
            command.args(args);
            command
        })
        .await
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

    /// Like [`Gateway::start`], but `wrap` makes the command from the binary's arguments: to
    /// set variables or map descriptors into the child, or to start it through a shell that
    /// `exec`s [`BIN`] with them (the process keeps the shell's pid).
    pub async fn start_wrapped(
        config_toml: &str,
        wrap: impl FnOnce(&[&std::ffi::OsStr]) -> Command,
    ) -> Gateway {
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
        let command = wrap(&args);
        let (want, admin) = (want_listeners, want_admin);
        Gateway::spawn_command(command, dir, config_path, want, admin, &what).await
    }

    async fn spawn(
        args: &[&std::ffi::OsStr],
        dir: PathBuf,
        config_path: PathBuf,
        want_listeners: usize,
        want_admin: bool,
        what: &str,
    ) -> Gateway {
        let mut command = Command::new(BIN);
        command.args(args);
        Gateway::spawn_command(command, dir, config_path, want_listeners, want_admin, what).await
    }

    async fn spawn_command(
        mut command: Command,
        dir: PathBuf,
        config_path: PathBuf,
        want_listeners: usize,
        want_admin: bool,
        what: &str,
    ) -> Gateway {
        let mut child = command
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
                if !is_event(ev, "listening") {
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
                    // An http3 listener's QUIC side, at its TCP address (logged first).
                    Some("h3") => {}
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
        self.wait_log_after(0, what, within, pred).await
    }

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

    /// Waits up to `within` until `want` access events match `pred`; panics naming `what`.
    pub async fn wait_access_count(
        &self,
        what: &str,
        want: usize,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let count = async {
            loop {
                let woken = self.book.changed.notified();
                if self.access_events().iter().filter(|e| pred(e)).count() >= want {
                    return;
                }
                woken.await;
            }
        };
        if tokio::time::timeout(within, count).await.is_err() {
            panic!(
                "fewer than {want} access events {what} within {within:?}\nstderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Waits up to `within` for a log event named `event` logged after `mark`.
    pub async fn wait_event_after(&self, mark: usize, event: &str, within: Duration) -> Value {
        let what = format!("`event = {event}`");
        self.wait_log_after(mark, &what, within, |e| is_event(e, event))
            .await
    }

    /// Rewrites the config file, sends SIGHUP, and returns the event that says how the reload
    /// went ([`RELOADED`] or [`RELOAD_FAILED`]).
    pub async fn reload(&self, config_toml: &str) -> Value {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
        let mark = self.log_mark();
        self.signal(Signal::Hup);
        self.wait_log_after(mark, "after SIGHUP", READY_TIMEOUT, |e| {
            is_event(e, RELOADED) || is_event(e, RELOAD_FAILED)
        })
        .await
    }

    /// The `listening` events (bound address and kind) logged after `mark`.
    pub fn listening_after(&self, mark: usize) -> Vec<(SocketAddr, String)> {
        lock(&self.book.events)
            .get(mark..)
            .unwrap_or_default()
            .iter()
            .filter(|e| is_event(e, "listening"))
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
