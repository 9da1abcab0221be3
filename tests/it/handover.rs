//! SPEC §11, the SIGUSR2 binary hand-over, against the real binary: the old process starts a new
//! one from its own binary with its listening sockets, the new one reports ready, the old one
//! drains and exits 0.
//!
//! Which process served a handshake shows in its tunnel: every upstream sends a 4-byte tag right
//! after its 101, and before each SIGUSR2 the test rewrites the config so that the route goes to
//! the next upstream (the old process keeps the config it loaded, the new one reads the file).
//! Listener and admin addresses are pinned in the rewritten config to the ones the first process
//! bound, since the new process matches inherited sockets to `bind` addresses. The new process
//! writes to the same stderr, so both processes' events are in the one log; it is not the test's
//! child, so a guard kills it by pid at the end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::support::*;

/// The hand-over tests run several processes each, with load: more than [`TEST_TIMEOUT`].
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The tag each upstream sends after its 101.
const TAGS: [&[u8; 4]; 3] = [b"gen0", b"gen1", b"gen2"];

/// Three tagging echo upstreams, `u0`, `u1`, `u2`.
async fn tagged_upstreams() -> Vec<RawUpstream> {
    let mut ups = Vec::new();
    for tag in TAGS {
        ups.push(RawUpstream::start(accept_then_echo(tag)).await);
    }
    ups
}

/// Route `/ws` to `u{generation}`; every upstream is declared so that each config validates.
/// `route_keys` go on the route, `limits` in `[limits]`.
fn config(
    ups: &[RawUpstream],
    generation: usize,
    route_keys: &[(&str, &str)],
    limits: &[(&str, &str)],
) -> ConfigBuilder {
    let target = format!("u{generation}");
    let route = route_keys
        .iter()
        .fold(Route::new("/ws").fallback(&target), |r, (k, v)| r.key(k, v));
    let mut builder = ConfigBuilder::new().admin().route(route);
    for (i, up) in ups.iter().enumerate() {
        builder = builder.upstream(&format!("u{i}"), &[up.addr()]);
    }
    limits
        .iter()
        .fold(builder, |b, (k, v)| b.limit(k, v))
        .limit("handshake_timeout", "\"5s\"")
}

/// `text` with the listener and admin `bind`s (in that order) pinned to what `gw` bound.
fn pinned(text: &str, gw: &Gateway) -> String {
    let admin = gw.admin().expect("an admin listener");
    text.replacen(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"{}\"", gw.addr()),
        1,
    )
    .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"{admin}\""), 1)
}

/// Kills a process that is not the test's child (a successor) when the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn kill(sig: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Waits up to `within` for `pid` to be gone.
async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The `hand_over` events naming `old` as the old process, logged after `mark`.
fn hand_over_events(gw: &Gateway, mark: usize, old: u32) -> Vec<Value> {
    gw.logs()
        .get(mark..)
        .unwrap_or_default()
        .iter()
        .filter(|e| is_event(e, "hand_over") && e["old_pid"].as_u64() == Some(u64::from(old)))
        .cloned()
        .collect()
}

/// A hand-over in progress: the new process's pid (from the old one's event) and a guard.
struct Successor {
    pid: u32,
    _guard: KillOnDrop,
}

/// Writes `next` (pinned), sends SIGUSR2 to `old`, and waits for both `hand-over` events: the
/// old process's when it started the new one, then the new one's when it reported ready.
/// Returns the new process and the moment the second event was seen.
async fn hand_over(gw: &Gateway, old: u32, next: &str) -> (Successor, Instant) {
    std::fs::write(gw.config_path(), pinned(next, gw)).expect("write the next config");
    let mark = gw.log_mark();
    kill("-USR2", old);
    let started = gw
        .wait_log_after(mark, "`hand_over` from the old process", IO_TIMEOUT, |e| {
            is_event(e, "hand_over") && e["old_pid"].as_u64() == Some(u64::from(old))
        })
        .await;
    let pid = u32::try_from(started["new_pid"].as_u64().expect("new_pid")).unwrap();
    let successor = Successor {
        pid,
        _guard: KillOnDrop(pid),
    };
    // The new process's event is the one without the old one's `sockets` count.
    let what = format!("`hand_over` from the new process {pid}");
    gw.wait_log_after(mark, &what, READY_TIMEOUT, |e| {
        is_event(e, "hand_over")
            && e["old_pid"].as_u64() == Some(u64::from(old))
            && e.get("sockets").is_none()
    })
    .await;
    let ready = Instant::now();
    let events = hand_over_events(gw, mark, old);
    assert!(
        events
            .iter()
            .all(|e| e["new_pid"].as_u64() == Some(u64::from(pid))),
        "hand-over events with another new_pid: {events:?}"
    );
    (successor, ready)
}

/// One handshake's outcome: when it started, the tag that came through, or what went wrong.
#[derive(Debug, Clone)]
struct Shot {
    started: Instant,
    result: Result<Vec<u8>, String>,
}

/// `loops` concurrent clients, each: connect, handshake, the upstream's tag, one echo, close;
/// until stopped.
struct Load {
    shots: Arc<Mutex<Vec<Shot>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, loops: usize) -> Load {
        let shots: Arc<Mutex<Vec<Shot>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let tasks = (0..loops)
            .map(|_| {
                let (shots, stop) = (shots.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = one_handshake(addr).await;
                        let failed = result.is_err();
                        shots.lock().unwrap().push(Shot { started, result });
                        let pause = if failed { 50 } else { 5 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                })
            })
            .collect();
        Load { shots, stop, tasks }
    }

    fn shots(&self) -> Vec<Shot> {
        self.shots.lock().unwrap().clone()
    }

    /// Waits up to `within` for a handshake whose tunnel carried `tag`.
    async fn wait_tag(&self, tag: &[u8], within: Duration) -> bool {
        self.wait_tags(tag, 1, within).await
    }

    /// Waits up to `within` for `n` handshakes whose tunnels carried `tag`.
    async fn wait_tags(&self, tag: &[u8], n: usize, within: Duration) -> bool {
        let served = |shots: Vec<Shot>| {
            shots
                .iter()
                .filter(|s| s.result.as_deref() == Ok(tag))
                .count()
        };
        let found = async {
            while served(self.shots()) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(within, found).await.is_ok()
    }

    async fn stop(self) -> Vec<Shot> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            timeout(Duration::from_secs(10), task)
                .await
                .expect("a load loop did not stop")
                .expect("a load loop panicked");
        }
        self.shots.lock().unwrap().clone()
    }
}

/// Asserts that every handshake worked, with a summary of those that did not.
fn assert_none_failed(shots: &[Shot]) {
    let failed: Vec<&String> = shots
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} handshakes failed: {:?}",
        failed.len(),
        shots.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A full handshake on `addr` (101 with the right accept), the upstream's 4-byte tag, one echo.
async fn one_handshake(addr: SocketAddr) -> Result<Vec<u8>, String> {
    let step = Duration::from_secs(5);
    let mut tcp = match timeout(step, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect timed out".to_string()),
    };
    let req = ClientRequest::ws(&addr.to_string(), "/ws");
    tcp.write_all(&req.to_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(&mut tcp, &mut buf, step, "the response head").await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let accept = accept_key(&req.key);
    if !head.starts_with("HTTP/1.1 101") || !head.contains(&accept) {
        return Err(format!("not a valid 101: {head:?}"));
    }
    while buf.len() < head_end + 4 {
        read_more(&mut tcp, &mut buf, step, "the tag").await?;
    }
    let tag = buf[head_end..head_end + 4].to_vec();
    let msg = format!("{:016x}", rand_u64());
    tcp.write_all(msg.as_bytes())
        .await
        .map_err(|e| format!("echo send: {e}"))?;
    let mut echo = buf[head_end + 4..].to_vec();
    while echo.len() < msg.len() {
        read_more(&mut tcp, &mut echo, step, "the echo").await?;
    }
    if echo != msg.as_bytes() {
        return Err(format!("echo {echo:?}"));
    }
    Ok(tag)
}

async fn read_more(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    within: Duration,
    what: &str,
) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match timeout(within, tcp.read(&mut chunk)).await {
        Ok(Ok(0)) => Err(format!("closed before {what}")),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("reading {what}: {e}")),
        Err(_) => Err(format!("no {what} within {within:?}")),
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A tunnel opened before the hand-over: its tag, then it echoes.
async fn open_tunnel(gw: &Gateway, want: &[u8]) -> Client {
    let req = ClientRequest::ws(&gw.addr().to_string(), "/ws");
    let (mut c, head) = exchange(gw.addr(), &req, b"").await;
    assert_101(&head, &req.key, None);
    assert_eq!(c.read_exact(4).await, want, "the tunnel's tag");
    assert_echoes(&mut c, b"before").await;
    c
}

async fn assert_echoes(c: &mut Client, msg: &[u8]) {
    c.send(msg).await.expect("write into the tunnel");
    assert_eq!(
        c.read_exact(msg.len()).await,
        msg,
        "echo through the tunnel"
    );
}

/// The initial environment of `pid` (what it was exec'd with).
fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// SIGUSR2 under four loops of new handshakes, with a tunnel open: not one handshake refused,
/// reset or unanswered; every handshake that starts after the new process reported ready is
/// served by it; the tunnel keeps working on the old process until the client closes it, then
/// the old process exits 0; the new one answers on the admin address, was started with the same
/// arguments and `LISTEN_FDS=2`, `LISTEN_PID` = its pid.
#[tokio::test]
async fn under_load() {
    bounded_for("handover::under_load", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let limits = [("drain_timeout", "\"20s\"")];
        let mut gw = config(&ups, 0, &[], &limits).start().await;
        let old = gw.pid();
        let mut tunnel = open_tunnel(&gw, TAGS[0]).await;
        let load = Load::start(gw.addr(), 4);
        assert!(
            load.wait_tags(TAGS[0], 40, IO_TIMEOUT).await,
            "no load before"
        );

        let next = config(&ups, 1, &[], &limits).build();
        let (new, ready) = hand_over(&gw, old, &next).await;
        assert!(
            load.wait_tags(TAGS[1], 40, IO_TIMEOUT).await,
            "too few handshakes reached the new process"
        );
        assert_echoes(&mut tunnel, b"after the hand-over").await;
        assert!(gw.wait_exit(Duration::from_millis(300)).await.is_none());

        drop(tunnel);
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "the old process after its last tunnel: {status:?}\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shots = load.stop().await;
        assert_none_failed(&shots);
        // Slack for the old process to read the report and stop accepting, and for this test
        // to see the event: the machine may be busy.
        let late_old: Vec<&Shot> = shots
            .iter()
            .filter(|s| s.started > ready + Duration::from_millis(500))
            .filter(|s| s.result.as_deref() != Ok(&TAGS[1][..]))
            .collect();
        assert!(
            late_old.is_empty(),
            "{} of {} handshakes after the ready report not served by the new process",
            late_old.len(),
            shots.len()
        );
        let (status, _, _) = gw.admin_get("/readyz").await;
        assert_eq!(status, 200, "/readyz on the moved admin listener");

        let env = environ(new.pid);
        let var = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(var("LISTEN_PID"), Some(new.pid.to_string()));
        assert_eq!(var("LISTEN_FDS").as_deref(), Some("2"));
        assert_eq!(var("LISTEN_FDNAMES"), None);
        let args = cmdline(new.pid);
        assert!(
            args.ends_with(&[
                "--log-format".to_string(),
                "json".to_string(),
                "run".to_string(),
                "--config".to_string(),
                gw.config_path().display().to_string(),
            ]),
            "new process arguments {args:?}"
        );
    })
    .await;
}

/// An open tunnel on the old process lives until `drain_timeout` (1s) after the hand-over, no
/// longer; then the old process exits 0.
#[tokio::test]
async fn open_tunnel_lives_until_drain_timeout() {
    bounded_for("handover::drain_timeout", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let limits = [("drain_timeout", "\"1s\"")];
        let mut gw = config(&ups, 0, &[], &limits).start().await;
        let old = gw.pid();
        let mut tunnel = open_tunnel(&gw, TAGS[0]).await;
        let next = config(&ups, 1, &[], &limits).build();
        let (_new, ready) = hand_over(&gw, old, &next).await;
        assert_echoes(&mut tunnel, b"still here").await;
        assert!(
            tunnel.closed_within(Duration::from_secs(4)).await,
            "the tunnel outlived drain_timeout"
        );
        assert!(
            ready.elapsed() >= Duration::from_millis(800),
            "closed {:?} after the ready report, before drain_timeout",
            ready.elapsed()
        );
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(one_handshake(gw.addr()).await.as_deref() == Ok(&TAGS[1][..]));
    })
    .await;
}

/// A client the old process accepted before the hand-over, whose request head is still coming
/// when the new process reports ready, is answered by the old process (its upstream, gen0), not
/// closed: it connected to a socket that still serves.
#[tokio::test]
async fn a_request_half_sent_at_the_hand_over_is_answered() {
    bounded_for("handover::half_sent", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let mut gw = config(&ups, 0, &[], &[]).start().await;
        let old = gw.pid();
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws");
        let bytes = req.to_bytes();
        let (first, rest) = bytes.split_at(20);
        let mut c = Client::connect(gw.addr()).await;
        c.send(first).await.unwrap();
        // No event tells when the old process has accepted it; this is ample on loopback.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (_new, _) = hand_over(&gw, old, &config(&ups, 1, &[], &[]).build()).await;
        c.send(rest).await.unwrap();
        let head = c.read_head().await;
        assert_101(&head, &req.key, None);
        assert_eq!(c.read_exact(4).await, TAGS[0], "served by the old process");
        assert_echoes(&mut c, b"late but answered").await;
        drop(c);
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    })
    .await;
}

/// The new config is invalid: the new process exits 2, the old one logs `hand-over failed`
/// (`new_pid`, `status` 2) and carries on having lost nothing (no handshake failed, its config
/// serves, `/readyz` 200, only its own `hand-over` event); a later SIGUSR2 with the config fixed
/// hands over.
#[tokio::test]
async fn invalid_config_old_process_carries_on() {
    bounded_for("handover::invalid_config", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let gw = config(&ups, 0, &[], &[]).start().await;
        let old = gw.pid();
        let load = Load::start(gw.addr(), 2);
        assert!(load.wait_tag(TAGS[0], IO_TIMEOUT).await, "no load before");

        let broken = config(&ups, 0, &[], &[])
            .build()
            .replace("fallback = \"u0\"", "fallback = \"no_such_upstream\"");
        std::fs::write(gw.config_path(), pinned(&broken, &gw)).unwrap();
        let mark = gw.log_mark();
        kill("-USR2", old);
        let failed = gw
            .wait_event_after(mark, "hand_over_failed", READY_TIMEOUT)
            .await;
        assert_eq!(failed["level"], "WARN", "{failed}");
        assert_eq!(failed["message"], "hand-over failed", "{failed}");
        assert_eq!(failed["status"], "2", "{failed}");
        let started = hand_over_events(&gw, mark, old);
        assert_eq!(started.len(), 1, "hand-over events: {started:?}");
        assert_eq!(started[0]["new_pid"], failed["new_pid"]);
        let new_pid = u32::try_from(failed["new_pid"].as_u64().unwrap()).unwrap();
        assert!(!alive(new_pid), "the failed new process is still there");

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(alive(old));
        let (status, _, _) = gw.admin_get("/readyz").await;
        assert_eq!(status, 200, "/readyz after a failed hand-over");
        let shots = load.stop().await;
        assert_none_failed(&shots);
        assert!(
            shots
                .iter()
                .all(|s| s.result.as_deref() == Ok(&TAGS[0][..])),
            "a handshake served with another config"
        );

        let fixed = config(&ups, 1, &[], &[]).build();
        let (_new, _) = hand_over(&gw, old, &fixed).await;
        assert_eq!(one_handshake(gw.addr()).await.as_deref(), Ok(&TAGS[1][..]));
    })
    .await;
}

/// Sends SIGUSR2 to `old` with `gw`'s config file replaced by a FIFO, so the new process blocks
/// reading its config (before it can report ready) until the test writes into the FIFO. The
/// FIFO's path, the log mark before the signal, and the new process (killed on drop).
async fn held_hand_over(gw: &Gateway, old: u32) -> (std::path::PathBuf, usize, u32, KillOnDrop) {
    let fifo = gw.config_path().to_path_buf();
    std::fs::remove_file(&fifo).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    let mark = gw.log_mark();
    kill("-USR2", old);
    let started = gw.wait_event_after(mark, "hand_over", IO_TIMEOUT).await;
    let pid = u32::try_from(started["new_pid"].as_u64().unwrap()).unwrap();
    (fifo, mark, pid, KillOnDrop(pid))
}

/// A second SIGUSR2 while a new process is starting is ignored (logged): one new process only.
/// The new process is held before it can report ready: the config file is a FIFO, which it
/// blocks reading until the test writes the config into it (the old process read its own config
/// at start and does not read it again).
#[tokio::test]
async fn second_sigusr2_while_one_is_in_flight_is_ignored() {
    bounded_for("handover::second_sigusr2", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let mut gw = config(&ups, 0, &[], &[]).start().await;
        let old = gw.pid();
        let next = pinned(&config(&ups, 1, &[], &[]).build(), &gw);
        let (fifo, mark, pid, _guard) = held_hand_over(&gw, old).await;
        kill("-USR2", old);
        let ignored = gw
            .wait_event_after(mark, "hand_over_ignored", IO_TIMEOUT)
            .await;
        assert_eq!(ignored["new_pid"].as_u64(), Some(u64::from(pid)));

        // A thread of its own: the open blocks until the new process opens the FIFO to read.
        let (done, written) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(std::fs::write(&fifo, next));
        });
        let write = timeout(IO_TIMEOUT, written).await;
        assert!(
            matches!(write, Ok(Ok(Ok(())))),
            "the new process did not read its config: {write:?}"
        );
        let status = gw.wait_exit(READY_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        gw.wait_log_after(mark, "the new process's `hand_over`", IO_TIMEOUT, |e| {
            is_event(e, "hand_over")
                && e["old_pid"].as_u64() == Some(u64::from(old))
                && e.get("sockets").is_none()
        })
        .await;
        let logs = gw.logs();
        let after = logs.get(mark..).unwrap_or_default();
        let count = |name: &str| after.iter().filter(|e| is_event(e, name)).count();
        assert_eq!(count("hand_over_ignored"), 1);
        assert_eq!(
            count("hand_over"),
            2,
            "one new process\n{}",
            gw.stderr_text()
        );
        assert_eq!(one_handshake(gw.addr()).await.as_deref(), Ok(&TAGS[1][..]));
    })
    .await;
}

/// SIGTERM while the new process is still starting (held on a FIFO config as above): the old
/// process kills it, logs `hand-over failed` (status `abandoned`), drains and exits 0.
#[tokio::test]
async fn sigterm_during_a_hand_over_kills_the_new_process() {
    bounded_for("handover::sigterm_in_flight", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let mut gw = config(&ups, 0, &[], &[]).start().await;
        let old = gw.pid();
        let (_fifo, mark, pid, _guard) = held_hand_over(&gw, old).await;
        kill("-TERM", old);
        let failed = gw
            .wait_event_after(mark, "hand_over_failed", IO_TIMEOUT)
            .await;
        assert_eq!(failed["status"], "abandoned", "{failed}");
        assert_eq!(failed["new_pid"].as_u64(), Some(u64::from(pid)));
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(
            wait_gone(pid, IO_TIMEOUT).await,
            "the new process outlived the abandoned hand-over"
        );
    })
    .await;
}

/// An inspected tunnel (close_code 1012) on the old process gets close frames with reason
/// "restart" both ways (unmasked to the client, masked to the upstream); after both close
/// replies the old process exits 0, and the access event says so.
#[tokio::test]
async fn inspected_tunnel_gets_close_restart() {
    bounded_for("handover::inspected", HANDOVER_TIMEOUT, async {
        let up = FrameUpstream::start(PeerBehaviour {
            answer_pings: true,
            answer_close: false,
        })
        .await;
        let build = || {
            ConfigBuilder::new()
                .admin()
                .limit("drain_timeout", "\"20s\"")
                .upstream("app", &[up.addr()])
                .route(
                    Route::new("/ws")
                        .fallback("app")
                        .key("inspect", "true")
                        .key("close_code", "1012"),
                )
                .build()
        };
        let mut gw = Gateway::start(&build()).await;
        let old = gw.pid();
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws");
        let (mut c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, None);
        let peer = up.peer(0).await;

        let (_new, _) = hand_over(&gw, old, &build()).await;
        let close = peer
            .wait_frame("a close after the hand-over", IO_TIMEOUT, |f| {
                f.opcode == op::CLOSE
            })
            .await;
        assert!(
            close.is_close(1012, "restart") && close.mask.is_some(),
            "upstream got {}",
            describe_frames(&peer.frames())
        );
        let f = read_frame(&mut c).await;
        assert!(
            f.is_close(1012, "restart") && f.mask.is_none(),
            "client got {}",
            describe_frames(&[f])
        );
        c.send(&client_frame(true, op::CLOSE, &close_payload(1012, b"")))
            .await
            .unwrap();
        peer.send(&server_frame(true, op::CLOSE, &close_payload(1012, b"")));
        peer.close();
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            gw.stderr_text()
        );
        let ev = gw
            .wait_log("the tunnel's access event", IO_TIMEOUT, |e| {
                is_event(e, "tunnel_closed")
            })
            .await;
        assert_eq!(ev["close_reason"], "restart", "{ev}");
        assert_eq!(ev["close_code"], "1012", "{ev}");
        assert_eq!(ev["close_initiator"], "gateway", "{ev}");
    })
    .await;
}

/// SIGUSR2 to the first process, then to its successor: the third one serves (gen2), the second
/// is gone, and no handshake failed throughout.
#[tokio::test]
async fn twice_in_a_row() {
    bounded_for("handover::twice", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let mut gw = config(&ups, 0, &[], &[]).start().await;
        let first = gw.pid();
        let load = Load::start(gw.addr(), 2);
        assert!(load.wait_tag(TAGS[0], IO_TIMEOUT).await, "no load before");

        let (second, _) = hand_over(&gw, first, &config(&ups, 1, &[], &[]).build()).await;
        assert!(load.wait_tag(TAGS[1], IO_TIMEOUT).await);
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "first: {status:?}");

        let (third, _) = hand_over(&gw, second.pid, &config(&ups, 2, &[], &[]).build()).await;
        assert!(load.wait_tag(TAGS[2], IO_TIMEOUT).await);
        assert!(
            wait_gone(second.pid, IO_TIMEOUT).await,
            "the second process is still running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shots = load.stop().await;
        assert_none_failed(&shots);
        assert!(alive(third.pid));
        assert_eq!(one_handshake(gw.addr()).await.as_deref(), Ok(&TAGS[2][..]));
    })
    .await;
}

/// Under systemd (`NOTIFY_SOCKET`): after SIGUSR2 the new process sends `READY=1` with its own
/// `MAINPID`, and nothing says `STOPPING=1`.
#[tokio::test]
async fn notifies_the_new_main_pid_and_no_stopping() {
    bounded_for("handover::notify", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let dir = unique_temp_dir("handover-notify");
        let path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&path).expect("bind the notify socket");
        let address = path.to_str().unwrap().to_string();
        let text = config(&ups, 0, &[], &[]).build();
        let mut gw = Gateway::start_wrapped(&text, |args| {
            let mut cmd = Command::new(BIN);
            cmd.args(args).env("NOTIFY_SOCKET", &address);
            cmd
        })
        .await;
        let old = gw.pid();
        let mut buf = vec![0u8; 4096];
        let first = timeout(IO_TIMEOUT, notify.recv(&mut buf)).await;
        let n = first.expect("no READY=1 at start").unwrap();
        assert_eq!(&buf[..n], format!("READY=1\nMAINPID={old}\n").as_bytes());

        let (new, _) = hand_over(&gw, old, &config(&ups, 1, &[], &[]).build()).await;
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let mut got = Vec::new();
        while let Ok(Ok(n)) = timeout(Duration::from_millis(300), notify.recv(&mut buf)).await {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [format!("READY=1\nMAINPID={}\n", new.pid)],
            "datagrams after SIGUSR2"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// [`bounded`] with a longer limit.
async fn bounded_for<F: std::future::Future>(name: &str, limit: Duration, body: F) -> F::Output {
    match timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("{name}: did not finish within {limit:?}"),
    }
}

/// SPEC §12 with §11: the UDP socket of an `http3` listener moves to the new process like the
/// TCP ones; the old process's QUIC connections cannot, so they get GOAWAY and are closed
/// soon after the hand-over (their tunnels with them), and a new QUIC connection is served
/// by the new process. The old process then exits 0 without waiting for `drain_timeout`.
#[tokio::test]
async fn h3_connections_close_and_the_udp_socket_moves() {
    use crate::support::h3_client::H3Conn;
    bounded_for("handover::h3", HANDOVER_TIMEOUT, async {
        let ups = tagged_upstreams().await;
        let h3_config = |generation: usize| {
            let tls = ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem"))
                .http2(true)
                .http3(true);
            let mut builder = ConfigBuilder::new()
                .tls(tls)
                .admin()
                .route(Route::new("/ws").fallback(&format!("u{generation}")))
                .limit("drain_timeout", "\"30s\"");
            for (i, up) in ups.iter().enumerate() {
                builder = builder.upstream(&format!("u{i}"), &[up.addr()]);
            }
            builder
        };
        let mut gw = h3_config(0).start().await;
        let old = gw.pid();
        let mut conn = H3Conn::connect(gw.addr()).await;
        let (res, mut tunnel) = conn.connect_ws("/ws", None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(tunnel.recv_exact(4).await, TAGS[0]);

        let (new, ready) = hand_over(&gw, old, &h3_config(1).build()).await;
        assert!(
            conn.goaway_within(Duration::from_secs(5)).await,
            "no GOAWAY from the old process"
        );
        assert!(
            conn.closed_within(Duration::from_secs(5)).await.is_some(),
            "the old process's QUIC connection is still open 5 s after the hand-over"
        );
        // The old endpoint may read a few of the new connection's packets before it closes;
        // QUIC retransmits them.
        let mut served = None;
        while served.is_none() && ready.elapsed() < Duration::from_secs(10) {
            let Ok(mut c) = H3Conn::connect_as(gw.addr(), "localhost", &dev_cert("ca.pem")).await
            else {
                continue;
            };
            let (res, mut s) = c.connect_ws("/ws", None).await;
            if res.status() == 200 {
                served = Some(s.recv_exact(4).await);
            }
        }
        assert_eq!(
            served.as_deref(),
            Some(&TAGS[1][..]),
            "a new QUIC connection"
        );
        let status = gw.wait_exit(IO_TIMEOUT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "old process: {status:?}"
        );
        assert!(alive(new.pid));
    })
    .await;
}
