//! The handshake rules, as pure functions (SPEC §3, §4, §6; RFC 6455 §4, RFC 8441).
//!
//! The I/O layer calls, for every request (HTTP/1.x or an h2 stream), in this order, and
//! answers [`Reject::response`] on the first `Err`:
//!
//! 0. [`check_method_form`] — an ordinary HTTP/1.1 CONNECT is 405 before anything else;
//! 1. [`request_host`] — the host to route on (400 without `Host` or with an invalid one), then
//!    [`check_path`] (400 for dot segments and `%00`) and, on a `strict_sni` connection, the
//!    host against the SNI name (421);
//! 2. [`crate::route::RouteTable::find`] — 404 on `None`;
//! 3. [`classify`] — ordinary request, WebSocket, or another configured `Upgrade` token;
//! 4. [`Upgrade::check`]: [`negotiate`] (WebSocket) or [`check_other_upgrade`] (other tokens),
//!    the rest of §3;
//! 5. [`Upgrade::upstream_request`] ([`upstream_request`]) / [`forward_headers`] — what goes
//!    upstream (§4);
//! 6. [`Upgrade::check_upstream`] ([`check_upstream_101`] / [`check_upstream_other_101`]) — the
//!    upstream's answer (§4); for an inspected tunnel, [`accepted_extensions`] reads which RSV
//!    bits its frames may set (§9);
//! 7. [`Upgrade::client_success`] — the 101 (HTTP/1.1) or 200 (extended CONNECT) to the client.
//!
//! Where the carrier matters (HTTP/1.1 `GET` + `Upgrade` or an extended CONNECT), the rules ask
//! [`Carrier`], never a version flag.
//!
//! This module owns the protocol decisions and must not do I/O: it imports `http`, `base64`
//! and `sha1`, never `tokio` or `hyper`. Randomness (h2's fresh key) comes from the caller.

mod client;
mod extensions;
mod key;
pub(crate) mod target;
pub(crate) mod tokens;
mod upstream;

pub(crate) use client::{
    Negotiated, check_other_upgrade, client_success, client_success_other, negotiate,
};
pub(crate) use extensions::accepted_extensions;
pub(crate) use key::{accept_key, key_from_bytes};
pub(crate) use target::check_path;
pub(crate) use upstream::{
    ForwardInfo, UpstreamUpgrade, check_upstream_101, check_upstream_other_101, forward_headers,
    strip_hop_by_hop, upstream_request,
};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{Method, Version};

use crate::config::{RouteConfig, WebSocketConfig};
use crate::error::{Carrier, Reject};

/// Step 1: the host a request is routed on.
///
/// Extended CONNECT (h2): the `:authority` (RFC 9113 §8.3.1), else a `Host` header. HTTP/1.x: RFC 9112 §3.2 "A
/// server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request message that
/// lacks a Host header field and to any request message that contains more than one Host header
/// field line or a Host header field with an invalid field value" — so exactly one non-empty
/// `Host`, else [`Reject::MissingHost`]. With an absolute-form target the target's authority
/// wins (RFC 9112 §3.2.2). HTTP/1.0 may omit `Host`: it is routed on `""` (only `*` routes
/// match), so it ends in a 404, the plain-request branch, or the version row's 400.
///
/// Every host named — the `Host` line, the target's or the `:authority` — must be a valid
/// `host[:port]` ([`target::check_authority`]), else [`Reject::BadHost`]: a malformed one would
/// miss the exact-host routes, fall to a wildcard route and be forwarded upstream.
pub(crate) fn request_host(parts: &Parts, carrier: Carrier) -> Result<&str, Reject> {
    let host = named_host(parts, carrier)?;
    if !host.is_empty() {
        target::check_authority(host)?;
    }
    if let Some(authority) = parts.uri.authority() {
        target::check_authority(authority.as_str())?;
    }
    Ok(host)
}

fn named_host(parts: &Parts, carrier: Carrier) -> Result<&str, Reject> {
    let connect = carrier.extended_connect();
    if connect {
        if let Some(authority) = parts.uri.authority() {
            return Ok(authority.as_str());
        }
    }
    let mut lines = parts.headers.get_all(HOST).iter();
    let host = match (lines.next(), lines.next()) {
        (Some(one), None) => one.to_str().map_err(|_| Reject::MissingHost)?,
        (None, _) if !connect && parts.version < Version::HTTP_11 => return Ok(""),
        _ => return Err(Reject::MissingHost),
    };
    if host.is_empty() {
        return Err(Reject::MissingHost);
    }
    if let Some(authority) = parts.uri.authority() {
        if !connect {
            // The Host line must still be valid even though the target's authority wins.
            target::check_authority(host)?;
            return Ok(authority.as_str());
        }
    }
    Ok(host)
}

/// Step 0 (SPEC §3, after the table): an HTTP/1.1 `CONNECT` without `Upgrade` asks a forward
/// proxy for a raw tunnel, which the gateway is not; 405 before routing, since its
/// authority-form target names no path to route on.
pub(crate) fn check_method_form(parts: &Parts, carrier: Carrier) -> Result<(), Reject> {
    if !carrier.extended_connect()
        && parts.method == Method::CONNECT
        && !parts.headers.contains_key(UPGRADE)
    {
        return Err(Reject::ConnectNotAllowed);
    }
    Ok(())
}

/// On a TLS connection whose client sent `sni` (and `strict_sni` is on): the routed host (port
/// ignored, case-insensitive, one trailing dot ignored) must be that name, else 421 (RFC 9110
/// §15.5.20), so a connection opened for one tenant's name cannot carry requests for another's.
/// `sni` comes normalized ([`sni_name`]), so this allocates nothing for a lower-case host.
pub(crate) fn check_sni(host: &str, sni: Option<&str>) -> Result<(), Reject> {
    match sni {
        Some(sni) if *crate::route::host_name(host) != *sni => Err(Reject::MisdirectedRequest),
        _ => Ok(()),
    }
}

/// The SNI name as [`check_sni`] compares it: lower-cased, without a trailing dot, once per
/// connection.
pub(crate) fn sni_name(sent: &str) -> Box<str> {
    sent.trim_end_matches('.')
        .to_ascii_lowercase()
        .into_boxed_str()
}

/// What a routed request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No upgrade (or an unknown one on a route with `http`): proxy to `route.http`, or answer
    /// [`Reject::UpgradeRequired`] when the route has none.
    Plain,
    /// A WebSocket handshake: continue with [`negotiate`].
    WebSocket,
    /// A configured non-WebSocket `Upgrade` token, tunnelled as-is: continue with
    /// [`check_other_upgrade`]. `token` is the client's protocol as offered (h1) or its
    /// `:protocol` (h2); `upstream` the route's upstream for it.
    Other { token: String, upstream: String },
}

/// Step 3: which kind of request this is for its route.
///
/// HTTP/1.x: RFC 9110 §7.8, the `Upgrade` list in client preference order; the first protocol
/// that is `websocket` or one of `route.upgrades` wins. `protocol` is ignored.
/// Extended CONNECT carriers (h2, RFC 8441 §4): `protocol` is the `:protocol` pseudo-header.
pub(crate) fn classify(
    parts: &Parts,
    route: &RouteConfig,
    carrier: Carrier,
    protocol: Option<&str>,
) -> Result<Kind, Reject> {
    if carrier.extended_connect() {
        return classify_connect(parts, route, carrier, protocol);
    }
    let mut offered = tokens::elements(&parts.headers, UPGRADE).peekable();
    // An `Upgrade` header without any protocol asks for nothing.
    if offered.peek().is_none() {
        return Ok(Kind::Plain);
    }
    // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in the
    // Connection header field"; SPEC §3 answers 400 when it is missing.
    if !tokens::lists_token(&parts.headers, CONNECTION, "upgrade") {
        return Err(Reject::ConnectionNotUpgrade);
    }
    // RFC 9110 §7.8: the protocols are "listed in descending preference order".
    for p in offered {
        if tokens::protocol_matches(p, "websocket") {
            return Ok(Kind::WebSocket);
        }
        if let Some(u) = route
            .upgrades
            .iter()
            .find(|u| tokens::protocol_matches(p, &u.token))
        {
            return Ok(Kind::Other {
                // A matching offer is a well-formed protocol: ASCII tchars and "/".
                token: String::from_utf8_lossy(p).into_owned(),
                upstream: u.upstream.clone(),
            });
        }
    }
    // RFC 9110 §7.8: "A server MAY ignore a received Upgrade header field" — we do when the
    // route has an ordinary upstream.
    if route.http.is_some() {
        Ok(Kind::Plain)
    } else {
        Err(Reject::UnsupportedUpgrade)
    }
}

fn classify_connect(
    parts: &Parts,
    route: &RouteConfig,
    carrier: Carrier,
    protocol: Option<&str>,
) -> Result<Kind, Reject> {
    let connect = parts.method == Method::CONNECT;
    match protocol {
        // RFC 8441 §4: "A :protocol pseudo-header field MUST NOT be included in a request
        // unless the :method is CONNECT" — such a request is malformed.
        Some(_) if !connect => Err(Reject::MalformedHead),
        None if connect => Err(Reject::UnsupportedUpgrade),
        None => Ok(Kind::Plain),
        Some(p) if tokens::protocol_matches(p.as_bytes(), "websocket") => Ok(Kind::WebSocket),
        Some(p) => match route
            .upgrades
            .iter()
            .find(|u| tokens::protocol_matches(p.as_bytes(), &u.token))
        {
            Some(u) => Ok(Kind::Other {
                token: p.to_string(),
                upstream: u.upstream.clone(),
            }),
            None => Err(carrier.unknown_protocol()),
        },
    }
}

/// Step 4's result: an upgrade that passed every client-side row, holding what steps 5 to 7
/// need, so the I/O layer runs one path for WebSockets and other tokens alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// A WebSocket handshake; `key` is the one sent upstream: the client's (HTTP/1.1) or, where
    /// the carrier has no key exchange (RFC 8441 §5), a fresh one.
    WebSocket { negotiated: Negotiated, key: String },
    /// A configured non-WebSocket token, tunnelled as-is to `upstream`.
    Other { token: String, upstream: String },
}

impl Upgrade {
    /// Step 4 for `kind` (not [`Kind::Plain`], which is no upgrade: `None`). `fresh_key` is the
    /// caller's randomness for carriers without a key exchange.
    pub(crate) fn check(
        parts: &Parts,
        route: &RouteConfig,
        ws: &WebSocketConfig,
        carrier: Carrier,
        kind: Kind,
        fresh_key: [u8; 16],
    ) -> Option<Result<Upgrade, Reject>> {
        Some(match kind {
            Kind::Plain => return None,
            Kind::WebSocket => negotiate(parts, route, ws, carrier).map(|negotiated| {
                let key = negotiated
                    .client_key
                    .clone()
                    .unwrap_or_else(|| key_from_bytes(fresh_key));
                Upgrade::WebSocket { negotiated, key }
            }),
            Kind::Other { token, upstream } => {
                check_other_upgrade(parts, carrier).map(|()| Upgrade::Other { token, upstream })
            }
        })
    }

    /// The upstream this upgrade goes to.
    pub(crate) fn upstream(&self) -> &str {
        match self {
            Upgrade::WebSocket { negotiated, .. } => &negotiated.upstream,
            Upgrade::Other { upstream, .. } => upstream,
        }
    }

    /// The selected subprotocol, for the access log and metrics.
    pub(crate) fn subprotocol(&self) -> Option<&str> {
        match self {
            Upgrade::WebSocket { negotiated, .. } => negotiated.subprotocol.as_deref(),
            Upgrade::Other { .. } => None,
        }
    }

    /// Step 5: the request head sent upstream.
    pub(crate) fn upstream_request(
        &self,
        parts: &Parts,
        fwd: &ForwardInfo<'_>,
    ) -> http::Request<()> {
        let upgrade = match self {
            Upgrade::WebSocket { negotiated, key } => {
                UpstreamUpgrade::WebSocket { negotiated, key }
            }
            Upgrade::Other { token, .. } => UpstreamUpgrade::Other { token },
        };
        upstream_request(parts, upgrade, fwd)
    }

    /// Step 6: the upstream's 101 must be the answer to what step 5 asked.
    pub(crate) fn check_upstream(&self, head: &http::response::Parts) -> Result<(), Reject> {
        match self {
            Upgrade::WebSocket { negotiated, key } => {
                check_upstream_101(head, key, negotiated.subprotocol.as_deref())
            }
            Upgrade::Other { token, .. } => check_upstream_other_101(head, token),
        }
    }

    /// Step 7: the client's answer on `carrier`, from the checked 101.
    pub(crate) fn client_success(
        &self,
        head: &http::response::Parts,
        carrier: Carrier,
    ) -> http::Response<()> {
        match self {
            Upgrade::WebSocket { negotiated, .. } => client_success(negotiated, head, carrier),
            Upgrade::Other { token, .. } => client_success_other(token, head, carrier),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::error::Carrier;
    use http::StatusCode;

    #[test]
    fn host_rows() {
        // (version, h2 authority, Host lines, expected)
        #[rustfmt::skip]
        let rows: &[(Version, Option<&str>, &[&str], Result<&str, Reject>)] = &[
            (Version::HTTP_11, None, &["a.example:8080"], Ok("a.example:8080")),
            (Version::HTTP_11, None, &[], Err(Reject::MissingHost)),
            (Version::HTTP_11, None, &[""], Err(Reject::MissingHost)),
            (Version::HTTP_11, None, &["a", "b"], Err(Reject::MissingHost)),
            (Version::HTTP_10, None, &[], Ok("")),
            (Version::HTTP_10, None, &["a"], Ok("a")),
            (Version::HTTP_10, None, &["a", "a"], Err(Reject::MissingHost)),
            (Version::HTTP_2, Some("h2.example:443"), &[], Ok("h2.example:443")),
            (Version::HTTP_2, None, &["h.example"], Ok("h.example")),
            (Version::HTTP_2, None, &[], Err(Reject::MissingHost)),
            (Version::HTTP_11, None, &["a, b"], Err(Reject::BadHost)),
            (Version::HTTP_11, None, &["u@a"], Err(Reject::BadHost)),
            (Version::HTTP_11, None, &["a:"], Err(Reject::BadHost)),
            (Version::HTTP_10, None, &["a b"], Err(Reject::BadHost)),
            (Version::HTTP_2, Some("h2.example:0"), &[], Err(Reject::BadHost)),
            (Version::HTTP_2, Some("u@h2.example"), &[], Err(Reject::BadHost)),
        ];
        for (version, authority, hosts, want) in rows {
            let carrier = if *version == Version::HTTP_2 {
                Carrier::H2
            } else {
                Carrier::H1
            };
            let uri = match authority {
                Some(a) => format!("https://{a}/ws"),
                None => "/ws".to_string(),
            };
            let mut b = http::Request::builder().uri(uri).version(*version);
            for h in *hosts {
                b = b.header(HOST, *h);
            }
            let (parts, ()) = b.body(()).unwrap().into_parts();
            assert_eq!(
                request_host(&parts, carrier),
                *want,
                "{version:?} {authority:?} {hosts:?}"
            );
        }
    }

    #[test]
    fn absolute_form_target_wins_over_host() {
        let (parts, ()) = http::Request::builder()
            .uri("http://target.example/ws")
            .header(HOST, "other.example")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&parts, Carrier::H1), Ok("target.example"));
        for (uri, host) in [
            ("http://u@target.example/ws", "target.example"),
            ("http://target.example:/ws", "target.example"),
            ("http://target.example/ws", "a/b"),
        ] {
            let (parts, ()) = http::Request::builder()
                .uri(uri)
                .header(HOST, host)
                .body(())
                .unwrap()
                .into_parts();
            assert_eq!(
                request_host(&parts, Carrier::H1),
                Err(Reject::BadHost),
                "{uri} {host}"
            );
        }
    }

    #[test]
    fn sni_and_connect_rows() {
        let rows = [
            ("chat.example", Some("chat.example"), Ok(())),
            ("Chat.Example.:8443", Some("chat.example"), Ok(())),
            ("chat.example", None, Ok(())),
            (
                "other.example",
                Some("chat.example"),
                Err(Reject::MisdirectedRequest),
            ),
            (
                "[::1]:8443",
                Some("chat.example"),
                Err(Reject::MisdirectedRequest),
            ),
        ];
        for (host, sni, want) in rows {
            let sni = sni.map(sni_name);
            assert_eq!(check_sni(host, sni.as_deref()), want, "{host} {sni:?}");
        }
        assert_eq!(&*sni_name("Chat.Example.COM."), "chat.example.com");
        let connect = |upgrade: Option<&str>| {
            let mut b = http::Request::builder()
                .method(Method::CONNECT)
                .uri("a.example:443");
            if let Some(u) = upgrade {
                b = b.header(UPGRADE, u);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            check_method_form(&connect(None), Carrier::H1),
            Err(Reject::ConnectNotAllowed)
        );
        assert_eq!(
            check_method_form(&connect(Some("websocket")), Carrier::H1),
            Ok(())
        );
        assert_eq!(check_method_form(&connect(None), Carrier::H2), Ok(()));
    }

    #[test]
    fn classify_rows_h1() {
        let web = std_route("/web");
        let ws = std_route("/ws");
        let raw = raw_route();
        // (route, Upgrade, Connection, expected)
        let rows: &[(
            &RouteConfig,
            Option<&str>,
            Option<&str>,
            Result<Kind, Reject>,
        )] = &[
            (&ws, None, None, Ok(Kind::Plain)),
            (&ws, Some(""), Some("keep-alive"), Ok(Kind::Plain)),
            (&ws, Some("websocket"), Some("Upgrade"), Ok(Kind::WebSocket)),
            (&ws, Some("WebSocket"), Some("uPgRaDe"), Ok(Kind::WebSocket)),
            (
                &ws,
                Some("foo/2, websocket"),
                Some("Upgrade"),
                Ok(Kind::WebSocket),
            ),
            (
                &ws,
                Some("websocket"),
                Some("keep-alive, Upgrade"),
                Ok(Kind::WebSocket),
            ),
            (
                &ws,
                Some("websocket"),
                Some("keep-alive,Upgrade,x-foo"),
                Ok(Kind::WebSocket),
            ),
            (
                &ws,
                Some("websocket"),
                Some("keep-alive"),
                Err(Reject::ConnectionNotUpgrade),
            ),
            (
                &ws,
                Some("websocket"),
                None,
                Err(Reject::ConnectionNotUpgrade),
            ),
            (
                &ws,
                Some("websocket"),
                Some("close"),
                Err(Reject::ConnectionNotUpgrade),
            ),
            (
                &ws,
                Some("websocket"),
                Some("upgrades, x-upgrade"),
                Err(Reject::ConnectionNotUpgrade),
            ),
            (
                &ws,
                Some("h2c"),
                Some("Upgrade"),
                Err(Reject::UnsupportedUpgrade),
            ),
            (
                &ws,
                Some("websockets"),
                Some("Upgrade"),
                Err(Reject::UnsupportedUpgrade),
            ),
            // No `upgrades` on /ws: "tcp" is unknown there.
            (
                &ws,
                Some("tcp"),
                Some("Upgrade"),
                Err(Reject::UnsupportedUpgrade),
            ),
            (
                &web,
                Some("h2c"),
                Some("Upgrade, HTTP2-Settings"),
                Ok(Kind::Plain),
            ),
            (&raw, Some("tcp"), Some("Upgrade"), Ok(other("tcp"))),
            (&raw, Some("TCP/1"), Some("Upgrade"), Ok(other("TCP/1"))),
            (
                &raw,
                Some("tcp, websocket"),
                Some("Upgrade"),
                Ok(other("tcp")),
            ),
            (
                &raw,
                Some("websocket, tcp"),
                Some("Upgrade"),
                Ok(Kind::WebSocket),
            ),
        ];
        for (route, upgrade, connection, want) in rows {
            let mut b = http::Request::builder().uri("/ws").header(HOST, "h");
            if let Some(u) = upgrade {
                b = b.header(UPGRADE, *u);
            }
            if let Some(c) = connection {
                b = b.header(CONNECTION, *c);
            }
            let (parts, ()) = b.body(()).unwrap().into_parts();
            assert_eq!(
                classify(&parts, route, Carrier::H1, None),
                *want,
                "{} Upgrade {upgrade:?} Connection {connection:?}",
                route.path
            );
        }
    }

    #[test]
    fn classify_connection_split_over_two_lines() {
        let (parts, ()) = http::Request::builder()
            .uri("/ws")
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "keep-alive")
            .header(CONNECTION, "Upgrade")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            classify(&parts, &std_route("/ws"), Carrier::H1, None),
            Ok(Kind::WebSocket)
        );
    }

    #[test]
    fn classify_rows_h2() {
        let raw = raw_route();
        // (method, :protocol, expected)
        #[rustfmt::skip]
        let rows: &[(Method, Option<&str>, Result<Kind, Reject>)] = &[
            (Method::CONNECT, Some("websocket"), Ok(Kind::WebSocket)),
            (Method::CONNECT, Some("tcp"), Ok(other("tcp"))),
            (Method::CONNECT, Some("h2c"), Err(Reject::UnsupportedUpgrade)),
            (Method::CONNECT, None, Err(Reject::UnsupportedUpgrade)),
            (Method::GET, None, Ok(Kind::Plain)),
            (Method::POST, None, Ok(Kind::Plain)),
            (Method::GET, Some("websocket"), Err(Reject::MalformedHead)),
        ];
        for (method, protocol, want) in rows {
            let (parts, ()) = http::Request::builder()
                .method(method.clone())
                .version(Version::HTTP_2)
                .uri("https://h/raw")
                .body(())
                .unwrap()
                .into_parts();
            assert_eq!(
                classify(&parts, &raw, Carrier::H2, *protocol),
                *want,
                "{method} {protocol:?}"
            );
        }
    }

    fn other(token: &str) -> Kind {
        Kind::Other {
            token: token.to_string(),
            upstream: "raw".to_string(),
        }
    }

    /// handshake.py FAIL_ROWS that are pure logic (the 431 rows belong to the listener), run
    /// through the same call sequence as the I/O layer; order rows included.
    #[test]
    fn acceptance_fail_rows() {
        let b64_15 = "AAAAAAAAAAAAAAAAAAAA";
        let b64_17 = "AAAAAAAAAAAAAAAAAAAAAAA=";
        #[rustfmt::skip]
        let rows: Vec<(&str, StatusCode, Req)> = vec![
            ("400_missing_host", StatusCode::BAD_REQUEST, Req::ws("/ws").drop("Host")),
            ("404_no_route_path", StatusCode::NOT_FOUND, Req::ws("/nowhere")),
            ("404_no_route_host", StatusCode::NOT_FOUND, Req::ws("/hostonly").set("Host", "other.example")),
            ("426_plain_request_no_http_upstream", StatusCode::UPGRADE_REQUIRED, Req::plain("GET", "/ws")),
            ("400_upgrade_connection_keepalive_only", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Connection", "keep-alive")),
            ("400_upgrade_no_connection_header", StatusCode::BAD_REQUEST, Req::ws("/ws").drop("Connection")),
            ("400_upgrade_connection_close_only", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Connection", "close")),
            ("400_upgrade_connection_token_substring", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Connection", "upgrades, x-upgrade")),
            ("400_upgrade_unknown_token", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Upgrade", "h2c")),
            ("400_upgrade_token_substring", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Upgrade", "websockets")),
            ("405_post", StatusCode::METHOD_NOT_ALLOWED, Req::ws("/ws").method("POST")),
            ("405_put", StatusCode::METHOD_NOT_ALLOWED, Req::ws("/ws").method("PUT")),
            ("400_upgrade_with_content_length_body", StatusCode::BAD_REQUEST, Req::ws("/ws").add("Content-Length", "5")),
            ("400_upgrade_with_chunked_body", StatusCode::BAD_REQUEST, Req::ws("/ws").add("Transfer-Encoding", "chunked")),
            ("400_http10", StatusCode::BAD_REQUEST, Req::ws("/ws").version(Version::HTTP_10)),
            ("426_version_25", StatusCode::UPGRADE_REQUIRED, Req::ws("/ws").set("Sec-WebSocket-Version", "25")),
            ("426_version_missing", StatusCode::UPGRADE_REQUIRED, Req::ws("/ws").drop("Sec-WebSocket-Version")),
            ("400_version_sent_twice", StatusCode::BAD_REQUEST, Req::ws("/ws").add("Sec-WebSocket-Version", "13")),
            ("400_key_missing", StatusCode::BAD_REQUEST, Req::ws("/ws").drop("Sec-WebSocket-Key")),
            ("400_key_not_base64", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Key", "!!!!not*base64!!!!!!!==")),
            ("400_key_15_bytes", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Key", b64_15)),
            ("400_key_17_bytes", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Key", b64_17)),
            ("400_key_sent_twice", StatusCode::BAD_REQUEST, Req::ws("/ws").add("Sec-WebSocket-Key", SAMPLE_KEY)),
            ("400_key_empty", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Key", "")),
            ("403_origin_not_in_allowlist", StatusCode::FORBIDDEN, Req::ws("/strict").set("Origin", "https://evil.example")),
            ("403_origin_scheme_differs", StatusCode::FORBIDDEN, Req::ws("/strict").set("Origin", "http://app.example.com")),
            ("403_origin_trailing_slash_is_not_exact", StatusCode::FORBIDDEN, Req::ws("/strict").set("Origin", "https://app.example.com/")),
            ("403_origin_null", StatusCode::FORBIDDEN, Req::ws("/strict").set("Origin", "null")),
            ("403_sec_websocket_origin_v8_not_in_allowlist", StatusCode::FORBIDDEN, Req::ws("/strict").set("Sec-WebSocket-Version", "8").add("Sec-WebSocket-Origin", "https://evil.example")),
            ("400_subprotocol_non_token_space", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "chat.v2 mqtt")),
            ("400_subprotocol_non_token_slash", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "chat/v2")),
            ("400_subprotocol_repeated", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "mqtt, mqtt")),
            ("400_subprotocol_repeated_across_lines", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "mqtt").add("Sec-WebSocket-Protocol", "mqtt")),
            ("400_subprotocol_repeated_around_empty_element", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "mqtt,,mqtt")),
            ("400_no_mapped_subprotocol_no_fallback", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", "stomp, wamp")),
            ("400_no_subprotocol_offered_no_fallback", StatusCode::BAD_REQUEST, Req::ws("/ws").drop("Sec-WebSocket-Protocol")),
            ("400_only_empty_subprotocol_elements_no_fallback", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Protocol", " , ,")),
            // "checked in this order; the first failure answers"
            ("order_missing_host_before_404", StatusCode::BAD_REQUEST, Req::ws("/nowhere").drop("Host")),
            ("order_missing_host_before_426_plain", StatusCode::BAD_REQUEST, Req::plain("GET", "/ws").drop("Host")),
            ("order_404_before_405", StatusCode::NOT_FOUND, Req::ws("/nowhere").method("POST")),
            ("order_426_plain_before_405", StatusCode::UPGRADE_REQUIRED, Req::plain("POST", "/ws")),
            ("order_400_connection_before_405", StatusCode::BAD_REQUEST, Req::ws("/ws").method("POST").set("Connection", "keep-alive")),
            ("order_405_before_body", StatusCode::METHOD_NOT_ALLOWED, Req::ws("/ws").method("POST").add("Content-Length", "5")),
            ("order_405_before_http10", StatusCode::METHOD_NOT_ALLOWED, Req::ws("/ws").method("POST").version(Version::HTTP_10)),
            ("order_body_before_version", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Version", "25").add("Transfer-Encoding", "chunked")),
            ("order_http10_before_version", StatusCode::BAD_REQUEST, Req::ws("/ws").set("Sec-WebSocket-Version", "25").version(Version::HTTP_10)),
            ("order_version_before_key", StatusCode::UPGRADE_REQUIRED, Req::ws("/ws").set("Sec-WebSocket-Version", "25").drop("Sec-WebSocket-Key")),
            ("order_key_before_origin", StatusCode::BAD_REQUEST, Req::ws("/strict").set("Origin", "https://evil.example").set("Sec-WebSocket-Key", b64_15)),
            ("order_origin_before_subprotocol", StatusCode::FORBIDDEN, Req::ws("/strict").set("Origin", "https://evil.example").set("Sec-WebSocket-Protocol", "chat/v2")),
            ("order_subprotocol_syntax_before_selection", StatusCode::BAD_REQUEST, Req::ws("/fb").set("Sec-WebSocket-Protocol", "stomp, stomp")),
        ];
        for (name, status, req) in rows {
            let err = run(&req, &std_ws_config()).expect_err(name);
            assert_eq!(err.status(), status, "{name}: {err:?}");
            // Every one of these is answered with Connection: close and a reason (SPEC §3).
            let res = err.response(Carrier::H1);
            assert!(!res.body().is_empty(), "{name}");
            assert!(
                res.headers()[CONNECTION]
                    .to_str()
                    .unwrap()
                    .contains("close"),
                "{name}"
            );
        }
    }

    /// The typed reason and the headers the answer needs, for the rows that carry more than a
    /// status.
    #[test]
    fn fail_rows_carry_their_details() {
        let ws = std_ws_config();
        let versions = vec![13, 8, 7];
        #[rustfmt::skip]
        let rows: Vec<(&str, Req, Reject)> = vec![
            ("version_25", Req::ws("/ws").set("Sec-WebSocket-Version", "25"), Reject::VersionUnsupported {status: StatusCode::UPGRADE_REQUIRED, versions: versions.clone()}),
            ("version_twice", Req::ws("/ws").add("Sec-WebSocket-Version", "13"), Reject::VersionRepeated {versions: versions.clone()}),
            ("version_comma_list", Req::ws("/ws").set("Sec-WebSocket-Version", "13, 8"), Reject::VersionRepeated {versions: versions.clone()}),
            ("version_leading_zero", Req::ws("/ws").set("Sec-WebSocket-Version", "013"), Reject::VersionUnsupported {status: StatusCode::UPGRADE_REQUIRED, versions: versions.clone()}),
            ("no_match", Req::ws("/ws").set("Sec-WebSocket-Protocol", "stomp, wamp"), Reject::NoSubprotocolMatch {available: vec!["chat.v2".into(), "mqtt".into()]}),
            ("post", Req::ws("/ws").method("POST"), Reject::MethodNotAllowed),
            ("http10", Req::ws("/ws").version(Version::HTTP_10), Reject::HttpVersionTooOld),
            ("chunked", Req::ws("/ws").add("Transfer-Encoding", "chunked"), Reject::UpgradeWithBody),
            ("bad_content_length", Req::ws("/ws").add("Content-Length", "x"), Reject::UpgradeWithBody),
        ];
        for (name, req, want) in rows {
            assert_eq!(run(&req, &ws), Err(want), "{name}");
        }
        let mismatch_400 = crate::config::WebSocketConfig {
            versions: vec![7, 13, 8],
            version_mismatch_status: StatusCode::BAD_REQUEST,
        };
        assert_eq!(
            run(
                &Req::ws("/ws").set("Sec-WebSocket-Version", "12"),
                &mismatch_400
            ),
            Err(Reject::VersionUnsupported {
                status: StatusCode::BAD_REQUEST,
                versions: vec![7, 13, 8]
            })
        );
        let only_13 = crate::config::WebSocketConfig {
            versions: vec![13],
            version_mismatch_status: StatusCode::UPGRADE_REQUIRED,
        };
        assert_eq!(
            run(&Req::ws("/ws").set("Sec-WebSocket-Version", "8"), &only_13),
            Err(Reject::VersionUnsupported {
                status: StatusCode::UPGRADE_REQUIRED,
                versions: vec![13]
            })
        );
    }

    /// handshake.py OK_ROWS (pure part), plus the version 7/8 and other-token acceptances.
    #[test]
    fn acceptance_ok_rows() {
        #[rustfmt::skip]
        let rows: Vec<(&str, Req, &str, Option<&str>)> = vec![
            ("ok_connection_keepalive_upgrade_list", Req::ws("/ws").set("Connection", "keep-alive, Upgrade"), "chat", Some("chat.v2")),
            ("ok_connection_mixed_case", Req::ws("/ws").set("Connection", "uPgRaDe").set("Upgrade", "WebSocket"), "chat", Some("chat.v2")),
            ("ok_connection_split_over_two_lines", Req::ws("/ws").set("Connection", "keep-alive").add("Connection", "Upgrade"), "chat", Some("chat.v2")),
            ("ok_connection_list_no_spaces", Req::ws("/ws").set("Connection", "keep-alive,Upgrade,x-foo"), "chat", Some("chat.v2")),
            ("ok_upgrade_list_websocket_second", Req::ws("/ws").set("Upgrade", "foo/2, websocket"), "chat", Some("chat.v2")),
            ("ok_origin_in_allowlist", Req::ws("/strict").set("Origin", "https://app.example.com"), "chat", Some("chat.v2")),
            ("ok_origin_allowlist_case_insensitive", Req::ws("/strict").set("Origin", "HTTPS://App.Example.COM"), "chat", Some("chat.v2")),
            ("ok_no_origin_passes_allowlist", Req::ws("/strict"), "chat", Some("chat.v2")),
            ("ok_content_length_0_is_no_body", Req::ws("/ws").add("Content-Length", "0"), "chat", Some("chat.v2")),
            ("ok_host_route_matches", Req::ws("/hostonly").set("Host", "only.example"), "chat", Some("chat.v2")),
            ("version_8_accepted", Req::ws("/ws").set("Sec-WebSocket-Version", "8").set("Sec-WebSocket-Protocol", "mqtt").add("Sec-WebSocket-Origin", "http://origin.example"), "mqtt", Some("mqtt")),
            ("version_7_accepted", Req::ws("/ws").set("Sec-WebSocket-Version", "7").set("Sec-WebSocket-Protocol", "mqtt"), "mqtt", Some("mqtt")),
            ("version_8_sec_websocket_origin_allowlisted", Req::ws("/strict").set("Sec-WebSocket-Version", "8").add("Sec-WebSocket-Origin", "https://app.example.com"), "chat", Some("chat.v2")),
            // Versions 7/8 check Sec-WebSocket-Origin, not Origin, when both are present.
            ("version_8_sec_websocket_origin_wins", Req::ws("/strict").set("Sec-WebSocket-Version", "8").set("Origin", "https://evil.example").add("Sec-WebSocket-Origin", "https://app.example.com"), "chat", Some("chat.v2")),
            // ... and fall back to Origin when only that is present.
            ("version_8_origin_fallback", Req::ws("/strict").set("Sec-WebSocket-Version", "8").set("Origin", "https://app.example.com"), "chat", Some("chat.v2")),
            // Version 13 ignores Sec-WebSocket-Origin.
            ("version_13_ignores_sec_websocket_origin", Req::ws("/strict").add("Sec-WebSocket-Origin", "https://evil.example"), "chat", Some("chat.v2")),
            ("plain_to_http_upstream", Req::plain("GET", "/web/page?q=1"), "web", None),
            ("unknown_upgrade_to_http_upstream", Req::ws("/web").set("Upgrade", "h2c").set("Connection", "Upgrade, HTTP2-Settings"), "web", None),
        ];
        for (name, req, upstream, subprotocol) in rows {
            let got = run(&req, &std_ws_config()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(
                got,
                (upstream.to_string(), subprotocol.map(String::from)),
                "{name}"
            );
        }
        let mut with_raw = Req::ws("/raw").set("Upgrade", "tcp, websocket");
        with_raw.routes = std_routes_with_raw();
        assert_eq!(run(&with_raw, &std_ws_config()), Ok(("raw".into(), None)));
        let mut ws_first = Req::ws("/raw").set("Upgrade", "websocket, tcp");
        ws_first.routes = std_routes_with_raw();
        assert_eq!(
            run(&ws_first, &std_ws_config()),
            Ok(("chat".into(), Some("chat.v2".into())))
        );
    }

    /// negotiation.py SEL_ROWS: (path, offered lines, selected, upstream).
    #[test]
    fn acceptance_selection_rows() {
        #[rustfmt::skip]
        let rows: &[(&str, &[&str], Option<&str>, &str)] = &[
            ("/ws", &["mqtt, chat.v2"], Some("mqtt"), "mqtt"),
            ("/ws", &["stomp, chat.v2, mqtt"], Some("chat.v2"), "chat"),
            ("/srv", &["mqtt, chat.v2"], Some("chat.v2"), "chat"),
            ("/srv", &["stomp, mqtt"], Some("mqtt"), "mqtt"),
            ("/ws", &["stomp", "mqtt"], Some("mqtt"), "mqtt"),
            ("/ws", &["x-unknown, chat.v2", "mqtt"], Some("chat.v2"), "chat"),
            ("/fb", &["stomp"], None, "fb"),
            ("/fb", &[], None, "fb"),
            ("/fb", &["stomp, chat.v2"], Some("chat.v2"), "chat"),
            ("/fb", &["CHAT.V2"], None, "fb"),
            ("/ws", &["chat.v2,,mqtt"], Some("chat.v2"), "chat"),
            ("/ws", &[", mqtt ,"], Some("mqtt"), "mqtt"),
            ("/ws", &["", "mqtt"], Some("mqtt"), "mqtt"),
            ("/fb", &[" , "], None, "fb"),
        ];
        for (path, offers, selected, upstream) in rows {
            for carrier in [Carrier::H1, Carrier::H2] {
                let mut req = Req::ws(path).drop("Sec-WebSocket-Protocol");
                if carrier.extended_connect() {
                    req = req.h2();
                }
                for o in *offers {
                    req = req.add("Sec-WebSocket-Protocol", o);
                }
                assert_eq!(
                    run(&req, &std_ws_config()),
                    Ok((upstream.to_string(), selected.map(String::from))),
                    "{path} {offers:?} {carrier:?}"
                );
            }
        }
    }

    /// h2.py rows that are pure logic: SPEC §6 applies the §3 checks to extended CONNECT.
    #[test]
    fn h2_rows() {
        let ws = std_ws_config();
        #[rustfmt::skip]
        let rows: Vec<(&str, Req, Result<(String, Option<String>), StatusCode>)> = vec![
            ("ok", Req::ws("/ws").h2().set("Sec-WebSocket-Protocol", "mqtt, chat.v2"), Ok(("mqtt".into(), Some("mqtt".into())))),
            ("client_key_ignored", Req::ws("/ws").h2().set("Sec-WebSocket-Key", "junk"), Ok(("chat".into(), Some("chat.v2".into())))),
            ("no_key_needed", Req::ws("/ws").h2().drop("Sec-WebSocket-Key"), Ok(("chat".into(), Some("chat.v2".into())))),
            ("no_route_404", Req::ws("/nowhere").h2(), Err(StatusCode::NOT_FOUND)),
            ("version_missing_426", Req::ws("/ws").h2().drop("Sec-WebSocket-Version"), Err(StatusCode::UPGRADE_REQUIRED)),
            ("version_25_426", Req::ws("/ws").h2().set("Sec-WebSocket-Version", "25"), Err(StatusCode::UPGRADE_REQUIRED)),
            ("origin_not_allowed_403", Req::ws("/strict").h2().set("Origin", "https://evil.example"), Err(StatusCode::FORBIDDEN)),
            ("subprotocol_non_token_400", Req::ws("/ws").h2().set("Sec-WebSocket-Protocol", "chat/v2"), Err(StatusCode::BAD_REQUEST)),
            ("subprotocol_repeated_400", Req::ws("/ws").h2().set("Sec-WebSocket-Protocol", "mqtt, mqtt"), Err(StatusCode::BAD_REQUEST)),
            ("subprotocol_not_mapped_400", Req::ws("/ws").h2().set("Sec-WebSocket-Protocol", "stomp"), Err(StatusCode::BAD_REQUEST)),
            ("content_length_body_400", Req::ws("/ws").h2().add("Content-Length", "5"), Err(StatusCode::BAD_REQUEST)),
            ("plain_get_426", Req::plain("GET", "/ws").h2(), Err(StatusCode::UPGRADE_REQUIRED)),
            ("plain_get_to_http", Req::plain("GET", "/web/page?q=1").h2(), Ok(("web".into(), None))),
        ];
        for (name, req, want) in rows {
            assert_eq!(run(&req, &ws).map_err(|e| e.status()), want, "{name}");
        }
    }
}
