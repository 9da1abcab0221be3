//! Opens the tunnel of a switched handshake: waits for the client side, runs
//! [`crate::tunnel::run`] in its own task, tracked by shutdown, and logs it when it closes.
//! Carrier-neutral: each front hands over its client side as a future of a [`Leg`].
//!
//! Also decides, per tunnel, what its route asks for (SPEC §5, §9): a [`TunnelPlan`] taken at
//! dispatch from the route and the upstream's 101, and the polite-end signal of an inspected
//! tunnel ([`polite_end`]): a drain beginning, or a reload that no longer routes it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::{Conn, Runtime};
use crate::access::AccessRecord;
use crate::config::RouteConfig;
use crate::h2_watch::OpenStreams;
use crate::handshake::{self, Upgrade};
use crate::limits::ConnPermit;
use crate::route::{self, RoutedTunnel, Via};
use crate::shutdown::Shutdown;
use crate::tunnel::{self, InspectConfig, Leg, PoliteEnd, TunnelConfig};
use crate::upstream::ServerLease;

/// What a switched handshake's route and the upstream's 101 ask of its tunnel.
#[derive(Debug)]
pub(crate) struct TunnelPlan {
    /// `Some` for a WebSocket tunnel on an `inspect = true` route: its settings, and what a
    /// reload must keep for it to live on (the other tunnels ignore polite endings). Boxed so
    /// that an opaque tunnel's handshake outcome stays small.
    inspected: Option<Box<(InspectConfig, RoutedTunnel)>>,
    /// The route's `max_lifetime`, before this tunnel's share of jitter comes off.
    max_lifetime: Option<Duration>,
    max_lifetime_jitter: Duration,
}

impl TunnelPlan {
    /// The plan for `upgrade` on `route`, whose upstream answered `head` (already checked).
    /// Tunnels of other `Upgrade` tokens carry no WebSocket frames, so they are never
    /// inspected; the same holds on every carrier, since the upstream always answers a 101.
    pub(crate) fn new(
        route: &RouteConfig,
        upgrade: &Upgrade,
        head: &http::response::Parts,
    ) -> Self {
        let inspected = match (upgrade, &route.inspect) {
            (Upgrade::WebSocket { negotiated, .. }, Some(keys)) => {
                let inspect = InspectConfig {
                    max_message_bytes: keys.max_message_bytes,
                    max_frame_bytes: keys.max_frame_bytes,
                    ping_interval: keys.ping_interval,
                    ping_timeout: keys.ping_timeout,
                    close_code: keys.close_code,
                    extensions: handshake::accepted_extensions(&head.headers),
                };
                let via = match &negotiated.subprotocol {
                    Some(name) => Via::Subprotocol(name.clone()),
                    None => Via::Fallback,
                };
                let routed = RoutedTunnel::new(route, via, &negotiated.upstream);
                Some(Box::new((inspect, routed)))
            }
            _ => None,
        };
        TunnelPlan {
            inspected,
            max_lifetime: route.max_lifetime,
            max_lifetime_jitter: route.max_lifetime_jitter,
        }
    }
}

/// One tunnel's age cap: `max_lifetime` shortened by a uniformly random share of `jitter`
/// (SPEC §5), so tunnels opened together do not all end together. Config validation keeps
/// `jitter` below `max_lifetime`; the saturation only guards that invariant.
fn lifetime_cap(
    max_lifetime: Option<Duration>,
    jitter: Duration,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let cap = max_lifetime?;
    if jitter.is_zero() {
        return Some(cap);
    }
    Some(cap.saturating_sub(rng.gen_range(Duration::ZERO..=jitter)))
}

/// Completes when the gateway wants an inspected tunnel ended politely (SPEC §9): when a
/// SIGTERM/SIGINT drain begins ([`PoliteEnd::Drain`]), or the drain after a SIGUSR2 hand-over
/// ([`PoliteEnd::Restart`], SPEC §11), or when a reload makes a configuration current in which
/// `routed` no longer holds ([`PoliteEnd::Reload`], see [`route::still_routed`]). `changes` must
/// have been subscribed before the tunnel was routed or marked changed, so that no reload in
/// between is missed.
async fn polite_end(
    shutdown: Shutdown,
    mut changes: watch::Receiver<Arc<Runtime>>,
    routed: RoutedTunnel,
) -> PoliteEnd {
    tokio::select! {
        // Marked before the drain begins (`Shutdown::hand_over`), so it is known on waking.
        () = shutdown.draining() => if shutdown.is_handed_over() {
            PoliteEnd::Restart
        } else {
            PoliteEnd::Drain
        },
        () = unrouted(&mut changes, &routed) => PoliteEnd::Reload,
    }
}

/// Waits for a generation whose routes no longer route the tunnel; one cheap check per reload.
async fn unrouted(changes: &mut watch::Receiver<Arc<Runtime>>, routed: &RoutedTunnel) {
    loop {
        if changes.changed().await.is_err() {
            // The gateway is gone: no reload can come any more.
            return std::future::pending().await;
        }
        let current = Arc::clone(&changes.borrow_and_update());
        if !route::still_routed(routed, &current.config.routes) {
            return;
        }
    }
}

impl Conn {
    /// Spawns the tunnel between `client` (resolving once the front has written our 101/200
    /// and handed over its stream; `None` when the client went away first) and `upstream`.
    /// `stream_permit`: an h2 tunnel stream's own connection slot.
    pub(super) fn open_tunnel<F>(
        &self,
        client: F,
        upstream: Leg,
        lease: ServerLease,
        stream_permit: Option<ConnPermit>,
        plan: TunnelPlan,
        rec: &AccessRecord,
    ) where
        F: Future<Output = Option<Leg>> + Send + 'static,
    {
        let mut rec = rec.clone();
        let gateway = Arc::clone(&self.gateway);
        let permit = Arc::clone(&self.permit);
        // An open tunnel keeps its h2 connection from being closed as idle.
        let open = self.streams.as_ref().map(OpenStreams::open);
        let tracked = gateway.shutdown.track();
        let active = gateway
            .metrics
            .tunnel_opened(rec.route_label(), rec.subprotocol.as_deref().unwrap_or(""));
        let (inspect, routed) = plan.inspected.map(|b| *b).unzip();
        let ws_metrics = inspect
            .is_some()
            .then(|| gateway.metrics.ws_tunnel(rec.route_label()));
        let polite = routed.map(|routed| {
            let mut changes = gateway.runtime_changes();
            // This connection routed the tunnel on its own generation; a reload since then
            // counts as one to check at once.
            if !Arc::ptr_eq(&changes.borrow(), &self.runtime) {
                changes.mark_changed();
            }
            // Boxed: only inspected tunnels have one, and inline it would size every tunnel.
            Box::pin(polite_end(gateway.shutdown.clone(), changes, routed))
        });
        let cfg = TunnelConfig {
            idle_timeout: self.runtime.config.limits.idle_timeout,
            // Live, process-wide: /metrics shows the bytes of open tunnels too.
            counters: Some(gateway.metrics.tunnel_counters()),
            inspect,
            max_lifetime: lifetime_cap(
                plan.max_lifetime,
                plan.max_lifetime_jitter,
                &mut rand::thread_rng(),
            ),
        };
        rec.status = if self.carrier.extended_connect() {
            200
        } else {
            101
        };
        rec.handshake = rec.started.elapsed();
        let task = async move {
            // Held while the tunnel runs. `tracked` outlives the access event, so a drain never
            // exits before the tunnel is logged; the rest is released before it, so the event
            // says the connection slot and metrics are already updated.
            let _tracked = tracked;
            let held = (permit, stream_permit, open, active, lease);
            let Some(client) = client.await else {
                return;
            };
            let polite = async move {
                match polite {
                    Some(polite) => polite.await,
                    None => std::future::pending().await,
                }
            };
            let outcome =
                tunnel::run(client, upstream, &cfg, polite, gateway.shutdown.expired()).await;
            gateway.metrics.tunnel_closed(outcome.duration);
            if let (Some(ws_metrics), Some(report)) = (&ws_metrics, &outcome.ws) {
                gateway.metrics.ws_tunnel_closed(ws_metrics, report);
            }
            drop(held);
            rec.log_tunnel(&outcome);
        };
        // Not instrumented with the connection's span: the access event names the client
        // itself, and a span would stay allocated for the tunnel's whole life and be entered
        // on every wakeup.
        tokio::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand::SeedableRng;
    use tokio::time::timeout;

    use super::super::Gateway;
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    fn gateway_for_tests(config: crate::config::Config) -> Arc<Gateway> {
        let metrics = crate::metrics::Metrics::default();
        let runtime = Runtime::new(config, &metrics).expect("runtime");
        Gateway::new(runtime, metrics)
    }

    #[test]
    fn lifetime_cap_takes_a_uniform_share_of_the_jitter_off() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let hour = Duration::from_secs(3600);
        let five_min = Duration::from_secs(300);
        assert_eq!(lifetime_cap(None, Duration::ZERO, &mut rng), None);
        assert_eq!(lifetime_cap(None, five_min, &mut rng), None);
        assert_eq!(
            lifetime_cap(Some(hour), Duration::ZERO, &mut rng),
            Some(hour)
        );
        let caps: Vec<Duration> = (0..1000)
            .map(|_| lifetime_cap(Some(hour), five_min, &mut rng).unwrap())
            .collect();
        assert!(caps.iter().all(|c| *c <= hour && *c >= hour - five_min));
        let (lo, hi) = (caps.iter().min().unwrap(), caps.iter().max().unwrap());
        // 1000 uniform draws cover nearly all of the range: ends are spread, not bunched.
        assert!(*hi - *lo > Duration::from_secs(290), "{lo:?}..{hi:?}");
        let below_half = caps.iter().filter(|c| **c < hour - five_min / 2).count();
        assert!((400..600).contains(&below_half), "{below_half} of 1000");
    }

    /// A config whose routes are `routes` (TOML `[[route]]` tables) over two upstreams.
    fn config(dir: &Path, name: &str, routes: &str) -> crate::config::Config {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[upstreams.app2]\nservers = [\"127.0.0.1:2\"]\n{routes}"
        );
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = "[[route]]\npath = \"/ws\"\ninspect = true\nfallback = \"app\"\n[[route]]\npath = \"/sub\"\ninspect = true\n[[route.subprotocol]]\nname = \"chat.v1\"\nupstream = \"app\"\n";

    fn test_dir() -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-polite-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn routed(gateway: &Gateway, path: &str, via: Via) -> RoutedTunnel {
        let runtime = gateway.runtime();
        let route = runtime
            .config
            .routes
            .iter()
            .find(|r| r.path == path)
            .unwrap();
        RoutedTunnel::new(route, via, "app")
    }

    fn reload(gateway: &Gateway, config: crate::config::Config) {
        gateway.replace_runtime(Runtime::new(config, &gateway.metrics).unwrap());
    }

    /// A drain beginning ends every inspected tunnel politely: with `Drain`, or with `Restart`
    /// when the drain follows a SIGUSR2 hand-over.
    #[tokio::test]
    async fn polite_end_is_drain_or_restart_when_a_drain_begins() {
        for (hand_over, want) in [(false, PoliteEnd::Drain), (true, PoliteEnd::Restart)] {
            let dir = test_dir();
            let gateway = gateway_for_tests(config(&dir, "a.toml", ROUTES));
            let tunnel = routed(&gateway, "/ws", Via::Fallback);
            let polite = tokio::spawn(polite_end(
                gateway.shutdown.clone(),
                gateway.runtime_changes(),
                tunnel,
            ));
            tokio::task::yield_now().await;
            assert!(!polite.is_finished(), "hand_over {hand_over}");
            let shutdown = gateway.shutdown.clone();
            if hand_over {
                shutdown.hand_over();
            }
            let _drain = tokio::spawn(async move { shutdown.drain(Duration::from_secs(60)).await });
            let end = timeout(LIMIT, polite).await.unwrap().unwrap();
            assert_eq!(end, want, "hand_over {hand_over}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Reloads that keep the tunnel's route and mapping leave it alone; the first one that
    /// removes the route, or remaps its subprotocol, ends it with `Reload`.
    #[tokio::test]
    async fn polite_end_is_reload_once_a_reload_unroutes_the_tunnel() {
        let dir = test_dir();
        let gateway = gateway_for_tests(config(&dir, "a.toml", ROUTES));
        let fallback = routed(&gateway, "/ws", Via::Fallback);
        let chat = routed(&gateway, "/sub", Via::Subprotocol("chat.v1".into()));
        let spawn = |t| {
            tokio::spawn(polite_end(
                gateway.shutdown.clone(),
                gateway.runtime_changes(),
                t,
            ))
        };
        let (fallback, chat) = (spawn(fallback), spawn(chat));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        // Same routes, other keys: both stay.
        let same = ROUTES.replace(
            "inspect = true\nfallback",
            "inspect = true\nclose_code = 4001\nfallback",
        );
        reload(&gateway, config(&dir, "b.toml", &same));
        settle().await;
        assert!(!fallback.is_finished() && !chat.is_finished());
        // chat.v1 now goes to app2: only that tunnel ends.
        reload(
            &gateway,
            config(
                &dir,
                "c.toml",
                &same.replace("upstream = \"app\"\n", "upstream = \"app2\"\n"),
            ),
        );
        let end = timeout(LIMIT, chat).await.unwrap().unwrap();
        assert_eq!(end, PoliteEnd::Reload);
        settle().await;
        assert!(!fallback.is_finished());
        // /ws removed.
        let without_ws = "[[route]]\npath = \"/other\"\nfallback = \"app\"\n";
        reload(&gateway, config(&dir, "d.toml", without_ws));
        let end = timeout(LIMIT, fallback).await.unwrap().unwrap();
        assert_eq!(end, PoliteEnd::Reload);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A reload between the tunnel's routing and its subscription is not missed: a receiver
    /// marked changed checks the current generation at once.
    #[tokio::test]
    async fn a_reload_before_the_tunnel_opened_is_checked_at_once() {
        let dir = test_dir();
        let gateway = gateway_for_tests(config(&dir, "a.toml", ROUTES));
        let tunnel = routed(&gateway, "/ws", Via::Fallback);
        reload(
            &gateway,
            config(
                &dir,
                "b.toml",
                "[[route]]\npath = \"/x\"\nfallback = \"app\"\n",
            ),
        );
        let mut changes = gateway.runtime_changes();
        changes.mark_changed();
        let end = timeout(LIMIT, polite_end(gateway.shutdown.clone(), changes, tunnel))
            .await
            .unwrap();
        assert_eq!(end, PoliteEnd::Reload);
        let _ = std::fs::remove_dir_all(dir);
    }
}
