//! Upstream pools: pick a server per `balance`, dial it (TCP, then TLS where configured), send
//! the upgrade request over HTTP/1.1 and read the answer (SPEC §4).
//!
//! Servers that fail to connect are marked down with a growing backoff and skipped; a connect
//! failure is retried on the next server because nothing has been sent yet. Once the request is
//! written nothing is retried. When every server is down the answer is 502 at once, without a
//! connect attempt.
//!
//! Server host names are resolved at every connect (the system resolver), so a name that moves
//! is followed without a reload; a name that does not resolve is a failed connect (502).
//!
//! The rooms, each using only those listed after it:
//!
//! ```text
//! mod.rs    Upstreams: every pool of one configuration, its http clients and health checks
//! upgrade   the HTTP/1.1 upgrade client: one request head out, one Answer in
//! http      the keep-alive client of an `http` upstream (PoolConnector, ProgressBody, forward)
//! health    active health checks and the start-up name check
//! pool      Pool, Server, ServerLease: the passive and active verdicts, connect with failover
//! affinity  PURE: a request's key for `balance = "hash"` (header, cookie, query, claim, IP)
//! balance   the pick order (round robin, least connections, rendezvous hashing of that key)
//! dial      the Connect trait and the Dialer: TCP, PROXY header, TLS
//! service   the keep-alive client of one of the gateway's own services (forward auth)
//! ```

pub(crate) mod affinity;
mod balance;
mod dial;
pub(crate) mod health;
mod http;
mod pool;
mod service;
mod upgrade;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response};
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::Reject;
use crate::metrics::Metrics;
use crate::proxy_protocol::ProxiedAddrs;
use crate::shutdown::Shutdown;

pub(crate) use self::http::{ForwardBody, HTTP_AUTHORITY};
pub(crate) use self::pool::{Pool, PoolError, ServerLease};
pub(crate) use self::service::{ServiceClient, service_client};
pub(crate) use self::upgrade::{Answer, RelayBody};

/// All upstreams of one configuration.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pools: BTreeMap<String, Arc<Pool>>,
    /// One keep-alive client per pool, for ordinary requests (`http = "NAME"`).
    http: BTreeMap<String, http::HttpClient>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    checks: health::Checks,
}

impl Upstreams {
    /// Builds every pool of `config`, with its per-server series in `metrics`. No connection is
    /// made and no health check runs until [`Upstreams::start_health_checks`].
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Result<Self, PoolError> {
        let connect_timeout = config.limits.upstream_connect_timeout;
        let pools: BTreeMap<String, Arc<Pool>> = config
            .upstreams
            .values()
            .map(|u| Ok((u.name.clone(), Arc::new(Pool::new(u, metrics)?))))
            .collect::<Result<_, PoolError>>()?;
        let http = pools
            .iter()
            .map(|(name, pool)| (name.clone(), http::client(pool, connect_timeout)))
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
    pub(crate) fn start_health_checks(&self, shutdown: &Shutdown) {
        let timeouts = health::Timeouts {
            connect: self.connect_timeout,
            response: self.handshake_timeout,
        };
        self.checks.start(self.pools.values(), timeouts, shutdown);
    }

    /// Stops the health checks (this configuration generation was replaced) and forgets their
    /// verdicts, so connections still on this generation fall back to passive marking only.
    pub(crate) fn stop_health_checks(&self) {
        self.checks.stop();
        for pool in self.pools.values() {
            pool.forget_checks();
        }
    }

    /// `(upstream, server)` labels of every server, for dropping series a reload removed.
    pub(crate) fn server_labels(&self) -> Vec<(String, String)> {
        self.pools
            .values()
            .flat_map(|p| {
                p.servers()
                    .iter()
                    .map(|s| (p.name().to_owned(), s.label.clone()))
            })
            .collect()
    }

    /// The pool named `name` (validated configs only name existing ones).
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Connects to a server of `pool` and sends `request` as an HTTP/1.1 upgrade. `client` is the
    /// client connection's two ends, for the pool's `send_proxy_protocol` header; `key` is the
    /// request's affinity key for the server pick ([`Pool::affinity_key`]).
    pub(crate) async fn upgrade(
        &self,
        pool: &Pool,
        request: Request<()>,
        client: ProxiedAddrs,
        key: Option<u64>,
    ) -> Result<Answer, Reject> {
        let (stream, lease) = pool.connect(self.connect_timeout, client, key).await?;
        upgrade::send(stream, lease, request, self.handshake_timeout, pool.name()).await
    }

    /// Sends an ordinary request to the pool `name` over its keep-alive client and returns the
    /// upstream's answer as soon as its head arrives; both bodies stream.
    ///
    /// Failures: no server reachable 502 (504 when the last connect timed out); the upstream
    /// neither took request bytes nor answered for `upstream_handshake_timeout` 504 (the timer
    /// restarts on every request body chunk, so a long upload is not cut off); any other error
    /// before the answer head 502.
    /// `key` is the request's affinity key ([`Pool::affinity_key`]): with one, the request goes
    /// to its server in hash order, as an upgrade would.
    pub(crate) async fn forward(
        &self,
        name: &str,
        request: Request<ForwardBody>,
        key: Option<u64>,
    ) -> Result<Response<Incoming>, Reject> {
        let client = self.http.get(name).ok_or(Reject::UpstreamUnreachable)?;
        let affinity = key
            .zip(self.pools.get(name))
            .and_then(|(key, pool)| http::affine_authority(&pool.pick_order(Some(key))));
        http::forward(client, name, request, affinity, self.handshake_timeout).await
    }
}

/// Runs the upgrade exchange on `io` as [`Upstreams::upgrade`] does and returns the switched
/// connection with its early bytes (panics on any other answer).
#[cfg(test)]
pub(crate) async fn switch_for_tests(
    io: crate::io::UpstreamStream,
    request: Request<()>,
) -> (crate::io::UpstreamStream, bytes::Bytes) {
    let server = Arc::clone(&pool::tests::pool(crate::config::Balance::RoundRobin, 1).servers()[0]);
    let lease = ServerLease::new(server);
    match upgrade::send(io, lease, request, Duration::from_secs(5), "t").await {
        Ok(Answer::Switched { io, early, .. }) => (io, early),
        _ => panic!("the upstream did not switch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;

    #[test]
    fn stopping_the_checks_forgets_their_verdicts() {
        let ups = Upstreams {
            pools: BTreeMap::from([(
                "p".to_owned(),
                Arc::new(pool::tests::pool(Balance::RoundRobin, 1)),
            )]),
            http: BTreeMap::new(),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            checks: health::Checks::default(),
        };
        let only = &ups.pools["p"].servers()[0];
        only.check_failed();
        assert!(!only.in_rotation());
        ups.stop_health_checks();
        assert!(only.in_rotation());
    }
}
