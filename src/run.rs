//! `switchyard run`: bind everything, serve, reload on SIGHUP, drain on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config};
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
        bound.push((listener::bind(l.bind).await?, tls));
    }
    let admin = match &config.admin {
        Some(a) => Some(listener::bind(a.bind).await?),
        None => None,
    };
    let drain_timeout = config.limits.drain_timeout;
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let metrics = Metrics::default();
    let gateway = Gateway::new(Runtime::new(config, &metrics)?, metrics);

    let mut server_tls = Vec::new();
    for (tcp, tls) in bound {
        log_listening(&tcp, "listener");
        let acceptor: Option<TlsAcceptor> = tls.as_ref().map(ServerTls::acceptor);
        server_tls.push(tls);
        tokio::spawn(listener::accept_loop(tcp, acceptor, Arc::clone(&gateway)));
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
fn reload(source: &Path, gateway: &Gateway, server_tls: &[Option<ServerTls>]) {
    let config = match config::load(source) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!(errors = %errors, "reload failed: keeping the running configuration");
            return;
        }
    };
    for (tls, l) in server_tls.iter().zip(&config.listeners) {
        if let (Some(tls), Some(settings)) = (tls, &l.tls)
            && let Err(e) = tls.reload(settings)
        {
            tracing::error!(listener = %l.bind, error = %e, "certificate reload failed: keeping the old certificates");
        }
    }
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    match Runtime::new(config, &gateway.metrics) {
        Ok(runtime) => {
            gateway.replace_runtime(runtime);
            tracing::info!(config = %source.display(), "configuration reloaded");
        }
        Err(e) => tracing::error!(error = %e, "reload failed: keeping the running configuration"),
    }
}
