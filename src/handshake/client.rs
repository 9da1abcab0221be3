//! The client side of the handshake: SPEC §3's rows after routing, in their order, and the
//! success answer (RFC 6455 §4.2.1, §4.2.2; RFC 8441 §4, §5).

use std::collections::HashSet;

use http::header::{
    CONNECTION, CONTENT_LENGTH, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};

use super::key::{accept_key, is_valid_key};
use super::tokens::{self, HopByHop};
use crate::config::{RouteConfig, Select, WebSocketConfig};
use crate::error::{Carrier, Reject};

/// The hybi-07/08 name of `Origin` (draft-ietf-hybi-thewebsocketprotocol-08 §4.1).
pub(crate) const SEC_WEBSOCKET_ORIGIN: HeaderName = HeaderName::from_static("sec-websocket-origin");

/// The outcome of a WebSocket handshake that passed every §3 row: what the upstream request
/// and the client's answer are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The client's `Sec-WebSocket-Version` (13, 8 or 7); the upstream always gets 13.
    pub(crate) ws_version: u8,
    /// The client's `Sec-WebSocket-Key` (HTTP/1.1); `None` over h2, which has no key.
    pub(crate) client_key: Option<String>,
    /// The selected subprotocol; `None` when the route's `fallback` took the request.
    pub(crate) subprotocol: Option<String>,
    /// The upstream name: the selected subprotocol's, or the route's `fallback`.
    pub(crate) upstream: String,
    /// The client's `Sec-WebSocket-Extensions` lines joined, passed through to the upstream
    /// (extensions are negotiated end to end).
    pub(crate) extensions: Option<HeaderValue>,
}

/// Step 4 for a WebSocket: every §3 row after routing, in SPEC order, the first failure
/// answering. Over an extended CONNECT (h2) the same rules apply, without a key.
pub(crate) fn negotiate(
    parts: &Parts,
    route: &RouteConfig,
    ws: &WebSocketConfig,
    carrier: Carrier,
) -> Result<Negotiated, Reject> {
    let h = &parts.headers;
    common_rows(parts, carrier)?;

    // RFC 6455 §4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
    // §4.4: "If this version does not match a version understood by the server, the server
    // MUST abort the WebSocket handshake ... and send an appropriate HTTP error code (such as
    // 426 Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the
    // version(s) the server is capable of understanding."
    // The header is single-valued (RFC 6455 §11.3.5): a second line or a list is "sent more
    // than once", checked first since no single version can be read from it.
    let lines = h.get_all(SEC_WEBSOCKET_VERSION).iter().count();
    let mut offered = tokens::elements(h, SEC_WEBSOCKET_VERSION);
    let (first, second) = (offered.next(), offered.next());
    if lines > 1 || second.is_some() {
        return Err(Reject::VersionRepeated {
            versions: ws.versions.clone(),
        });
    }
    // RFC 6455 §4.1: version = DIGIT | (NZDIGIT DIGIT) | ... — compared as written, so "013"
    // is not 13.
    let ws_version = first
        .and_then(|v| {
            ws.versions
                .iter()
                .copied()
                .find(|n| n.to_string().as_bytes() == v)
        })
        .ok_or_else(|| Reject::VersionUnsupported {
            status: ws.version_mismatch_status,
            versions: ws.versions.clone(),
        })?;

    // RFC 6455 §4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value
    // that, when decoded, is 16 bytes in length." RFC 6455 §11.3.1: it "MUST NOT appear more
    // than once in an HTTP request." RFC 8441 §5: over h2 the key is not used; a client's key
    // is ignored here and never forwarded.
    let client_key = if carrier.extended_connect() {
        None
    } else {
        let mut keys = h.get_all(SEC_WEBSOCKET_KEY).iter();
        match (keys.next(), keys.next()) {
            (Some(k), None) if is_valid_key(k.as_bytes()) => {
                Some(k.to_str().map_err(|_| Reject::BadKey)?.to_string())
            }
            _ => return Err(Reject::BadKey),
        }
    };

    // RFC 6455 §4.2.1 item 7 / §10.2: "If the origin indicated is unacceptable to the server,
    // then it SHOULD respond to the WebSocket handshake with a reply containing HTTP 403
    // Forbidden". Versions 7/8 send it as Sec-WebSocket-Origin (SPEC §3); a request without
    // an origin is not from a browser and passes.
    if let Some(allowed) = &route.origins {
        let name = if ws_version < 13 && h.contains_key(SEC_WEBSOCKET_ORIGIN) {
            SEC_WEBSOCKET_ORIGIN
        } else {
            ORIGIN
        };
        let ok = h.get_all(name).iter().all(|origin| {
            allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        });
        if !ok {
            return Err(Reject::OriginForbidden);
        }
    }

    // RFC 6455 §4.1: "The elements that comprise this value MUST be non-empty strings with
    // characters in the range U+0021 to U+007E not including separator characters as defined
    // in [RFC2616] and MUST all be unique strings." Lines are one list (RFC 9110 §5.3), empty
    // elements ignored (RFC 9110 §5.6.1).
    let mut offered: Vec<&str> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    for e in tokens::elements(h, SEC_WEBSOCKET_PROTOCOL) {
        let shown = String::from_utf8_lossy(e);
        if !tokens::is_token(e) {
            return Err(Reject::BadSubprotocolList(format!(
                "{shown:?} is not a token"
            )));
        }
        if !seen.insert(e) {
            return Err(Reject::BadSubprotocolList(format!(
                "{shown:?} offered more than once"
            )));
        }
        // A token is ASCII, so this always succeeds.
        if let Ok(s) = std::str::from_utf8(e) {
            offered.push(s);
        }
    }

    // RFC 6455 §4.2.2 step 5.4 /subprotocol/: "Either a single value representing the
    // subprotocol the server is ready to use or null." Names compare case-sensitively.
    let chosen = match route.select {
        Select::Client => offered
            .iter()
            .find_map(|o| route.subprotocols.iter().find(|s| s.name == *o)),
        Select::Server => route
            .subprotocols
            .iter()
            .find(|s| offered.contains(&s.name.as_str())),
    };
    let (subprotocol, upstream) = match (chosen, &route.fallback) {
        (Some(s), _) => (Some(s.name.clone()), s.upstream.clone()),
        (None, Some(fallback)) => (None, fallback.clone()),
        (None, None) => {
            return Err(Reject::NoSubprotocolMatch {
                available: route.subprotocols.iter().map(|s| s.name.clone()).collect(),
            });
        }
    };

    Ok(Negotiated {
        ws_version,
        client_key,
        subprotocol,
        upstream,
        extensions: joined(h, SEC_WEBSOCKET_EXTENSIONS),
    })
}

/// Step 4 for a configured non-WebSocket `Upgrade` token: the method, body and HTTP-version
/// rows of §3, in the same order as for a WebSocket.
pub(crate) fn check_other_upgrade(parts: &Parts, carrier: Carrier) -> Result<(), Reject> {
    common_rows(parts, carrier)
}

/// §3's method, body and version rows, shared by WebSocket and other upgrades.
fn common_rows(parts: &Parts, carrier: Carrier) -> Result<(), Reject> {
    // RFC 6455 §4.2.1 item 1: "An HTTP/1.1 or higher GET request". RFC 8441 §4: over h2 the
    // method is CONNECT.
    if parts.method != carrier.upgrade_method() {
        return Err(Reject::MethodNotAllowed);
    }
    // RFC 9112 §6.3: a body is framed by Transfer-Encoding or a Content-Length. Bytes after an
    // upgrade request's head belong to the new protocol, so a body would be smuggled into it.
    if has_body(&parts.headers) {
        return Err(Reject::UpgradeWithBody);
    }
    // RFC 6455 §4.2.1 item 1: "HTTP/1.1 or higher"; RFC 9110 §7.8: Upgrade is HTTP/1.1's.
    if !carrier.extended_connect() && parts.version < Version::HTTP_11 {
        return Err(Reject::HttpVersionTooOld);
    }
    Ok(())
}

/// Any `Transfer-Encoding`, or a `Content-Length` that is not 0 (an unreadable one counts as a
/// body: refusing is the safe side).
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(TRANSFER_ENCODING)
        || h.get_all(CONTENT_LENGTH).iter().any(|v| {
            let mut elems = v.as_bytes().split(|b| *b == b',').map(tokens::trim_ows);
            !elems.all(|e| !e.is_empty() && e.iter().all(|b| *b == b'0'))
        })
}

/// Every line of `name` joined with ", " (RFC 9110 §5.3), `None` when absent.
pub(crate) fn joined(h: &HeaderMap, name: HeaderName) -> Option<HeaderValue> {
    let mut lines = h.get_all(name).iter();
    let first = lines.next()?;
    let mut out = first.as_bytes().to_vec();
    for line in lines {
        out.extend_from_slice(b", ");
        out.extend_from_slice(line.as_bytes());
    }
    // Joining valid field values with ", " yields a valid field value.
    HeaderValue::from_bytes(&out).ok()
}

/// Headers of the upstream's 101 the client's answer may carry: end-to-end ones (hop-by-hop
/// removed, RFC 9110 §7.6.1), minus `Content-Length` (RFC 9110 §8.6: not sent with 1xx or a 2xx
/// to CONNECT) and the handshake fields this module writes itself.
fn relayed(upstream: &HeaderMap) -> HeaderMap {
    let hop = HopByHop::of(upstream);
    let ours = [
        CONTENT_LENGTH,
        SEC_WEBSOCKET_ACCEPT,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_VERSION,
        SEC_WEBSOCKET_KEY,
    ];
    let mut out = HeaderMap::with_capacity(upstream.len() + 4);
    for (name, value) in upstream {
        if !hop.contains(name) && !ours.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The answer to the client once the upstream's 101 passed [`super::check_upstream_101`].
///
/// HTTP/1.1, RFC 6455 §4.2.2 step 5: 101 with `Upgrade: websocket`, `Connection: Upgrade`,
/// `Sec-WebSocket-Accept` for the client's key, `Sec-WebSocket-Protocol` only when one was
/// selected (once), and the upstream's other end-to-end headers — its
/// `Sec-WebSocket-Extensions` included, never a `Sec-WebSocket-Version`.
/// h2, RFC 8441 §5: 200 with the same minus the key exchange and connection-specific headers
/// (RFC 9113 §8.2.2).
pub(crate) fn client_success(
    negotiated: &Negotiated,
    upstream_101: &http::response::Parts,
    carrier: Carrier,
) -> Response<()> {
    let mut res = Response::new(());
    let mut headers = relayed(&upstream_101.headers);
    if let Some(p) = negotiated
        .subprotocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    *res.version_mut() = carrier.version();
    if carrier.extended_connect() {
        *res.status_mut() = StatusCode::OK;
    } else {
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        // RFC 6455 §4.2.2 step 5.4: the accept is derived from the CLIENT's key; the upstream
        // saw a key of our choosing on h2, and its accept was checked against that.
        if let Some(accept) = negotiated
            .client_key
            .as_deref()
            .and_then(|k| HeaderValue::from_str(&accept_key(k)).ok())
        {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    *res.headers_mut() = headers;
    res
}

/// The answer to the client for a configured non-WebSocket token once the upstream's 101
/// passed [`super::check_upstream_other_101`]: HTTP/1.1 101 with `Upgrade: <token>`,
/// `Connection: Upgrade` and the upstream's end-to-end headers (RFC 9110 §15.2.2); h2 200
/// (RFC 8441 §4) without connection-specific headers.
pub(crate) fn client_success_other(
    token: &str,
    upstream_101: &http::response::Parts,
    carrier: Carrier,
) -> Response<()> {
    let mut res = Response::new(());
    let mut headers = relayed(&upstream_101.headers);
    *res.version_mut() = carrier.version();
    if carrier.extended_connect() {
        *res.status_mut() = StatusCode::OK;
    } else {
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        // The token passed protocol_matches, so it is tchars and "/" only.
        if let Ok(t) = HeaderValue::from_str(token) {
            headers.insert(UPGRADE, t);
        }
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    *res.headers_mut() = headers;
    res
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn upstream_101(lines: &[(&str, &str)]) -> http::response::Parts {
        let mut b = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (n, v) in lines {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn negotiated(key: Option<&str>, subprotocol: Option<&str>) -> Negotiated {
        Negotiated {
            ws_version: 13,
            client_key: key.map(String::from),
            subprotocol: subprotocol.map(String::from),
            upstream: "chat".into(),
            extensions: None,
        }
    }

    fn all(res: &Response<()>, name: &str) -> Vec<String> {
        res.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn negotiated_carries_key_version_and_extensions() {
        let req = Req::ws("/ws")
            .set("Sec-WebSocket-Version", "8")
            .add(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            )
            .add("Sec-WebSocket-Extensions", "x-foo");
        let (parts, _) = req.parts();
        let n = negotiate(&parts, &std_route("/ws"), &std_ws_config(), Carrier::H1).unwrap();
        assert_eq!(
            n,
            Negotiated {
                ws_version: 8,
                client_key: Some(SAMPLE_KEY.into()),
                subprotocol: Some("chat.v2".into()),
                upstream: "chat".into(),
                extensions: Some(HeaderValue::from_static(
                    "permessage-deflate; client_max_window_bits, x-foo"
                )),
            }
        );
        let (h2, _) = Req::ws("/ws").h2().parts();
        let n = negotiate(&h2, &std_route("/ws"), &std_ws_config(), Carrier::H2).unwrap();
        assert_eq!((n.client_key, n.extensions), (None, None));
    }

    #[test]
    fn bad_subprotocol_reasons_name_the_element() {
        let (parts, _) = Req::ws("/ws")
            .set("Sec-WebSocket-Protocol", "mqtt, chat/v2")
            .parts();
        let err = negotiate(&parts, &std_route("/ws"), &std_ws_config(), Carrier::H1).unwrap_err();
        assert!(
            matches!(&err, Reject::BadSubprotocolList(r) if r.contains("chat/v2")),
            "{err:?}"
        );
    }

    #[test]
    fn other_upgrade_rows() {
        // (request, expected) — method, body, version in SPEC order.
        let rows = [
            (Req::plain("GET", "/raw"), Ok(())),
            (Req::plain("POST", "/raw"), Err(Reject::MethodNotAllowed)),
            (
                Req::plain("GET", "/raw").add("Content-Length", "3"),
                Err(Reject::UpgradeWithBody),
            ),
            (Req::plain("GET", "/raw").add("Content-Length", "0"), Ok(())),
            (
                Req::plain("GET", "/raw").version(Version::HTTP_10),
                Err(Reject::HttpVersionTooOld),
            ),
            (
                Req::plain("POST", "/raw").add("Transfer-Encoding", "chunked"),
                Err(Reject::MethodNotAllowed),
            ),
            (
                Req::plain("GET", "/raw")
                    .add("Transfer-Encoding", "chunked")
                    .version(Version::HTTP_10),
                Err(Reject::UpgradeWithBody),
            ),
        ];
        for (req, want) in rows {
            let (parts, _) = req.parts();
            assert_eq!(check_other_upgrade(&parts, Carrier::H1), want, "{req:?}");
        }
        let (h2, _) = Req::ws("/raw").set("Upgrade", "tcp").h2().parts();
        assert_eq!(check_other_upgrade(&h2, Carrier::H2), Ok(()));
        let (h2_get, _) = Req::plain("GET", "/raw").h2().parts();
        assert_eq!(
            check_other_upgrade(&h2_get, Carrier::H2),
            Err(Reject::MethodNotAllowed)
        );
    }

    #[test]
    fn h1_success_101() {
        let up = upstream_101(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "upstream-accept-for-our-key"),
            ("Sec-WebSocket-Protocol", "chat.v2"),
            ("Sec-WebSocket-Protocol", "chat.v2"),
            ("Sec-WebSocket-Version", "13"),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; server_no_context_takeover",
            ),
            ("Set-Cookie", "a=b"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Length", "0"),
        ]);
        let res = client_success(
            &negotiated(Some(SAMPLE_KEY), Some("chat.v2")),
            &up,
            Carrier::H1,
        );
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(all(&res, "upgrade"), ["websocket"]);
        assert_eq!(all(&res, "connection"), ["Upgrade"]);
        assert_eq!(
            all(&res, "sec-websocket-accept"),
            ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
        );
        assert_eq!(all(&res, "sec-websocket-protocol"), ["chat.v2"]);
        assert_eq!(
            all(&res, "sec-websocket-extensions"),
            ["permessage-deflate; server_no_context_takeover"]
        );
        assert_eq!(all(&res, "set-cookie"), ["a=b"]);
        for absent in ["sec-websocket-version", "keep-alive", "content-length"] {
            assert!(!res.headers().contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn fallback_success_has_no_protocol() {
        let up = upstream_101(&[("Upgrade", "websocket"), ("Connection", "Upgrade")]);
        for carrier in [Carrier::H1, Carrier::H2] {
            let res = client_success(&negotiated(Some(SAMPLE_KEY), None), &up, carrier);
            assert!(
                !res.headers().contains_key("sec-websocket-protocol"),
                "{carrier:?}"
            );
        }
    }

    #[test]
    fn h2_success_200() {
        let up = upstream_101(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade, X-Hop"),
            ("X-Hop", "1"),
            ("Sec-WebSocket-Accept", "x"),
            ("Sec-WebSocket-Protocol", "mqtt"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ("Transfer-Encoding", "chunked"),
        ]);
        let res = client_success(&negotiated(None, Some("mqtt")), &up, Carrier::H2);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(all(&res, "sec-websocket-protocol"), ["mqtt"]);
        assert_eq!(
            all(&res, "sec-websocket-extensions"),
            ["permessage-deflate"]
        );
        for absent in [
            "connection",
            "upgrade",
            "x-hop",
            "sec-websocket-accept",
            "sec-websocket-version",
            "transfer-encoding",
        ] {
            assert!(!res.headers().contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn other_success() {
        let up = upstream_101(&[("Upgrade", "tcp"), ("Connection", "Upgrade"), ("X-Up", "1")]);
        let res = client_success_other("tcp", &up, Carrier::H1);
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(all(&res, "upgrade"), ["tcp"]);
        assert_eq!(all(&res, "connection"), ["Upgrade"]);
        assert_eq!(all(&res, "x-up"), ["1"]);
        let res = client_success_other("tcp", &up, Carrier::H2);
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            !res.headers().contains_key("upgrade") && !res.headers().contains_key("connection")
        );
        assert_eq!(all(&res, "x-up"), ["1"]);
    }

    use proptest::prelude::*;

    /// RFC 6455 §4.1 read straight from the lines: the offered elements, whether the list is
    /// malformed (a non-token or a repeat), and the pick by client and by server order.
    fn expected(lines: &[String], mapped: &[&str]) -> (bool, Option<String>, Option<String>) {
        let offered: Vec<&str> = lines
            .iter()
            .flat_map(|l| l.split(','))
            .map(|e| e.trim_matches([' ', '\t']))
            .filter(|e| !e.is_empty())
            .collect();
        let mut seen = HashSet::new();
        let bad = offered.iter().any(|e| {
            !e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                || !seen.insert(*e)
        });
        let by_client = offered
            .iter()
            .find(|o| mapped.contains(o))
            .map(|s| s.to_string());
        let by_server = mapped
            .iter()
            .find(|m| offered.contains(m))
            .map(|s| s.to_string());
        (bad, by_client, by_server)
    }

    proptest! {
        /// Lists made of mapped, unmapped, malformed and repeated names, over several lines:
        /// `negotiate` answers exactly what RFC 6455 §4.1 and the route's selection order say.
        #[test]
        fn subprotocol_lists_follow_rfc6455(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        Just("chat.v2"), Just("mqtt"), Just("stomp"), Just("CHAT.V2"),
                        Just("chat/v2"), Just("a b"), Just(""), Just(" mqtt\t"),
                    ],
                    0..5,
                ).prop_map(|es| es.join(",")),
                0..3,
            ),
        ) {
            let (bad, by_client, by_server) = expected(&lines, &["chat.v2", "mqtt"]);
            for (path, pick) in [("/ws", by_client), ("/srv", by_server)] {
                let mut req = Req::ws(path).drop("Sec-WebSocket-Protocol");
                for l in &lines {
                    req = req.add("Sec-WebSocket-Protocol", l);
                }
                let (parts, _) = req.parts();
                let got = negotiate(&parts, &std_route(path), &std_ws_config(), Carrier::H1);
                match (&got, bad, &pick) {
                    (Err(Reject::BadSubprotocolList(_)), true, _) => {}
                    (Ok(n), false, Some(p)) => prop_assert_eq!(n.subprotocol.as_ref(), Some(p)),
                    (Err(Reject::NoSubprotocolMatch { .. }), false, None) => {}
                    _ => prop_assert!(false, "{path} {lines:?}: {got:?}"),
                }
            }
        }

        /// Any bytes as the list: a selection or one of the two subprotocol refusals, never
        /// another answer and never a panic; with a fallback, never "no match".
        #[test]
        fn arbitrary_subprotocol_bytes_give_typed_answers(
            value in proptest::collection::vec(any::<u8>(), 0..60),
        ) {
            let Ok(value) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            for path in ["/ws", "/srv", "/fb"] {
                let (mut parts, _) = Req::ws(path).parts();
                parts.headers.insert(SEC_WEBSOCKET_PROTOCOL, value.clone());
                match negotiate(&parts, &std_route(path), &std_ws_config(), Carrier::H1) {
                    Ok(n) => prop_assert!(n.subprotocol.is_some() || path == "/fb"),
                    Err(Reject::BadSubprotocolList(_)) => {}
                    Err(Reject::NoSubprotocolMatch { .. }) => prop_assert_ne!(path, "/fb"),
                    Err(e) => prop_assert!(false, "{path}: {e:?}"),
                }
            }
        }
    }
}
