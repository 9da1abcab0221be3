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
use crate::listener::{self, BindError};
use crate::tls::ServerTls;

/// Sockets bound and certificates loaded at start-up, before the gateway exists, so that a bad
/// address or certificate fails the start (exit 1) before anything is served.
#[derive(Debug)]
pub(super) struct Bound {
    listeners: Vec<(ListenerConfig, TcpListener, Option<ServerTls>)>,
    admin: Option<(AdminConfig, TcpListener)>,
}

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
        listeners.push((settings.clone(), tcp, tls));
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

impl Bound {
    /// Starts accepting on every socket. Logs one `listening` event per socket (`addr` with the
    /// real port, `kind` = `listener` or `admin`), which tests use as readiness.
    pub(super) fn serve(self, gateway: Arc<Gateway>) -> Result<Listeners, BindError> {
        let mut open = Vec::with_capacity(self.listeners.len());
        for (settings, tcp, tls) in self.listeners {
            let bind = settings.bind;
            let opened = Open::start(settings, tcp, tls, &gateway)
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
}

impl SocketKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SocketKind::Listener => "listener",
            SocketKind::Admin => "admin",
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
    /// Every socket this process listens on: the `[[listener]]`s in config order, then
    /// `[admin]`. The one list a hand-over passes to the new process (sockets of other kinds,
    /// such as HTTP/3's UDP ones, belong here too).
    pub(super) fn sockets(&self) -> io::Result<Vec<BoundSocket>> {
        let listeners = self
            .open
            .iter()
            .map(|o| BoundSocket::of(SocketKind::Listener, o.local, &o.socket));
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
                Some(open) if open.settings == *settings => {
                    open.reload_certificates();
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
    /// Starts serving `tcp`, logging `listening`.
    fn start(
        settings: ListenerConfig,
        tcp: TcpListener,
        tls: Option<ServerTls>,
        gateway: &Arc<Gateway>,
    ) -> io::Result<Open> {
        let local = tcp.local_addr()?;
        let socket = tcp.into_std()?;
        let accept = spawn_accept_loop(&socket, tls.as_ref(), &settings, gateway)?;
        tracing::info!(event = "listening", addr = %local, kind = "listener", "listening");
        Ok(Open {
            settings,
            local,
            socket,
            tls,
            accept,
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
            Ok(tcp) => Open::start(settings.clone(), tcp, tls, gateway).map_err(|e| e.to_string()),
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
        let accept = match spawn_accept_loop(&self.socket, tls.as_ref(), settings, gateway) {
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

    /// Stops accepting and closes the socket; accepted connections are not affected.
    async fn close(self) {
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

/// Starts an accept loop on a duplicate descriptor of `socket`. Every per-listener setting the
/// accept loop takes is passed here, so a restarted listener picks all of them up.
fn spawn_accept_loop(
    socket: &std::net::TcpListener,
    tls: Option<&ServerTls>,
    settings: &ListenerConfig,
    gateway: &Arc<Gateway>,
) -> io::Result<JoinHandle<()>> {
    let dup = socket.try_clone()?;
    dup.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(dup)?;
    let acceptor = tls.map(ServerTls::acceptor);
    Ok(tokio::spawn(listener::accept_loop(
        tcp,
        acceptor,
        settings.proxy_protocol,
        settings.tls.as_ref().is_some_and(|t| t.strict_sni),
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
