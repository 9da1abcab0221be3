//! sd_notify(3) (SPEC §11): tells systemd (`NOTIFY_SOCKET`, a path or an abstract `@name`) when
//! the gateway is ready, reloading, stopping, and that it is alive (`WATCHDOG_USEC`).
//!
//! The protocol is one datagram of `KEY=VALUE` lines per state change, so it is written here
//! over std's `UnixDatagram` rather than through a crate. Datagrams are sent without blocking: a
//! service manager that does not read its queue must not stall the runtime; a message that cannot
//! be sent is logged and dropped.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where to send notifications; does nothing when `NOTIFY_SOCKET` was unset.
#[derive(Debug)]
pub(super) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Set once a hand-over's new process has taken over as the unit's main process: from then
    /// on this one sends nothing (SPEC §11), watchdog pings included.
    silenced: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`. An address this cannot use (not absolute, not `@name`) is logged and
    /// notifications are off.
    pub(super) fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::off();
        };
        let target = notify_address(&value.to_string_lossy()).and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok((socket, addr))
        });
        match target {
            Ok(target) => Notifier {
                target: Some(target),
                silenced: AtomicBool::new(false),
            },
            Err(e) => {
                tracing::warn!(notify_socket = ?value, error = %e, "NOTIFY_SOCKET not usable: no sd_notify messages");
                Notifier::off()
            }
        }
    }

    fn off() -> Notifier {
        Notifier {
            target: None,
            silenced: AtomicBool::new(false),
        }
    }

    /// A hand-over's new process reported ready and tells systemd its own `MAINPID`: this
    /// process stays silent from now on.
    pub(super) fn silence(&self) {
        self.silenced.store(true, Ordering::Relaxed);
    }

    /// `READY=1` with `MAINPID`: every listener accepts (at start), or a reload has finished.
    pub(super) fn ready(&self) {
        self.send("ready", &ready_message(std::process::id()));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, which `Type=notify-reload` requires in the same
    /// datagram.
    pub(super) fn reloading(&self) {
        self.send("reloading", &reloading_message(monotonic_usec()));
    }

    /// `STOPPING=1`: a drain has begun.
    pub(super) fn stopping(&self) {
        self.send("stopping", "STOPPING=1\n");
    }

    /// Sends `WATCHDOG=1` every `interval` for as long as the runtime runs, which is the
    /// liveness it proves: a wedged runtime stops the pings and systemd restarts the service.
    pub(super) fn spawn_watchdog(self: &std::sync::Arc<Self>, interval: Duration) {
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.send("watchdog", "WATCHDOG=1\n");
            }
        });
    }

    fn send(&self, what: &str, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if self.silenced.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!(notify = what, error = %e, "sd_notify message not sent");
        }
    }
}

/// The watchdog interval: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, when it
/// is set, not zero, and `WATCHDOG_PID` is unset or ours.
pub(super) fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => {}
        Some(Ok(p)) if p == our_pid => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec) / 2)
}

/// `WATCHDOG_USEC` / `WATCHDOG_PID` of this process, as [`watchdog_interval`].
pub(super) fn watchdog_from_env() -> Option<Duration> {
    watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// `NOTIFY_SOCKET`: an absolute path, or `@name` for the abstract namespace (sd_notify(3)).
fn notify_address(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        ))
    }
}

fn ready_message(pid: u32) -> String {
    format!("READY=1\nMAINPID={pid}\n")
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\n")
}

/// `CLOCK_MONOTONIC` in µs, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1_000).unwrap_or(0);
    secs * 1_000_000 + micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_newline_terminated_key_value_lines() {
        assert_eq!(ready_message(4242), "READY=1\nMAINPID=4242\n");
        assert_eq!(
            reloading_message(123_456_789),
            "RELOADING=1\nMONOTONIC_USEC=123456789\n"
        );
    }

    #[test]
    fn the_watchdog_pings_at_half_the_interval_for_us_only() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval(Some("1000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("1000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("1000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("1000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        let path = notify_address("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = notify_address("@sd-notify-test").unwrap();
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"sd-notify-test"[..])
        );
        assert!(notify_address("relative/notify").is_err());
        assert!(notify_address("vsock:2:1234").is_err());
    }

    #[test]
    fn monotonic_usec_counts_from_boot_not_from_the_epoch() {
        // CLOCK_MONOTONIC never runs ahead of the time since boot (/proc/uptime, which also
        // counts suspend); the wall clock would be decades ahead.
        let usec = monotonic_usec();
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            usec > 0 && usec as f64 <= (uptime + 1.0) * 1e6,
            "{usec} µs, uptime {uptime} s"
        );
        assert!(monotonic_usec() >= usec);
    }

    #[test]
    fn datagrams_reach_a_bound_socket_at_a_path_and_at_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("switchyard-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let name = format!("@switchyard-notify-unit-{}", std::process::id());
        for (receiver, address) in [
            (
                UnixDatagram::bind(&path).unwrap(),
                path.to_str().unwrap().to_string(),
            ),
            (
                UnixDatagram::bind_addr(&notify_address(&name).unwrap()).unwrap(),
                name.clone(),
            ),
        ] {
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let socket = UnixDatagram::unbound().unwrap();
            let notifier = Notifier {
                target: Some((socket, notify_address(&address).unwrap())),
                silenced: AtomicBool::new(false),
            };
            notifier.stopping();
            let mut buf = [0u8; 64];
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"STOPPING=1\n", "via {address}");
            // Unix datagrams are queued at the receiver by the send itself, so a silenced
            // notifier's would already be there.
            notifier.silence();
            notifier.ready();
            receiver.set_nonblocking(true).unwrap();
            let err = receiver.recv(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "via {address}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
