//! The listening sockets of a running gateway, kept in step with its configuration: bound (or
//! inherited from systemd, see `activation`) at start, opened, closed or restarted on SIGHUP, and
//! closed when a drain begins. [`Listeners::sockets`] is the one list of them (address,
//! descriptor, kind) that a SIGUSR2 hand-over passes to the new process.
//!
//! Reload matches listeners by their configured `bind` (several `:0` listeners on one address
//! pair up unchanged ones first, then in file order). A listener whose settings are unchanged keeps its socket and accept
//! loop and re-reads its certificates. One whose `tls`, `http2` or `proxy_protocol` changed keeps
//! its socket but gets a new accept loop with the new settings: connections already accepted
//! finish under the old ones. A removed listener stops accepting at once; its open connections
//! and tunnels carry on until they end (or the drain deadline).
//!
//! An `http3` listener also owns a UDP socket at its real address (an inherited one, like its
//! TCP socket, or bound after the TCP socket so a `:0` port is shared) and the QUIC endpoint on
//! it ([`H3Listener`]); a reload re-reads its certificates and limits for new QUIC connections,
//! and toggling `http3` opens or closes it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::RunError;
use super::activation::Inherited;
use crate::admin;
use crate::config::{AdminConfig, Config, ListenerConfig};
use crate::gateway::Gateway;
use crate::h3_listener::{self, H3Listener};
use crate::listener::{self, BindError};
use crate::tls::ServerTls;

/// Sockets bound and certificates loaded at start-up, before the gateway exists, so that a bad
/// address or certificate fails the start (exit 1) before anything is served.
#[derive(Debug)]
pub(super) struct Bound {
    listeners: Vec<BoundListener>,
    admin: Option<(AdminConfig, TcpListener)>,
}

/// One listener's sockets and certificates: TCP, and UDP when it has `http3`.
type BoundListener = (
    ListenerConfig,
    TcpListener,
    Option<std::net::UdpSocket>,
    Option<ServerTls>,
);

/// Binds every listener and the admin listener of `config` and loads their certificates; one
/// with an `inherited` socket (systemd socket activation) is served from it instead.
pub(super) async fn bind(config: &Config, mut inherited: Inherited) -> Result<Bound, RunError> {
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (index, settings) in config.listeners.iter().enumerate() {
        let tls = server_tls(settings).map_err(|source| RunError::Tls {
            addr: settings.bind,
            source,
        })?;
        let tcp = open(settings.bind, inherited.take_listener(index)).await?;
        let udp = match inherited.take_udp(index) {
            Some(udp) => Some(udp),
            None => udp_for(settings, &tcp)?,
        };
        listeners.push((settings.clone(), tcp, udp, tls));
    }
    let admin = match &config.admin {
        Some(a) => Some((a.clone(), open(a.bind, inherited.take_admin()).await?)),
        None => None,
    };
    Ok(Bound { listeners, admin })
}

/// The inherited socket for `addr` if there is one, else a freshly bound one. Reloads keep
/// either kind alike: both end up as the `Open` socket matched by `bind`.
async fn open(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
) -> Result<TcpListener, BindError> {
    match inherited {
        Some(socket) => listener::adopt(socket).map_err(|source| BindError { addr, source }),
        None => listener::bind(addr).await,
    }
}

/// A fresh UDP socket at `tcp`'s address (its real port) when `settings` has `http3`.
fn udp_for(
    settings: &ListenerConfig,
    tcp: &TcpListener,
) -> Result<Option<std::net::UdpSocket>, BindError> {
    if !settings.http3 {
        return Ok(None);
    }
    let addr = tcp.local_addr().map_err(|source| BindError {
        addr: settings.bind,
        source,
    })?;
    h3_listener::bind_udp(addr)
        .map(Some)
        .map_err(|source| BindError { addr, source })
}

impl Bound {
    /// Starts accepting on every socket. Logs one `listening` event per socket (`addr` with the
    /// real port, `kind` = `listener` or `admin`), which tests use as readiness.
    pub(super) fn serve(self, gateway: Arc<Gateway>) -> Result<Listeners, BindError> {
        let mut open = Vec::with_capacity(self.listeners.len());
        for (settings, tcp, udp, tls) in self.listeners {
            let bind = settings.bind;
            let opened = Open::start(settings, tcp, udp, tls, &gateway)
                .map_err(|source| BindError { addr: bind, source })?;
            open.push(opened);
        }
        let admin = match self.admin {
            Some((settings, tcp)) => {
                let bind = settings.bind;
                let started = Admin::start(settings, tcp, &gateway);
                Some(started.map_err(|source| BindError { addr: bind, source })?)
            }
            None => None,
        };
        Ok(Listeners {
            gateway,
            open,
            admin,
        })
    }
}

/// Every open listening socket and the task serving it.
#[derive(Debug)]
pub(super) struct Listeners {
    gateway: Arc<Gateway>,
    /// In config order.
    open: Vec<Open>,
    admin: Option<Admin>,
}

/// One `[[listener]]` being served.
#[derive(Debug)]
struct Open {
    /// As configured (`bind` may have port 0): what a reloaded config is compared with.
    settings: ListenerConfig,
    /// The address actually bound.
    local: SocketAddr,
    /// Owns the listening socket. Each accept loop accepts on a duplicate descriptor of it, so a
    /// loop can be replaced without closing the socket: no connection is refused meanwhile and a
    /// `:0` listener keeps its port.
    socket: std::net::TcpListener,
    tls: Option<ServerTls>,
    accept: JoinHandle<()>,
    /// HTTP/3 on the same address, when the listener has `http3` (its UDP socket is
    /// [`H3Listener::socket`]; the SIGUSR2 hand-over passes it on with the TCP ones).
    h3: Option<H3Listener>,
}

/// The `[admin]` listener being served.
#[derive(Debug)]
struct Admin {
    settings: AdminConfig,
    /// The address actually bound.
    local: SocketAddr,
    /// Owns the listening socket, as [`Open::socket`] does: `serve` accepts on a duplicate.
    socket: std::net::TcpListener,
    serve: JoinHandle<()>,
}

/// What a listening socket serves. The new process of a hand-over tells them apart by address
/// (`activation`), so this is for logs and for the order they are passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketKind {
    /// A `[[listener]]`'s TCP socket.
    Listener,
    /// The `[admin]` TCP socket.
    Admin,
    /// An `http3` listener's UDP socket (SPEC §12).
    H3,
}

impl SocketKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SocketKind::Listener => "listener",
            SocketKind::Admin => "admin",
            SocketKind::H3 => "h3",
        }
    }
}

/// One listening socket of this process, as a hand-over passes it on.
#[derive(Debug)]
pub(super) struct BoundSocket {
    pub(super) kind: SocketKind,
    pub(super) addr: SocketAddr,
    /// A duplicate of the socket's descriptor, for the child; the listener keeps its own.
    pub(super) fd: OwnedFd,
}

impl BoundSocket {
    fn of(kind: SocketKind, addr: SocketAddr, socket: &impl AsFd) -> io::Result<BoundSocket> {
        Ok(BoundSocket {
            kind,
            addr,
            fd: socket.as_fd().try_clone_to_owned()?,
        })
    }
}

impl Listeners {
    /// Every socket this process listens on: the `[[listener]]`s in config order (each TCP
    /// socket followed by its HTTP/3 UDP one), then `[admin]`. The one list a hand-over passes
    /// to the new process.
    pub(super) fn sockets(&self) -> io::Result<Vec<BoundSocket>> {
        let listeners = self.open.iter().flat_map(|o| {
            let tcp = BoundSocket::of(SocketKind::Listener, o.local, &o.socket);
            let udp =
                (o.h3.as_ref()).map(|h3| BoundSocket::of(SocketKind::H3, o.local, &h3.socket));
            std::iter::once(tcp).chain(udp)
        });
        let admin = self
            .admin
            .iter()
            .map(|a| BoundSocket::of(SocketKind::Admin, a.local, &a.socket));
        listeners.chain(admin).collect()
    }

    /// The new process of a hand-over accepts on every socket: this one stops accepting on all
    /// of them, admin included, and closes its descriptors. The sockets themselves stay open in
    /// the new process, so connections queued on them are not refused but accepted there.
    pub(super) async fn close_for_hand_over(&mut self) {
        self.close_for_drain().await;
        if let Some(admin) = self.admin.take() {
            admin.close().await;
        }
    }

    /// Applies the listener part of a reloaded (already validated) configuration: closes removed
    /// listeners, restarts changed ones, opens added ones and re-reads certificates of the rest.
    /// A listener that cannot be opened or restarted is logged; the others are still applied.
    pub(super) async fn apply(&mut self, config: &Config) {
        let mut old: Vec<Option<Open>> = std::mem::take(&mut self.open)
            .into_iter()
            .map(Some)
            .collect();
        // Pass 1: an unchanged listener keeps its socket. Pass 2: a listener on an address
        // already served gets that socket with its new settings. Two passes so that `:0`
        // listeners sharing one address pair up with their unchanged selves first.
        let mut kept: Vec<Option<Open>> = config
            .listeners
            .iter()
            .map(|settings| take_first(&mut old, |o| o.settings == *settings))
            .collect();
        for (slot, settings) in kept.iter_mut().zip(&config.listeners) {
            if slot.is_none() {
                *slot = take_first(&mut old, |o| o.settings.bind == settings.bind);
            }
        }
        let pairs: Vec<(Option<Open>, &ListenerConfig)> =
            kept.into_iter().zip(&config.listeners).collect();
        // Removed ones first, so that their addresses are free for added ones.
        for removed in old.into_iter().flatten() {
            removed.close().await;
        }
        for (kept, settings) in pairs {
            let next = match kept {
                Some(mut open) if open.settings == *settings => {
                    open.reload_certificates();
                    open.refresh_h3(&self.gateway);
                    Some(open)
                }
                Some(open) => Some(open.restart(settings, &self.gateway).await),
                None => Open::bind(settings, &self.gateway).await,
            };
            self.open.extend(next);
        }
        self.apply_admin(config.admin.as_ref()).await;
    }

    /// A drain began: every `[[listener]]` socket is closed so that new connections are refused.
    /// The admin listener stays, to answer `/readyz` with 503 while tunnels finish.
    pub(super) async fn close_for_drain(&mut self) {
        for open in self.open.drain(..) {
            open.close().await;
        }
    }

    async fn apply_admin(&mut self, settings: Option<&AdminConfig>) {
        match (self.admin.take(), settings) {
            (Some(admin), Some(s)) if admin.settings == *s => self.admin = Some(admin),
            (old, Some(s)) => {
                // Bind the new address before letting go of the old one: if it cannot be bound,
                // health checks keep working on the old address.
                let started = listener::bind(s.bind).await.and_then(|tcp| {
                    Admin::start(s.clone(), tcp, &self.gateway).map_err(|source| BindError {
                        addr: s.bind,
                        source,
                    })
                });
                match started {
                    Ok(admin) => {
                        if let Some(old) = old {
                            old.close().await;
                        }
                        self.admin = Some(admin);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener not moved: keeping the old one");
                        self.admin = old;
                    }
                }
            }
            (old, None) => {
                if let Some(old) = old {
                    old.close().await;
                }
            }
        }
    }
}

impl Open {
    /// Starts serving `tcp` (and QUIC on `udp`), logging `listening`.
    fn start(
        settings: ListenerConfig,
        tcp: TcpListener,
        udp: Option<std::net::UdpSocket>,
        tls: Option<ServerTls>,
        gateway: &Arc<Gateway>,
    ) -> io::Result<Open> {
        let local = tcp.local_addr()?;
        let socket = tcp.into_std()?;
        let h3 = match (udp, &tls) {
            (Some(udp), Some(tls)) => Some(
                H3Listener::start(udp, tls, strict_sni(&settings), gateway)
                    .map_err(io::Error::other)?,
            ),
            _ => None,
        };
        let accept = spawn_accept_loop(&socket, tls.as_ref(), &settings, local, gateway)?;
        tracing::info!(event = "listening", addr = %local, kind = "listener", "listening");
        Ok(Open {
            settings,
            local,
            socket,
            tls,
            accept,
            h3,
        })
    }

    /// A listener added by a reload; `None` (logged) when it cannot be opened.
    async fn bind(settings: &ListenerConfig, gateway: &Arc<Gateway>) -> Option<Open> {
        let tls = match server_tls(settings) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(listener = %settings.bind, error = %e, "new listener not opened: bad certificate");
                return None;
            }
        };
        let opened = match listener::bind(settings.bind).await {
            Ok(tcp) => match udp_for(settings, &tcp) {
                Ok(udp) => {
                    Open::start(settings.clone(), tcp, udp, tls, gateway).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        opened
            .inspect_err(|e| tracing::error!(listener = %settings.bind, error = %e, "new listener not opened"))
            .ok()
    }

    /// Same socket, new accept loop with `settings`. On failure the listener keeps running as it
    /// was.
    async fn restart(mut self, settings: &ListenerConfig, gateway: &Arc<Gateway>) -> Open {
        let tls = match server_tls(settings) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(listener = %self.local, error = %e, "listener settings not changed: bad certificate");
                return self;
            }
        };
        let accept = match spawn_accept_loop(
            &self.socket,
            tls.as_ref(),
            settings,
            self.local,
            gateway,
        ) {
            Ok(accept) => accept,
            Err(e) => {
                tracing::error!(listener = %self.local, error = %e, "listener settings not changed");
                return self;
            }
        };
        let old = std::mem::replace(&mut self.accept, accept);
        stop(old).await;
        self.settings = settings.clone();
        self.tls = tls;
        self.restart_h3(gateway);
        tracing::info!(event = "listener_restarted", addr = %self.local, kind = "listener", "listener restarted with new settings");
        self
    }

    /// SIGHUP re-reads the certificates of a kept TLS listener; on error the old ones stay.
    fn reload_certificates(&self) {
        if let (Some(tls), Some(settings)) = (&self.tls, &self.settings.tls)
            && let Err(e) = tls.reload(settings)
        {
            tracing::error!(event = "certificate_reload_failed", listener = %self.local, error = %e, "certificate reload failed: keeping the old certificates");
        }
    }

    /// A kept listener's QUIC side takes the reloaded limits (and certificates) for new QUIC
    /// connections.
    fn refresh_h3(&mut self, gateway: &Arc<Gateway>) {
        if let (Some(h3), Some(tls)) = (&mut self.h3, &self.tls)
            && let Err(e) = h3.update(tls, strict_sni(&self.settings), gateway)
        {
            tracing::error!(listener = %self.local, error = %e, "HTTP/3 settings not changed");
        }
    }

    /// After new settings: HTTP/3 opened, updated or closed to match `http3`.
    fn restart_h3(&mut self, gateway: &Arc<Gateway>) {
        let wanted = self.settings.http3 && self.tls.is_some();
        match (self.h3.take(), &self.tls) {
            (Some(h3), _) if !wanted => h3.close(),
            (Some(h3), _) => {
                self.h3 = Some(h3);
                self.refresh_h3(gateway);
            }
            (None, Some(tls)) if wanted => {
                let started = h3_listener::bind_udp(self.local)
                    .map_err(h3_listener::H3Error::from)
                    .and_then(|udp| {
                        H3Listener::start(udp, tls, strict_sni(&self.settings), gateway)
                    });
                match started {
                    Ok(h3) => self.h3 = Some(h3),
                    Err(e) => {
                        tracing::error!(listener = %self.local, error = %e, "HTTP/3 not opened")
                    }
                }
            }
            (None, _) => {}
        }
    }

    /// Stops accepting and closes the socket; accepted connections are not affected.
    async fn close(self) {
        if let Some(h3) = self.h3 {
            h3.close();
        }
        stop(self.accept).await;
        drop(self.socket);
        tracing::info!(event = "listener_closed", addr = %self.local, kind = "listener", "listener closed");
    }
}

impl Admin {
    /// Starts serving `tcp`, logging `listening`.
    fn start(settings: AdminConfig, tcp: TcpListener, gateway: &Arc<Gateway>) -> io::Result<Admin> {
        let local = tcp.local_addr()?;
        let socket = tcp.into_std()?;
        let serving = TcpListener::from_std(socket.try_clone()?)?;
        let serve = tokio::spawn(admin::serve(serving, Arc::clone(gateway)));
        tracing::info!(event = "listening", addr = %local, kind = "admin", "listening");
        Ok(Admin {
            settings,
            local,
            socket,
            serve,
        })
    }

    async fn close(self) {
        stop(self.serve).await;
        drop(self.socket);
        tracing::info!(event = "listener_closed", addr = %self.local, kind = "admin", "listener closed");
    }
}

/// Takes the first listener of `old` that `matches` out of it.
fn take_first(old: &mut [Option<Open>], matches: impl Fn(&Open) -> bool) -> Option<Open> {
    old.iter_mut()
        .find(|o| o.as_ref().is_some_and(&matches))
        .and_then(Option::take)
}

/// The listener's rustls config, when it has `tls`.
fn server_tls(settings: &ListenerConfig) -> Result<Option<ServerTls>, crate::tls::TlsError> {
    settings
        .tls
        .as_ref()
        .map(|t| ServerTls::new(t, settings.http2))
        .transpose()
}

fn strict_sni(settings: &ListenerConfig) -> bool {
    settings.tls.as_ref().is_some_and(|t| t.strict_sni)
}

/// Starts an accept loop on a duplicate descriptor of `socket` (bound at `local`). Every
/// per-listener setting the accept loop takes is passed here, so a restarted listener picks all
/// of them up.
fn spawn_accept_loop(
    socket: &std::net::TcpListener,
    tls: Option<&ServerTls>,
    settings: &ListenerConfig,
    local: SocketAddr,
    gateway: &Arc<Gateway>,
) -> io::Result<JoinHandle<()>> {
    let dup = socket.try_clone()?;
    dup.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(dup)?;
    let acceptor = tls.map(ServerTls::acceptor);
    Ok(tokio::spawn(listener::accept_loop(
        tcp,
        acceptor,
        listener::ConnSettings {
            proxy_protocol: settings.proxy_protocol,
            strict_sni: strict_sni(settings),
            alt_svc: (settings.http3 && tls.is_some()).then(|| h3_listener::alt_svc(local.port())),
        },
        Arc::clone(gateway),
    )))
}

/// Stops a listener task and waits until it is gone, so its socket descriptor is closed when
/// this returns. Connections it accepted run in tasks of their own and are not affected.
async fn stop(task: JoinHandle<()>) {
    task.abort();
    // `Err(cancelled)` is the expected outcome; a loop that already ended is fine too.
    let _ = task.await;
}
