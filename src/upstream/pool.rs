//! One `[upstreams.NAME]`: its servers, the two verdicts on each, and connecting to the first
//! server that answers, in the balancer's order.
//!
//! Two verdicts decide whether a server is in rotation, and it is only while neither says down:
//! - passive: a failed connect by traffic marks it down for a backoff (1s, doubling to 30s);
//!   after the backoff traffic tries it again, and a successful connect clears it.
//! - active (`health`, see [`super::health`]): a failed check takes it out until a check passes;
//!   a passing check also clears the passive backoff, since the check just reached it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::request::Parts;
use prometheus_client::metrics::histogram::Histogram;

use super::affinity;
use super::balance::{self, Balancer, Slot};
use super::dial::{self, Connect, Dialer};
use crate::config::{Balance, HashKey, HealthCheck, ServerAddr, UpstreamConfig};
use crate::error::Reject;
use crate::io::UpstreamStream;
use crate::metrics::{Metrics, ServerMetrics};
use crate::proxy_protocol::ProxiedAddrs;
use crate::tls;

/// First backoff after a failed connect; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors building pools from a validated config (TLS material that cannot be loaded).
#[derive(Debug, thiserror::Error)]
#[error("upstream {name}: {source}")]
pub struct PoolError {
    name: String,
    source: tls::TlsError,
}

impl PoolError {
    /// `name` could not be built: its TLS material did not load.
    pub(crate) fn new(name: String, source: tls::TlsError) -> Self {
        PoolError { name, source }
    }
}

/// One `[upstreams.NAME]`: its servers and how to reach them.
#[derive(Debug)]
pub(crate) struct Pool {
    name: String,
    servers: Vec<Arc<Server>>,
    balancer: Balancer,
    dialer: Dialer,
    health: Option<HealthCheck>,
    connect_seconds: Histogram,
}

/// One server of a pool, with its health and load.
#[derive(Debug)]
pub(crate) struct Server {
    addr: ServerAddr,
    /// `host:port` as written in the config, for logs.
    pub(crate) label: String,
    /// The stable hash of `label`: the server's identity for rendezvous hashing.
    id: u64,
    health: Mutex<Health>,
    active: AtomicUsize,
    metrics: ServerMetrics,
}

/// The two verdicts on a server (see the module docs).
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failed connects by traffic (passive).
    failures: u32,
    /// End of the passive backoff.
    down_until: Option<Instant>,
    /// Length of the current passive backoff.
    backoff: Duration,
    /// The last active health check failed.
    check_failed: bool,
}

impl Health {
    /// What `switchyard_upstream_server_up` says: neither verdict is "down".
    fn looks_up(&self) -> bool {
        self.failures == 0 && !self.check_failed
    }
}

/// A server's share of an open tunnel: counts toward `least_connections` and the server's
/// `active_tunnels` until dropped.
#[derive(Debug)]
pub(crate) struct ServerLease {
    server: Arc<Server>,
}

impl ServerLease {
    pub(crate) fn new(server: Arc<Server>) -> Self {
        server.active.fetch_add(1, Ordering::AcqRel);
        server.metrics.tunnel_opened();
        ServerLease { server }
    }

    /// The server this lease is on.
    pub(crate) fn server(&self) -> &Server {
        &self.server
    }
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
        self.server.metrics.tunnel_closed();
    }
}

impl Pool {
    /// The pool of one upstream, all servers in rotation.
    pub(crate) fn new(config: &UpstreamConfig, metrics: &Metrics) -> Result<Self, PoolError> {
        let dialer = Dialer::new(config).map_err(|source| PoolError {
            name: config.name.clone(),
            source,
        })?;
        Ok(Pool {
            name: config.name.clone(),
            servers: config
                .servers
                .iter()
                .map(|addr| {
                    let label = dial::format_addr(addr);
                    Arc::new(Server {
                        metrics: metrics.upstream_server(&config.name, &label),
                        id: balance::stable_hash(label.as_bytes()),
                        label,
                        addr: addr.clone(),
                        health: Mutex::default(),
                        active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            balancer: Balancer::new(config.balance.clone()),
            dialer,
            health: config.health.clone(),
            connect_seconds: metrics.upstream_connect_histogram(),
        })
    }

    /// The servers, in config order.
    pub(crate) fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The active health check, when configured.
    pub(crate) fn health_check(&self) -> Option<&HealthCheck> {
        self.health.as_ref()
    }

    /// Where this pool finds a request's affinity key: `Some` for `balance = "hash"`.
    pub(crate) fn hash_key(&self) -> Option<&HashKey> {
        match self.balancer.policy() {
            Balance::Hash(key) => Some(key),
            Balance::RoundRobin | Balance::LeastConnections => None,
        }
    }

    /// The affinity key of a request for this pool: `None` unless `balance = "hash"` and the
    /// request has a value for its `hash_key` (see [`affinity::key`]).
    pub(crate) fn affinity_key(
        &self,
        parts: &Parts,
        client: IpAddr,
        claims: Option<&crate::auth::Claims>,
    ) -> Option<u64> {
        affinity::key(self.hash_key()?, parts, client, claims)
    }

    /// The pool's name, for logs and labels.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How this pool's servers are reached (for the health checks, which dial as traffic does).
    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Servers in the order to try them now: the balance policy's pick first, servers marked down
    /// left out. Empty when every server is down (answered 502 at once). `key` is the request's
    /// affinity key, for policies that pick by request.
    fn candidates(&self, key: Option<u64>) -> Vec<Arc<Server>> {
        self.pick_order(key)
            .into_iter()
            .map(|i| Arc::clone(&self.servers[i]))
            .collect()
    }

    /// [`Pool::candidates`] as indices into [`Pool::servers`].
    pub(crate) fn pick_order(&self, key: Option<u64>) -> Vec<usize> {
        let now = Instant::now();
        let slots: Vec<Slot> = self
            .servers
            .iter()
            .map(|s| Slot {
                up: s.is_up(now),
                active: s.active.load(Ordering::Acquire),
                id: s.id,
            })
            .collect();
        self.balancer.pick(&slots, key)
    }

    /// Connects to the servers at `preferred` (indices, in the order a request's key picked
    /// them, those down by now skipped) and, failing them all, to the other servers in rotation
    /// order. Also says whether the server reached is `preferred[0]`. For the keep-alive client
    /// of a hash pool, whose connector learns a request's pick only through its pool key.
    pub(crate) async fn connect_preferring(
        &self,
        timeout: Duration,
        preferred: &[usize],
    ) -> Result<(UpstreamStream, bool), Reject> {
        let now = Instant::now();
        let first = preferred.first().and_then(|&i| self.servers.get(i));
        let mut candidates: Vec<Arc<Server>> = preferred
            .iter()
            .filter_map(|&i| self.servers.get(i))
            .filter(|s| s.is_up(now))
            .cloned()
            .collect();
        for server in self.candidates(None) {
            if !candidates.iter().any(|c| Arc::ptr_eq(c, &server)) {
                candidates.push(server);
            }
        }
        let (stream, server) = self
            .connect_in(&self.dialer, timeout, None, candidates)
            .await?;
        Ok((stream, first.is_some_and(|f| Arc::ptr_eq(f, &server))))
    }

    /// Connects to the first server that answers, in `candidates` order, for a tunnel: the lease
    /// counts it on that server until dropped. With `send_proxy_protocol` the header naming
    /// `client` is part of the connect (within `timeout`).
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
        client: ProxiedAddrs,
        key: Option<u64>,
    ) -> Result<(UpstreamStream, ServerLease), Reject> {
        let (stream, server) = self.connect_any(timeout, Some(client), key).await?;
        Ok((stream, ServerLease::new(server)))
    }

    /// [`Pool::connect_via`] with the pool's own dialer.
    pub(crate) async fn connect_any(
        &self,
        timeout: Duration,
        client: Option<ProxiedAddrs>,
        key: Option<u64>,
    ) -> Result<(UpstreamStream, Arc<Server>), Reject> {
        self.connect_via(&self.dialer, timeout, client, key).await
    }

    /// Connects to the first server that answers, in `candidates` order; every server that fails
    /// is marked down. Nothing has been sent on any of them, so trying the next is safe.
    async fn connect_via<C: Connect>(
        &self,
        dialer: &C,
        timeout: Duration,
        client: Option<ProxiedAddrs>,
        key: Option<u64>,
    ) -> Result<(C::Stream, Arc<Server>), Reject> {
        self.connect_in(dialer, timeout, client, self.candidates(key))
            .await
    }

    /// [`Pool::connect_via`] over `candidates`, in that order.
    async fn connect_in<C: Connect>(
        &self,
        dialer: &C,
        timeout: Duration,
        client: Option<ProxiedAddrs>,
        candidates: Vec<Arc<Server>>,
    ) -> Result<(C::Stream, Arc<Server>), Reject> {
        let mut last = Reject::UpstreamUnreachable;
        for server in &candidates {
            let started = Instant::now();
            match tokio::time::timeout(timeout, dialer.connect(&server.addr, client)).await {
                Ok(Ok(stream)) => {
                    self.connect_seconds
                        .observe(started.elapsed().as_secs_f64());
                    server.mark_up();
                    return Ok((stream, Arc::clone(server)));
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %self.name, server = %server.label, error = %e, "upstream connect failed");
                    last = Reject::UpstreamUnreachable;
                }
                Err(_) => {
                    tracing::warn!(upstream = %self.name, server = %server.label, timeout = ?timeout, "upstream connect timed out");
                    last = Reject::UpstreamTimeout;
                }
            }
            server.mark_down();
        }
        // Every server failed, one after the other: restart each backoff from now, so that the
        // first ones tried are not back before the last one failed and the next requests get
        // their 502 at once instead of waiting through the same timeouts again.
        for server in &candidates {
            server.extend_down();
        }
        Err(last)
    }

    /// Forgets the active verdicts (the checks of this generation stopped).
    pub(crate) fn forget_checks(&self) {
        for server in &self.servers {
            server.lock().check_failed = false;
        }
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address to dial.
    pub(crate) fn addr(&self) -> &ServerAddr {
        &self.addr
    }

    /// Whether traffic may use this server now (neither verdict says down).
    #[cfg(test)]
    pub(crate) fn in_rotation(&self) -> bool {
        self.is_up(Instant::now())
    }

    fn is_up(&self, now: Instant) -> bool {
        let health = self.lock();
        !health.check_failed && health.down_until.is_none_or(|t| t <= now)
    }

    /// Passive: a connect by traffic failed; out of rotation for a growing backoff.
    fn mark_down(&self) {
        let mut health = self.lock();
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << health.failures.min(5))
            .min(MAX_BACKOFF);
        health.failures = health.failures.saturating_add(1);
        health.backoff = backoff;
        health.down_until = Some(Instant::now() + backoff);
        self.metrics.connect_failed();
        self.metrics.set_up(false);
    }

    /// Passive: restarts a running backoff from now (see `connect_via`).
    fn extend_down(&self) {
        let mut health = self.lock();
        if health.down_until.is_some() {
            health.down_until = Some(Instant::now() + health.backoff);
        }
    }

    /// Passive: a connect by traffic succeeded; the backoff is over.
    fn mark_up(&self) {
        let mut health = self.lock();
        health.failures = 0;
        health.down_until = None;
        health.backoff = Duration::ZERO;
        self.metrics.set_up(health.looks_up());
    }

    /// Active: a health check passed. Back in rotation, passive backoff cleared too. Returns
    /// whether the server was out before (for logging transitions only).
    pub(crate) fn check_passed(&self) -> bool {
        let mut health = self.lock();
        let was_out = !health.looks_up();
        *health = Health::default();
        self.metrics.set_up(true);
        was_out
    }

    /// Active: a health check failed. Out of rotation until a check passes. Returns whether the
    /// server was in before.
    pub(crate) fn check_failed(&self) -> bool {
        let mut health = self.lock();
        let was_in = !health.check_failed;
        health.check_failed = true;
        self.metrics.set_up(false);
        was_in
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// A pool of `n` servers on 127.0.0.1:9000.. (nothing listens: tests dial through fakes).
    pub(crate) fn pool(balance: Balance, n: usize) -> Pool {
        Pool::new(
            &UpstreamConfig {
                name: "p".into(),
                servers: (0..n)
                    .map(|i| ServerAddr {
                        host: "127.0.0.1".into(),
                        port: 9000 + i as u16,
                    })
                    .collect(),
                balance,
                tls: None,
                send_proxy_protocol: None,
                health: None,
            },
            &Metrics::default(),
        )
        .unwrap()
    }

    fn ports(p: &Pool) -> Vec<u16> {
        p.candidates(None).iter().map(|s| s.addr.port).collect()
    }

    fn failures(p: &Pool) -> Vec<u32> {
        p.servers.iter().map(|s| s.lock().failures).collect()
    }

    /// What a scripted server does when dialed.
    #[derive(Debug, Clone, Copy)]
    enum Dial {
        Accept,
        Refuse,
        Hang,
    }

    /// A dialer that answers per port from a script and records the ports it was asked for.
    #[derive(Debug)]
    struct Scripted {
        script: BTreeMap<u16, Dial>,
        dialed: Mutex<Vec<u16>>,
    }

    impl Scripted {
        fn new(script: &[(u16, Dial)]) -> Self {
            Scripted {
                script: script.iter().copied().collect(),
                dialed: Mutex::default(),
            }
        }

        fn dialed(&self) -> Vec<u16> {
            std::mem::take(&mut *self.dialed.lock().unwrap())
        }
    }

    impl Connect for Scripted {
        /// The port that accepted.
        type Stream = u16;

        async fn connect(
            &self,
            addr: &ServerAddr,
            _client: Option<ProxiedAddrs>,
        ) -> std::io::Result<u16> {
            self.dialed.lock().unwrap().push(addr.port);
            match self.script.get(&addr.port).copied().unwrap_or(Dial::Refuse) {
                Dial::Accept => Ok(addr.port),
                Dial::Refuse => Err(std::io::ErrorKind::ConnectionRefused.into()),
                Dial::Hang => std::future::pending().await,
            }
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn round_robin_rotates_the_first_pick() {
        let p = pool(Balance::RoundRobin, 3);
        assert_eq!(ports(&p), [9000, 9001, 9002]);
        assert_eq!(ports(&p), [9001, 9002, 9000]);
        assert_eq!(ports(&p), [9002, 9000, 9001]);
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let p = pool(Balance::LeastConnections, 3);
        p.servers[0].active.store(2, Ordering::Release);
        p.servers[1].active.store(1, Ordering::Release);
        assert_eq!(ports(&p)[0], 9002);
    }

    #[test]
    fn down_servers_are_skipped_until_their_backoff_ends() {
        let p = pool(Balance::RoundRobin, 2);
        p.servers[0].mark_down();
        assert_eq!(ports(&p), [9001]);
        assert_eq!(ports(&p), [9001]);
        p.servers[1].mark_down();
        assert!(p.candidates(None).is_empty());
        p.servers[0].mark_up();
        assert_eq!(ports(&p), [9000]);
    }

    #[tokio::test(start_paused = true)]
    async fn failover_marks_the_failed_servers_down() {
        let p = pool(Balance::RoundRobin, 3);
        let dialer = Scripted::new(&[
            (9000, Dial::Refuse),
            (9001, Dial::Hang),
            (9002, Dial::Accept),
        ]);
        let (port, server) = p.connect_via(&dialer, TIMEOUT, None, None).await.unwrap();
        assert_eq!((port, server.addr.port), (9002, 9002));
        assert_eq!(dialer.dialed(), [9000, 9001, 9002]);
        assert_eq!(failures(&p), [1, 1, 0]);
        // The next requests go straight to the one that answered.
        for _ in 0..2 {
            let (port, _) = p.connect_via(&dialer, TIMEOUT, None, None).await.unwrap();
            assert_eq!(port, 9002);
        }
        assert_eq!(dialer.dialed(), [9002, 9002]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_failure_decides_502_or_504() {
        // (script, reject)
        let rows: &[(&[(u16, Dial)], Reject)] = &[
            (
                &[(9000, Dial::Refuse), (9001, Dial::Refuse)],
                Reject::UpstreamUnreachable,
            ),
            (
                &[(9000, Dial::Refuse), (9001, Dial::Hang)],
                Reject::UpstreamTimeout,
            ),
            (
                &[(9000, Dial::Hang), (9001, Dial::Refuse)],
                Reject::UpstreamUnreachable,
            ),
        ];
        for (script, want) in rows {
            let p = pool(Balance::RoundRobin, 2);
            let dialer = Scripted::new(script);
            let err = p
                .connect_via(&dialer, TIMEOUT, None, None)
                .await
                .unwrap_err();
            assert_eq!(&err, want, "{script:?}");
            assert_eq!(dialer.dialed(), [9000, 9001]);
            assert_eq!(failures(&p), [1, 1]);
            // Both down now: answered without another attempt.
            let again = p.connect_via(&dialer, TIMEOUT, None, None).await;
            assert_eq!(again.unwrap_err(), Reject::UpstreamUnreachable);
            assert!(dialer.dialed().is_empty(), "{script:?}");
            assert_eq!(failures(&p), [1, 1]);
        }
    }

    #[tokio::test]
    async fn all_refused_then_502_without_connecting() {
        let refused = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = UpstreamConfig {
            name: "p".into(),
            servers: (0..2)
                .map(|_| ServerAddr {
                    host: "127.0.0.1".into(),
                    port: refused(),
                })
                .collect(),
            balance: Balance::RoundRobin,
            tls: None,
            send_proxy_protocol: None,
            health: None,
        };
        let p = Pool::new(&cfg, &Metrics::default()).unwrap();
        let me: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let client = ProxiedAddrs {
            source: me,
            destination: me,
        };
        let err = p.connect(TIMEOUT, client, None).await.unwrap_err();
        assert_eq!(err, Reject::UpstreamUnreachable);
        assert_eq!(failures(&p), [1, 1]);
        // Both down now: answered without another attempt.
        assert_eq!(
            p.connect(TIMEOUT, client, None).await.unwrap_err(),
            Reject::UpstreamUnreachable
        );
        assert_eq!(failures(&p), [1, 1]);
    }

    #[test]
    fn active_and_passive_verdicts_combine() {
        let p = pool(Balance::RoundRobin, 2);
        let s0 = &p.servers[0];
        // A failed check takes the server out; a successful connect by traffic (a race with the
        // check) does not put it back.
        assert!(s0.check_failed());
        assert!(!s0.check_failed(), "already out: not a transition");
        s0.mark_up();
        assert!(!s0.in_rotation());
        assert_eq!(ports(&p), [9001]);
        // A passing check puts it back.
        assert!(s0.check_passed());
        assert!(s0.in_rotation());
        // A passing check also ends a passive backoff: the check just reached the server.
        s0.mark_down();
        assert!(!s0.in_rotation());
        assert!(s0.check_passed());
        assert!(s0.in_rotation());
        assert!(!s0.check_passed(), "already in: not a transition");
        // Stopping the checks (reload) forgets their verdict.
        s0.check_failed();
        assert_eq!(ports(&p), [9001]);
        p.forget_checks();
        assert!(s0.in_rotation());
    }

    #[test]
    fn per_server_series_follow_the_verdicts_and_leases() {
        let metrics = Metrics::default();
        let cfg = UpstreamConfig {
            name: "chat".into(),
            servers: vec![ServerAddr {
                host: "127.0.0.1".into(),
                port: 9000,
            }],
            balance: Balance::RoundRobin,
            tls: None,
            send_proxy_protocol: None,
            health: None,
        };
        let p = Pool::new(&cfg, &metrics).unwrap();
        let series = |name: &str| format!(r#"{name}{{upstream="chat",server="127.0.0.1:9000"}}"#);
        let text = metrics.render();
        assert!(
            text.contains(&format!("{} 1", series("switchyard_upstream_server_up"))),
            "{text}"
        );
        let server = Arc::clone(&p.servers[0]);
        server.mark_down();
        let lease = ServerLease::new(Arc::clone(&server));
        let text = metrics.render();
        assert!(
            text.contains(&format!("{} 0", series("switchyard_upstream_server_up"))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{} 1",
                series("switchyard_upstream_connect_failures_total")
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{} 1",
                series("switchyard_upstream_server_active_tunnels")
            )),
            "{text}"
        );
        drop(lease);
        server.mark_up();
        let text = metrics.render();
        assert!(
            text.contains(&format!("{} 1", series("switchyard_upstream_server_up"))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{} 0",
                series("switchyard_upstream_server_active_tunnels")
            )),
            "{text}"
        );
        metrics.forget_upstream_server("chat", "127.0.0.1:9000");
        assert!(!metrics.render().contains("127.0.0.1:9000"));
    }
}
