//! `switchyard run`: bind everything (or take systemd's sockets), serve, reload on SIGHUP, drain
//! on SIGTERM/SIGINT, hand over to a new process on SIGUSR2, and tell systemd about each
//! (sd_notify) when it asks.

mod activation;
mod handover;
mod listeners;
mod notify;

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::config;
use crate::config::Config;
use crate::gateway::{Gateway, Runtime};
use crate::listener::BindError;
use crate::metrics::Metrics;
use crate::upstream::{self, health};

pub use activation::{ActivationError, Inherited};
pub use handover::set_listen_pid;
use listeners::Listeners;
use notify::Notifier;

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
/// second one during the drain exits at once. SIGUSR2 hands over to a new process (see
/// `handover`): once it reports ready this one drains the same way, its sockets left to the new
/// one; if it does not, this one carries on as before.
pub async fn run(config: Config) -> Result<(), RunError> {
    run_with(config, Inherited::default()).await
}

/// [`run`], serving the listeners systemd passed in `inherited` from those sockets.
///
/// With `NOTIFY_SOCKET` set, systemd hears `READY=1` (and `MAINPID`) once every listener accepts,
/// `RELOADING=1` then `READY=1` around each SIGHUP (whether or not the reload took), `STOPPING=1`
/// when the drain begins, and `WATCHDOG=1` every half of `WATCHDOG_USEC`; after a hand-over the
/// new process sends `READY=1` with its `MAINPID` and this one nothing more.
pub async fn run_with(config: Config, inherited: Inherited) -> Result<(), RunError> {
    raise_fd_limit();
    // Now: once the binary is replaced on disk, the running one's path reads "… (deleted)".
    let program = handover::Program::current();
    let notifier = std::sync::Arc::new(Notifier::from_env());
    if let Some(interval) = notify::watchdog_from_env() {
        notifier.spawn_watchdog(interval);
    }
    let source = config.source.clone();
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut user2 = signal(SignalKind::user_defined2()).map_err(RunError::Signal)?;

    let bound = listeners::bind(&config, inherited).await?;
    tokio::spawn(health::warn_unresolved(config.clone(), NAME_CHECK_TIMEOUT));
    let metrics = Metrics::default();
    let gateway = Gateway::new(Runtime::new(config, &metrics)?, metrics);
    let mut listeners = bound.serve(std::sync::Arc::clone(&gateway))?;
    if let Some(old_pid) = handover::started_by() {
        handover::report_ready(old_pid);
    }
    notifier.ready();

    let mut pending: Option<handover::Pending> = None;
    let handed_over = loop {
        tokio::select! {
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
            _ = hangup.recv() => {
                notifier.reloading();
                reload(&source, &gateway, &mut listeners).await;
                // Also after a failed reload: the old configuration serves, and `systemctl reload`
                // must not wait for its timeout.
                notifier.ready();
            }
            _ = user2.recv() => match &pending {
                Some(p) => tracing::info!(event = "hand_over_ignored", new_pid = p.pid(), "SIGUSR2 ignored: a new process is already starting"),
                None => pending = start_hand_over(program.as_ref(), &listeners),
            },
            outcome = hand_over_outcome(&mut pending), if pending.is_some() => {
                let new_pid = pending.take().map(|p| p.pid());
                match outcome {
                    Ok(()) => break true,
                    Err(failure) => hand_over_failed(new_pid, &failure),
                }
            }
        }
    };
    if let Some(abandoned) = pending.take() {
        hand_over_failed(Some(abandoned.pid()), &handover::Failure::Abandoned);
    }
    // Re-read at the signal: a reload may have changed it.
    let drain_timeout = gateway.runtime().config.limits.drain_timeout;
    if handed_over {
        // The new process is the unit's main process now (it sent its MAINPID): not a word
        // more from this one, and no STOPPING=1, since the unit is not stopping.
        notifier.silence();
        gateway.shutdown.hand_over();
        tracing::info!(event = "draining", timeout = ?drain_timeout, "handed over: no new connections here; open tunnels may finish");
    } else {
        tracing::info!(event = "draining", timeout = ?drain_timeout, "draining: no new connections; open tunnels may finish");
        notifier.stopping();
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(0);
    });
    // `drain` is polled first: it marks the gateway draining (`/readyz` 503) before its first
    // await, so no listener is reported closed while `/readyz` still says ready.
    tokio::join!(gateway.shutdown.drain(drain_timeout), async {
        if handed_over {
            listeners.close_for_hand_over().await;
        } else {
            listeners.close_for_drain().await;
        }
    });
    tracing::info!("drained; exiting");
    Ok(())
}

/// SIGUSR2: starts the new process with every listening socket; `None` (logged) when it cannot
/// be started.
fn start_hand_over(
    program: Option<&handover::Program>,
    listeners: &Listeners,
) -> Option<handover::Pending> {
    let started = listeners
        .sockets()
        .map_err(handover::Failure::Sockets)
        .and_then(|sockets| handover::start(program, sockets));
    started.inspect_err(|f| hand_over_failed(None, f)).ok()
}

/// The pending hand-over's outcome; only polled while there is one.
async fn hand_over_outcome(
    pending: &mut Option<handover::Pending>,
) -> Result<(), handover::Failure> {
    match pending {
        Some(p) => p.outcome().await,
        None => std::future::pending().await,
    }
}

/// The old process keeps serving as it did: every listener, `/readyz` 200, its configuration.
fn hand_over_failed(new_pid: Option<u32>, failure: &handover::Failure) {
    tracing::warn!(
        event = "hand_over_failed",
        new_pid,
        status = %failure.status(),
        reason = %failure,
        "hand-over failed"
    );
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both (`event = "fd_limit"`). Each
/// tunnel holds two descriptors, so the usual soft default of 1024 would cap the gateway near 500
/// tunnels when the hard limit allows many more. An unlimited hard limit means the kernel's
/// `fs.nr_open`, the most a process may ask for.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum.or_else(nr_open) else {
        return tracing::info!(event = "fd_limit", soft = ?limit.current, "open file limit: unlimited");
    };
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= hard {
        return tracing::info!(event = "fd_limit", soft, hard, "open file limit");
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            event = "fd_limit",
            soft = hard,
            hard,
            previous = soft,
            "open file limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(event = "fd_limit", soft, hard, error = %e, "cannot raise the open file limit")
        }
    }
}

/// `fs.nr_open`: the ceiling of an unlimited `RLIMIT_NOFILE`.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
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

#[cfg(test)]
mod tests {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_one() {
        let before = getrlimit(Resource::Nofile);
        let hard = before
            .maximum
            .or_else(super::nr_open)
            .expect("a finite limit");
        // One below the hard limit: still far above what the other tests in this process use.
        let lowered = Rlimit {
            current: Some(hard - 1),
            maximum: before.maximum,
        };
        setrlimit(Resource::Nofile, lowered).unwrap();
        super::raise_fd_limit();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }
}
