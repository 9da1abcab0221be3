//! Every failure the gateway answers itself, and the one place that maps each to its HTTP answer.
//!
//! `Reject::response` is the only code that turns a failure into a status, headers and body
//! (SPEC §3 and §4). The `match` arms have no `_` so that a new variant forces a decision.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, UPGRADE};
use http::{HeaderValue, Response, StatusCode};

/// Why a handshake was not tunnelled. Client faults are 4xx, upstream faults 502/504, capacity 503/429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("malformed request head")]
    MalformedHead,
    #[error("missing Host header")]
    MissingHost,
    #[error("no route for this host and path")]
    NoRoute,
    /// An ordinary request on a route without an `http` upstream.
    #[error("this endpoint only accepts WebSocket upgrades")]
    UpgradeRequired,
    #[error("Upgrade header present but Connection does not list \"upgrade\"")]
    ConnectionNotUpgrade,
    #[error("no supported protocol in Upgrade header")]
    UnsupportedUpgrade,
    #[error("method not allowed for an upgrade; use GET")]
    MethodNotAllowed,
    #[error("an upgrade request must not have a body")]
    UpgradeWithBody,
    #[error("upgrade requires HTTP/1.1 or later")]
    HttpVersionTooOld,
    /// RFC 6455 §4.4: missing or unsupported `Sec-WebSocket-Version`.
    #[error("unsupported Sec-WebSocket-Version")]
    VersionUnsupported {
        status: StatusCode,
        versions: Vec<u8>,
    },
    #[error("Sec-WebSocket-Version sent more than once")]
    VersionRepeated { versions: Vec<u8> },
    #[error("Sec-WebSocket-Key missing, repeated, or not base64 of 16 bytes")]
    BadKey,
    #[error("origin not allowed")]
    OriginForbidden,
    #[error("malformed Sec-WebSocket-Protocol: {0}")]
    BadSubprotocolList(String),
    /// No offered subprotocol is mapped and the route has no fallback; lists the route's names.
    #[error("no supported subprotocol offered; this endpoint speaks: {}", available.join(", "))]
    NoSubprotocolMatch { available: Vec<String> },
    #[error("too many connections")]
    TooManyConnections,
    #[error("too many connections from this address")]
    TooManyConnectionsPerIp,
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream's answer cannot become a tunnel: not the handshake we asked for, or no
    /// usable answer at all.
    #[error("upstream handshake invalid: {0}")]
    UpstreamBadHandshake(crate::handshake::UpstreamFault),
}

/// How the answer will be carried: HTTP/1.x may say `Connection: close`, h2 must not (RFC 9113 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Http1,
    Http2,
}

impl Reject {
    /// The status answered for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::MalformedHead
            | Reject::MissingHost
            | Reject::ConnectionNotUpgrade
            | Reject::UnsupportedUpgrade
            | Reject::UpgradeWithBody
            | Reject::HttpVersionTooOld
            | Reject::VersionRepeated { .. }
            | Reject::BadKey
            | Reject::BadSubprotocolList(_)
            | Reject::NoSubprotocolMatch { .. } => StatusCode::BAD_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::VersionUnsupported { status, .. } => *status,
            Reject::OriginForbidden => StatusCode::FORBIDDEN,
            Reject::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Reject::TooManyConnectionsPerIp => StatusCode::TOO_MANY_REQUESTS,
            Reject::UpstreamUnreachable | Reject::UpstreamBadHandshake(_) => {
                StatusCode::BAD_GATEWAY
            }
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The complete answer: status, the headers SPEC §3 names for this row, and a `text/plain`
    /// body naming the reason. On HTTP/1 it always carries `Connection: close`.
    pub fn response(&self, carrier: Carrier) -> Response<Bytes> {
        let mut res = Response::new(Bytes::from(format!("{self}\n")));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut connection = "close";
        match self {
            Reject::UpgradeRequired => {
                h.insert(UPGRADE, HeaderValue::from_static("websocket"));
                connection = "Upgrade, close";
            }
            Reject::MethodNotAllowed => {
                let allow = match carrier {
                    Carrier::Http1 => "GET",
                    Carrier::Http2 => "CONNECT",
                };
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Reject::VersionUnsupported { versions, .. } | Reject::VersionRepeated { versions } => {
                h.insert("sec-websocket-version", version_list(versions));
            }
            Reject::TooManyConnections => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::HeadTooLarge { .. }
            | Reject::MalformedHead
            | Reject::MissingHost
            | Reject::NoRoute
            | Reject::ConnectionNotUpgrade
            | Reject::UnsupportedUpgrade
            | Reject::UpgradeWithBody
            | Reject::HttpVersionTooOld
            | Reject::BadKey
            | Reject::OriginForbidden
            | Reject::BadSubprotocolList(_)
            | Reject::NoSubprotocolMatch { .. }
            | Reject::TooManyConnectionsPerIp
            | Reject::UpstreamUnreachable
            | Reject::UpstreamTimeout
            | Reject::UpstreamBadHandshake(_) => {}
        }
        if carrier == Carrier::Http1 {
            h.insert(CONNECTION, HeaderValue::from_static(connection));
        }
        res
    }
}

/// `13, 8, 7`: the configured versions in advertised order (RFC 6455 §4.4).
fn version_list(versions: &[u8]) -> HeaderValue {
    let text = versions
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&text).expect("digits, commas and spaces are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_http1_answer_closes_and_names_its_reason() {
        let rows = [
            Reject::HeadTooLarge { limit: 10 },
            Reject::NoRoute,
            Reject::UpgradeRequired,
            Reject::UpstreamTimeout,
        ];
        for r in rows {
            let res = r.response(Carrier::Http1);
            let conn = res.headers()[CONNECTION]
                .to_str()
                .unwrap()
                .to_ascii_lowercase();
            assert!(conn.contains("close"), "{r:?}: {conn}");
            assert!(!res.body().is_empty());
            assert!(
                res.headers()[CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );
        }
    }

    #[test]
    fn h2_answers_carry_no_connection_header() {
        let res = Reject::UpgradeRequired.response(Carrier::Http2);
        assert!(!res.headers().contains_key(CONNECTION));
    }

    #[test]
    fn version_answers_list_versions_in_configured_order() {
        let r = Reject::VersionUnsupported {
            status: StatusCode::UPGRADE_REQUIRED,
            versions: vec![7, 13, 8],
        };
        let res = r.response(Carrier::Http1);
        assert_eq!(res.status(), 426);
        assert_eq!(res.headers()["sec-websocket-version"], "7, 13, 8");
    }

    #[test]
    fn plain_request_answer_invites_an_upgrade() {
        let res = Reject::UpgradeRequired.response(Carrier::Http1);
        assert_eq!(res.headers()[UPGRADE], "websocket");
        assert_eq!(res.headers()[CONNECTION], "Upgrade, close");
    }
}
