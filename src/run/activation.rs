//! systemd socket activation (sd_listen_fds(3), SPEC §11): listening sockets inherited as fds 3…
//! are matched to the `[[listener]]` and `[admin]` entries whose `bind` equals their local
//! address, so that those are served from the inherited socket instead of binding. Inherited
//! UDP sockets are matched the same way to `http3` listeners (SPEC §11, §12).
//!
//! The fds become sockets through `listenfd` (it checks each fd is a socket of the asked type
//! and sets `FD_CLOEXEC` before taking ownership), since `unsafe` is denied here. `listenfd`
//! also unsets `LISTEN_PID` and `LISTEN_FDS`, which is only sound while the process has a
//! single thread: [`Inherited::from_env`] must run before the async runtime starts.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use listenfd::ListenFd;

use crate::config::Config;

/// sd_listen_fds(3): the first inherited descriptor.
pub(super) const FIRST_FD: usize = 3;

/// The inherited sockets that `bind` uses instead of binding, one slot per configured listener.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Aligned with `config.listeners`.
    listeners: Vec<Option<TcpListener>>,
    /// Aligned with `config.listeners`: the UDP sockets of `http3` listeners.
    udp: Vec<Option<UdpSocket>>,
    admin: Option<TcpListener>,
}

/// Inherited descriptors that cannot be used as configured: the gateway does not start (exit 2,
/// like a config error: restarting cannot fix it).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of inherited sockets")]
    BadCount(String),
    #[error("inherited fd {fd} is neither a TCP nor a UDP socket: {reason}")]
    NotSocket { fd: usize, reason: String },
    #[error("inherited fd {fd} ({addr}) is a TCP socket that is not listening")]
    NotListening { fd: usize, addr: SocketAddr },
    #[error("inherited fd {fd}: cannot read its local address: {source}")]
    Address { fd: usize, source: std::io::Error },
    #[error("inherited TCP socket fd {fd} ({addr}) is named by no [[listener]] or [admin] `bind`")]
    UnnamedTcp { fd: usize, addr: SocketAddr },
    #[error("inherited UDP socket fd {fd} ({addr}) is named by no http3 listener")]
    UnnamedUdp { fd: usize, addr: SocketAddr },
}

/// One inherited descriptor, by what it turned out to be.
#[derive(Debug)]
enum Found<T, U> {
    Tcp(T),
    Udp(U),
}

impl Inherited {
    /// Takes the sockets systemd passed to this process, if `LISTEN_PID` is our pid, and assigns
    /// each to the listener (or admin) whose `bind` is its address. Variables meant for another
    /// process are ignored. Call before any thread starts (see the module doc).
    pub fn from_env(config: &Config) -> Result<Inherited, ActivationError> {
        let pid = std::env::var("LISTEN_PID").ok();
        let count = std::env::var("LISTEN_FDS").ok();
        // Read (and unset) even when the variables are not ours, so no child inherits them.
        let mut fds = ListenFd::from_env();
        let Some(count) = listen_count(pid.as_deref(), count.as_deref(), std::process::id())?
        else {
            return Ok(Inherited::default());
        };
        let mut found = Vec::with_capacity(count);
        for index in 0..count.min(fds.len()) {
            found.push(take(&mut fds, index)?);
        }
        let binds: Vec<(SocketAddr, bool)> =
            config.listeners.iter().map(|l| (l.bind, l.http3)).collect();
        let (listeners, udp, admin) = assign(found, &binds, config.admin.as_ref().map(|a| a.bind))?;
        for (fd, tcp) in listeners.iter().flatten().chain(admin.iter()) {
            if let Ok(addr) = tcp.local_addr() {
                tracing::info!(event = "socket_inherited", fd, addr = %addr, "using an inherited listening socket");
            }
        }
        for (fd, socket) in udp.iter().flatten() {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(event = "socket_inherited", fd, addr = %addr, kind = "udp", "using an inherited UDP socket");
            }
        }
        Ok(Inherited {
            listeners: listeners.into_iter().map(strip).collect(),
            udp: udp.into_iter().map(strip).collect(),
            admin: strip(admin),
        })
    }

    /// The inherited socket of listener number `index` (config order), if any.
    pub(super) fn take_listener(&mut self, index: usize) -> Option<TcpListener> {
        self.listeners.get_mut(index).and_then(Option::take)
    }

    /// The inherited UDP socket of `http3` listener number `index` (config order), if any.
    pub(super) fn take_udp(&mut self, index: usize) -> Option<UdpSocket> {
        self.udp.get_mut(index).and_then(Option::take)
    }

    /// The inherited socket of the admin listener, if any.
    pub(super) fn take_admin(&mut self) -> Option<TcpListener> {
        self.admin.take()
    }
}

fn strip<T>(slot: Slot<T>) -> Option<T> {
    slot.map(|(_, socket)| socket)
}

/// How many descriptors are ours: `None` when `LISTEN_PID` is unset or another process's (or
/// `LISTEN_FDS` is unset), as sd_listen_fds(3) says.
fn listen_count(
    pid: Option<&str>,
    count: Option<&str>,
    our_pid: u32,
) -> Result<Option<usize>, ActivationError> {
    let ours = pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(our_pid);
    match count {
        Some(c) if ours => c
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ActivationError::BadCount(c.to_string())),
        _ => Ok(None),
    }
}

/// The descriptor at `index` as a listening TCP socket with its address, or a UDP socket's
/// address.
fn take(
    fds: &mut ListenFd,
    index: usize,
) -> Result<(usize, SocketAddr, Found<TcpListener, UdpSocket>), ActivationError> {
    let fd = FIRST_FD + index;
    let address = |r: std::io::Result<SocketAddr>| {
        r.map_err(|source| ActivationError::Address { fd, source })
    };
    match fds.take_tcp_listener(index) {
        Ok(Some(tcp)) => {
            let addr = address(tcp.local_addr())?;
            if !socket2::SockRef::from(&tcp).is_listener().unwrap_or(false) {
                return Err(ActivationError::NotListening { fd, addr });
            }
            Ok((fd, addr, Found::Tcp(tcp)))
        }
        Ok(None) => Err(taken(fd)),
        Err(tcp_error) => match fds.take_udp_socket(index) {
            Ok(Some(udp)) => {
                let addr = address(UdpSocket::local_addr(&udp))?;
                Ok((fd, addr, Found::Udp(udp)))
            }
            Ok(None) => Err(taken(fd)),
            Err(_) => Err(ActivationError::NotSocket {
                fd,
                reason: tcp_error.to_string(),
            }),
        },
    }
}

/// Each index is taken once, so this does not happen; an error rather than a panic all the same.
fn taken(fd: usize) -> ActivationError {
    ActivationError::NotSocket {
        fd,
        reason: "already taken".to_string(),
    }
}

/// A listener slot: the fd number and the socket.
type Slot<T> = Option<(usize, T)>;

/// Sockets matched to listeners: TCP and UDP slots aligned with the listeners, and the admin's.
type Assigned<T, U> = (Vec<Slot<T>>, Vec<Slot<U>>, Slot<T>);

/// Assigns each inherited TCP socket to the first listener without one whose `bind` is its
/// address, else to the admin listener, and each UDP socket to the first `http3` listener
/// (`listeners` holds each `bind` and whether it has `http3`) without one at its address; any
/// socket left over is an error naming it.
fn assign<T, U>(
    found: Vec<(usize, SocketAddr, Found<T, U>)>,
    listeners: &[(SocketAddr, bool)],
    admin: Option<SocketAddr>,
) -> Result<Assigned<T, U>, ActivationError> {
    let mut slots: Vec<Slot<T>> = listeners.iter().map(|_| None).collect();
    let mut udp_slots: Vec<Slot<U>> = listeners.iter().map(|_| None).collect();
    let mut admin_slot = None;
    for (fd, addr, kind) in found {
        let tcp = match kind {
            Found::Tcp(tcp) => tcp,
            Found::Udp(udp) => {
                let free =
                    listeners
                        .iter()
                        .zip(udp_slots.iter_mut())
                        .find(|((bind, http3), slot)| {
                            *http3 && slot.is_none() && same_address(*bind, addr)
                        });
                match free {
                    Some((_, slot)) => *slot = Some((fd, udp)),
                    None => return Err(ActivationError::UnnamedUdp { fd, addr }),
                }
                continue;
            }
        };
        let free = listeners
            .iter()
            .zip(slots.iter_mut())
            .find(|((bind, _), slot)| slot.is_none() && same_address(*bind, addr));
        if let Some((_, slot)) = free {
            *slot = Some((fd, tcp));
        } else if admin_slot.is_none() && admin.is_some_and(|a| same_address(a, addr)) {
            admin_slot = Some((fd, tcp));
        } else {
            return Err(ActivationError::UnnamedTcp { fd, addr });
        }
    }
    Ok((slots, udp_slots, admin_slot))
}

/// Addresses compared as addresses: IP and port, an IPv4-mapped IPv6 address as its IPv4 one.
/// Flow info and scope id are not part of what `bind` names.
fn same_address(bind: SocketAddr, local: SocketAddr) -> bool {
    bind.port() == local.port() && bind.ip().to_canonical() == local.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listen_fds_are_ours_only_with_our_pid() {
        assert_eq!(listen_count(Some("42"), Some("2"), 42).unwrap(), Some(2));
        assert_eq!(listen_count(Some("43"), Some("2"), 42).unwrap(), None);
        assert_eq!(listen_count(None, Some("2"), 42).unwrap(), None);
        assert_eq!(listen_count(Some("42"), None, 42).unwrap(), None);
        assert_eq!(listen_count(Some(""), Some("1"), 42).unwrap(), None);
        assert!(matches!(
            listen_count(Some("42"), Some("two"), 42),
            Err(ActivationError::BadCount(c)) if c == "two"
        ));
        // Another process's variables are not checked at all.
        assert_eq!(listen_count(Some("7"), Some("two"), 42).unwrap(), None);
    }

    #[test]
    fn addresses_compare_as_addresses() {
        assert!(same_address(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(same_address(
            addr("[::1]:443"),
            addr("[0:0:0:0:0:0:0:1]:443")
        ));
        assert!(same_address(
            addr("127.0.0.1:80"),
            addr("[::ffff:127.0.0.1]:80")
        ));
        assert!(!same_address(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!same_address(addr("0.0.0.0:80"), addr("[::]:80")));
        assert!(!same_address(addr("127.0.0.1:0"), addr("127.0.0.1:80")));
    }

    fn plain(binds: &[&str]) -> Vec<(SocketAddr, bool)> {
        binds.iter().map(|b| (addr(b), false)).collect()
    }

    #[test]
    fn sockets_go_to_listeners_and_admin_by_address_not_order() {
        let found: Vec<(usize, SocketAddr, Found<&str, ()>)> = vec![
            (3, addr("127.0.0.1:9090"), Found::Tcp("admin")),
            (4, addr("[::1]:8443"), Found::Tcp("v6")),
        ];
        let listeners = plain(&["127.0.0.1:8080", "[::1]:8443"]);
        let (slots, udp, admin) = assign(found, &listeners, Some(addr("127.0.0.1:9090"))).unwrap();
        assert_eq!(slots, vec![None, Some((4, "v6"))]);
        assert_eq!(udp, vec![None, None]);
        assert_eq!(admin, Some((3, "admin")));
    }

    #[test]
    fn a_socket_no_listener_names_is_an_error_naming_fd_and_address() {
        let found: Vec<(usize, SocketAddr, Found<(), ()>)> = vec![
            (3, addr("127.0.0.1:8080"), Found::Tcp(())),
            (4, addr("127.0.0.1:8081"), Found::Tcp(())),
        ];
        let err = assign(found, &plain(&["127.0.0.1:8080"]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inherited TCP socket fd 4 (127.0.0.1:8081) is named by no [[listener]] or [admin] `bind`"
        );
    }

    #[test]
    fn two_sockets_for_one_bind_leave_the_second_unnamed() {
        let found: Vec<(usize, SocketAddr, Found<(), ()>)> = vec![
            (3, addr("127.0.0.1:8080"), Found::Tcp(())),
            (4, addr("127.0.0.1:8080"), Found::Tcp(())),
        ];
        let err = assign(found, &plain(&["127.0.0.1:8080"]), None).unwrap_err();
        assert!(matches!(err, ActivationError::UnnamedTcp { fd: 4, .. }));
    }

    #[test]
    fn a_udp_socket_goes_to_the_http3_listener_at_its_address_whatever_the_order() {
        let found = vec![
            (3, addr("127.0.0.1:8443"), Found::Udp("udp")),
            (4, addr("127.0.0.1:8443"), Found::Tcp("tcp")),
        ];
        let listeners = [
            (addr("127.0.0.1:8080"), false),
            (addr("127.0.0.1:8443"), true),
        ];
        let (slots, udp, admin) = assign(found, &listeners, None).unwrap();
        assert_eq!(slots, vec![None, Some((4, "tcp"))]);
        assert_eq!(udp, vec![None, Some((3, "udp"))]);
        assert_eq!(admin, None);
    }

    #[test]
    fn a_udp_socket_is_unnamed_on_a_listener_without_http3() {
        let found: Vec<(usize, SocketAddr, Found<(), ()>)> = vec![
            (3, addr("127.0.0.1:8443"), Found::Tcp(())),
            (4, addr("127.0.0.1:8443"), Found::Udp(())),
        ];
        let err = assign(found, &plain(&["127.0.0.1:8443"]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inherited UDP socket fd 4 (127.0.0.1:8443) is named by no http3 listener"
        );
        let found: Vec<(usize, SocketAddr, Found<(), ()>)> =
            vec![(3, addr("127.0.0.1:9443"), Found::Udp(()))];
        let err = assign(found, &[(addr("127.0.0.1:8443"), true)], None).unwrap_err();
        assert!(matches!(err, ActivationError::UnnamedUdp { fd: 3, .. }));
    }

    #[test]
    fn no_inherited_sockets_leave_every_slot_empty() {
        let (slots, udp, admin) = assign::<(), ()>(
            Vec::new(),
            &plain(&["127.0.0.1:1"]),
            Some(addr("127.0.0.1:2")),
        )
        .unwrap();
        assert_eq!(slots, vec![None]);
        assert_eq!(udp, vec![None]);
        assert_eq!(admin, None);
    }
}
