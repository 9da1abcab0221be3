//! Upstream pools: pick a server per `balance`, dial it (TCP, then TLS where configured), send
//! the upgrade request over HTTP/1.1 and read the answer (SPEC §4).
//!
//! Servers that fail to connect are marked down with a growing backoff and skipped; a connect
//! failure is retried on the next server because nothing has been sent yet. Once the request is
//! written nothing is retried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Balance, Config, ServerAddr, UpstreamConfig, UpstreamTls};
use crate::error::Reject;
use crate::io::UpstreamStream;
use crate::metrics::Metrics;
use crate::tls;

/// First backoff after a failed connect; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// All upstreams of one configuration.
#[derive(Debug)]
pub struct Upstreams {
    pools: BTreeMap<String, Arc<Pool>>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

/// One `[upstreams.NAME]`: its servers and how to reach them.
#[derive(Debug)]
pub struct Pool {
    name: String,
    servers: Vec<Arc<Server>>,
    balance: Balance,
    next: AtomicUsize,
    tls: Option<(Arc<rustls::ClientConfig>, UpstreamTls)>,
}

/// One server of a pool, with its health and load.
#[derive(Debug)]
pub struct Server {
    addr: ServerAddr,
    /// `host:port` as written in the config, for logs.
    pub label: String,
    health: Mutex<Health>,
    active: AtomicUsize,
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

/// A server's share of an open tunnel: counts toward `least_connections` until dropped.
#[derive(Debug)]
pub struct ServerLease {
    server: Arc<Server>,
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
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
    /// Builds every pool of `config`.
    pub fn new(config: &Config) -> Result<Self, PoolError> {
        let pools = config
            .upstreams
            .values()
            .map(|u| Ok((u.name.clone(), Arc::new(Pool::new(u)?))))
            .collect::<Result<_, PoolError>>()?;
        Ok(Upstreams {
            pools,
            connect_timeout: config.limits.upstream_connect_timeout,
            handshake_timeout: config.limits.upstream_handshake_timeout,
        })
    }

    /// The pool named `name` (validated configs only name existing ones).
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Connects to a server of `pool` and sends `request` as an HTTP/1.1 upgrade.
    pub async fn upgrade(
        &self,
        pool: &Pool,
        request: Request<()>,
        metrics: &Metrics,
    ) -> Result<Answer, Reject> {
        let (stream, lease) = pool.connect(self.connect_timeout, metrics).await?;
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
}

impl Pool {
    fn new(config: &UpstreamConfig) -> Result<Self, PoolError> {
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
                    Arc::new(Server {
                        label: format_addr(addr),
                        addr: addr.clone(),
                        health: Mutex::default(),
                        active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            balance: config.balance,
            next: AtomicUsize::new(0),
            tls,
        })
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

    /// Connects to the first server that answers, in `candidates` order.
    pub async fn connect(
        &self,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<(UpstreamStream, ServerLease), Reject> {
        let mut last = Reject::UpstreamUnreachable;
        for server in self.candidates() {
            let started = Instant::now();
            match tokio::time::timeout(timeout, self.dial(&server)).await {
                Ok(Ok(stream)) => {
                    metrics.upstream_connected(started.elapsed());
                    server.mark_up();
                    server.active.fetch_add(1, Ordering::AcqRel);
                    return Ok((stream, ServerLease { server }));
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
        Err(last)
    }

    async fn dial(&self, server: &Server) -> std::io::Result<UpstreamStream> {
        let tcp = TcpStream::connect((server.addr.host.as_str(), server.addr.port)).await?;
        crate::sockopt::tune(&tcp)?;
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

    /// A server for an ordinary HTTP request (the `http` upstream): the policy's first pick that is
    /// up, or the first server when all are marked down (a plain request can still be tried).
    pub fn pick(&self) -> ServerAddr {
        let first = self.candidates().into_iter().next();
        first.map_or_else(|| self.servers[0].addr.clone(), |s| s.addr.clone())
    }

    /// Whether connections to this pool use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl Server {
    fn is_up(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.down_until.is_none_or(|t| t <= now)
    }

    fn mark_down(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << health.failures.min(5))
            .min(MAX_BACKOFF);
        health.failures = health.failures.saturating_add(1);
        health.down_until = Some(Instant::now() + backoff);
    }

    fn mark_up(&self) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Health::default();
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
        Pool::new(&UpstreamConfig {
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
        })
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
