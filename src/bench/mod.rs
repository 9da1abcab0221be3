//! `switchyard bench`: the load generator behind BENCHMARKS.md (SPEC §1). It measures any
//! WebSocket proxy the same way — switchyard, a peer, or the echo upstream directly — so that
//! ratios measured side by side in one run compare like with like.
//!
//! Modes: `upstream` (the raw echo upstream every target sits in front of), `handshakes` (new
//! upgrades per second), `echo` (one 64-byte frame at a time per tunnel: messages per second and
//! round-trip percentiles), `bulk` (large frames streamed and echoed: MB/s), `idle` (many open,
//! silent tunnels: memory per tunnel). With `--pid` the proxy's process tree is read from
//! `/proc` before and after: CPU per handshake / per GB and RSS per tunnel.
//!
//! Targets outside 127.0.0.0/8 and ::1 are refused: this is a load generator for this machine.

mod client;
mod multiplexed;
mod procstat;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use client::Target;
use multiplexed::{MuxConn, MuxReader, MuxWriter};
use procstat::Usage;

/// `switchyard bench MODE ...`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchMode {
    /// The echo upstream: 101 to every WebSocket upgrade, then the raw bytes echoed.
    Upstream {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Echo each frame as a WebSocket server must send it (unmasked) instead of the raw
        /// bytes: needed in front of an `inspect = true` route, which refuses masked upstream
        /// frames. Only `bulk` works with it (`echo` expects its bytes back unchanged).
        #[arg(long)]
        frames: bool,
    },
    /// New WebSocket handshakes per second: each worker connects, upgrades, closes, repeats.
    Handshakes {
        #[command(flatten)]
        common: Common,
        /// Concurrent workers.
        #[arg(long, default_value_t = 50)]
        workers: usize,
    },
    /// Echo round trips: each tunnel sends one masked frame and waits for it to come back.
    Echo {
        #[command(flatten)]
        common: Common,
        /// Open tunnels.
        #[arg(long, default_value_t = 100)]
        tunnels: usize,
        /// Payload bytes per frame.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Bulk transfer: each tunnel streams large frames and reads the echo back concurrently.
    Bulk {
        #[command(flatten)]
        common: Common,
        /// Open tunnels.
        #[arg(long, default_value_t = 1)]
        tunnels: usize,
        /// Payload bytes per frame.
        #[arg(long, default_value_t = 64 * 1024)]
        size: usize,
    },
    /// Idle footprint: opens `tunnels` silent tunnels, spread over 127.0.0.x source addresses,
    /// and reports the proxy's memory per tunnel (needs `--pid`).
    Idle {
        #[command(flatten)]
        common: Common,
        /// Tunnels to open and hold.
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        /// Source addresses 127.0.0.1 .. 127.0.0.N to spread the connections over.
        #[arg(long, default_value_t = 16)]
        sources: u8,
    },
}

/// What every measuring mode takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The WebSocket URL to measure (`ws://127.0.0.1:8080/ws`); loopback only.
    #[arg(long)]
    target: String,
    /// How long to measure (handshakes, echo, bulk).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The proxy's process id: its tree's CPU and memory are read from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// A label for the result line (e.g. `nginx`).
    #[arg(long, default_value = "target")]
    label: String,
    /// The HTTP version the tunnels are opened with: `1.1` (a `ws://` target), or `2` / `3` (a
    /// `wss://` target; RFC 8441 / RFC 9220 extended CONNECT, one stream per tunnel).
    #[arg(long, default_value = "1.1")]
    http: String,
    /// The CA certificate (PEM) a `wss://` target is verified against.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: std::path::PathBuf,
}

/// Why a bench run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--target {0}: expected ws://HOST:PORT/PATH (or wss:// with --http 2 or 3)")]
    BadTarget(String),
    #[error("--http {0}: expected 1.1, 2 or 3")]
    BadHttp(String),
    #[error("--ca {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("idle measures ws:// (HTTP/1.1) tunnels only")]
    IdleNeedsHttp1,
    #[error("--target {0}: only 127.0.0.0/8 and ::1 may be benchmarked")]
    NotLoopback(String),
    #[error("--listen {0}: only 127.0.0.0/8 and ::1 may be used")]
    ListenNotLoopback(SocketAddr),
    #[error("--pid {pid}: {source}")]
    Pid { pid: u32, source: std::io::Error },
    #[error("idle needs --pid (the proxy whose memory is measured)")]
    IdleNeedsPid,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Checks the arguments of `mode` without measuring anything: a bad or non-loopback target is
/// a usage error (exit 2), found before any connection is made.
pub fn check(mode: &BenchMode) -> Result<(), BenchError> {
    match mode {
        BenchMode::Upstream { listen, .. } if !listen.ip().is_loopback() => {
            Err(BenchError::ListenNotLoopback(*listen))
        }
        BenchMode::Upstream { .. } => Ok(()),
        BenchMode::Idle { common, .. } if common.pid.is_none() => Err(BenchError::IdleNeedsPid),
        BenchMode::Idle { common, .. } if common.http != "1.1" => Err(BenchError::IdleNeedsHttp1),
        BenchMode::Handshakes { common, .. }
        | BenchMode::Echo { common, .. }
        | BenchMode::Bulk { common, .. }
        | BenchMode::Idle { common, .. } => parse_target(common).map(drop),
    }
}

/// Runs one mode and prints its result: a human line on stderr, one JSON line on stdout.
pub async fn run(mode: BenchMode) -> Result<(), BenchError> {
    check(&mode)?;
    // The idle mode holds one descriptor per tunnel on this side too.
    crate::run::raise_fd_limit();
    let (common, result) = match mode {
        BenchMode::Upstream { listen, frames } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("echo upstream listening on {}", listener.local_addr()?);
            upstream::serve(listener, frames).await;
            return Ok(());
        }
        BenchMode::Handshakes { common, workers } => {
            let r = measure(&common, |t, stop| handshakes(t, workers, stop)).await?;
            (common, r)
        }
        BenchMode::Echo {
            common,
            tunnels,
            size,
        } => {
            let r = measure(&common, |t, stop| echo(t, tunnels, size, stop)).await?;
            (common, r)
        }
        BenchMode::Bulk {
            common,
            tunnels,
            size,
        } => {
            let r = measure(&common, |t, stop| bulk(t, tunnels, size, stop)).await?;
            (common, r)
        }
        BenchMode::Idle {
            common,
            tunnels,
            sources,
        } => {
            let r = idle(&common, tunnels, sources).await?;
            (common, r)
        }
    };
    eprintln!("{}: {}", common.label, result.human());
    println!("{}", result.json(&common.label));
    Ok(())
}

/// One mode's figures; `None` where the mode does not measure it.
#[derive(Debug, Default)]
struct Report {
    mode: &'static str,
    /// Completed operations: handshakes, echoed messages, or echoed bytes (bulk).
    count: u64,
    failures: u64,
    seconds: f64,
    /// Round-trip percentiles in microseconds (echo).
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    /// The proxy tree's CPU over the run, seconds.
    proxy_cpu_s: Option<f64>,
    /// The proxy tree's RSS before and after opening the idle tunnels, KiB.
    rss_kib: Option<(u64, u64)>,
    tunnels: usize,
}

impl Report {
    fn rate(&self) -> f64 {
        self.count as f64 / self.seconds.max(f64::EPSILON)
    }

    fn human(&self) -> String {
        let cpu = |per: f64, unit: &str| {
            self.proxy_cpu_s
                .map(|c| {
                    format!(
                        ", proxy CPU {:.1} {unit}",
                        c * per / self.count.max(1) as f64
                    )
                })
                .unwrap_or_default()
        };
        match self.mode {
            "handshakes" => format!(
                "{:.0} handshakes/s ({} failed){}",
                self.rate(),
                self.failures,
                cpu(1e6, "µs/handshake")
            ),
            "echo" => format!(
                "{:.0} msgs/s, p50 {} µs, p99 {} µs, p999 {} µs ({} failed){}",
                self.rate(),
                self.p50_us.unwrap_or(0),
                self.p99_us.unwrap_or(0),
                self.p999_us.unwrap_or(0),
                self.failures,
                cpu(1e6, "µs/msg")
            ),
            "bulk" => format!(
                "{:.0} MB/s echoed over {} tunnel(s) ({} failed){}",
                self.rate() / 1e6,
                self.tunnels,
                self.failures,
                cpu(1e9, "s/GB")
            ),
            _ => {
                let (before, after) = self.rss_kib.unwrap_or_default();
                format!(
                    "{} idle tunnels ({} failed): proxy RSS {before} -> {after} KiB, {:.2} KiB per tunnel",
                    self.count,
                    self.failures,
                    after.saturating_sub(before) as f64 / self.count.max(1) as f64
                )
            }
        }
    }

    fn json(&self, label: &str) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
        let (rss_before, rss_after) = match self.rss_kib {
            Some((b, a)) => (b.to_string(), a.to_string()),
            None => ("null".into(), "null".into()),
        };
        format!(
            "{{\"label\":{label:?},\"mode\":\"{}\",\"count\":{},\"failures\":{},\"seconds\":{:.3},\
             \"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"proxy_cpu_s\":{},\
             \"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"tunnels\":{}}}",
            self.mode,
            self.count,
            self.failures,
            self.seconds,
            self.rate(),
            opt(self.p50_us),
            opt(self.p99_us),
            opt(self.p999_us),
            self.proxy_cpu_s
                .map_or("null".to_owned(), |c| format!("{c:.4}")),
            self.tunnels,
        )
    }
}

/// `ws://HOST:PORT/PATH` (or `wss://` for `--http 2`/`3`), every address HOST resolves to on
/// loopback.
fn parse_target(common: &Common) -> Result<Target, BenchError> {
    let url = common.target.as_str();
    let bad = || BenchError::BadTarget(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let mux = match (uri.scheme_str(), common.http.as_str()) {
        (Some("ws"), "1.1") => None,
        (Some("wss"), version @ ("2" | "3")) => {
            let h3 = version == "3";
            let alpn: &[u8] = if h3 { b"h3" } else { b"h2" };
            let tls =
                multiplexed::tls_config(&common.ca, alpn).map_err(|source| BenchError::Ca {
                    path: common.ca.clone(),
                    source,
                })?;
            Some((tls, h3))
        }
        (_, "1.1" | "2" | "3") => return Err(bad()),
        (_, other) => return Err(BenchError::BadHttp(other.to_owned())),
    };
    let authority = uri.authority().ok_or_else(bad)?;
    let port = authority
        .port_u16()
        .unwrap_or(if mux.is_some() { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|_| bad())?.collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(BenchError::NotLoopback(url.to_owned()));
    }
    Ok(Target {
        addr: addrs[0],
        authority: authority.as_str().to_owned(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        mux,
    })
}

/// What a measuring mode's load loop returns: operations, failures, round trips (µs).
type Load = (u64, u64, Vec<u64>);

/// Runs `load` for `common.duration`, with the proxy's CPU read around it.
async fn measure<F, Fut>(common: &Common, load: F) -> Result<Report, BenchError>
where
    F: FnOnce(Arc<Target>, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = (&'static str, Load, usize)>,
{
    let target = Arc::new(parse_target(common)?);
    let before = proxy_usage(common.pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let timer = {
        let stop = Arc::clone(&stop);
        let duration = common.duration;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (mode, (count, failures, mut rtts), tunnels) = load(target, stop).await;
    let seconds = started.elapsed().as_secs_f64();
    timer.abort();
    let after = proxy_usage(common.pid)?;
    rtts.sort_unstable();
    let pct =
        |p: f64| (!rtts.is_empty()).then(|| rtts[((rtts.len() - 1) as f64 * p).round() as usize]);
    Ok(Report {
        mode,
        count,
        failures,
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        proxy_cpu_s: before
            .zip(after)
            .map(|(b, a)| a.cpu.saturating_sub(b.cpu).as_secs_f64()),
        rss_kib: None,
        tunnels,
    })
}

fn proxy_usage(pid: Option<u32>) -> Result<Option<Usage>, BenchError> {
    pid.map(|pid| procstat::tree_usage(pid).map_err(|source| BenchError::Pid { pid, source }))
        .transpose()
}

/// `n` copies of `worker`, each in its own task with its own handles on the target and the stop flag.
fn spawn_workers<F, Fut>(
    n: usize,
    target: &Arc<Target>,
    stop: &Arc<AtomicBool>,
    worker: F,
) -> Vec<tokio::task::JoinHandle<Load>>
where
    F: Fn(Arc<Target>, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = Load> + Send + 'static,
{
    (0..n)
        .map(|_| tokio::spawn(worker(Arc::clone(target), Arc::clone(stop))))
        .collect()
}

/// Sums the workers' counts and round trips.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<Load>>) -> Load {
    let mut total: Load = (0, 0, Vec::new());
    for task in tasks {
        if let Ok((ok, failed, rtts)) = task.await {
            total.0 += ok;
            total.1 += failed;
            total.2.extend(rtts);
        }
    }
    total
}

async fn handshakes(
    target: Arc<Target>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (&'static str, Load, usize) {
    let tasks = spawn_workers(workers, &target, &stop, move |target, stop| async move {
        let (mut ok, mut failed) = (0, 0);
        if let Some((tls, h3)) = &target.mux {
            // h2/h3: one connection per worker, a new extended CONNECT stream per handshake.
            let Ok(mut conn) = MuxConn::connect(&target, Arc::clone(tls), *h3).await else {
                return (0, 1, Vec::new());
            };
            while !stop.load(Ordering::Relaxed) {
                match conn.open(&target).await {
                    Ok((mut w, _r)) => {
                        ok += 1;
                        let _ = w.finish().await;
                    }
                    Err(_) => failed += 1,
                }
            }
            return (ok, failed, Vec::new());
        }
        while !stop.load(Ordering::Relaxed) {
            match client::open(&target, None).await {
                Ok(tcp) => {
                    ok += 1;
                    drop(tcp);
                }
                Err(_) => failed += 1,
            }
        }
        (ok, failed, Vec::new())
    });
    ("handshakes", join_all(tasks).await, workers)
}

async fn echo(
    target: Arc<Target>,
    tunnels: usize,
    size: usize,
    stop: Arc<AtomicBool>,
) -> (&'static str, Load, usize) {
    let tasks = spawn_workers(tunnels, &target, &stop, move |target, stop| async move {
        if target.mux.is_some() {
            return echo_mux(&target, size, &stop).await;
        }
        let Ok(mut tcp) = client::open(&target, None).await else {
            return (0, 1, Vec::new());
        };
        let frame = client::masked_frame(size);
        let mut back = vec![0u8; frame.len()];
        let mut rtts = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            if tcp.write_all(&frame).await.is_err() || tcp.read_exact(&mut back).await.is_err() {
                return (rtts.len() as u64, 1, rtts);
            }
            rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        (rtts.len() as u64, 0, rtts)
    });
    ("echo", join_all(tasks).await, tunnels)
}

async fn bulk(
    target: Arc<Target>,
    tunnels: usize,
    size: usize,
    stop: Arc<AtomicBool>,
) -> (&'static str, Load, usize) {
    let tasks = spawn_workers(tunnels, &target, &stop, move |target, stop| async move {
        if target.mux.is_some() {
            return bulk_mux(&target, size, &stop).await;
        }
        let Ok(tcp) = client::open(&target, None).await else {
            return (0, 1, Vec::new());
        };
        let (mut r, mut w) = tcp.into_split();
        let writer = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let frame = client::masked_frame(size);
                while !stop.load(Ordering::Relaxed) {
                    if w.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            })
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut echoed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => echoed += n as u64,
                _ => {
                    writer.abort();
                    return (echoed, 1, Vec::new());
                }
            }
        }
        writer.abort();
        (echoed, 0, Vec::new())
    });
    ("bulk", join_all(tasks).await, tunnels)
}

/// One tunnel over h2/h3 sending one masked frame at a time and waiting for its echo.
async fn echo_mux(target: &Target, size: usize, stop: &AtomicBool) -> Load {
    let Some((_conn, (mut w, mut r))) = open_mux(target).await else {
        return (0, 1, Vec::new());
    };
    let frame = bytes::Bytes::from(client::masked_frame(size));
    let mut back = vec![0u8; frame.len()];
    let mut rtts = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        if w.write_all(&frame).await.is_err() || r.read_exact(&mut back).await.is_err() {
            return (rtts.len() as u64, 1, rtts);
        }
        rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    (rtts.len() as u64, 0, rtts)
}

/// One tunnel over h2/h3 streaming frames while its echo is read back.
async fn bulk_mux(target: &Target, size: usize, stop: &Arc<AtomicBool>) -> Load {
    let Some((_conn, (mut w, mut r))) = open_mux(target).await else {
        return (0, 1, Vec::new());
    };
    let writer = {
        let stop = Arc::clone(stop);
        tokio::spawn(async move {
            let frame = bytes::Bytes::from(client::masked_frame(size));
            while !stop.load(Ordering::Relaxed) {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => echoed += n as u64,
            _ => {
                writer.abort();
                return (echoed, 1, Vec::new());
            }
        }
    }
    writer.abort();
    (echoed, 0, Vec::new())
}

/// A fresh h2/h3 connection to `target` with one tunnel open on it (the connection must
/// outlive the tunnel's halves); `None` when either fails.
async fn open_mux(target: &Target) -> Option<(MuxConn, (MuxWriter, MuxReader))> {
    let (tls, h3) = target.mux.as_ref()?;
    let mut conn = MuxConn::connect(target, Arc::clone(tls), *h3).await.ok()?;
    let tunnel = conn.open(target).await.ok()?;
    Some((conn, tunnel))
}

async fn idle(common: &Common, tunnels: usize, sources: u8) -> Result<Report, BenchError> {
    let target = parse_target(common)?;
    let pid = common.pid.ok_or(BenchError::IdleNeedsPid)?;
    // One warm-up tunnel so allocator pools and lazy state are in place before measuring.
    drop(client::open(&target, None).await?);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = procstat::tree_usage(pid).map_err(|source| BenchError::Pid { pid, source })?;
    let started = Instant::now();
    let mut open = Vec::with_capacity(tunnels);
    let mut failures = 0;
    for i in 0..tunnels {
        let source = source_addr(&target, i, sources);
        match client::open(&target, source).await {
            Ok(tcp) => open.push(tcp),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("idle: tunnel {i} failed: {e}");
                }
            }
        }
    }
    // Let the proxy settle (tasks parked, buffers returned) before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procstat::tree_usage(pid).map_err(|source| BenchError::Pid { pid, source })?;
    let seconds = started.elapsed().as_secs_f64();
    drop(open);
    Ok(Report {
        mode: "idle",
        count: (tunnels - failures) as u64,
        failures: failures as u64,
        seconds,
        rss_kib: Some((before.rss_kib, after.rss_kib)),
        tunnels,
        ..Report::default()
    })
}

/// 127.0.0.(1 + i % n), so that many tunnels do not exhaust one source address's ports.
fn source_addr(target: &Target, i: usize, n: u8) -> Option<SocketAddr> {
    if !target.addr.is_ipv4() || n <= 1 {
        return None;
    }
    let last = 1 + (i % usize::from(n)) as u8;
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(target: &str, http: &str) -> Common {
        Common {
            target: target.into(),
            duration: Duration::from_millis(300),
            pid: None,
            label: "t".into(),
            http: http.into(),
            ca: "certs/ca.pem".into(),
        }
    }

    fn parse(target: &str) -> Result<Target, BenchError> {
        parse_target(&common(target, "1.1"))
    }

    #[test]
    fn wss_targets_need_http_2_or_3_and_the_ca() {
        let t = parse_target(&common("wss://localhost:8443/ws", "3")).unwrap();
        assert!(t.mux.as_ref().is_some_and(|(_, h3)| *h3));
        let t = parse_target(&common("wss://127.0.0.1:8443/ws", "2")).unwrap();
        assert!(t.mux.as_ref().is_some_and(|(_, h3)| !*h3));
        assert!(matches!(
            parse_target(&common("ws://127.0.0.1:8080/ws", "2")),
            Err(BenchError::BadTarget(_))
        ));
        assert!(matches!(
            parse_target(&common("wss://127.0.0.1:8443/ws", "4")),
            Err(BenchError::BadHttp(_))
        ));
        let mut no_ca = common("wss://127.0.0.1:8443/ws", "3");
        no_ca.ca = "no/such/ca.pem".into();
        assert!(matches!(parse_target(&no_ca), Err(BenchError::Ca { .. })));
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        let t = parse("ws://127.0.0.1:8080/ws?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws?x=1");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert!(parse("ws://[::1]:9/").is_ok());
        assert!(parse("ws://localhost:9/").is_ok());
        for bad in ["http://127.0.0.1/", "127.0.0.1:80", "wss://127.0.0.1/"] {
            assert!(matches!(parse(bad), Err(BenchError::BadTarget(_))), "{bad}");
        }
        for far in ["ws://10.0.0.1:80/", "ws://192.168.1.1/", "ws://8.8.8.8/"] {
            assert!(
                matches!(parse(far), Err(BenchError::NotLoopback(_))),
                "{far}"
            );
        }
    }

    /// The whole tool against its own echo upstream (the `direct` baseline), briefly.
    #[tokio::test]
    async fn every_mode_measures_the_echo_upstream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(upstream::serve(listener, false));
        let common = Common {
            target: url,
            duration: Duration::from_millis(300),
            pid: Some(std::process::id()),
            label: "direct".into(),
            http: "1.1".into(),
            ca: "certs/ca.pem".into(),
        };
        let r = measure(&common, |t, s| handshakes(t, 2, s)).await.unwrap();
        assert!(r.count > 0 && r.failures == 0, "{r:?}");
        assert!(r.proxy_cpu_s.is_some());
        let r = measure(&common, |t, s| echo(t, 2, 64, s)).await.unwrap();
        assert!(r.count > 0 && r.failures == 0, "{r:?}");
        assert!(r.p50_us.unwrap() <= r.p99_us.unwrap());
        let r = measure(&common, |t, s| bulk(t, 2, 64 * 1024, s))
            .await
            .unwrap();
        assert!(r.count > 64 * 1024 && r.failures == 0, "{r:?}");
        assert!(
            r.json("direct")
                .starts_with("{\"label\":\"direct\",\"mode\":\"bulk\"")
        );
        let r = idle(&common, 20, 4).await.unwrap();
        assert_eq!((r.count, r.failures), (20, 0));
    }
}
