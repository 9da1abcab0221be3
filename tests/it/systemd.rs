//! SPEC §11, the systemd side, against the real binary: listening sockets inherited as fds 3…
//! (socket activation, sd_listen_fds(3)) and sd_notify(3) messages on a real `NOTIFY_SOCKET`.
//!
//! The test makes and keeps the listening sockets itself, so the gateway cannot have bound their
//! addresses again: a handshake answered there was accepted from the inherited socket. The
//! sockets reach the child as fds 3… through `command-fds`; `LISTEN_PID` must be the gateway's
//! own pid, unknown before the spawn, so the child is a shell that exports `$$` and `exec`s the
//! gateway (exec keeps the pid), as systemd's own test tools do.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use serde_json::Value;
use tokio::net::UnixDatagram;
use tokio::process::Command;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One route `/ws` (subprotocol `echo`, or none) to an echoing upstream at `up`; `binds` become
/// the `[[listener]]` addresses in order, `admin` the `[admin]` one.
fn config(up: SocketAddr, binds: &[String], admin: Option<String>) -> String {
    let mut text = ConfigBuilder::new()
        .listeners(binds.len())
        .upstream("app", &[up])
        .route(Route::new("/ws").sub("echo", "app").fallback("app"))
        .build();
    for bind in binds {
        text = text.replacen("bind = \"127.0.0.1:0\"", &format!("bind = {}", q(bind)), 1);
    }
    if let Some(admin) = admin {
        text.push_str(&format!("[admin]\nbind = {}\n", q(&admin)));
    }
    text
}

/// A listening socket the test holds for as long as it runs.
fn listening(host: &str) -> TcpListener {
    TcpListener::bind((host, 0)).unwrap_or_else(|e| panic!("cannot listen on {host}: {e}"))
}

/// A duplicate of `socket`'s descriptor, for the child; the test keeps the original.
fn dup(socket: &impl std::os::fd::AsFd) -> OwnedFd {
    socket.as_fd().try_clone_to_owned().expect("dup")
}

/// `sh` that sets `LISTEN_FDS` = the number of `sockets`, `LISTEN_PID` = its own pid (unless the
/// test set one) and `exec`s the gateway with `args`, `sockets` mapped to fds 3, 4, ….
fn activated(args: &[&OsStr], sockets: Vec<OwnedFd>, listen_pid: Option<&str>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID="${LISTEN_PID:-$$}"; export LISTEN_PID; exec "$0" "$@""#)
        .arg(BIN)
        .args(args)
        .env("LISTEN_FDS", sockets.len().to_string());
    match listen_pid {
        Some(pid) => cmd.env("LISTEN_PID", pid),
        None => cmd.env_remove("LISTEN_PID"),
    };
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|(parent_fd, child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings).expect("fd mappings");
    cmd
}

/// Starts the gateway on `config_toml` with `sockets` inherited and waits until it listens.
async fn start_activated(config_toml: &str, sockets: Vec<OwnedFd>) -> Gateway {
    Gateway::start_wrapped(config_toml, |args| activated(args, sockets, None)).await
}

/// Runs the gateway with `sockets` inherited to completion: (exit code, stderr).
async fn run_activated(config_toml: &str, sockets: Vec<OwnedFd>) -> (Option<i32>, String) {
    let dir = unique_temp_dir("activation");
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config_toml).unwrap();
    let args = ["run".as_ref(), "--config".as_ref(), path.as_os_str()];
    let mut cmd = activated(&args, sockets, None);
    let child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(IO_TIMEOUT, child.wait_with_output())
        .await
        .expect("the gateway is still running")
        .expect("wait");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A WebSocket handshake on `addr` and one echo through the tunnel.
async fn handshake_echoes(addr: SocketAddr) {
    let req = ClientRequest::ws(&addr.to_string(), "/ws").protocol("echo");
    let (mut c, head) = exchange(addr, &req, b"").await;
    assert_101(&head, &req.key, Some("echo"));
    c.send(b"through").await.expect("write into the tunnel");
    assert_eq!(c.read_exact(7).await, b"through", "echo via {addr}");
}

fn inherited_events(gw: &Gateway) -> Vec<(u64, String)> {
    gw.logs()
        .iter()
        .filter(|e| is_event(e, "socket_inherited"))
        .map(|e| {
            (
                e["fd"].as_u64().expect("fd"),
                e["addr"].as_str().expect("addr").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Socket activation

/// fd 3 is the admin socket and fd 4 the listener's (the reverse of the config's order): each is
/// served on the address its `bind` names, from the inherited socket (the test holds both, so
/// binding them again would have failed the start).
#[tokio::test]
async fn inherited_sockets_serve_listener_and_admin_matched_by_address() {
    bounded(
        "inherited_sockets_serve_listener_and_admin_matched_by_address",
        async {
            let up = RawUpstream::start(accept_then_echo(b"")).await;
            let (listener, admin) = (listening("127.0.0.1"), listening("127.0.0.1"));
            let (l_addr, a_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
            let text = config(up.addr(), &[l_addr.to_string()], Some(a_addr.to_string()));
            let gw = start_activated(&text, vec![dup(&admin), dup(&listener)]).await;
            assert_eq!(gw.addr(), l_addr);
            assert_eq!(gw.admin(), Some(a_addr));
            assert_eq!(
                inherited_events(&gw),
                vec![(4, l_addr.to_string()), (3, a_addr.to_string())]
            );
            handshake_echoes(l_addr).await;
            let (status, _, _) = gw.admin_get("/healthz").await;
            assert_eq!(status, 200);
        },
    )
    .await;
}

/// A listener without an inherited socket binds as usual beside one that has one.
#[tokio::test]
async fn a_listener_without_an_inherited_socket_binds_itself() {
    bounded(
        "a_listener_without_an_inherited_socket_binds_itself",
        async {
            let up = RawUpstream::start(accept_then_echo(b"")).await;
            let inherited = listening("127.0.0.1");
            let addr = inherited.local_addr().unwrap();
            let text = config(up.addr(), &[addr.to_string(), "127.0.0.1:0".into()], None);
            let gw = start_activated(&text, vec![dup(&inherited)]).await;
            assert_eq!(gw.listeners()[0], addr);
            assert_ne!(gw.listeners()[1].port(), 0);
            assert_eq!(inherited_events(&gw), vec![(3, addr.to_string())]);
            handshake_echoes(addr).await;
            handshake_echoes(gw.listeners()[1]).await;
        },
    )
    .await;
}

/// `bind = "[::1]:PORT"` names a socket bound to ::1 (compared as addresses, not strings).
#[tokio::test]
async fn an_ipv6_inherited_socket_is_matched() {
    bounded("an_ipv6_inherited_socket_is_matched", async {
        let Ok(inherited) = TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: nothing to test");
            return;
        };
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let addr = inherited.local_addr().unwrap();
        let spelled = format!("[0:0:0:0:0:0:0:1]:{}", addr.port());
        let gw = start_activated(&config(up.addr(), &[spelled], None), vec![dup(&inherited)]).await;
        assert_eq!(gw.addr(), addr);
        handshake_echoes(addr).await;
    })
    .await;
}

/// A reload keeps the inherited socket like a bound one: unchanged, or with new settings (a new
/// accept loop on the same socket), it still serves and is never closed.
#[tokio::test]
async fn reload_keeps_the_inherited_socket() {
    bounded("reload_keeps_the_inherited_socket", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let inherited = listening("127.0.0.1");
        let addr = inherited.local_addr().unwrap();
        let text = config(up.addr(), &[addr.to_string()], None);
        let gw = start_activated(&text, vec![dup(&inherited)]).await;

        let mark = gw.log_mark();
        let more = config(up.addr(), &[addr.to_string(), "127.0.0.1:0".into()], None);
        let ev = gw.reload(&more).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        handshake_echoes(addr).await;

        let proxied = more.replacen(
            &format!("bind = {}\n", q(&addr.to_string())),
            &format!("bind = {}\nproxy_protocol = true\n", q(&addr.to_string())),
            1,
        );
        let ev = gw.reload(&proxied).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        let ev = gw.reload(&more).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        handshake_echoes(addr).await;
        let closed: Vec<Value> = gw.logs()[mark..]
            .iter()
            .filter(|e| is_event(e, "listener_closed"))
            .cloned()
            .collect();
        assert!(closed.is_empty(), "a reload closed a listener: {closed:?}");
    })
    .await;
}

/// An inherited socket that no listener names stops the start with exit 2, and the message names
/// its fd and address.
#[tokio::test]
async fn an_inherited_socket_no_listener_names_is_exit_2() {
    bounded("an_inherited_socket_no_listener_names_is_exit_2", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let stray = listening("127.0.0.1");
        let addr = stray.local_addr().unwrap();
        let text = config(up.addr(), &["127.0.0.1:0".into()], None);
        let (code, stderr) = run_activated(&text, vec![dup(&stray)]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("fd 3") && stderr.contains(&addr.to_string()),
            "{stderr}"
        );
    })
    .await;
}

/// A UDP socket on the listener's own address is not taken for the TCP listener: no `http3`
/// listener names it, so the start fails with exit 2.
#[tokio::test]
async fn an_inherited_udp_socket_without_http3_is_exit_2() {
    bounded("an_inherited_udp_socket_without_http3_is_exit_2", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let tcp = listening("127.0.0.1");
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).expect("UDP on the same address");
        let text = config(up.addr(), &[addr.to_string()], None);
        let (code, stderr) = run_activated(&text, vec![dup(&tcp), dup(&udp)]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("UDP socket fd 4") && stderr.contains(&addr.to_string()),
            "{stderr}"
        );
    })
    .await;
}

/// SPEC §11/§12: an inherited UDP socket (fd 3, before the TCP one) is matched by address to
/// the `http3` listener and serves QUIC; the test keeps both sockets, so the gateway cannot have
/// bound that address again.
#[tokio::test]
async fn an_inherited_udp_socket_serves_http3() {
    bounded("an_inherited_udp_socket_serves_http3", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let tcp = listening("127.0.0.1");
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).expect("UDP on the same address");
        let tls =
            ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem")).http3(true);
        let text = ConfigBuilder::new()
            .tls(tls)
            .upstream("app", &[up.addr()])
            .route(Route::new("/ws").sub("echo", "app").fallback("app"))
            .build()
            .replacen(
                "bind = \"127.0.0.1:0\"",
                &format!("bind = {}", q(&addr.to_string())),
                1,
            );
        let gw = start_activated(&text, vec![dup(&udp), dup(&tcp)]).await;
        let events = inherited_events(&gw);
        assert!(events.contains(&(3, addr.to_string())), "{events:?}");
        assert!(events.contains(&(4, addr.to_string())), "{events:?}");
        let mut conn = crate::support::h3_client::H3Conn::connect(addr).await;
        let (res, mut s) = conn.connect_ws("/ws", Some("echo")).await;
        assert_eq!(res.status(), 200, "{res:?}");
        s.send(b"over-quic").await;
        assert_eq!(s.recv_exact(9).await, b"over-quic");
    })
    .await;
}

/// A descriptor that is no socket at all is exit 2 too, naming it.
#[tokio::test]
async fn an_inherited_fd_that_is_not_a_socket_is_exit_2() {
    bounded("an_inherited_fd_that_is_not_a_socket_is_exit_2", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let file = std::fs::File::open(BIN).unwrap();
        let text = config(up.addr(), &["127.0.0.1:0".into()], None);
        let (code, stderr) = run_activated(&text, vec![file.into()]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("fd 3"), "{stderr}");
    })
    .await;
}

/// `LISTEN_PID` of another process: the variables are not ours, so the stray socket at fd 3 is
/// ignored and the listener binds as usual.
#[tokio::test]
async fn listen_pid_of_another_process_is_ignored() {
    bounded("listen_pid_of_another_process_is_ignored", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let stray = listening("127.0.0.1");
        let text = config(up.addr(), &["127.0.0.1:0".into()], None);
        let other = std::process::id().to_string();
        let gw = Gateway::start_wrapped(&text, |args| {
            activated(args, vec![dup(&stray)], Some(&other))
        })
        .await;
        assert_ne!(gw.addr(), stray.local_addr().unwrap());
        assert!(inherited_events(&gw).is_empty());
        handshake_echoes(gw.addr()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/// The `NOTIFY_SOCKET` end: every datagram as its `KEY=VALUE` fields.
struct NotifySocket {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` says: a path or `@name`.
    address: String,
    dir: Option<std::path::PathBuf>,
}

impl NotifySocket {
    fn at_path() -> NotifySocket {
        let dir = unique_temp_dir("notify");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let address = path.to_str().unwrap().to_string();
        NotifySocket {
            socket,
            address,
            dir: Some(dir),
        }
    }

    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "switchyard-it-notify-{}-{}",
            std::process::id(),
            rand_suffix()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let std = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
        std.set_nonblocking(true).unwrap();
        NotifySocket {
            socket: UnixDatagram::from_std(std).unwrap(),
            address: format!("@{name}"),
            dir: None,
        }
    }

    /// The next datagram within `within`, as fields.
    async fn next(&self, within: Duration) -> HashMap<String, String> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(within, self.socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no sd_notify datagram within {within:?}"))
            .expect("recv");
        let text = std::str::from_utf8(&buf[..n]).expect("UTF-8 datagram");
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{text:?}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// Datagrams until one has `key=1`, returning it; any `WATCHDOG=1` on the way is a failure
    /// unless `watchdog` is expected.
    async fn until(&self, key: &str, watchdog: bool) -> HashMap<String, String> {
        loop {
            let fields = self.next(IO_TIMEOUT).await;
            if fields.get(key).map(String::as_str) == Some("1") {
                return fields;
            }
            assert!(
                watchdog || !fields.contains_key("WATCHDOG"),
                "WATCHDOG=1 without WATCHDOG_USEC"
            );
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Starts the gateway on `text` with `NOTIFY_SOCKET` and `env`.
async fn start_notifying(text: &str, notify: &NotifySocket, env: &[(&str, &str)]) -> Gateway {
    let address = notify.address.clone();
    Gateway::start_wrapped(text, |args| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("NOTIFY_SOCKET", address);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    })
    .await
}

/// READY=1 with MAINPID once every listener accepts; RELOADING=1 with MONOTONIC_USEC then
/// READY=1 around a reload, a refused one included; STOPPING=1 when the drain starts; no
/// WATCHDOG=1 without WATCHDOG_USEC.
#[tokio::test]
async fn notify_ready_reloading_stopping() {
    bounded("notify_ready_reloading_stopping", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let notify = NotifySocket::at_path();
        let text = config(
            up.addr(),
            &["127.0.0.1:0".into()],
            Some("127.0.0.1:0".into()),
        );
        let mut gw = start_notifying(&text, &notify, &[]).await;
        let ready = notify.until("READY", false).await;
        assert_eq!(
            ready.get("MAINPID"),
            Some(&gw.pid().to_string()),
            "{ready:?}"
        );
        handshake_echoes(gw.addr()).await;

        for next in [text.clone(), "not [[[ toml".to_string()] {
            let before = monotonic_usec();
            let ev = gw.reload(&next).await;
            let reloading = notify.until("RELOADING", false).await;
            let sent: u64 = reloading["MONOTONIC_USEC"].parse().expect("MONOTONIC_USEC");
            assert!(
                (before..=monotonic_usec()).contains(&sent),
                "MONOTONIC_USEC {sent} is not CLOCK_MONOTONIC at the reload"
            );
            notify.until("READY", false).await;
            assert!(
                is_event(&ev, RELOADED) || is_event(&ev, RELOAD_FAILED),
                "{ev}"
            );
        }
        handshake_echoes(gw.addr()).await;

        gw.signal(Signal::Term);
        notify.until("STOPPING", false).await;
        let status = gw
            .wait_exit(IO_TIMEOUT)
            .await
            .expect("exit after the drain");
        assert_eq!(status.code(), Some(0));
    })
    .await;
}

/// An abstract `@name` NOTIFY_SOCKET, with WATCHDOG_USEC: READY=1 arrives there, and
/// WATCHDOG=1 follows every half interval.
#[tokio::test]
async fn notify_abstract_socket_and_watchdog() {
    bounded("notify_abstract_socket_and_watchdog", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let notify = NotifySocket::abstract_name();
        let text = config(up.addr(), &["127.0.0.1:0".into()], None);
        let _gw = start_notifying(&text, &notify, &[("WATCHDOG_USEC", "200000")]).await;
        notify.until("READY", true).await;
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            notify.until("WATCHDOG", true).await;
        }
        // Four pings 100ms apart take at least 300ms; far longer would mean a wrong interval.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "four WATCHDOG=1 took {took:?} at WATCHDOG_USEC=200000"
        );
    })
    .await;
}

/// WATCHDOG_PID of another process: the watchdog is not ours, no WATCHDOG=1 is sent.
#[tokio::test]
async fn notify_watchdog_of_another_pid_is_not_ours() {
    bounded("notify_watchdog_of_another_pid_is_not_ours", async {
        let up = RawUpstream::start(accept_then_echo(b"")).await;
        let notify = NotifySocket::at_path();
        let text = config(up.addr(), &["127.0.0.1:0".into()], None);
        let other = std::process::id().to_string();
        let env = [
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", other.as_str()),
        ];
        let gw = start_notifying(&text, &notify, &env).await;
        notify.until("READY", false).await;
        // A SIGHUP's two datagrams come after what 50ms pings would already have sent.
        gw.sighup().await;
        notify.until("RELOADING", false).await;
        notify.until("READY", false).await;
    })
    .await;
}
