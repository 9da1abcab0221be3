//! Churn without leaks (SPEC §5: "memory and file descriptors of a tunnel are released when it
//! ends"), an upstream killed under load, and 1,000 concurrent handshakes. Loopback only; the
//! gateway's descriptors and RSS are read from `/proc/PID`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::*;

/// Tunnels opened and closed by the churn test; `SWITCHYARD_CHURN_TUNNELS` overrides it.
const CHURN_TUNNELS: usize = 10_000;

/// Tunnels open at once during the churn.
const CHURN_CONCURRENCY: usize = 100;

/// How many more descriptors than at the start the gateway may hold once the churn is over
/// (a lazily opened file or an epoll/timer fd of a runtime thread, not one per tunnel).
const FD_MARGIN: usize = 16;

/// How much the gateway's RSS may grow over the churn: allocator caches and buffers of the
/// concurrently open tunnels, not memory per tunnel ever opened (10,000 leaked tunnels would
/// be far beyond this).
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit): the
/// 1,000-handshake test holds both ends of every tunnel it opens.
fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < want) {
        limit.current = Some(limit.maximum.map_or(want, |m| m.min(want)));
        setrlimit(Resource::Nofile, limit).expect("raise RLIMIT_NOFILE");
    }
}

/// One tunnel through the gateway: a version-13 upgrade for `path`, 32 bytes echoed, then a
/// clean close from the client (half-close, the upstream's EOF comes back).
async fn tunnel_once(addr: SocketAddr, path: &str, n: usize) {
    let req = ClientRequest::ws(&addr.to_string(), path).protocol("chat.v2");
    let (mut c, head) = exchange(addr, &req, b"").await;
    assert_eq!(head.status, 101, "tunnel {n}: {head:?}");
    let probe = format!("tunnel {n:>24}!");
    let _ = c.send(probe.as_bytes()).await;
    assert_eq!(
        c.read_exact(probe.len()).await,
        probe.as_bytes(),
        "tunnel {n} echo"
    );
    c.shutdown_write().await;
    assert!(
        c.closed_within(IO_TIMEOUT).await,
        "tunnel {n} not closed after EOF both ways"
    );
}

/// Runs `total` tunnels, `concurrency` at a time.
async fn churn(addr: SocketAddr, path: &'static str, total: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                tunnel_once(addr, path, n).await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("churn worker");
    }
}

/// Waits up to `within` for the gateway's descriptor count to fall to `at_most`; returns the
/// last count seen.
async fn fds_settle(pid: u32, at_most: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let now = open_fds(pid);
        if now <= at_most || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 10,000 tunnels opened and closed, 100 at a time: afterwards the gateway holds about the
/// descriptors it held before, and its RSS grew by less than [`RSS_GROWTH_BOUND_KIB`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tunnels_leak_no_fds_or_memory() {
    let total = std::env::var("SWITCHYARD_CHURN_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHURN_TUNNELS);
    tokio::time::timeout(Duration::from_secs(150), async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let gw = ConfigBuilder::new()
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").sub("chat.v2", "app"))
            .start()
            .await;
        let pid = gw.pid();
        // Warm up first: runtime threads, allocator arenas and the splice pipe pool reach
        // their working size with the first concurrent tunnels, not per tunnel.
        churn(gw.addr(), "/ws", 4 * CHURN_CONCURRENCY, CHURN_CONCURRENCY).await;
        let fds_before = fds_settle(pid, 0, Duration::from_millis(300)).await;
        let rss_before = rss_kib(pid);
        let started = Instant::now();
        churn(gw.addr(), "/ws", total, CHURN_CONCURRENCY).await;
        let took = started.elapsed();
        let fds_after = fds_settle(pid, fds_before + FD_MARGIN, Duration::from_secs(10)).await;
        let rss_after = rss_kib(pid);
        eprintln!(
            "churn: {total} tunnels in {took:?} ({:.0}/s); gateway fds {fds_before} -> {fds_after}, \
             RSS {rss_before} KiB -> {rss_after} KiB",
            total as f64 / took.as_secs_f64()
        );
        assert!(
            fds_after <= fds_before + FD_MARGIN,
            "gateway fds {fds_before} before, {fds_after} after {total} closed tunnels"
        );
        assert!(
            rss_after <= rss_before + RSS_GROWTH_BOUND_KIB,
            "gateway RSS grew from {rss_before} KiB to {rss_after} KiB over {total} tunnels"
        );
        assert_eq!(up.conns().len(), total + 4 * CHURN_CONCURRENCY, "upstream connections");
    })
    .await
    .expect("the churn did not finish within 150s");
}

/// An upstream whose every connection can be killed at once, like a crashed process: the
/// listener and all connection tasks are aborted, so the kernel closes every socket.
struct KillableEcho {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl KillableEcho {
    async fn start() -> KillableEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let t2 = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                t2.lock().expect("tasks").spawn(accept_and_echo(stream));
            }
        });
        KillableEcho {
            addr,
            tasks,
            accept,
        }
    }

    fn kill(&self) {
        self.accept.abort();
        self.tasks.lock().expect("tasks").abort_all();
    }
}

/// A correct 101 for the request head, then echo.
async fn accept_and_echo(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        match s.read(&mut chunk).await {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let Ok(head) = parse_request_head(&buf[..end]) else {
        return;
    };
    if s.write_all(&response_101(&head, offered(&head).as_deref()))
        .await
        .is_err()
    {
        return;
    }
    let _ = s.write_all(&buf[end..]).await;
    let (mut r, mut w) = s.into_split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// Opens a tunnel for `path` and returns the client after its 101.
async fn open_tunnel(addr: SocketAddr, path: &str) -> Client {
    let req = ClientRequest::ws(&addr.to_string(), path).protocol("chat.v2");
    let (c, head) = exchange(addr, &req, b"").await;
    assert_eq!(head.status, 101, "{path}: {head:?}");
    c
}

/// Upstream A is killed while 50 of its tunnels and 50 of upstream B's carry bytes: every A
/// tunnel is closed within 2s, and every B tunnel keeps echoing through and after the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_closes_only_its_own_tunnels() {
    bounded("killed_upstream_closes_only_its_own_tunnels", async {
        const PER_UPSTREAM: usize = 50;
        let a = KillableEcho::start().await;
        let b = KillableEcho::start().await;
        let gw = ConfigBuilder::new()
            .upstream("a", &[a.addr])
            .upstream("b", &[b.addr])
            .route(Route::new("/a").sub("chat.v2", "a"))
            .route(Route::new("/b").sub("chat.v2", "b"))
            .start()
            .await;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let mut a_tunnels = Vec::new();
        let mut b_workers = JoinSet::new();
        for i in 0..PER_UPSTREAM {
            a_tunnels.push(open_tunnel(gw.addr(), "/a").await);
            let mut c = open_tunnel(gw.addr(), "/b").await;
            let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
            b_workers.spawn(async move {
                let data = random_bytes(4096, i as u64);
                let mut mine = 0usize;
                while !stop.load(Ordering::Relaxed) || mine < 3 {
                    c.send(&data).await.expect("B tunnel write");
                    assert!(c.read_exact(data.len()).await == data, "B tunnel {i} echo");
                    mine += 1;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                mine
            });
        }
        // A carries bytes too, right up to the kill.
        for c in &mut a_tunnels {
            c.send(b"ping").await.expect("A tunnel write");
            assert_eq!(c.read_exact(4).await, b"ping");
        }
        let before_kill = rounds.load(Ordering::Relaxed);
        a.kill();
        let killed = Instant::now();
        let mut closes = JoinSet::new();
        for mut c in a_tunnels {
            closes.spawn(async move { c.closed_within(Duration::from_secs(2)).await });
        }
        while let Some(closed) = closes.join_next().await {
            assert!(closed.expect("close watcher"), "an A tunnel outlived its upstream by 2s");
        }
        let all_closed = killed.elapsed();
        let during = rounds.load(Ordering::Relaxed) - before_kill;
        stop.store(true, Ordering::Relaxed);
        while let Some(worker) = b_workers.join_next().await {
            assert!(worker.expect("B tunnel worker") >= 3);
        }
        assert!(
            during > 0,
            "no B tunnel carried a byte while A's tunnels were closing"
        );
        eprintln!("killed upstream: {PER_UPSTREAM} tunnels closed in {all_closed:?}; B echoed {during} rounds meanwhile");
        drop(b);
    })
    .await;
}

/// 1,000 handshakes started at the same moment all get their 101, and the 1,000 tunnels are
/// open together and each carries bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_handshakes_succeed() {
    const N: usize = 1000;
    // Each tunnel holds a client socket and an upstream socket in this process.
    raise_fd_limit(4 * N as u64 + 256);
    tokio::time::timeout(Duration::from_secs(60), async {
        let up = KillableEcho::start().await;
        let gw = ConfigBuilder::new()
            .limit("max_connections", "5000")
            .upstream("app", &[up.addr])
            .route(Route::new("/ws").sub("chat.v2", "app"))
            .start()
            .await;
        let addr = gw.addr();
        let start = Arc::new(Barrier::new(N));
        let all_open = Arc::new(Barrier::new(N));
        let mut clients = JoinSet::new();
        for i in 0..N {
            let (start, all_open) = (Arc::clone(&start), Arc::clone(&all_open));
            clients.spawn(async move {
                let req = ClientRequest::ws(&addr.to_string(), "/ws").protocol("chat.v2");
                let mut bytes = req.to_bytes();
                let mut s = TcpStream::connect(addr).await.expect("connect");
                start.wait().await;
                bytes.extend_from_slice(format!("{i:08}").as_bytes());
                s.write_all(&bytes).await.expect("send head");
                let (head, mut early) = read_head_from(&mut s).await;
                assert_eq!(head.status, 101, "handshake {i}: {head:?}");
                all_open.wait().await;
                while early.len() < 8 {
                    let mut more = [0u8; 8];
                    let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut more))
                        .await
                        .expect("echo in time")
                        .expect("echo");
                    assert!(n > 0, "tunnel {i} closed");
                    early.extend_from_slice(&more[..n]);
                }
                assert_eq!(early, format!("{i:08}").as_bytes(), "tunnel {i} echo");
            });
        }
        let started = Instant::now();
        while let Some(done) = clients.join_next().await {
            done.expect("handshake task");
        }
        eprintln!(
            "{N} concurrent handshakes and echoes in {:?}",
            started.elapsed()
        );
    })
    .await
    .expect("1,000 concurrent handshakes did not finish within 60s");
}
