//! `switchyard run`: bind everything, serve, reload on SIGHUP, drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config, ListenerConfig};
use crate::gateway::{Gateway, Runtime};
use crate::listener::{self, BindError};
use crate::metrics::Metrics;
use crate::tls::ServerTls;
use crate::{admin, health, upstream};

/// How long the start-up (and reload) check that upstream names resolve may wait per name.
const NAME_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the gateway could not start or keep running (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Upstream(#[from] upstream::PoolError),
    #[error("listener {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: crate::tls::TlsError,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the gateway until a drain completes. Logs one `listening` event per bound socket (field
/// `addr` with the real port, `kind` = `listener` or `admin`), which tests use as readiness.
pub async fn run(config: Config) -> Result<(), RunError> {
    let source = config.source.clone();
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;

    let mut bound = Vec::new();
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(t) => Some(ServerTls::new(t, l.http2).map_err(|source| RunError::Tls {
                addr: l.bind,
                source,
            })?),
            None => None,
        };
        bound.push((listener::bind(l.bind).await?, tls, l.proxy_protocol));
    }
    let admin = match &config.admin {
        Some(a) => Some(listener::bind(a.bind).await?),
        None => None,
    };
    let drain_timeout = config.limits.drain_timeout;
    let binds: Vec<SocketAddr> = config.listeners.iter().map(|l| l.bind).collect();
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let metrics = Metrics::default();
    let gateway = Gateway::new(Runtime::new(config, &metrics)?, metrics);

    let mut server_tls = Vec::new();
    for ((tcp, tls, proxy_protocol), bind) in bound.into_iter().zip(binds) {
        log_listening(&tcp, "listener");
        let acceptor: Option<TlsAcceptor> = tls.as_ref().map(ServerTls::acceptor);
        server_tls.push((bind, tls));
        tokio::spawn(listener::accept_loop(
            tcp,
            acceptor,
            proxy_protocol,
            Arc::clone(&gateway),
        ));
    }
    if let Some(tcp) = admin {
        log_listening(&tcp, "admin");
        tokio::spawn(admin::serve(tcp, Arc::clone(&gateway)));
    }

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&source, &gateway, &server_tls),
        }
    }
    tracing::info!(timeout = ?drain_timeout, "draining: no new connections; open tunnels may finish");
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(0);
    });
    gateway.shutdown.drain(drain_timeout).await;
    tracing::info!("drained; exiting");
    Ok(())
}

fn log_listening(tcp: &tokio::net::TcpListener, kind: &'static str) {
    match tcp.local_addr() {
        Ok(addr) => tracing::info!(addr = %addr, kind, "listening"),
        Err(e) => tracing::warn!(kind, error = %e, "listening on an unknown address"),
    }
}

/// SIGHUP: re-read the config file and certificates. Anything invalid is logged and the running
/// configuration stays in force. Listen addresses are fixed at start in this version.
fn reload(source: &Path, gateway: &Gateway, server_tls: &[(SocketAddr, Option<ServerTls>)]) {
    let config = match config::load(source) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!(errors = %errors, "reload failed: keeping the running configuration");
            return;
        }
    };
    // Certificates are swapped only once the whole new config is known to be usable, so a
    // rejected reload leaves listeners and routing consistent with each other.
    let listeners = config.listeners.clone();
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let runtime = match Runtime::new(config, &gateway.metrics) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "reload failed: keeping the running configuration");
            return;
        }
    };
    for (running, l) in pair_by_bind(server_tls, &listeners) {
        if let (Some(tls), Some(settings)) = (running, &l.tls)
            && let Err(e) = tls.reload(settings)
        {
            tracing::error!(listener = %l.bind, error = %e, "certificate reload failed: keeping the old certificates");
        }
    }
    gateway.replace_runtime(runtime);
    tracing::info!(config = %source.display(), "configuration reloaded");
}

/// Pairs each listener of a reloaded config with the running listener of the same configured
/// `bind`, so that reordering `[[listener]]` entries cannot hand one listener another's
/// certificates. Port 0 may repeat (each bind gets a fresh port), so the k-th entry with an
/// address pairs with the k-th running listener with it. New addresses pair with nothing.
fn pair_by_bind<'a, T>(
    running: &'a [(SocketAddr, T)],
    listeners: &'a [ListenerConfig],
) -> Vec<(&'a T, &'a ListenerConfig)> {
    let mut taken = vec![false; running.len()];
    let mut pairs = Vec::new();
    for l in listeners {
        let found = running
            .iter()
            .zip(taken.iter_mut())
            .find(|((bind, _), taken)| *bind == l.bind && !**taken);
        if let Some(((_, value), taken)) = found {
            *taken = true;
            pairs.push((value, l));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(bind: &str) -> ListenerConfig {
        ListenerConfig {
            bind: bind.parse().expect("addr"),
            http2: false,
            proxy_protocol: false,
            tls: None,
        }
    }

    #[test]
    fn reloaded_listeners_pair_by_bind_not_position() {
        let a: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
        let zero: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let running = [(a, "a"), (zero, "z1"), (b, "b"), (zero, "z2")];
        let reloaded = [
            listener("127.0.0.1:0"),
            listener("127.0.0.1:9443"),
            listener("127.0.0.1:7443"),
            listener("127.0.0.1:8443"),
            listener("127.0.0.1:0"),
            listener("127.0.0.1:0"),
        ];
        let got: Vec<(&str, String)> = pair_by_bind(&running, &reloaded)
            .into_iter()
            .map(|(v, l)| (*v, l.bind.to_string()))
            .collect();
        let want = [
            ("z1", "127.0.0.1:0"),
            ("b", "127.0.0.1:9443"),
            ("a", "127.0.0.1:8443"),
            ("z2", "127.0.0.1:0"),
        ];
        let want: Vec<(&str, String)> = want.iter().map(|(v, b)| (*v, b.to_string())).collect();
        assert_eq!(got, want);
    }
}
