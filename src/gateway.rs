//! The request path after the head is parsed: one hyper service for HTTP/1.1 and h2 that routes
//! the request, runs the pure handshake checks, talks to the upstream, answers the client, and
//! hands the two upgraded streams to the tunnel.
//!
//! Invariants (README.md, "How a request flows"): no byte reaches an upstream before the route and the
//! upstream are chosen; a non-101 upstream answer never becomes a tunnel; every failure is answered
//! through `Reject::response`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONNECTION;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::Instrument;

use crate::access::AccessRecord;
use crate::config::Config;
use crate::error::{Carrier, Reject};
use crate::handshake::{self, ForwardInfo, Kind, UpstreamUpgrade};
use crate::io;
use crate::limits::{ConnLimiter, ConnPermit};
use crate::metrics::Metrics;
use crate::proxy_protocol::ProxiedAddrs;
use crate::route::RouteTable;
use crate::shutdown::Shutdown;
use crate::tunnel::{self, TunnelConfig};
use crate::upstream::{self, Answer, ServerLease, Upstreams};

/// Body of every response the gateway sends: its own answers, and relayed upstream bodies.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Everything built from one configuration; replaced as a whole on reload, while connections
/// keep the generation they started with.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub routes: RouteTable,
    pub upstreams: Upstreams,
}

impl Runtime {
    /// Builds the routing table and upstream pools of `config`; the pools' per-server series
    /// live in `metrics` (the process-wide registry, so they survive reloads).
    pub fn new(config: Config, metrics: &Metrics) -> Result<Self, upstream::PoolError> {
        Ok(Runtime {
            routes: RouteTable::new(&config.routes),
            upstreams: Upstreams::new(&config, metrics)?,
            config,
        })
    }
}

/// Process-wide state shared by every listener and connection.
#[derive(Debug)]
pub struct Gateway {
    runtime: RwLock<Arc<Runtime>>,
    pub metrics: Metrics,
    pub limiter: Arc<ConnLimiter>,
    pub shutdown: Shutdown,
}

impl Gateway {
    /// A gateway running `runtime` (built with `metrics`); starts its health checks, so it must
    /// be called inside the tokio runtime.
    pub fn new(runtime: Runtime, metrics: Metrics) -> Arc<Self> {
        let shutdown = Shutdown::default();
        runtime.upstreams.start_health_checks(&shutdown);
        Arc::new(Gateway {
            runtime: RwLock::new(Arc::new(runtime)),
            metrics,
            limiter: Arc::default(),
            shutdown,
        })
    }

    /// The configuration generation new connections use.
    pub fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes `runtime` the generation for new connections; open connections and tunnels keep theirs.
    /// Health checks move to the new generation (the old one's stop), and the series of servers
    /// the new configuration no longer lists are dropped from `/metrics`.
    pub fn replace_runtime(&self, runtime: Runtime) {
        runtime.upstreams.start_health_checks(&self.shutdown);
        let kept = runtime.upstreams.server_labels();
        let old = std::mem::replace(
            &mut *self.runtime.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(runtime),
        );
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
pub struct Conn {
    pub gateway: Arc<Gateway>,
    pub runtime: Arc<Runtime>,
    /// The client: the socket's peer, or the PROXY header's source (SPEC §7).
    pub client: SocketAddr,
    /// The address the client connected to: the listener socket's, or the PROXY header's
    /// destination. Sent on as the destination of an upstream's `send_proxy_protocol` header.
    pub local: SocketAddr,
    pub tls: bool,
    pub carrier: Carrier,
    /// Shared with the tunnels this connection opens, so the connection slot lives as long as they do.
    pub permit: Arc<ConnPermit>,
}

/// What a dispatched request became.
enum Outcome {
    /// An answer that is a handshake outcome (logged and counted as one).
    Handshake(Response<ProxyBody>),
    /// An ordinary request proxied to the route's `http` upstream (not a handshake).
    Proxied(Response<ProxyBody>),
}

impl Conn {
    fn is_h2(&self) -> bool {
        self.carrier == Carrier::Http2
    }

    /// Both ends of the client connection, for an upstream's PROXY header.
    fn addrs(&self) -> ProxiedAddrs {
        ProxiedAddrs {
            source: self.client,
            destination: self.local,
        }
    }

    /// The hyper service: never fails, every problem is an HTTP answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let version = match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let mut rec = AccessRecord::new(self.client, version);
        let (mut parts, body) = req.into_parts();
        rec.path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let response = match self.dispatch(&mut parts, body, &mut rec).await {
            Ok(Outcome::Proxied(res)) => return Ok(res),
            Ok(Outcome::Handshake(res)) => res,
            Err((reject, body)) => {
                // h1 closes the connection after a failure, so an unread body is drained first;
                // h2 just resets this stream after the answer (RFC 9113 §8.1), the rest lives on.
                if let Some(body) = body.filter(|_| !self.is_h2()) {
                    drain_small_body(body).await;
                }
                reject
                    .response(self.carrier)
                    .map(|b| Full::new(b).map_err(|e| match e {}).boxed())
            }
        };
        let status = response.status().as_u16();
        self.gateway.metrics.handshake(rec.route_label(), status);
        rec.log_handshake(status);
        Ok(response)
    }

    /// Routes and handshakes one request. On failure the request body is handed back so that it
    /// can be drained before the connection closes (an unread body would turn the close into a
    /// reset that can destroy the answer in flight).
    async fn dispatch(
        self: &Arc<Self>,
        parts: &mut Parts,
        body: Incoming,
        rec: &mut AccessRecord,
    ) -> Result<Outcome, (Reject, Option<Incoming>)> {
        let rt = Arc::clone(&self.runtime);
        let h2 = self.is_h2();
        let host = match handshake::request_host(parts, h2) {
            Ok(h) => h.to_owned(),
            Err(r) => return Err((r, Some(body))),
        };
        rec.host = host.clone();
        let Some(route) = rt.routes.find(&host, &rec.path) else {
            return Err((Reject::NoRoute, Some(body)));
        };
        rec.route = Some(route.path.clone());
        let protocol = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_owned());
        let kind = match handshake::classify(parts, route, h2, protocol.as_deref()) {
            Ok(k) => k,
            Err(r) => return Err((r, Some(body))),
        };
        let fwd = ForwardInfo {
            client: self.client,
            tls: self.tls,
            host: &host,
        };
        match kind {
            Kind::Plain => match &route.http {
                Some(name) => {
                    rec.upstream = Some(name.clone());
                    Ok(Outcome::Proxied(
                        self.proxy_plain(parts, body, name, &fwd).await,
                    ))
                }
                None => Err((Reject::UpgradeRequired, Some(body))),
            },
            Kind::WebSocket => {
                let negotiated = match handshake::negotiate(parts, route, &rt.config.websocket, h2)
                {
                    Ok(n) => n,
                    Err(r) => return Err((r, Some(body))),
                };
                rec.ws_version = Some(negotiated.ws_version);
                rec.subprotocol = negotiated.subprotocol.clone();
                rec.upstream = Some(negotiated.upstream.clone());
                // RFC 8441 §5: h2 clients send no key; the upstream hop needs one of its own.
                let key = negotiated
                    .client_key
                    .clone()
                    .unwrap_or_else(|| handshake::key_from_bytes(rand::random()));
                let request = handshake::upstream_request(
                    parts,
                    UpstreamUpgrade::WebSocket {
                        negotiated: &negotiated,
                        key: &key,
                    },
                    &fwd,
                );
                let (head, io, lease) =
                    match self.upgrade_upstream(&negotiated.upstream, request).await {
                        Ok(Ok(switched)) => switched,
                        Ok(Err(refused)) => return Ok(Outcome::Handshake(refused)),
                        Err(r) => return Err((r, None)),
                    };
                handshake::check_upstream_101(&head, &key, negotiated.subprotocol.as_deref())
                    .map_err(|r| (r, None))?;
                let response = handshake::client_success(&negotiated, &head, h2);
                self.open_tunnel(parts, io, lease, rec.clone());
                Ok(Outcome::Handshake(response.map(|()| empty())))
            }
            Kind::Other { token, upstream } => {
                if let Err(r) = handshake::check_other_upgrade(parts, h2) {
                    return Err((r, Some(body)));
                }
                rec.upstream = Some(upstream.clone());
                let request = handshake::upstream_request(
                    parts,
                    UpstreamUpgrade::Other { token: &token },
                    &fwd,
                );
                let (head, io, lease) = match self.upgrade_upstream(&upstream, request).await {
                    Ok(Ok(switched)) => switched,
                    Ok(Err(refused)) => return Ok(Outcome::Handshake(refused)),
                    Err(r) => return Err((r, None)),
                };
                handshake::check_upstream_other_101(&head, &token).map_err(|r| (r, None))?;
                let response = handshake::client_success_other(&token, &head, h2);
                self.open_tunnel(parts, io, lease, rec.clone());
                Ok(Outcome::Handshake(response.map(|()| empty())))
            }
        }
    }

    /// Sends the upgrade upstream. `Ok(Err(response))` is a non-101 answer, already made safe to
    /// relay: the client connection is closed after it and never tunnelled (SPEC §4).
    async fn upgrade_upstream(
        &self,
        name: &str,
        request: Request<()>,
    ) -> Result<
        Result<(http::response::Parts, hyper::upgrade::Upgraded, ServerLease), Response<ProxyBody>>,
        Reject,
    > {
        let pool = self
            .runtime
            .upstreams
            .get(name)
            .ok_or(Reject::UpstreamUnreachable)?;
        match self
            .runtime
            .upstreams
            .upgrade(pool, request, self.addrs())
            .await?
        {
            Answer::Switched { head, io, lease } => Ok(Ok((head, io, lease))),
            // RFC 8441 §5 / RFC 9113 §8.5: a 2xx on an h2 CONNECT stream means "tunnel open",
            // so relaying an upstream's non-101 2xx would tell the client its WebSocket is up.
            Answer::Refused(response) if self.is_h2() && response.status().is_success() => {
                Err(Reject::UpstreamBadHandshake(format!(
                    "upstream answered {} instead of 101",
                    response.status()
                )))
            }
            Answer::Refused(response) => {
                let (mut head, body) = response.into_parts();
                handshake::strip_hop_by_hop(&mut head.headers);
                if !self.is_h2() {
                    head.headers
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(Err(Response::from_parts(head, body.boxed())))
            }
        }
    }

    /// Runs the tunnel once hyper hands over the client side (after our 101/200 is written).
    fn open_tunnel(
        self: &Arc<Self>,
        parts: &mut Parts,
        upstream_io: hyper::upgrade::Upgraded,
        lease: ServerLease,
        mut rec: AccessRecord,
    ) {
        let Some(client_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            tracing::error!("upgrade request without hyper's upgrade handle");
            return;
        };
        let gateway = Arc::clone(&self.gateway);
        let permit = Arc::clone(&self.permit);
        let tracked = gateway.shutdown.track();
        let active = gateway
            .metrics
            .tunnel_opened(rec.route_label(), rec.subprotocol.as_deref().unwrap_or(""));
        let cfg = TunnelConfig {
            idle_timeout: self.runtime.config.limits.idle_timeout,
            // Live, process-wide: /metrics shows the bytes of open tunnels too.
            counters: Some(gateway.metrics.tunnel_counters()),
        };
        let h2 = self.is_h2();
        let upstream = io::upstream_leg(upstream_io);
        rec.status = if h2 { 200 } else { 101 };
        rec.handshake = rec.started.elapsed();
        let task = async move {
            // Held while the tunnel runs. `tracked` outlives the access event, so a drain never
            // exits before the tunnel is logged; the rest is released before it, so the event
            // says the connection slot and metrics are already updated.
            let _tracked = tracked;
            let held = (permit, active, lease);
            let client_io = match client_upgrade.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "client went away before the tunnel opened");
                    return;
                }
            };
            let client = if h2 {
                io::h2_client_leg(client_io)
            } else {
                io::h1_client_leg(client_io)
            };
            let outcome = tunnel::run(client, upstream, &cfg, gateway.shutdown.expired()).await;
            gateway.metrics.tunnel_closed(outcome.duration);
            drop(held);
            rec.log_tunnel(&outcome);
        };
        tokio::spawn(task.in_current_span());
    }

    /// Reverse-proxies an ordinary request to the `http` upstream `name`: the pool picks the
    /// server (with failover), the keep-alive client reuses connections, both bodies stream.
    async fn proxy_plain(
        &self,
        parts: &Parts,
        body: Incoming,
        name: &str,
        fwd: &ForwardInfo<'_>,
    ) -> Response<ProxyBody> {
        let failure = |r: Reject| {
            r.response(self.carrier)
                .map(|b| Full::new(b).map_err(|e| match e {}).boxed())
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // The authority only keys the client's connection pool; the pool's connector picks the
        // server and the upstream sees the origin form (RFC 9112 §3.2.1).
        let Ok(uri) = format!("http://{}{path}", upstream::HTTP_AUTHORITY).parse::<Uri>() else {
            return failure(Reject::MalformedHead);
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        // Host, X-Forwarded-* and Forwarded come from `fwd`; hop-by-hop headers are dropped.
        *request.headers_mut() = handshake::forward_headers(&parts.headers, fwd);
        match self.runtime.upstreams.forward(name, request).await {
            Err(reject) => failure(reject),
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                handshake::strip_hop_by_hop(&mut head.headers);
                Response::from_parts(head, body.boxed())
            }
        }
    }
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Reads and discards a failed request's body (bounded) so the close that follows is clean.
async fn drain_small_body(body: Incoming) {
    const MAX: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), Limited::new(body, MAX).collect()).await;
}
