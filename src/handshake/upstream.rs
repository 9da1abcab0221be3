//! The upstream side of the handshake (SPEC §4): the request we send, and checking the 101 we
//! get back (RFC 6455 §4.1 client requirements; RFC 7239; RFC 9110 §7.6.1).

use std::net::{IpAddr, SocketAddr};

use http::header::{
    CONNECTION, FORWARDED, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::client::{Negotiated, SEC_WEBSOCKET_ORIGIN};
use super::key::accept_key;
use super::tokens::{self, HopByHop};
use crate::error::{Reject, UpstreamFault};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the upstream is told about the client hop (X-Forwarded-*, RFC 7239 `Forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForwardInfo<'a> {
    /// The client's address (from the PROXY header where configured).
    pub(crate) client: SocketAddr,
    /// Whether the client reached us over TLS (`https`/`wss`).
    pub(crate) tls: bool,
    /// The host as the client sent it ([`super::request_host`]): `Host` on HTTP/1.x,
    /// `:authority` on h2. Becomes the upstream's `Host` and `X-Forwarded-Host`; `""` (an
    /// HTTP/1.0 request without `Host`) leaves both out.
    pub(crate) host: &'a str,
}

/// Which upgrade the upstream request asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UpstreamUpgrade<'a> {
    /// A WebSocket handshake; `key` is the client's (HTTP/1.1) or a fresh one (h2).
    WebSocket {
        negotiated: &'a Negotiated,
        key: &'a str,
    },
    /// A configured non-WebSocket token, tunnelled as-is.
    Other { token: &'a str },
}

/// The request head sent to the upstream for an upgrade (SPEC §4): same method (GET for an h2
/// CONNECT), path and query, HTTP/1.1, `Host`, end-to-end headers via [`forward_headers`], and
/// the upgrade's own fields set. h2 pseudo-headers never reach a `HeaderMap`, so nothing of
/// the h2 framing leaks upstream.
pub(crate) fn upstream_request(
    parts: &Parts,
    upgrade: UpstreamUpgrade<'_>,
    fwd: &ForwardInfo<'_>,
) -> Request<()> {
    let mut req = Request::new(());
    // RFC 8441 §5: the h2 CONNECT stands for an HTTP/1.1 GET upgrade (RFC 6455 §4.1 item 2).
    *req.method_mut() = if parts.method == Method::CONNECT {
        Method::GET
    } else {
        parts.method.clone()
    };
    // RFC 9112 §3.2.1: origin-form towards the upstream.
    *req.uri_mut() = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    *req.version_mut() = Version::HTTP_11;
    let mut h = forward_headers(&parts.headers, fwd);
    match upgrade {
        UpstreamUpgrade::WebSocket { negotiated, key } => {
            // RFC 6455 §4.1 items 7 and 9: our key (the client's on HTTP/1.1; on h2 a fresh one,
            // the client's sec-websocket-key, if any, dropped), version 13 whatever the client
            // spoke (SPEC §3: 7 and 8 frame data exactly as 13).
            if let Ok(k) = HeaderValue::from_str(key) {
                h.insert(SEC_WEBSOCKET_KEY, k);
            }
            h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            // SPEC §4: only the selected subprotocol, none for a fallback.
            match negotiated
                .subprotocol
                .as_deref()
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                Some(p) => {
                    h.insert(SEC_WEBSOCKET_PROTOCOL, p);
                }
                None => {
                    h.remove(SEC_WEBSOCKET_PROTOCOL);
                }
            }
            // hybi-07/08 said Sec-WebSocket-Origin; version 13 says Origin (RFC 6455 §4.1
            // item 8).
            if negotiated.ws_version < 13 {
                if let http::header::Entry::Occupied(e) = h.entry(SEC_WEBSOCKET_ORIGIN) {
                    let origins: Vec<HeaderValue> = e.remove_entry_mult().1.collect();
                    h.remove(ORIGIN);
                    for o in origins {
                        h.append(ORIGIN, o);
                    }
                }
            }
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
        UpstreamUpgrade::Other { token } => {
            if let Ok(t) = HeaderValue::from_str(token) {
                h.insert(UPGRADE, t);
            }
        }
    }
    // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option".
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    *req.headers_mut() = h;
    req
}

/// The headers a request carries to any upstream (upgrade or ordinary): hop-by-hop ones
/// removed (RFC 9110 §7.6.1: those `Connection` lists, `Connection`, `Keep-Alive`, `Proxy-*`,
/// `TE`, `Trailer`, `Transfer-Encoding` — the proxy re-frames — and `Upgrade`), `Content-Length`
/// and every end-to-end header kept, `Host` set to `fwd.host`, `X-Forwarded-For` appended,
/// `X-Forwarded-Proto` and `X-Forwarded-Host` replaced, and an RFC 7239 `Forwarded` element
/// appended.
pub(crate) fn forward_headers(headers: &HeaderMap, fwd: &ForwardInfo<'_>) -> HeaderMap {
    let hop = HopByHop::of(headers);
    let ours = [
        HOST,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
    ];
    let mut out = HeaderMap::with_capacity(headers.len() + 5);
    for (name, value) in headers {
        if !hop.contains(name) && !ours.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }

    let host = (!fwd.host.is_empty())
        .then(|| HeaderValue::from_str(fwd.host).ok())
        .flatten();
    // RFC 9110 §7.2: the upstream sees the host the client asked for.
    if let Some(host) = &host {
        out.insert(HOST, host.clone());
    }

    let ip = fwd.client.ip().to_canonical();
    let proto = if fwd.tls { "https" } else { "http" };
    // De-facto X-Forwarded-For: the chain so far, then the address that connected to us.
    out.insert(
        X_FORWARDED_FOR,
        appended(headers, &hop, X_FORWARDED_FOR, &ip.to_string()),
    );
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        out.insert(X_FORWARDED_HOST, host);
    }
    // RFC 7239 §4: "for" the client node, "proto" and "host" as received; §6: an IPv6 node is
    // written "[v6]" and must be quoted.
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if !fwd.host.is_empty() {
        element.push_str(";host=");
        element.push_str(&rfc7239_value(fwd.host));
    }
    out.insert(FORWARDED, appended(headers, &hop, FORWARDED, &element));
    out
}

/// `existing, next` over every (non-hop-by-hop) line of `name`, or just `next`.
/// Removes the hop-by-hop headers of one message (RFC 9110 §7.6.1) in place: used on upstream
/// answers relayed to the client (a non-101, or an ordinary response of the `http` upstream).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = HopByHop::of(headers);
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| hop.contains(n))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

fn appended(headers: &HeaderMap, hop: &HopByHop, name: HeaderName, next: &str) -> HeaderValue {
    let mut out = Vec::new();
    if !hop.contains(&name) {
        for line in headers.get_all(&name) {
            if !tokens::trim_ows(line.as_bytes()).is_empty() {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(next.as_bytes());
    // Valid field values joined by ", " and an ASCII element stay a valid field value; were it
    // not so, the new element alone still is.
    HeaderValue::from_bytes(&out)
        .or_else(|_| HeaderValue::from_str(next))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// RFC 7239 §4: value = token / quoted-string; a host with a port (":") needs the quotes.
fn rfc7239_value(s: &str) -> String {
    if tokens::is_token(s.as_bytes()) {
        return s.to_string();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Checks the upstream's 101 to a WebSocket upgrade before any byte is tunnelled (SPEC §4).
/// `key` is the key we sent; `selected` the subprotocol we asked for (`None` for a fallback).
pub(crate) fn check_upstream_101(
    res: &http::response::Parts,
    key: &str,
    selected: Option<&str>,
) -> Result<(), Reject> {
    websocket_101_fault(res, key, selected).map_err(Reject::UpstreamBadHandshake)
}

fn websocket_101_fault(
    res: &http::response::Parts,
    key: &str,
    selected: Option<&str>,
) -> Result<(), UpstreamFault> {
    let h = &res.headers;
    // RFC 6455 §4.1 client step 1: "If the status code received from the server is not 101,
    // the client handles the response per HTTP procedures."
    if res.status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamFault::NotSwitching { status: res.status });
    }
    // Step 2: "If the response lacks an |Upgrade| header field or the |Upgrade| header field
    // contains a value that is not an ASCII case-insensitive match for the value "websocket",
    // the client MUST _Fail the WebSocket Connection_."
    let upgrade: Vec<&[u8]> = tokens::elements(h, UPGRADE).collect();
    if upgrade.len() != 1 || !upgrade.iter().all(|u| u.eq_ignore_ascii_case(b"websocket")) {
        return Err(UpstreamFault::UpgradeNotWebSocket);
    }
    // Step 3: "If the response lacks a |Connection| header field or the |Connection| header
    // field doesn't contain a token that is an ASCII case-insensitive match for the value
    // "Upgrade", the client MUST _Fail the WebSocket Connection_."
    if !tokens::lists_token(h, CONNECTION, "upgrade") {
        return Err(UpstreamFault::ConnectionNotUpgrade);
    }
    // Step 4: "If the response lacks a |Sec-WebSocket-Accept| header field or the
    // |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    // concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with the
    // string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ..., the client MUST _Fail the WebSocket
    // Connection_."
    let expected = accept_key(key);
    let mut accepts = h.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if tokens::trim_ows(a.as_bytes()) == expected.as_bytes() => {}
        (None, _) => return Err(UpstreamFault::AcceptMissing),
        _ => return Err(UpstreamFault::AcceptMismatch),
    }
    // Step 6: "If the response includes a |Sec-WebSocket-Protocol| header field and this
    // header field indicates the use of a subprotocol that was not present in the client's
    // handshake ..., the client MUST _Fail the WebSocket Connection_." We offered exactly one
    // (or none), so the answer must be exactly that one; an echo repeated over lines is still
    // that one, and the client gets it once.
    let answered: Vec<&[u8]> = tokens::elements(h, SEC_WEBSOCKET_PROTOCOL).collect();
    match selected {
        Some(s) if answered.is_empty() => Err(UpstreamFault::SubprotocolMissing {
            selected: s.to_owned(),
        }),
        Some(s) if answered.iter().any(|a| *a != s.as_bytes()) => {
            Err(UpstreamFault::SubprotocolOther {
                selected: s.to_owned(),
            })
        }
        None if !answered.is_empty() => Err(UpstreamFault::SubprotocolNotOffered),
        Some(_) | None => Ok(()),
    }
}

/// Checks the upstream's 101 to a configured non-WebSocket upgrade.
pub(crate) fn check_upstream_other_101(
    res: &http::response::Parts,
    token: &str,
) -> Result<(), Reject> {
    other_101_fault(res, token).map_err(Reject::UpstreamBadHandshake)
}

fn other_101_fault(res: &http::response::Parts, token: &str) -> Result<(), UpstreamFault> {
    let h = &res.headers;
    // RFC 9110 §15.2.2: "The 101 (Switching Protocols) status code indicates that the server
    // understands and is willing to comply with the client's request"; anything else is not
    // the switch we asked for.
    if res.status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamFault::NotSwitching { status: res.status });
    }
    // RFC 9110 §15.2.2: "The server MUST generate an Upgrade header field in the response that
    // indicates which protocol(s) will be in effect" — it must be the token we asked for.
    let name = tokens::protocol_name(token.as_bytes()).unwrap_or(token.as_bytes());
    let name = String::from_utf8_lossy(name);
    if !tokens::elements(h, UPGRADE).any(|u| tokens::protocol_matches(u, &name)) {
        return Err(UpstreamFault::UpgradeNotToken {
            token: token.to_owned(),
        });
    }
    // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in the
    // Connection header field".
    if !tokens::lists_token(h, CONNECTION, "upgrade") {
        return Err(UpstreamFault::ConnectionNotUpgrade);
    }
    Ok(())
}

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{key_from_bytes, negotiate};
    use super::*;
    use crate::error::Carrier;

    fn fwd(client: &str, tls: bool, host: &'static str) -> ForwardInfo<'static> {
        ForwardInfo {
            client: client.parse().unwrap(),
            tls,
            host,
        }
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// negotiation.py `upstream_view`: the request with SENT_EXTRA, as the upstream sees it.
    fn upstream_view() -> (Request<()>, Negotiated) {
        let req = Req::ws("/ws/sub?x=1&y=two")
            .set("Sec-WebSocket-Protocol", "stomp, chat.v2, mqtt")
            .set("Connection", "Upgrade, keep-alive, X-Hop-Custom")
            .add("Keep-Alive", "timeout=5, max=100")
            .add("TE", "trailers")
            .add("X-Hop-Custom", "must-not-pass")
            .add("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA==")
            .add("Proxy-Connection", "keep-alive")
            .add("Trailer", "X-Checksum")
            .add("X-End-To-End", "kept-value")
            .add("Cookie", "sid=abc123")
            .add("X-Forwarded-For", "198.51.100.1")
            .add(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            );
        let (parts, _) = req.parts();
        let n = negotiate(&parts, &std_route("/ws"), &std_ws_config(), Carrier::H1).unwrap();
        let up = upstream_request(
            &parts,
            UpstreamUpgrade::WebSocket {
                negotiated: &n,
                key: SAMPLE_KEY,
            },
            &fwd("127.0.0.1:50000", false, "gw.test:8080"),
        );
        (up, n)
    }

    #[test]
    fn upstream_request_line_and_upgrade_fields() {
        let (up, _) = upstream_view();
        assert_eq!(up.method(), Method::GET);
        assert_eq!(up.uri(), "/ws/sub?x=1&y=two");
        assert_eq!(up.version(), Version::HTTP_11);
        let h = up.headers();
        assert_eq!(all(h, "host"), ["gw.test:8080"]);
        assert_eq!(all(h, "upgrade"), ["websocket"]);
        assert_eq!(all(h, "connection"), ["Upgrade"]);
        assert_eq!(all(h, "sec-websocket-key"), [SAMPLE_KEY]);
        assert_eq!(all(h, "sec-websocket-version"), ["13"]);
        // select=client: "stomp" is unmapped, "chat.v2" is the first mapped offer.
        assert_eq!(all(h, "sec-websocket-protocol"), ["chat.v2"]);
    }

    #[test]
    fn upstream_hop_by_hop_removed_end_to_end_kept() {
        let (up, _) = upstream_view();
        let h = up.headers();
        for gone in [
            "keep-alive",
            "te",
            "x-hop-custom",
            "proxy-authorization",
            "proxy-connection",
            "trailer",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} reached the upstream");
        }
        assert_eq!(all(h, "x-end-to-end"), ["kept-value"]);
        assert_eq!(all(h, "cookie"), ["sid=abc123"]);
        assert_eq!(
            all(h, "sec-websocket-extensions"),
            ["permessage-deflate; client_max_window_bits"]
        );
    }

    #[test]
    fn upstream_forwarding_headers() {
        let (up, _) = upstream_view();
        let h = up.headers();
        assert_eq!(all(h, "x-forwarded-for"), ["198.51.100.1, 127.0.0.1"]);
        assert_eq!(all(h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(h, "x-forwarded-host"), ["gw.test:8080"]);
        assert_eq!(
            all(h, "forwarded"),
            ["for=127.0.0.1;proto=http;host=\"gw.test:8080\""]
        );
    }

    #[test]
    fn forwarded_rows() {
        // (client, tls, host, existing Forwarded/XFF lines, Forwarded, X-Forwarded-For)
        #[rustfmt::skip]
        let rows: &[(&str, bool, &str, &[(&str, &str)], &str, &str)] = &[
            ("[::1]:4000", true, "h.example", &[], "for=\"[::1]\";proto=https;host=h.example", "::1"),
            // An IPv4-mapped client is the IPv4 client.
            ("[::ffff:10.0.0.1]:1", false, "h", &[], "for=10.0.0.1;proto=http;host=h", "10.0.0.1"),
            ("10.0.0.2:1", false, "[::1]:8443", &[("forwarded", "for=192.0.2.60;proto=https"), ("x-forwarded-for", "a"), ("x-forwarded-for", "b")], "for=192.0.2.60;proto=https, for=10.0.0.2;proto=http;host=\"[::1]:8443\"", "a, b, 10.0.0.2"),
            // HTTP/1.0 without Host: no host= element.
            ("10.0.0.3:1", false, "", &[], "for=10.0.0.3;proto=http", "10.0.0.3"),
        ];
        for (client, tls, host, existing, forwarded, xff) in rows {
            let mut h = HeaderMap::new();
            for (n, v) in *existing {
                h.append(*n, HeaderValue::from_static(v));
            }
            let info = ForwardInfo {
                client: client.parse().unwrap(),
                tls: *tls,
                host,
            };
            let out = forward_headers(&h, &info);
            assert_eq!(all(&out, "forwarded"), [*forwarded], "{client} {host}");
            assert_eq!(all(&out, "x-forwarded-for"), [*xff], "{client} {host}");
            assert_eq!(
                all(&out, "x-forwarded-proto"),
                [if *tls { "https" } else { "http" }]
            );
            if host.is_empty() {
                assert!(!out.contains_key("host") && !out.contains_key("x-forwarded-host"));
            } else {
                assert_eq!(all(&out, "host"), [*host]);
                assert_eq!(all(&out, "x-forwarded-host"), [*host]);
            }
        }
    }

    #[test]
    fn ordinary_request_keeps_body_framing_by_length_only() {
        let mut h = HeaderMap::new();
        h.append("content-length", HeaderValue::from_static("5"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("upgrade", HeaderValue::from_static("h2c"));
        h.append(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.append(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
        );
        h.append("x-forwarded-proto", HeaderValue::from_static("https"));
        h.append("x-forwarded-host", HeaderValue::from_static("spoofed"));
        let out = forward_headers(&h, &fwd("127.0.0.1:1", false, "gw.test"));
        assert_eq!(all(&out, "content-length"), ["5"]);
        for gone in [
            "transfer-encoding",
            "upgrade",
            "connection",
            "http2-settings",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        // We are the edge: what the client claimed about the hop is replaced.
        assert_eq!(all(&out, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&out, "x-forwarded-host"), ["gw.test"]);
    }

    #[test]
    fn h2_connect_becomes_http11_get_with_fresh_key() {
        let req = Req::ws("/ws?room=1")
            .h2()
            .set("Sec-WebSocket-Key", SAMPLE_KEY)
            .set("Sec-WebSocket-Protocol", "mqtt");
        let (parts, _) = req.parts();
        assert_eq!(parts.method, Method::CONNECT);
        let n = negotiate(&parts, &std_route("/ws"), &std_ws_config(), Carrier::H2).unwrap();
        let fresh = key_from_bytes([7; 16]);
        let up = upstream_request(
            &parts,
            UpstreamUpgrade::WebSocket {
                negotiated: &n,
                key: &fresh,
            },
            &fwd("[2001:db8::1]:443", true, "gw.test:8080"),
        );
        assert_eq!(up.method(), Method::GET);
        assert_eq!(up.uri(), "/ws?room=1");
        assert_eq!(up.version(), Version::HTTP_11);
        let h = up.headers();
        assert_eq!(all(h, "sec-websocket-key"), [fresh.as_str()]);
        assert_eq!(all(h, "host"), ["gw.test:8080"]);
        assert_eq!(all(h, "sec-websocket-protocol"), ["mqtt"]);
        assert_eq!(all(h, "x-forwarded-proto"), ["https"]);
        assert_eq!(
            all(h, "forwarded"),
            ["for=\"[2001:db8::1]\";proto=https;host=\"gw.test:8080\""]
        );
    }

    #[test]
    fn fallback_and_hybi_origin_mapping() {
        let req = Req::ws("/fb")
            .set("Sec-WebSocket-Protocol", "stomp, wamp")
            .set("Sec-WebSocket-Version", "8")
            .add("Origin", "http://ignored.example")
            .add("Sec-WebSocket-Origin", "http://origin.example");
        let (parts, _) = req.parts();
        let n = negotiate(&parts, &std_route("/fb"), &std_ws_config(), Carrier::H1).unwrap();
        assert_eq!(
            (n.subprotocol.as_deref(), n.upstream.as_str()),
            (None, "fb")
        );
        let up = upstream_request(
            &parts,
            UpstreamUpgrade::WebSocket {
                negotiated: &n,
                key: SAMPLE_KEY,
            },
            &fwd("127.0.0.1:1", false, "gw.test"),
        );
        let h = up.headers();
        assert!(!h.contains_key("sec-websocket-protocol"));
        assert_eq!(all(h, "sec-websocket-version"), ["13"]);
        assert_eq!(all(h, "origin"), ["http://origin.example"]);
        assert!(!h.contains_key("sec-websocket-origin"));
    }

    #[test]
    fn other_token_request() {
        let (parts, _) = Req::plain("GET", "/raw")
            .set("Upgrade", "tcp")
            .set("Connection", "Upgrade")
            .parts();
        let up = upstream_request(
            &parts,
            UpstreamUpgrade::Other { token: "tcp" },
            &fwd("127.0.0.1:1", false, "gw.test"),
        );
        assert_eq!(up.method(), Method::GET);
        assert_eq!(all(up.headers(), "upgrade"), ["tcp"]);
        assert_eq!(all(up.headers(), "connection"), ["Upgrade"]);
    }

    fn response(status: u16, lines: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(status);
        for (n, v) in lines {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn upstream_101_rows() {
        let good: &[(&str, &str)] = &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ACCEPT),
            ("Sec-WebSocket-Protocol", "chat.v2"),
        ];
        let edit = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = good
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            if let Some(value) = value {
                v.push((name.to_string(), value.to_string()));
            }
            v
        };
        let also = |name: &str, value: &str| {
            let mut v = edit("x", None);
            v.push((name.to_string(), value.to_string()));
            v
        };
        use UpstreamFault as F;
        let status = |code: u16| F::NotSwitching {
            status: StatusCode::from_u16(code).unwrap(),
        };
        let missing = F::SubprotocolMissing {
            selected: "chat.v2".into(),
        };
        let other = F::SubprotocolOther {
            selected: "chat.v2".into(),
        };
        // (name, status, headers, selected, fault)
        #[rustfmt::skip]
        let rows: Vec<(&str, u16, Vec<(String, String)>, Option<&str>, Option<F>)> = vec![
            ("good", 101, edit("x", None), Some("chat.v2"), None),
            ("case_insensitive_tokens", 101, edit("Upgrade", Some("WebSocket")), Some("chat.v2"), None),
            ("connection_list", 101, edit("Connection", Some("keep-alive, upgrade")), Some("chat.v2"), None),
            ("protocol_echoed_twice", 101, also("Sec-WebSocket-Protocol", "chat.v2"), Some("chat.v2"), None),
            ("fallback_without_protocol", 101, edit("Sec-WebSocket-Protocol", None), None, None),
            ("not_101", 200, edit("x", None), Some("chat.v2"), Some(status(200))),
            ("wrong_accept", 101, edit("Sec-WebSocket-Accept", Some("bad")), Some("chat.v2"), Some(F::AcceptMismatch)),
            ("missing_accept", 101, edit("Sec-WebSocket-Accept", None), Some("chat.v2"), Some(F::AcceptMissing)),
            ("accept_twice", 101, also("Sec-WebSocket-Accept", ACCEPT), Some("chat.v2"), Some(F::AcceptMismatch)),
            ("missing_connection", 101, edit("Connection", None), Some("chat.v2"), Some(F::ConnectionNotUpgrade)),
            ("connection_without_upgrade", 101, edit("Connection", Some("keep-alive")), Some("chat.v2"), Some(F::ConnectionNotUpgrade)),
            ("missing_upgrade", 101, edit("Upgrade", None), Some("chat.v2"), Some(F::UpgradeNotWebSocket)),
            ("upgrade_other", 101, edit("Upgrade", Some("h2c")), Some("chat.v2"), Some(F::UpgradeNotWebSocket)),
            ("upgrade_list", 101, edit("Upgrade", Some("websocket, h2c")), Some("chat.v2"), Some(F::UpgradeNotWebSocket)),
            ("protocol_missing", 101, edit("Sec-WebSocket-Protocol", None), Some("chat.v2"), Some(missing)),
            ("protocol_different", 101, edit("Sec-WebSocket-Protocol", Some("mqtt")), Some("chat.v2"), Some(other.clone())),
            ("protocol_case_differs", 101, edit("Sec-WebSocket-Protocol", Some("CHAT.V2")), Some("chat.v2"), Some(other.clone())),
            ("protocol_list", 101, edit("Sec-WebSocket-Protocol", Some("chat.v2, mqtt")), Some("chat.v2"), Some(other)),
            ("protocol_for_fallback", 101, edit("x", None), None, Some(F::SubprotocolNotOffered)),
        ];
        for (name, status, lines, selected, fault) in rows {
            let refs: Vec<(&str, &str)> = lines
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let got = check_upstream_101(&response(status, &refs), SAMPLE_KEY, selected);
            assert_eq!(
                got,
                fault.map_or(Ok(()), |f| Err(Reject::UpstreamBadHandshake(f))),
                "{name}"
            );
            if let Err(e) = got {
                assert_eq!(e.status(), StatusCode::BAD_GATEWAY, "{name}");
            }
        }
    }

    #[test]
    fn upstream_other_101_rows() {
        use UpstreamFault as F;
        let not_tcp = || {
            Some(F::UpgradeNotToken {
                token: "tcp".into(),
            })
        };
        // (name, status, headers, fault)
        #[rustfmt::skip]
        let rows: &[(&str, u16, &[(&str, &str)], Option<F>)] = &[
            ("good", 101, &[("Upgrade", "tcp"), ("Connection", "Upgrade")], None),
            ("case", 101, &[("Upgrade", "TCP"), ("Connection", "upgrade")], None),
            ("versioned", 101, &[("Upgrade", "tcp/1"), ("Connection", "Upgrade")], None),
            ("not_101", 200, &[("Upgrade", "tcp"), ("Connection", "Upgrade")], Some(F::NotSwitching { status: StatusCode::OK })),
            ("other_token", 101, &[("Upgrade", "websocket"), ("Connection", "Upgrade")], not_tcp()),
            ("no_upgrade", 101, &[("Connection", "Upgrade")], not_tcp()),
            ("no_connection", 101, &[("Upgrade", "tcp")], Some(F::ConnectionNotUpgrade)),
        ];
        for (name, status, lines, fault) in rows {
            let got = check_upstream_other_101(&response(*status, lines), "tcp");
            let want = fault
                .clone()
                .map_or(Ok(()), |f| Err(Reject::UpstreamBadHandshake(f)));
            assert_eq!(got, want, "{name}");
        }
    }

    /// The reason is the 502 body: these are the texts answered before the faults were typed.
    #[test]
    fn fault_texts_are_the_answer_bodies() {
        use UpstreamFault as F;
        #[rustfmt::skip]
        let rows: &[(F, &str)] = &[
            (F::NotSwitching { status: StatusCode::OK }, "status 200 is not 101"),
            (F::UpgradeNotWebSocket, "Upgrade is not websocket"),
            (F::UpgradeNotToken { token: "tcp".into() }, "Upgrade is not tcp"),
            (F::ConnectionNotUpgrade, "Connection does not list upgrade"),
            (F::AcceptMissing, "Sec-WebSocket-Accept missing"),
            (F::AcceptMismatch, "Sec-WebSocket-Accept does not match our key"),
            (F::SubprotocolMissing { selected: "mqtt".into() }, "Sec-WebSocket-Protocol mqtt missing"),
            (F::SubprotocolOther { selected: "mqtt".into() }, "Sec-WebSocket-Protocol is not mqtt"),
            (F::SubprotocolNotOffered, "Sec-WebSocket-Protocol sent though none was offered"),
            (F::NoValidResponse, "no valid HTTP response"),
            (F::SuccessInsteadOf101 { status: StatusCode::OK }, "upstream answered 200 OK instead of 101"),
        ];
        for (fault, text) in rows {
            assert_eq!(fault.to_string(), *text);
            let body = Reject::UpstreamBadHandshake(fault.clone()).to_string();
            assert_eq!(body, format!("upstream handshake invalid: {text}"));
        }
    }

    #[test]
    fn relayed_answers_lose_their_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "x-kept"]);
    }
}
