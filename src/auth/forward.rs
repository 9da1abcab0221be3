//! SPEC §10 `forward`: asking an HTTP service about a request. `GET url` with the client's
//! `forward_headers` (those present, no other client header) and the `X-Forwarded-*` fields,
//! over a keep-alive client of the upstream machinery (TCP, TLS for `https://`), all of it
//! bounded by `timeout`. 2xx allows (with the `copy_headers` of the answer), 401/403/3xx are
//! relayed, anything else fails closed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HOST, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::Asking;
use crate::config::ForwardAuth;
use crate::error::{Refusal, Reject};
use crate::upstream::{self, PoolError, ServiceClient};

/// A relayed refusal's body is cut off here (SPEC §10).
const RELAYED_BODY_LIMIT: usize = 4 * 1024;
/// An allowing answer's body is read up to this, so its connection can be reused; a longer one
/// is left unread and its connection dropped.
const DRAINED_BODY_LIMIT: usize = 64 * 1024;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_SUBPROTOCOL: HeaderName = HeaderName::from_static("x-forwarded-subprotocol");

/// One `[auth.NAME]` with `forward`, and its client.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) config: ForwardAuth,
    client: ServiceClient,
    /// `url` with the scheme the client's pool keys on; the service gets the origin form.
    target: Uri,
    host: HeaderValue,
}

impl Forward {
    /// The check `name` of `config`; a new connection to the service must connect within
    /// `connect_timeout` (and the whole check within `config.timeout`).
    pub(crate) fn new(
        name: &str,
        config: &ForwardAuth,
        connect_timeout: Duration,
    ) -> Result<Self, PoolError> {
        let client = upstream::service_client(
            &format!("auth.{name}"),
            config.server.clone(),
            config.tls,
            connect_timeout,
        )?;
        let authority = config.url.authority().map_or("", |a| a.as_str());
        let path = config.url.path_and_query().map_or("/", |p| p.as_str());
        // A validated URL's authority and path are valid in a URI and a header value.
        let target = format!("http://{authority}{path}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("http://auth/"));
        let host = HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("auth"));
        Ok(Forward {
            config: config.clone(),
            client,
            target,
            host,
        })
    }

    /// Asks the service; on a 2xx, the `copy_headers` of its answer to set upstream.
    pub(crate) async fn check(
        &self,
        asking: &Asking<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reject> {
        let request = self.request(asking);
        match tokio::time::timeout(self.config.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(Reject::AuthServiceTimeout),
        }
    }

    fn request(&self, asking: &Asking<'_>) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.target.clone();
        let h = request.headers_mut();
        for name in &self.config.forward_headers {
            for value in asking.headers.get_all(name) {
                h.append(name.clone(), value.clone());
            }
        }
        h.insert(HOST, self.host.clone());
        // SPEC §10: GET for every WebSocket handshake, also an extended CONNECT (RFC 8441 §5:
        // it stands for the HTTP/1.1 GET upgrade).
        let method = if asking.carrier.extended_connect() && *asking.method == Method::CONNECT {
            "GET"
        } else {
            asking.method.as_str()
        };
        let fields = [
            (X_FORWARDED_METHOD, Some(method)),
            (
                X_FORWARDED_PROTO,
                Some(if asking.tls { "https" } else { "http" }),
            ),
            (
                X_FORWARDED_HOST,
                Some(asking.host).filter(|h| !h.is_empty()),
            ),
            (X_FORWARDED_URI, Some(asking.path_and_query)),
            (X_FORWARDED_SUBPROTOCOL, asking.subprotocol),
        ];
        for (name, value) in fields {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        }
        // Only the address that connected to us: the service decides on what the gateway saw,
        // not on a chain the client may have written.
        if let Ok(v) = HeaderValue::from_str(&asking.client.ip().to_canonical().to_string()) {
            h.insert(X_FORWARDED_FOR, v);
        }
        request
    }

    async fn exchange(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reject> {
        let response = self.client.request(request).await.map_err(|e| {
            tracing::warn!(url = %self.config.url, error = %e, error_source = ?std::error::Error::source(&e), "auth service unreachable");
            Reject::AuthServiceFailed
        })?;
        let status = response.status();
        let (head, body) = response.into_parts();
        if status.is_success() {
            let _ = read_up_to(body, DRAINED_BODY_LIMIT).await;
            let copied = self
                .config
                .copy_headers
                .iter()
                .flat_map(|name| {
                    head.headers
                        .get_all(name)
                        .iter()
                        .map(move |v| (name.clone(), v.clone()))
                })
                .collect();
            return Ok(copied);
        }
        let relayed = status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status.is_redirection();
        if !relayed {
            tracing::warn!(url = %self.config.url, status = status.as_u16(), "auth service answered neither 2xx, 3xx, 401 nor 403");
            return Err(Reject::AuthServiceFailed);
        }
        let body = read_up_to(body, RELAYED_BODY_LIMIT).await;
        Err(Reject::AuthRefused(Box::new(Refusal {
            status,
            www_authenticate: head
                .headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .cloned()
                .collect(),
            location: status
                .is_redirection()
                .then(|| head.headers.get(LOCATION).cloned())
                .flatten(),
            body,
        })))
    }
}

/// The first `limit` bytes of `body` (fewer if it ends or fails first).
async fn read_up_to(mut body: Incoming, limit: usize) -> Bytes {
    let mut out = BytesMut::new();
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    out.freeze()
}
