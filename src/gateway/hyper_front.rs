//! The front for hyper's HTTP/1.1 and h2 connections: turns a `Request<Incoming>` into a
//! [`Conn::dispatch`] call and its [`Outcome`] into a hyper response, hands the client stream
//! to the tunnel once hyper upgrades it, and forwards ordinary requests with their bodies.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::ALT_SVC;
use http::request::Parts;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::dispatch::Outcome;
use super::{Conn, ProxyBody};
use crate::access::AccessRecord;
use crate::error::Reject;
use crate::handshake;
use crate::io;
use crate::tunnel::Leg;

impl Conn {
    /// The hyper service: never fails, every problem is an HTTP answer.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let mut response = Arc::clone(&self).answer(req).await;
        if let Some(alt_svc) = &self.alt_svc {
            response.headers_mut().insert(ALT_SVC, alt_svc.clone());
        }
        Ok(response)
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let version = match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let mut rec = AccessRecord::new(self.client, version);
        let (mut parts, body) = req.into_parts();
        let protocol = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_owned());
        let response = match self
            .dispatch(&mut parts, protocol.as_deref(), &mut rec)
            .await
        {
            Ok(Outcome::Plain {
                upstream,
                host,
                key,
            }) => {
                return self.proxy_plain(&parts, body, &upstream, key, &host).await;
            }
            Ok(Outcome::Refused(response)) => response.map(|b| b.map_err(Into::into).boxed()),
            Ok(Outcome::Switched(switched)) => {
                let response = switched.response.map(|()| empty());
                match parts.extensions.remove::<OnUpgrade>() {
                    Some(client) => {
                        let client = client_leg(client, self.carrier.extended_connect());
                        let (up, lease) = (switched.upstream, switched.lease);
                        let (permit, plan) = (switched.stream_permit, switched.plan);
                        self.open_tunnel(client, up, lease, permit, plan, &rec);
                    }
                    None => tracing::error!("upgrade request without hyper's upgrade handle"),
                }
                response
            }
            Err(reject) => {
                // HTTP/1 closes the connection after a failure, so an unread body is drained
                // first (an unread body would turn the close into a reset that can destroy the
                // answer in flight); h2 just resets this stream after the answer (RFC 9113
                // §8.1), the rest lives on.
                if !self.carrier.extended_connect() {
                    drain_small_body(body).await;
                }
                rejected(&reject, &self)
            }
        };
        let status = response.status().as_u16();
        self.gateway.metrics.handshake(rec.route_label(), status);
        rec.log_handshake(status);
        response
    }

    /// Reverse-proxies an ordinary request to the `http` upstream `name`: the pool picks the
    /// server (with failover; by `key` for a hash pool), the keep-alive client reuses
    /// connections, both bodies stream.
    async fn proxy_plain(
        &self,
        parts: &Parts,
        body: Incoming,
        name: &str,
        key: Option<u64>,
        host: &str,
    ) -> Response<ProxyBody> {
        let body = body.map_err(Into::into).boxed_unsync();
        let request = match self.plain_request(parts, body, host) {
            Ok(request) => request,
            Err(reject) => return rejected(&reject, self),
        };
        match self.runtime.upstreams.forward(name, request, key).await {
            Err(reject) => rejected(&reject, self),
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                handshake::strip_hop_by_hop(&mut head.headers);
                Response::from_parts(head, body.map_err(Into::into).boxed())
            }
        }
    }
}

/// The client side of a tunnel, once hyper has written our answer and handed the stream over.
async fn client_leg(client: OnUpgrade, h2: bool) -> Option<Leg> {
    match client.await {
        Ok(upgraded) if h2 => Some(io::h2_client_leg(upgraded)),
        Ok(upgraded) => Some(io::h1_client_leg(upgraded)),
        Err(e) => {
            tracing::debug!(error = %e, "client went away before the tunnel opened");
            None
        }
    }
}

/// The gateway's own answer for `reject` on this connection's carrier.
fn rejected(reject: &Reject, conn: &Conn) -> Response<ProxyBody> {
    reject
        .response(conn.carrier)
        .map(|b| Full::new(b).map_err(|e| match e {}).boxed())
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Reads and discards a failed request's body (bounded) so the close that follows is clean.
async fn drain_small_body(body: Incoming) {
    const MAX: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), Limited::new(body, MAX).collect()).await;
}
