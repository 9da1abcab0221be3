//! The request path after the head is parsed, split by what varies:
//!
//! - `dispatch`: the carrier-neutral step (route, §3 checks, subprotocol, upstream choice,
//!   upstream upgrade, checked 101) returning a typed outcome;
//! - `hyper_front`: the front for hyper's HTTP/1.1 and h2 connections, turning their requests
//!   into a dispatch and its outcome into a response;
//! - `h3_front`: the same for HTTP/3 request streams (SPEC §12), a switched stream becoming the
//!   tunnel's client leg;
//! - `tunnels`: the task that runs and logs the tunnel of a switched handshake.
//!
//! This module holds what they share: the configuration generation ([`Runtime`]), the
//! process-wide [`Gateway`], and one client connection ([`Conn`]). Every failure is answered
//! through `Reject::response`.

mod dispatch;
mod h3_front;
mod hyper_front;
mod tunnels;

pub(crate) use h3_front::reject_h3;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::sync::watch;

use crate::auth::AuthChecks;
use crate::config::Config;
use crate::error::Carrier;
use crate::h2_watch::OpenStreams;
use crate::limits::{ConnLimiter, ConnPermit};
use crate::metrics::Metrics;
use crate::proxy_protocol::ProxiedAddrs;
use crate::route::RouteTable;
use crate::shutdown::Shutdown;
use crate::upstream::{self, Upstreams};

/// Body of every response the gateway sends: its own answers, and relayed upstream bodies
/// (from hyper's `http` client, or read by the upgrade client for a refused upgrade).
pub(crate) type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Everything built from one configuration; replaced as a whole on reload, while connections
/// keep the generation they started with.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) config: Config,
    pub(crate) routes: RouteTable,
    pub(crate) upstreams: Upstreams,
    /// The `[auth.NAME]` checks, with this generation's JWKS keys (SPEC §10).
    pub(crate) auth: AuthChecks,
}

impl Runtime {
    /// Builds the routing table and upstream pools of `config`; the pools' per-server series
    /// live in `metrics` (the process-wide registry, so they survive reloads).
    pub(crate) fn new(config: Config, metrics: &Metrics) -> Result<Self, upstream::PoolError> {
        Ok(Runtime {
            routes: RouteTable::new(&config.routes),
            upstreams: Upstreams::new(&config, metrics)?,
            auth: AuthChecks::new(&config, config.limits.upstream_connect_timeout)?,
            config,
        })
    }
}

/// Process-wide state shared by every listener and connection.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// The current generation; a watch so that inspected tunnels learn of a reload (SPEC §9)
    /// without polling.
    runtime: watch::Sender<Arc<Runtime>>,
    pub(crate) metrics: Metrics,
    pub(crate) limiter: Arc<ConnLimiter>,
    pub(crate) shutdown: Shutdown,
}

impl Gateway {
    /// A gateway running `runtime` (built with `metrics`); starts its health checks, so it must
    /// be called inside the tokio runtime.
    pub(crate) fn new(runtime: Runtime, metrics: Metrics) -> Arc<Self> {
        let shutdown = Shutdown::default();
        runtime.upstreams.start_health_checks(&shutdown);
        Arc::new(Gateway {
            runtime: watch::Sender::new(Arc::new(runtime)),
            metrics,
            limiter: Arc::default(),
            shutdown,
        })
    }

    /// The configuration generation new connections use.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime.borrow())
    }

    /// Sees every generation made current after this call, for a tunnel that ends politely when
    /// a reload unroutes it.
    pub(crate) fn runtime_changes(&self) -> watch::Receiver<Arc<Runtime>> {
        self.runtime.subscribe()
    }

    /// Makes `runtime` the generation for new connections; open connections and tunnels keep theirs.
    /// Health checks move to the new generation (the old one's stop), and the series of servers
    /// the new configuration no longer lists are dropped from `/metrics`.
    pub(crate) fn replace_runtime(&self, runtime: Runtime) {
        runtime.upstreams.start_health_checks(&self.shutdown);
        let kept = runtime.upstreams.server_labels();
        let old = self.runtime.send_replace(Arc::new(runtime));
        old.upstreams.stop_health_checks();
        for (upstream, server) in old.upstreams.server_labels() {
            if !kept.contains(&(upstream.clone(), server.clone())) {
                self.metrics.forget_upstream_server(&upstream, &server);
            }
        }
    }
}

/// One client connection: what every request on it shares.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) runtime: Arc<Runtime>,
    /// The client: the socket's peer, or the PROXY header's source (SPEC §7).
    pub(crate) client: SocketAddr,
    /// The address the client connected to: the listener socket's, or the PROXY header's
    /// destination. Sent on as the destination of an upstream's `send_proxy_protocol` header.
    pub(crate) local: SocketAddr,
    pub(crate) tls: bool,
    /// The SNI name the client sent (lower-cased), when its listener has `strict_sni`: every
    /// request's host must be this name (SPEC §3, 421).
    pub(crate) sni: Option<Box<str>>,
    /// How this connection's requests arrive; the handshake rules that differ by carrier ask it.
    pub(crate) carrier: Carrier,
    /// Shared with the tunnels this connection opens, so the connection slot lives as long as they do.
    pub(crate) permit: Arc<ConnPermit>,
    /// An h2 connection's open streams (its tunnels too): when it has none, h2 closes it.
    /// `None` on HTTP/1.1, where a tunnel is the connection and nothing needs the count (and an
    /// idle tunnel would otherwise pin a watch channel).
    pub(crate) streams: Option<OpenStreams>,
    /// `h3=":PORT"` on a TLS listener that also serves HTTP/3: every HTTP/1.1 and h2 answer
    /// carries it as `Alt-Svc` (SPEC §12, RFC 7838), so browsers learn of the QUIC endpoint.
    pub(crate) alt_svc: Option<http::HeaderValue>,
}

impl Conn {
    /// Both ends of the client connection, for an upstream's PROXY header.
    fn addrs(&self) -> ProxiedAddrs {
        ProxiedAddrs {
            source: self.client,
            destination: self.local,
        }
    }
}
