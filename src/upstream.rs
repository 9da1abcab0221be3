//! Upstream pools: pick a server per `balance`, dial it (TCP, then TLS where configured), send
//! the upgrade request over HTTP/1.1 and read the answer (SPEC §4).
//!
//! Servers that fail to connect are marked down with a growing backoff and skipped; a connect
//! failure is retried on the next server because nothing has been sent yet. Once the request is
//! written nothing is retried. When every server is down the answer is 502 at once, without a
//! connect attempt.
//!
//! Two verdicts decide whether a server is in rotation, and it is only while neither says down:
//! - passive: a failed connect by traffic marks it down for a backoff (1s, doubling to 30s);
//!   after the backoff traffic tries it again, and a successful connect clears it.
//! - active (`health`, see [`crate::health`]): a failed check takes it out until a check passes;
//!   a passing check also clears the passive backoff, since the check just reached it.
//!
//! Server host names are resolved at every connect (the system resolver), so a name that moves
//! is followed without a reload; a name that does not resolve is a failed connect (502).
//!
//! Ordinary requests for a route's `http` upstream go through one keep-alive client per pool
//! ([`Upstreams::forward`]) whose connector picks and dials servers exactly as the upgrades do.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{
    Balance, Config, HealthCheck, ProxyVersion, ServerAddr, UpstreamConfig, UpstreamTls,
};
use crate::error::Reject;
use crate::health;
use crate::io::UpstreamStream;
use crate::metrics::{Metrics, ServerMetrics};
use crate::proxy_protocol::{self, ProxiedAddrs};
use crate::shutdown::Shutdown;
use crate::tls;

/// First backoff after a failed connect; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long an idle keep-alive connection to an `http` upstream is kept for reuse.
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The keep-alive client of one pool: hyper-util's connection pool over [`PoolConnector`].
type HttpClient = Client<PoolConnector, ProgressBody>;

/// All upstreams of one configuration.
#[derive(Debug)]
pub struct Upstreams {
    pools: BTreeMap<String, Arc<Pool>>,
    /// One keep-alive client per pool, for ordinary requests (`http = "NAME"`).
    http: BTreeMap<String, HttpClient>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    checks: health::Checks,
}

/// One `[upstreams.NAME]`: its servers and how to reach them.
#[derive(Debug)]
pub struct Pool {
    name: String,
    servers: Vec<Arc<Server>>,
    balance: Balance,
    next: AtomicUsize,
    tls: Option<(Arc<rustls::ClientConfig>, UpstreamTls)>,
    /// `send_proxy_protocol`: a PROXY header first on every connection to a server.
    send_proxy: Option<ProxyVersion>,
    health: Option<HealthCheck>,
    connect_seconds: Histogram,
}

/// One server of a pool, with its health and load.
#[derive(Debug)]
pub struct Server {
    addr: ServerAddr,
    /// `host:port` as written in the config, for logs.
    pub label: String,
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
pub struct ServerLease {
    server: Arc<Server>,
}

impl ServerLease {
    fn new(server: Arc<Server>) -> Self {
        server.active.fetch_add(1, Ordering::AcqRel);
        server.metrics.tunnel_opened();
        ServerLease { server }
    }
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
        self.server.metrics.tunnel_closed();
    }
}

impl ServerLease {
    /// The server this lease is on.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

/// What an upstream answered to the upgrade request.
pub enum Answer {
    /// 101: the head, and the connection (with any bytes the upstream sent after its head).
    Switched {
        head: http::response::Parts,
        io: Upgraded,
        lease: ServerLease,
    },
    /// Anything else, relayed to the client and never tunnelled.
    Refused(Response<Incoming>),
}

/// Errors building pools from a validated config (TLS material that cannot be loaded).
#[derive(Debug, thiserror::Error)]
#[error("upstream {name}: {source}")]
pub struct PoolError {
    name: String,
    source: tls::TlsError,
}

impl Upstreams {
    /// Builds every pool of `config`, with its per-server series in `metrics`. No connection is
    /// made and no health check runs until [`Upstreams::start_health_checks`].
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Self, PoolError> {
        let connect_timeout = config.limits.upstream_connect_timeout;
        let pools: BTreeMap<String, Arc<Pool>> = config
            .upstreams
            .values()
            .map(|u| Ok((u.name.clone(), Arc::new(Pool::new(u, metrics)?))))
            .collect::<Result<_, PoolError>>()?;
        let http = pools
            .iter()
            .map(|(name, pool)| {
                let connector = PoolConnector {
                    pool: Arc::clone(pool),
                    timeout: connect_timeout,
                };
                let client = Client::builder(TokioExecutor::new())
                    // The gateway sets Host itself (the client's, as for upgrades).
                    .set_host(false)
                    .pool_idle_timeout(HTTP_IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .build(connector);
                (name.clone(), client)
            })
            .collect();
        Ok(Upstreams {
            pools,
            http,
            connect_timeout,
            handshake_timeout: config.limits.upstream_handshake_timeout,
            checks: health::Checks::default(),
        })
    }

    /// Starts the active health checks of every pool that has `health`; they run until
    /// [`Upstreams::stop_health_checks`], this value is dropped, or a drain begins.
    pub fn start_health_checks(&self, shutdown: &Shutdown) {
        let timeouts = health::Timeouts {
            connect: self.connect_timeout,
            response: self.handshake_timeout,
        };
        self.checks.start(self.pools.values(), timeouts, shutdown);
    }

    /// Stops the health checks (this configuration generation was replaced) and forgets their
    /// verdicts, so connections still on this generation fall back to passive marking only.
    pub fn stop_health_checks(&self) {
        self.checks.stop();
        for server in self.pools.values().flat_map(|p| &p.servers) {
            server.lock().check_failed = false;
        }
    }

    /// `(upstream, server)` labels of every server, for dropping series a reload removed.
    pub fn server_labels(&self) -> Vec<(String, String)> {
        self.pools
            .values()
            .flat_map(|p| p.servers.iter().map(|s| (p.name.clone(), s.label.clone())))
            .collect()
    }

    /// The pool named `name` (validated configs only name existing ones).
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Connects to a server of `pool` and sends `request` as an HTTP/1.1 upgrade. `client` is the
    /// client connection's two ends, for the pool's `send_proxy_protocol` header.
    pub async fn upgrade(
        &self,
        pool: &Pool,
        request: Request<()>,
        client: ProxiedAddrs,
    ) -> Result<Answer, Reject> {
        let (stream, lease) = pool.connect(self.connect_timeout, client).await?;
        let io = TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|_| Reject::UpstreamUnreachable)?;
        tokio::spawn(conn.with_upgrades());
        let request = request.map(|()| Empty::new());
        let mut response = match tokio::time::timeout(
            self.handshake_timeout,
            sender.send_request(request),
        )
        .await
        {
            Err(_) => return Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %pool.name, server = %lease.server.label, error = %e, "upstream handshake failed");
                return Err(Reject::UpstreamBadHandshake(
                    "no valid HTTP response".into(),
                ));
            }
            Ok(Ok(r)) => r,
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Answer::Refused(response));
        }
        let upgrade = hyper::upgrade::on(&mut response);
        let (head, _) = response.into_parts();
        let io = upgrade
            .await
            .map_err(|_| Reject::UpstreamBadHandshake("connection lost after 101".into()))?;
        Ok(Answer::Switched { head, io, lease })
    }

    /// Sends an ordinary request to the pool `name` over its keep-alive client and returns the
    /// upstream's answer as soon as its head arrives; both bodies stream.
    ///
    /// Failures: no server reachable 502 (504 when the last connect timed out); the upstream
    /// neither took request bytes nor answered for `upstream_handshake_timeout` 504 (the timer
    /// restarts on every request body chunk, so a long upload is not cut off); any other error
    /// before the answer head 502.
    pub async fn forward(
        &self,
        name: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, Reject> {
        let client = self.http.get(name).ok_or(Reject::UpstreamUnreachable)?;
        let progress = Arc::new(Progress::new());
        let request = request.map(|body| ProgressBody {
            inner: body,
            progress: Arc::clone(&progress),
        });
        tokio::select! {
            answer = client.request(request) => answer.map_err(|e| {
                let reject = connect_reject(&e).unwrap_or(Reject::UpstreamUnreachable);
                if reject == Reject::UpstreamUnreachable || reject == Reject::UpstreamTimeout {
                    tracing::warn!(upstream = name, error = %e, error_source = ?std::error::Error::source(&e), "http upstream failed");
                }
                reject
            }),
            () = progress.stalled_for(self.handshake_timeout) => Err(Reject::UpstreamTimeout),
        }
    }
}

impl Pool {
    /// The pool of one upstream, all servers in rotation.
    pub(crate) fn new(config: &UpstreamConfig, metrics: &Metrics) -> Result<Self, PoolError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let client = tls::upstream_client_config(t).map_err(|source| PoolError {
                    name: config.name.clone(),
                    source,
                })?;
                Some((client, t.clone()))
            }
        };
        Ok(Pool {
            name: config.name.clone(),
            servers: config
                .servers
                .iter()
                .map(|addr| {
                    let label = format_addr(addr);
                    Arc::new(Server {
                        metrics: metrics.upstream_server(&config.name, &label),
                        label,
                        addr: addr.clone(),
                        health: Mutex::default(),
                        active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            balance: config.balance,
            next: AtomicUsize::new(0),
            tls,
            send_proxy: config.send_proxy_protocol,
            health: config.health.clone(),
            connect_seconds: metrics.upstream_connect_histogram(),
        })
    }

    /// The servers, in config order.
    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The active health check, when configured.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health.as_ref()
    }

    /// The pool's name, for logs and labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Servers in the order to try them now: the balance policy's pick first, servers marked down
    /// left out. Empty when every server is down (answered 502 at once).
    fn candidates(&self) -> Vec<Arc<Server>> {
        let now = Instant::now();
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<Arc<Server>> = (0..n)
            .map(|i| Arc::clone(&self.servers[(start + i) % n]))
            .filter(|s| s.is_up(now))
            .collect();
        if self.balance == Balance::LeastConnections {
            // Stable sort keeps the rotation among equally loaded servers.
            order.sort_by_key(|s| s.active.load(Ordering::Acquire));
        }
        order
    }

    /// Connects to the first server that answers, in `candidates` order, for a tunnel: the lease
    /// counts it on that server until dropped. With `send_proxy_protocol` the header naming
    /// `client` is part of the connect (within `timeout`).
    pub async fn connect(
        &self,
        timeout: Duration,
        client: ProxiedAddrs,
    ) -> Result<(UpstreamStream, ServerLease), Reject> {
        let (stream, server) = self.connect_any(timeout, Some(client)).await?;
        Ok((stream, ServerLease::new(server)))
    }

    /// Connects to the first server that answers, in `candidates` order; every server that fails
    /// is marked down. Nothing has been sent on any of them, so trying the next is safe.
    async fn connect_any(
        &self,
        timeout: Duration,
        client: Option<ProxiedAddrs>,
    ) -> Result<(UpstreamStream, Arc<Server>), Reject> {
        let mut last = Reject::UpstreamUnreachable;
        let candidates = self.candidates();
        for server in &candidates {
            let started = Instant::now();
            match tokio::time::timeout(timeout, self.dial(server, client)).await {
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

    /// TCP (and TLS where configured) to `server`, unbounded: callers add the connect timeout.
    /// With `send_proxy_protocol` a PROXY header goes first, naming `client`, or for connections
    /// of the gateway's own (health checks, the `http` pool) the socket's own two ends.
    pub(crate) async fn dial(
        &self,
        server: &Server,
        client: Option<ProxiedAddrs>,
    ) -> std::io::Result<UpstreamStream> {
        let mut tcp = TcpStream::connect((server.addr.host.as_str(), server.addr.port)).await?;
        crate::sockopt::tune(&tcp)?;
        if let Some(version) = self.send_proxy {
            // Before TLS and before the request: the upstream reads it first (proxy-protocol.txt §2).
            let addrs = match client {
                Some(addrs) => addrs,
                None => ProxiedAddrs {
                    source: tcp.local_addr()?,
                    destination: tcp.peer_addr()?,
                },
            };
            tcp.write_all(&proxy_protocol::encode(version, addrs)?)
                .await?;
        }
        match &self.tls {
            None => Ok(UpstreamStream::Tcp(tcp)),
            Some((client_config, settings)) => {
                let name = tls::server_name_for(settings, &server.addr.host)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(Arc::clone(client_config))
                    .connect(name, tcp)
                    .await?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
        }
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address to dial.
    pub fn addr(&self) -> &ServerAddr {
        &self.addr
    }

    /// Whether traffic may use this server now (neither verdict says down).
    pub fn in_rotation(&self) -> bool {
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

    /// Passive: restarts a running backoff from now (see `connect_any`).
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

/// The connector of a pool's keep-alive client: every new connection goes to a server chosen by
/// the pool's balance, with failover and down-marking exactly as for upgrades. The client keys
/// its idle connections by the request URI's authority, which the gateway keeps constant per pool
/// ([`HTTP_AUTHORITY`]), so reuse is per pool and the server choice stays here.
#[derive(Debug, Clone)]
pub struct PoolConnector {
    pool: Arc<Pool>,
    timeout: Duration,
}

/// The authority of every request URI given to a pool's client. Only the connection pool sees
/// it; the upstream gets the origin form and the client's `Host`.
pub const HTTP_AUTHORITY: &str = "upstream";

impl tower_service::Service<Uri> for PoolConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let pool = Arc::clone(&self.pool);
        let timeout = self.timeout;
        Box::pin(async move {
            match pool.connect_any(timeout, None).await {
                Ok((stream, _)) => Ok(TokioIo::new(stream)),
                Err(reject) => Err(ConnectError(reject)),
            }
        })
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Why a pool's connector gave up: the same 502/504 decision as for upgrades.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(Reject);

/// The connector's verdict inside a client error, if the error is a failed connect.
fn connect_reject(error: &(dyn std::error::Error + 'static)) -> Option<Reject> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(ConnectError(reject)) = e.downcast_ref::<ConnectError>() {
            return Some(reject.clone());
        }
        cause = e.source();
    }
    None
}

/// When a forwarded request last made progress: sent a body chunk, or started.
#[derive(Debug)]
struct Progress {
    base: tokio::time::Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once `limit` has passed without progress.
    async fn stalled_for(&self, limit: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream, streamed frame by frame (never buffered
    /// whole); each frame the upstream takes counts as progress for the answer timeout.
    #[derive(Debug)]
    pub struct ProgressBody {
        #[pin]
        inner: Incoming,
        progress: Arc<Progress>,
    }
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if frame.is_ready() {
            this.progress.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `host:port`, with IPv6 literals in brackets.
pub fn format_addr(addr: &ServerAddr) -> String {
    if addr.host.contains(':') {
        format!("[{}]:{}", addr.host, addr.port)
    } else {
        format!("{}:{}", addr.host, addr.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Pool {
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
        p.candidates().iter().map(|s| s.addr.port).collect()
    }

    #[test]
    fn round_robin_rotates_the_first_pick() {
        let p = pool(Balance::RoundRobin, 3);
        assert_eq!(ports(&p), [9000, 9001, 9002]);
        assert_eq!(ports(&p), [9001, 9002, 9000]);
        assert_eq!(ports(&p), [9002, 9000, 9001]);
    }

    #[test]
    fn down_servers_are_skipped_until_their_backoff_ends() {
        let p = pool(Balance::RoundRobin, 2);
        p.servers[0].mark_down();
        assert_eq!(ports(&p), [9001]);
        assert_eq!(ports(&p), [9001]);
        p.servers[1].mark_down();
        assert!(p.candidates().is_empty());
        p.servers[0].mark_up();
        assert_eq!(ports(&p), [9000]);
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
        let timeout = Duration::from_secs(2);
        let me: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let client = ProxiedAddrs {
            source: me,
            destination: me,
        };
        let err = p.connect(timeout, client).await.unwrap_err();
        assert_eq!(err, Reject::UpstreamUnreachable);
        let tried = |p: &Pool| {
            p.servers
                .iter()
                .map(|s| s.lock().failures)
                .collect::<Vec<_>>()
        };
        assert_eq!(tried(&p), [1, 1]);
        // Both down now: answered without another attempt.
        assert_eq!(
            p.connect(timeout, client).await.unwrap_err(),
            Reject::UpstreamUnreachable
        );
        assert_eq!(tried(&p), [1, 1]);
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
        let ups = Upstreams {
            pools: BTreeMap::from([("p".to_owned(), Arc::new(pool(Balance::RoundRobin, 1)))]),
            http: BTreeMap::new(),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            checks: health::Checks::default(),
        };
        let only = &ups.pools["p"].servers[0];
        only.check_failed();
        assert!(ups.pools["p"].candidates().is_empty());
        ups.stop_health_checks();
        assert!(only.in_rotation());
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

    #[test]
    fn connect_errors_keep_the_502_504_decision() {
        let timeout = ConnectError(Reject::UpstreamTimeout);
        assert_eq!(connect_reject(&timeout), Some(Reject::UpstreamTimeout));
        let other = std::io::Error::other("reset");
        assert_eq!(connect_reject(&other), None);
    }

    #[tokio::test]
    async fn stall_timer_restarts_on_progress() {
        let progress = Progress::new();
        let limit = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let stalled = progress.stalled_for(limit);
        tokio::pin!(stalled);
        // Progress every 100ms for 600ms keeps the timer from firing.
        for _ in 0..6 {
            tokio::select! {
                () = &mut stalled => panic!("stalled while making progress"),
                () = tokio::time::sleep(Duration::from_millis(100)) => progress.touch(),
            }
        }
        tokio::time::timeout(Duration::from_secs(5), stalled)
            .await
            .expect("fires once progress stops");
        assert!(started.elapsed() >= Duration::from_millis(850));
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let p = pool(Balance::LeastConnections, 3);
        p.servers[0].active.store(2, Ordering::Release);
        p.servers[1].active.store(1, Ordering::Release);
        assert_eq!(ports(&p)[0], 9002);
    }

    #[test]
    fn ipv6_servers_are_bracketed() {
        assert_eq!(
            format_addr(&ServerAddr {
                host: "::1".into(),
                port: 80
            }),
            "[::1]:80"
        );
    }
}
