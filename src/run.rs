//! `switchyard run`: bind everything, serve, reload on SIGHUP, drain on SIGTERM/SIGINT.

mod listeners;

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::config;
use crate::config::Config;
use crate::gateway::{Gateway, Runtime};
use crate::listener::BindError;
use crate::metrics::Metrics;
use crate::upstream::{self, health};

use listeners::Listeners;

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
/// `addr` with the real port, `kind` = `listener` or `admin`), at start and for listeners a
/// reload opens; tests use them as readiness.
///
/// Signals: SIGHUP reloads (see [`reload`]); the first SIGTERM or SIGINT starts a drain (listeners
/// closed, `/readyz` 503, open tunnels live on until they end or `drain_timeout`, then exit 0); a
/// second one during the drain exits at once.
pub async fn run(config: Config) -> Result<(), RunError> {
    let source = config.source.clone();
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;

    let bound = listeners::bind(&config).await?;
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let metrics = Metrics::default();
    let gateway = Gateway::new(Runtime::new(config, &metrics)?, metrics);
    let mut listeners = bound.serve(std::sync::Arc::clone(&gateway))?;

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&source, &gateway, &mut listeners).await,
        }
    }
    // Re-read at the signal: a reload may have changed it.
    let drain_timeout = gateway.runtime().config.limits.drain_timeout;
    tracing::info!(event = "draining", timeout = ?drain_timeout, "draining: no new connections; open tunnels may finish");
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(0);
    });
    listeners.close_for_drain().await;
    gateway.shutdown.drain(drain_timeout).await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// SIGHUP: re-read the config file and certificates. A config that does not load or validate is
/// logged with every error and the running configuration stays in force, listeners included.
/// Otherwise new connections get the new routes, upstreams and limits at once (one pointer
/// swap), open connections and tunnels keep the generation they started with, and listeners are
/// opened, closed or restarted to match (see `listeners`).
async fn reload(source: &Path, gateway: &Gateway, listeners: &mut Listeners) {
    let config = match config::load(source) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!(event = "reload_failed", config = %source.display(), errors = %errors, "reload failed: keeping the running configuration");
            return;
        }
    };
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let runtime = match Runtime::new(config.clone(), &gateway.metrics) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(event = "reload_failed", config = %source.display(), error = %e, "reload failed: keeping the running configuration");
            return;
        }
    };
    gateway.replace_runtime(runtime);
    listeners.apply(&config).await;
    tracing::info!(event = "config_reloaded", config = %source.display(), "configuration reloaded");
}
