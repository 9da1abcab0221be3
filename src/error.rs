//! Every failure the gateway answers itself, and the one place that maps each to its HTTP answer.
//!
//! `Reject::response` is the only code that turns a failure into a status, headers and body
//! (SPEC §3 and §4). The `match` arms have no `_` so that a new variant forces a decision.

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_TYPE, LOCATION, RETRY_AFTER, UPGRADE, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Response, StatusCode, Version};

/// Why a handshake was not tunnelled. Client faults are 4xx, upstream faults 502/504, capacity 503/429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Reject {
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("malformed request head")]
    MalformedHead,
    #[error("missing Host header")]
    MissingHost,
    /// RFC 9112 §3.2, RFC 3986 §3.2.2: `Host`, the target's authority or `:authority` is not a
    /// valid `host[:port]` (userinfo, whitespace, `/`, `,`, a bad port).
    #[error("invalid host")]
    BadHost,
    /// A dot segment (RFC 3986 §5.2.4, also `%2e`) or `%00` in the path: routed raw, it would
    /// reach a route other than the one an upstream that normalizes serves.
    #[error("invalid request path")]
    BadPath,
    /// RFC 9110 §15.5.20: the request's host is not the SNI name of its TLS connection
    /// (`strict_sni`); browsers retry on a fresh connection.
    #[error("host does not match the TLS server name")]
    MisdirectedRequest,
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
    /// An ordinary HTTP/1.1 `CONNECT`: the gateway is not a forward proxy.
    #[error("CONNECT is not served here")]
    ConnectNotAllowed,
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
    /// Over `connection_rate_per_ip`: the address's token bucket is empty.
    #[error("too many new connections from this address")]
    ConnectionRateExceeded,
    /// HTTP/3 (SPEC §12): an extended CONNECT whose `:protocol` is neither `websocket` nor a
    /// configured token; RFC 9110 §15.6.2, the server does not implement what was asked.
    #[error("unsupported :protocol")]
    ProtocolNotImplemented,
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream's answer cannot become a tunnel: not the handshake we asked for, or no
    /// usable answer at all.
    #[error("upstream handshake invalid: {0}")]
    UpstreamBadHandshake(UpstreamFault),
    /// SPEC §10 jwt: no token in any `from` source (RFC 6750 §3: a bare `Bearer` challenge).
    #[error("authentication required")]
    AuthMissingToken,
    /// SPEC §10 jwt: the token did not verify (RFC 6750 §3.1 `invalid_token`); which check
    /// failed is logged at debug, never answered.
    #[error("invalid token")]
    AuthInvalidToken,
    /// SPEC §10 forward: the auth service's 401, 403 or 3xx, relayed.
    #[error("refused by the auth service")]
    AuthRefused(Box<Refusal>),
    /// SPEC §10 forward: the auth service is unreachable or answered another status (fail closed).
    #[error("auth service failed")]
    AuthServiceFailed,
    /// SPEC §10 forward: no answer within the check's `timeout`.
    #[error("auth service timed out")]
    AuthServiceTimeout,
}

/// What of a forward-auth refusal reaches the client (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// 401, 403 or a 3xx.
    pub(crate) status: StatusCode,
    pub(crate) www_authenticate: Vec<HeaderValue>,
    /// A 3xx's `Location`.
    pub(crate) location: Option<HeaderValue>,
    /// The service's body, cut off at 4 KiB; empty: the gateway's reason text instead.
    pub(crate) body: Bytes,
}

/// Why the upstream's answer to our upgrade request cannot become a tunnel: one variant per
/// RFC 6455 §4.1 client rule (and RFC 9110 rule, for other tokens) that the gateway checks,
/// plus the transport faults of the upgrade client. `Display` is the reason in the 502 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamFault {
    /// §4.1 client step 1: the status is not 101.
    #[error("status {} is not 101", .status.as_u16())]
    NotSwitching { status: StatusCode },
    /// §4.1 client step 2: `Upgrade` missing, repeated, or not `websocket`.
    #[error("Upgrade is not websocket")]
    UpgradeNotWebSocket,
    /// RFC 9110 §15.2.2: `Upgrade` does not name the configured token we asked for.
    #[error("Upgrade is not {token}")]
    UpgradeNotToken { token: String },
    /// §4.1 client step 3 (RFC 9110 §7.8 for other tokens): `Connection` lacks `upgrade`.
    #[error("Connection does not list upgrade")]
    ConnectionNotUpgrade,
    /// §4.1 client step 4: no `Sec-WebSocket-Accept`.
    #[error("Sec-WebSocket-Accept missing")]
    AcceptMissing,
    /// §4.1 client step 4: `Sec-WebSocket-Accept` repeated or not derived from our key.
    #[error("Sec-WebSocket-Accept does not match our key")]
    AcceptMismatch,
    /// §4.1 client step 6, as the gateway applies it: we offered `selected` alone, and the
    /// answer names none.
    #[error("Sec-WebSocket-Protocol {selected} missing")]
    SubprotocolMissing { selected: String },
    /// §4.1 client step 6: the answer names a subprotocol other than the one we offered.
    #[error("Sec-WebSocket-Protocol is not {selected}")]
    SubprotocolOther { selected: String },
    /// §4.1 client step 6: the answer names a subprotocol though we offered none.
    #[error("Sec-WebSocket-Protocol sent though none was offered")]
    SubprotocolNotOffered,
    /// The upstream sent no parseable HTTP/1.1 response head (or closed before one).
    #[error("no valid HTTP response")]
    NoValidResponse,
    /// h2 only (RFC 8441 §5, RFC 9113 §8.5): a 2xx on a CONNECT stream means "tunnel open", so a
    /// non-101 2xx from the upstream is not relayed.
    #[error("upstream answered {status} instead of 101")]
    SuccessInsteadOf101 { status: StatusCode },
}

/// How a request reached the gateway. The few handshake rules that differ by carrier ask it
/// (one method per rule), so a new carrier is one variant here and one front in `gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// HTTP/1.x: an upgrade is `GET` with `Upgrade`/`Connection`; answers may close the connection.
    H1,
    /// HTTP/2: an upgrade is an extended CONNECT (RFC 8441) on one stream of a shared connection.
    H2,
    /// HTTP/3: an extended CONNECT as on h2 (RFC 9220) on one request stream of a QUIC connection.
    H3,
}

impl Carrier {
    /// RFC 8441 §4 (HTTP/2; RFC 9220 does the same for HTTP/3): the upgrade is a CONNECT with
    /// `:protocol`, routed on `:authority`, answered 200 with no key exchange and without
    /// connection-specific headers (RFC 9113 §8.2.2), and the connection outlives the stream.
    pub(crate) fn extended_connect(self) -> bool {
        match self {
            Carrier::H1 => false,
            Carrier::H2 | Carrier::H3 => true,
        }
    }

    /// The answer to an extended CONNECT whose `:protocol` is not served: on h2 the §3 row for
    /// an unknown `Upgrade` token (400), on h3 501 (SPEC §12).
    pub(crate) fn unknown_protocol(self) -> Reject {
        match self {
            Carrier::H1 | Carrier::H2 => Reject::UnsupportedUpgrade,
            Carrier::H3 => Reject::ProtocolNotImplemented,
        }
    }

    /// The HTTP version of the answers the gateway writes on this carrier.
    pub(crate) fn version(self) -> Version {
        match self {
            Carrier::H1 => Version::HTTP_11,
            Carrier::H2 => Version::HTTP_2,
            Carrier::H3 => Version::HTTP_3,
        }
    }

    /// The method an upgrade must use: `GET` (RFC 6455 §4.2.1 item 1) or CONNECT (RFC 8441 §4).
    pub(crate) fn upgrade_method(self) -> Method {
        if self.extended_connect() {
            Method::CONNECT
        } else {
            Method::GET
        }
    }
}

impl Reject {
    /// The status answered for this failure.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Reject::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::MalformedHead
            | Reject::MissingHost
            | Reject::BadHost
            | Reject::BadPath
            | Reject::ConnectionNotUpgrade
            | Reject::UnsupportedUpgrade
            | Reject::UpgradeWithBody
            | Reject::HttpVersionTooOld
            | Reject::VersionRepeated { .. }
            | Reject::BadKey
            | Reject::BadSubprotocolList(_)
            | Reject::NoSubprotocolMatch { .. } => StatusCode::BAD_REQUEST,
            Reject::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Reject::MethodNotAllowed | Reject::ConnectNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::VersionUnsupported { status, .. } => *status,
            Reject::OriginForbidden => StatusCode::FORBIDDEN,
            Reject::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Reject::TooManyConnectionsPerIp | Reject::ConnectionRateExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Reject::UpstreamUnreachable | Reject::UpstreamBadHandshake(_) => {
                StatusCode::BAD_GATEWAY
            }
            Reject::UpstreamTimeout | Reject::AuthServiceTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::AuthMissingToken | Reject::AuthInvalidToken => StatusCode::UNAUTHORIZED,
            Reject::AuthRefused(refusal) => refusal.status,
            Reject::AuthServiceFailed => StatusCode::BAD_GATEWAY,
            Reject::ProtocolNotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The complete answer: status, the headers SPEC §3 names for this row, and a `text/plain`
    /// body naming the reason. On HTTP/1 it always carries `Connection: close`.
    pub(crate) fn response(&self, carrier: Carrier) -> Response<Bytes> {
        let mut res = Response::new(Bytes::from(format!("{self}\n")));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut connection = "close";
        let mut relayed_body = None;
        match self {
            Reject::UpgradeRequired => {
                h.insert(UPGRADE, HeaderValue::from_static("websocket"));
                connection = "Upgrade, close";
            }
            Reject::MethodNotAllowed => {
                // A method name is a token, always a valid field value.
                if let Ok(allow) = HeaderValue::from_str(carrier.upgrade_method().as_str()) {
                    h.insert(ALLOW, allow);
                }
            }
            Reject::VersionUnsupported { versions, .. } | Reject::VersionRepeated { versions } => {
                h.insert("sec-websocket-version", version_list(versions));
            }
            Reject::ConnectNotAllowed => {
                // RFC 9110 §15.5.6: a 405 lists what is allowed; the route's `http` upstream
                // serves the ordinary methods.
                h.insert(ALLOW, HeaderValue::from_static(ORDINARY_METHODS));
            }
            Reject::TooManyConnections | Reject::ConnectionRateExceeded => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::HeadTooLarge { .. }
            | Reject::MalformedHead
            | Reject::MissingHost
            | Reject::BadHost
            | Reject::BadPath
            | Reject::MisdirectedRequest
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
            | Reject::ProtocolNotImplemented
            | Reject::UpstreamUnreachable
            | Reject::UpstreamTimeout
            | Reject::UpstreamBadHandshake(_)
            | Reject::AuthServiceFailed
            | Reject::AuthServiceTimeout => {}
            // RFC 6750 §3: a request without credentials gets the bare challenge, a bad token
            // `error="invalid_token"`.
            Reject::AuthMissingToken => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Reject::AuthInvalidToken => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Reject::AuthRefused(refusal) => {
                for challenge in &refusal.www_authenticate {
                    h.append(WWW_AUTHENTICATE, challenge.clone());
                }
                if let Some(location) = &refusal.location {
                    h.insert(LOCATION, location.clone());
                }
                if !refusal.body.is_empty() {
                    // Always labelled text/plain: the service's markup is never rendered as ours.
                    relayed_body = Some(refusal.body.clone());
                }
            }
        }
        if !carrier.extended_connect() {
            h.insert(CONNECTION, HeaderValue::from_static(connection));
        }
        if let Some(body) = relayed_body {
            *res.body_mut() = body;
        }
        res
    }
}

/// The `Allow` of [`Reject::ConnectNotAllowed`]: RFC 9110 §9's methods but CONNECT and TRACE.
const ORDINARY_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

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
            let res = r.response(Carrier::H1);
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
    fn h2_and_h3_answers_carry_no_connection_header() {
        for carrier in [Carrier::H2, Carrier::H3] {
            let res = Reject::UpgradeRequired.response(carrier);
            assert!(!res.headers().contains_key(CONNECTION), "{carrier:?}");
        }
    }

    #[test]
    fn unknown_protocol_is_400_on_h2_and_501_on_h3() {
        assert_eq!(Carrier::H2.unknown_protocol().status(), 400);
        assert_eq!(Carrier::H3.unknown_protocol().status(), 501);
    }

    #[test]
    fn version_answers_list_versions_in_configured_order() {
        let r = Reject::VersionUnsupported {
            status: StatusCode::UPGRADE_REQUIRED,
            versions: vec![7, 13, 8],
        };
        let res = r.response(Carrier::H1);
        assert_eq!(res.status(), 426);
        assert_eq!(res.headers()["sec-websocket-version"], "7, 13, 8");
    }

    #[test]
    fn auth_answers_carry_their_challenge_or_the_relayed_refusal() {
        let missing = Reject::AuthMissingToken.response(Carrier::H1);
        assert_eq!(missing.status(), 401);
        assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer");
        let invalid = Reject::AuthInvalidToken.response(Carrier::H2);
        assert_eq!(
            invalid.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let relayed = Reject::AuthRefused(Box::new(Refusal {
            status: StatusCode::FORBIDDEN,
            www_authenticate: vec![HeaderValue::from_static("Basic realm=\"a\"")],
            location: None,
            body: Bytes::from_static(b"<b>no</b>"),
        }))
        .response(Carrier::H1);
        assert_eq!(relayed.status(), 403);
        assert_eq!(relayed.headers()[WWW_AUTHENTICATE], "Basic realm=\"a\"");
        assert_eq!(relayed.body().as_ref(), b"<b>no</b>");
        assert!(
            relayed.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(relayed.headers()[CONNECTION], "close");
        let redirect = Reject::AuthRefused(Box::new(Refusal {
            status: StatusCode::FOUND,
            www_authenticate: vec![],
            location: Some(HeaderValue::from_static("https://login.test/")),
            body: Bytes::new(),
        }))
        .response(Carrier::H1);
        assert_eq!(redirect.headers()[LOCATION], "https://login.test/");
        assert!(
            !redirect.body().is_empty(),
            "an empty relayed body gets the reason text"
        );
        assert_eq!(Reject::AuthServiceFailed.status(), 502);
        assert_eq!(Reject::AuthServiceTimeout.status(), 504);
    }

    #[test]
    fn plain_request_answer_invites_an_upgrade() {
        let res = Reject::UpgradeRequired.response(Carrier::H1);
        assert_eq!(res.headers()[UPGRADE], "websocket");
        assert_eq!(res.headers()[CONNECTION], "Upgrade, close");
    }
}
