//! The carrier-neutral request path: route, the §3 checks, subprotocol choice, the route's auth
//! check (SPEC §10), upstream choice, the upstream upgrade and its checked 101, returning a typed
//! [`Outcome`]. It never sees a
//! carrier's request or response types, only `http` parts and [`Carrier`], so every front
//! (hyper's HTTP/1.1 and h2 today) runs the same code.
//!
//! Invariants (README.md, "How a request flows"): no byte reaches an upstream before the route
//! and the upstream are chosen (and the route's auth check passed); a non-101 upstream answer
//! never becomes a tunnel.

use http::header::CONNECTION;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};

use super::Conn;
use super::tunnels::TunnelPlan;
use crate::access::AccessRecord;
use crate::auth::{self, Allowed, Asking, Check, Taken};
use crate::error::{Reject, UpstreamFault};
use crate::handshake::{self, ForwardInfo, Upgrade};
use crate::io;
use crate::limits::ConnPermit;
use crate::tunnel::Leg;
use crate::upstream::{Answer, ForwardBody, RelayBody, ServerLease};

/// What a request became, for its front to answer.
pub(crate) enum Outcome {
    /// An ordinary request for the route's `http` upstream `upstream`: the front forwards it
    /// with its body (not a handshake); `key` is its affinity key for that upstream (SPEC §10).
    Plain {
        upstream: String,
        host: String,
        key: Option<u64>,
    },
    /// The upstream switched and its 101 passed: answer `response`, then tunnel.
    Switched(Switched),
    /// The upstream refused the upgrade: its answer, made safe to relay. The client connection
    /// is never tunnelled after it (SPEC §4).
    Refused(Response<RelayBody>),
}

/// A handshake that succeeded on both hops.
pub(crate) struct Switched {
    /// The client's answer: 101 on HTTP/1.1, 200 on an extended CONNECT.
    pub(crate) response: Response<()>,
    /// The upstream connection, past its 101 head (with any bytes the upstream sent after it).
    pub(crate) upstream: Leg,
    /// The server's share of the tunnel, held while it runs.
    pub(crate) lease: ServerLease,
    /// An RFC 8441 tunnel stream's own connection slot (SPEC §6 "h2 limits"), held while it
    /// runs; `None` on HTTP/1.1, where the connection's permit is the tunnel's.
    pub(crate) stream_permit: Option<ConnPermit>,
    /// What the route and the 101 ask of the tunnel (inspection, lifetime cap).
    pub(crate) plan: TunnelPlan,
}

impl Conn {
    /// Routes and handshakes one request; `protocol` is the extended CONNECT's `:protocol`.
    /// Fills `rec` as it learns the host, route, subprotocol and upstream. A route's auth check
    /// (SPEC §10) takes its token parts out of `parts` and sets its headers on it, so `parts` is
    /// what is forwarded.
    pub(crate) async fn dispatch(
        &self,
        parts: &mut Parts,
        protocol: Option<&str>,
        rec: &mut AccessRecord,
    ) -> Result<Outcome, Reject> {
        rec.path = (parts.uri.path_and_query().map_or("/", |p| p.as_str())).to_owned();
        let carrier = self.carrier;
        handshake::check_method_form(parts, carrier)?;
        let host = handshake::request_host(parts, carrier)?.to_owned();
        rec.host.clone_from(&host);
        handshake::check_path(&rec.path)?;
        handshake::check_sni(&host, self.sni.as_deref())?;
        let route = self
            .runtime
            .routes
            .find(&host, &rec.path)
            .ok_or(Reject::NoRoute)?;
        rec.route = Some(route.path.clone());
        // SPEC §10: token parts leave the request before any §3 check or the subprotocol choice
        // reads it, and before the path is logged.
        let auth = route.auth.as_deref().and_then(|n| self.runtime.auth.get(n));
        let mut taken = Taken::default();
        if let Some(check) = auth {
            if let Some(pq) = check.take_tokens(&mut parts.headers, &rec.path, &mut taken) {
                parts.uri = with_path_and_query(&parts.uri, &pq)?;
                rec.path = pq;
            }
        }
        let kind = handshake::classify(parts, route, carrier, protocol)?;
        let ws = &self.runtime.config.websocket;
        let Some(upgrade) = Upgrade::check(parts, route, ws, carrier, kind, rand::random()) else {
            let upstream = route.http.clone().ok_or(Reject::UpgradeRequired)?;
            let allowed = match auth {
                Some(check) => Some(
                    self.authorize(check, parts, &host, None, &taken, rec)
                        .await?,
                ),
                None => None,
            };
            rec.upstream = Some(upstream.clone());
            let claims = allowed.as_ref().and_then(Allowed::claims);
            let key = (self.runtime.upstreams.get(&upstream))
                .and_then(|pool| pool.affinity_key(parts, self.client.ip(), claims));
            return Ok(Outcome::Plain {
                upstream,
                host,
                key,
            });
        };
        let upgrade = upgrade?;
        if let Upgrade::WebSocket { negotiated, .. } = &upgrade {
            rec.ws_version = Some(negotiated.ws_version);
        }
        rec.subprotocol = upgrade.subprotocol().map(str::to_owned);
        rec.upstream = Some(upgrade.upstream().to_owned());
        let fwd = self.forward_info(&host);
        // SPEC §6 "h2 limits": a tunnel stream counts like a connection (and against the rate),
        // admitted before anything is dialed; a refusal answers this stream only.
        let stream_permit = if carrier.extended_connect() {
            let limits = &self.runtime.config.limits;
            let now = std::time::Instant::now();
            Some(self.gateway.limiter.admit(self.client.ip(), limits, now)?)
        } else {
            None
        };
        // SPEC §10: after every §3 check (the stream admission included), before any upstream
        // is chosen or dialed.
        let allowed = match auth {
            Some(check) => Some(
                self.authorize(check, parts, &host, upgrade.subprotocol(), &taken, rec)
                    .await?,
            ),
            None => None,
        };
        let request = upgrade.upstream_request(parts, &fwd);
        let pool = self
            .runtime
            .upstreams
            .get(upgrade.upstream())
            .ok_or(Reject::UpstreamUnreachable)?;
        // SPEC §10 "Affinity": a `claim:` key reads the route's verified JWT.
        let claims = allowed.as_ref().and_then(Allowed::claims);
        let key = pool.affinity_key(parts, self.client.ip(), claims);
        let answer = self
            .runtime
            .upstreams
            .upgrade(pool, request, self.addrs(), key)
            .await?;
        let (head, upstream, lease) = match answer {
            Answer::Switched {
                head,
                io,
                early,
                lease,
            } => (head, io::upstream_leg(io, early), lease),
            Answer::Refused(response) => return self.refused(response).map(Outcome::Refused),
        };
        upgrade.check_upstream(&head)?;
        Ok(Outcome::Switched(Switched {
            response: upgrade.client_success(&head, carrier),
            upstream,
            lease,
            stream_permit,
            plan: TunnelPlan::new(route, &upgrade, &head),
        }))
    }

    /// Runs the route's auth check, counts and logs its outcome, and on success sets its
    /// headers on `parts` (the client's of the reserved names removed). The verified claims
    /// are in the answer, for the upstream choice.
    async fn authorize(
        &self,
        check: &Check,
        parts: &mut Parts,
        host: &str,
        subprotocol: Option<&str>,
        taken: &Taken,
        rec: &mut AccessRecord,
    ) -> Result<Allowed, Reject> {
        let asking = Asking {
            headers: &parts.headers,
            method: &parts.method,
            carrier: self.carrier,
            host,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            client: self.client,
            tls: self.tls,
            subprotocol,
        };
        let outcome = check.run(&asking, taken).await;
        let word = auth::outcome_word(&outcome);
        rec.auth = Some(word);
        self.gateway.metrics.auth(rec.route_label(), word);
        let allowed = outcome?;
        allowed.apply(&mut parts.headers);
        Ok(allowed)
    }

    /// A non-101 upstream answer, made safe to relay: hop-by-hop fields dropped and, where the
    /// carrier can say so, the client connection closed after it.
    fn refused(&self, response: Response<RelayBody>) -> Result<Response<RelayBody>, Reject> {
        if self.carrier.extended_connect() && response.status().is_success() {
            // RFC 8441 §5 / RFC 9113 §8.5: a 2xx on a CONNECT stream means "tunnel open", so
            // relaying an upstream's non-101 2xx would tell the client its WebSocket is up.
            return Err(Reject::UpstreamBadHandshake(
                UpstreamFault::SuccessInsteadOf101 {
                    status: response.status(),
                },
            ));
        }
        let (mut head, body) = response.into_parts();
        handshake::strip_hop_by_hop(&mut head.headers);
        if !self.carrier.extended_connect() {
            head.headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(Response::from_parts(head, body))
    }
}

/// `uri` with another path and query (a `query:` token taken out).
fn with_path_and_query(uri: &Uri, path_and_query: &str) -> Result<Uri, Reject> {
    let mut p = uri.clone().into_parts();
    p.path_and_query = Some(path_and_query.parse().map_err(|_| Reject::MalformedHead)?);
    Uri::from_parts(p).map_err(|_| Reject::MalformedHead)
}

impl Conn {
    /// What the upstream request's Host and X-Forwarded-* / Forwarded say of this client.
    fn forward_info<'a>(&self, host: &'a str) -> ForwardInfo<'a> {
        ForwardInfo {
            client: self.client,
            tls: self.tls,
            host,
        }
    }

    /// The request an ordinary request for `host` becomes for its route's `http` upstream,
    /// whatever carrier brought it. The URI's authority only keys the keep-alive client's
    /// connection pool (whose connector picks the server), so the upstream sees the origin form
    /// (RFC 9112 §3.2.1); hop-by-hop headers are dropped.
    pub(super) fn plain_request(
        &self,
        parts: &Parts,
        body: ForwardBody,
        host: &str,
    ) -> Result<Request<ForwardBody>, Reject> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{}{path}", crate::upstream::HTTP_AUTHORITY)
            .parse::<Uri>()
            .map_err(|_| Reject::MalformedHead)?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() =
            handshake::forward_headers(&parts.headers, &self.forward_info(host));
        Ok(request)
    }
}
