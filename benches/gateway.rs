//! End-to-end benchmark of the release binary on loopback: tunnel throughput, handshake rate, and
//! the gateway's memory per idle tunnel. `cargo bench` prints a Markdown table; BENCHMARKS.md
//! keeps the numbers with the machine they came from. It is the baseline for the zero-copy
//! `splice(2)` tunnels on the roadmap.
//!
//! Everything runs on 127.0.0.1, bounded in count and time, and stops by itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;
const IDLE_TUNNELS: usize = 1000;
const HANDSHAKES: usize = 2000;

/// The gateway process; killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_gateway(upstream: SocketAddr) -> Gateway {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("bench.toml");
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[upstreams.echo]\nservers = [\"{upstream}\"]\n\n\
         [[route]]\npath = \"/ws\"\nfallback = \"echo\"\n"
    );
    std::fs::write(&config, toml).expect("write config");
    // SWITCHYARD_BENCH_BIN measures another build (e.g. the previous commit's) with the same
    // load, so that two builds can be compared side by side in one sitting.
    let bin = std::env::var_os("SWITCHYARD_BENCH_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_switchyard").into(),
        std::path::PathBuf::from,
    );
    let mut child = Command::new(bin)
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn,switchyard::run=info",
        ])
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .expect("read stderr");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" && event["kind"] == "listener" {
            break event["addr"]
                .as_str()
                .expect("addr")
                .parse()
                .expect("addr parses");
        }
    };
    // Keep draining stderr so the gateway never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Gateway {
        child,
        addr,
        _dir: TempDir(dir),
    }
}

/// An upstream that answers every upgrade with a correct 101 and echoes what follows.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut tcp).await else {
                    return;
                };
                let key = header(&head, "sec-websocket-key").unwrap_or_default();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept(&key)
                );
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

fn accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    B64.encode(sha.finalize())
}

/// A client connection through the gateway, upgraded.
async fn open_tunnel(gateway: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(gateway)
        .await
        .expect("connect to the gateway");
    tcp.set_nodelay(true).expect("nodelay");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("send the upgrade");
    let head = read_head(&mut tcp).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
    tcp
}

/// Sends `bytes` through a tunnel while reading the echo back; returns when all came back.
async fn pump(tcp: TcpStream, bytes: usize) {
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; CHUNK];
        let mut sent = 0;
        while sent < bytes {
            let n = CHUNK.min(bytes - sent);
            w.write_all(&chunk[..n]).await.expect("write");
            sent += n;
        }
        w
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).await.expect("read");
        assert!(n > 0, "tunnel closed early");
        got += n;
    }
    drop(writer.await.expect("writer"));
}

/// MiB/s through `tunnels` concurrent tunnels moving `per_tunnel` bytes each way.
async fn throughput(gateway: SocketAddr, tunnels: usize, per_tunnel: usize) -> f64 {
    let mut open = Vec::new();
    for _ in 0..tunnels {
        open.push(open_tunnel(gateway).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = open
        .into_iter()
        .map(|t| tokio::spawn(pump(t, per_tunnel)))
        .collect();
    for t in tasks {
        t.await.expect("pump");
    }
    let secs = started.elapsed().as_secs_f64();
    // Bytes each way, counted once per direction.
    (2 * tunnels * per_tunnel) as f64 / (1 << 20) as f64 / secs
}

/// Sequential upgrade handshakes per second (connect, upgrade through to the upstream, close).
async fn handshake_rate(gateway: SocketAddr) -> f64 {
    let started = Instant::now();
    for _ in 0..HANDSHAKES {
        drop(open_tunnel(gateway).await);
    }
    HANDSHAKES as f64 / started.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The gateway's resident memory per idle tunnel (KiB), after warming up with one tunnel.
async fn idle_memory(gateway: &Gateway) -> (u64, f64) {
    drop(open_tunnel(gateway.addr).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(gateway.child.id());
    let mut open = Vec::with_capacity(IDLE_TUNNELS);
    for _ in 0..IDLE_TUNNELS {
        open.push(open_tunnel(gateway.addr).await);
    }
    // Let the gateway settle (tasks parked, buffers returned) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(gateway.child.id());
    drop(open);
    (
        after,
        (after.saturating_sub(before)) as f64 / IDLE_TUNNELS as f64,
    )
}

#[tokio::main]
async fn main() {
    // `cargo test` also runs benches' mains with `--bench` absent; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let upstream = echo_upstream().await;
    let gateway = start_gateway(upstream);
    let one = throughput(gateway.addr, 1, 256 << 20).await;
    let eight = throughput(gateway.addr, 8, 32 << 20).await;
    let rate = handshake_rate(gateway.addr).await;
    let (rss, per_tunnel) = idle_memory(&gateway).await;
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| 1 tunnel, 256 MiB each way, echo | {one:.0} MiB/s |");
    println!("| 8 tunnels, 32 MiB each way each, echo | {eight:.0} MiB/s total |");
    println!("| sequential upgrade handshakes (connect, 101 via upstream, close) | {rate:.0} /s |");
    println!(
        "| gateway RSS with {IDLE_TUNNELS} idle tunnels | {} MiB |",
        rss / 1024
    );
    println!("| gateway RSS per idle tunnel | {per_tunnel:.1} KiB |");
}
