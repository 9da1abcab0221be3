//! SPEC §2 routing, §3 subprotocol selection and the 101, §4 the request forwarded upstream.

use crate::support::*;

struct Upstreams {
    chat: WsUpstream,
    mqtt: WsUpstream,
    fb: WsUpstream,
}

/// `/ws` select=client and `/srv` select=server over {chat.v2 -> chat, mqtt -> mqtt}; `/fb`
/// maps chat.v2 with fallback `fb`.
async fn selection_gateway() -> (Gateway, Upstreams) {
    let ups = Upstreams {
        chat: WsUpstream::start().await,
        mqtt: WsUpstream::start().await,
        fb: WsUpstream::start().await,
    };
    let gw = ConfigBuilder::new()
        .upstream("chat", &[ups.chat.addr()])
        .upstream("mqtt", &[ups.mqtt.addr()])
        .upstream("fb", &[ups.fb.addr()])
        .route(Route::new("/ws").sub("chat.v2", "chat").sub("mqtt", "mqtt"))
        .route(
            Route::new("/srv")
                .sub("chat.v2", "chat")
                .sub("mqtt", "mqtt")
                .select_server(),
        )
        .route(Route::new("/fb").sub("chat.v2", "chat").fallback("fb"))
        .start()
        .await;
    (gw, ups)
}

fn counts(ups: &Upstreams) -> [usize; 3] {
    [
        ups.chat.requests().len(),
        ups.mqtt.requests().len(),
        ups.fb.requests().len(),
    ]
}

/// Offers split over two header lines are one list (RFC 9110 §5.3); select=client takes the
/// client's first mapped offer, select=server the config's first offered; the upstream gets only
/// the selected value and the 101 carries it exactly once.
#[tokio::test]
async fn select_client_and_server_over_two_header_lines() {
    bounded("select_client_and_server_over_two_header_lines", async {
        let (gw, ups) = selection_gateway().await;
        let host = gw.addr().to_string();
        // (path, expected selection, counts after the request: chat, mqtt, fb)
        let cases: [(&str, &str, [usize; 3]); 2] =
            [("/ws", "mqtt", [0, 1, 0]), ("/srv", "chat.v2", [1, 1, 0])];
        for (path, selected, after) in cases {
            let req = ClientRequest::ws(&host, path)
                .protocol("stomp, mqtt")
                .protocol("chat.v2");
            let (_c, head) = exchange(gw.addr(), &req, b"").await;
            assert_101(&head, &req.key, Some(selected));
            assert_eq!(
                counts(&ups),
                after,
                "{path}: which upstream got the handshake"
            );
            let up = match selected {
                "mqtt" => &ups.mqtt,
                _ => &ups.chat,
            };
            let seen = up.requests().pop().expect("a request");
            assert_eq!(
                seen.headers.all("sec-websocket-protocol"),
                [selected],
                "{path}: upstream must get only the selected subprotocol"
            );
        }
    })
    .await;
}

/// No mapped offer with a fallback: the fallback upstream gets no Sec-WebSocket-Protocol and the
/// client's 101 has none.
#[tokio::test]
async fn fallback_has_no_subprotocol_either_side() {
    bounded("fallback_has_no_subprotocol_either_side", async {
        let (gw, ups) = selection_gateway().await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/fb").protocol("stomp, wamp");
        let (_c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, None);
        assert_eq!(
            counts(&ups),
            [0, 0, 1],
            "only the fallback upstream is used"
        );
        let seen = ups.fb.requests().pop().expect("a request");
        assert!(
            !seen.headers.has("sec-websocket-protocol"),
            "fallback upstream got Sec-WebSocket-Protocol: {:?}",
            seen.headers
        );
    })
    .await;
}

/// RFC 6455 §1.3's sample key through the gateway: the accept is computed from the client's key.
#[tokio::test]
async fn accept_for_the_rfc_sample_key() {
    bounded("accept_for_the_rfc_sample_key", async {
        let (gw, ups) = selection_gateway().await;
        let req = ClientRequest::ws(&gw.addr().to_string(), "/ws")
            .protocol("chat.v2")
            .set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        let (_c, head) = exchange(gw.addr(), &req, b"").await;
        assert_eq!(
            head.headers.all("sec-websocket-accept"),
            ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
        );
        assert_101(&head, &req.key, Some("chat.v2"));
        let seen = ups.chat.requests().pop().expect("a request");
        assert_eq!(
            seen.headers.all("sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="]
        );
    })
    .await;
}

/// SPEC §4: hop-by-hop headers dropped (RFC 9110 §7.6.1), end-to-end ones kept, forwarding
/// headers added (RFC 7239), method/target/Host/key/version as the upstream needs them.
#[tokio::test]
async fn forwarded_request_headers() {
    bounded("forwarded_request_headers", async {
        let (gw, ups) = selection_gateway().await;
        let host = gw.addr().to_string();
        let req = ClientRequest::ws(&host, "/ws/room?x=1&y=two")
            .set("Connection", "Upgrade, keep-alive, X-Hop-Custom")
            .protocol("stomp, chat.v2, mqtt")
            .header("X-Hop-Custom", "must-not-pass")
            .header("Keep-Alive", "timeout=5, max=100")
            .header("TE", "trailers")
            .header("X-End-To-End", "kept-value")
            .header("Cookie", "sid=abc123")
            .header("X-Forwarded-For", "198.51.100.1")
            .header(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            );
        let (_c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        let seen = ups.chat.requests().pop().expect("a request");
        let h = &seen.headers;

        assert_eq!(seen.method, "GET");
        assert_eq!(
            seen.target, "/ws/room?x=1&y=two",
            "path and query forwarded"
        );
        assert_eq!(h.all("host"), [host.as_str()], "Host: {h:?}");
        assert_eq!(
            h.all("sec-websocket-key"),
            [req.key.as_str()],
            "client key: {h:?}"
        );
        assert_eq!(h.all("sec-websocket-version"), ["13"], "version: {h:?}");
        assert_eq!(
            h.all("sec-websocket-protocol"),
            ["chat.v2"],
            "only the selected one: {h:?}"
        );
        assert_eq!(h.tokens("upgrade"), ["websocket"], "Upgrade: {h:?}");
        let conn = h.tokens("connection");
        assert!(
            conn.contains(&"upgrade".to_string()),
            "Connection lacks upgrade: {h:?}"
        );
        for hop in ["keep-alive", "x-hop-custom"] {
            assert!(
                !conn.contains(&hop.to_string()),
                "Connection still lists {hop}: {h:?}"
            );
        }
        let names = h.names();
        for hop in ["keep-alive", "te", "x-hop-custom"] {
            assert!(
                !names.contains(&hop.to_string()),
                "hop-by-hop {hop} forwarded: {h:?}"
            );
        }

        assert_eq!(h.all("x-end-to-end"), ["kept-value"], "{h:?}");
        assert_eq!(h.all("cookie"), ["sid=abc123"], "{h:?}");
        assert_eq!(
            h.list("sec-websocket-extensions").join(","),
            "permessage-deflate; client_max_window_bits",
            "extensions passed through: {h:?}"
        );

        assert_eq!(
            h.list("x-forwarded-for"),
            ["198.51.100.1", "127.0.0.1"],
            "X-Forwarded-For appended: {h:?}"
        );
        assert_eq!(h.all("x-forwarded-proto"), ["http"], "{h:?}");
        assert_eq!(h.all("x-forwarded-host"), [host.as_str()], "{h:?}");
        let last = forwarded_elements(h)
            .pop()
            .unwrap_or_else(|| panic!("no Forwarded header: {h:?}"));
        let node = last
            .iter()
            .find(|(k, _)| k == "for")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        assert!(
            node == "127.0.0.1" || node.starts_with("127.0.0.1:"),
            "Forwarded for= {node:?} (RFC 7239 §6): {h:?}"
        );
        let proto = last
            .iter()
            .find(|(k, _)| k == "proto")
            .map(|(_, v)| v.as_str());
        assert_eq!(proto, Some("http"), "Forwarded proto=: {h:?}");
    })
    .await;
}

/// RFC 7239 §4: `Forwarded` elements, each a list of (lower-cased name, unquoted value).
fn forwarded_elements(h: &Headers) -> Vec<Vec<(String, String)>> {
    h.all("forwarded")
        .iter()
        .flat_map(|line| line.split(','))
        .map(|elem| {
            elem.split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    (
                        k.trim().to_ascii_lowercase(),
                        v.trim().trim_matches('"').to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .filter(|e| !e.is_empty())
        .collect()
}

/// SPEC §2 routing: the exact host class beats `*` even against a longer path; within `*` the
/// longest prefix on segment boundaries wins; the Host port is ignored and names compare
/// case-insensitively; no match is 404.
#[tokio::test]
async fn routing_by_host_class_and_longest_prefix() {
    bounded("routing_by_host_class_and_longest_prefix", async {
        let api = WsUpstream::start().await;
        let apiws = WsUpstream::start().await;
        let exact = WsUpstream::start().await;
        let gw = ConfigBuilder::new()
            .upstream("api", &[api.addr()])
            .upstream("apiws", &[apiws.addr()])
            .upstream("exact", &[exact.addr()])
            .route(Route::new("/api").fallback("api"))
            .route(Route::new("/api/ws").fallback("apiws"))
            .route(
                Route::new("/api")
                    .host("chat.example.com")
                    .fallback("exact"),
            )
            .start()
            .await;
        let ups: [(&str, &WsUpstream); 3] = [("api", &api), ("apiws", &apiws), ("exact", &exact)];
        let rows = [
            ("x.test", "/api/ws/room?id=1", "apiws"),
            ("x.test", "/api/wsx", "api"),
            ("x.test", "/api", "api"),
            ("CHAT.Example.com:8443", "/api/ws/room", "exact"),
        ];
        for (host, path, want) in rows {
            let before: Vec<usize> = ups.iter().map(|(_, u)| u.requests().len()).collect();
            let req = ClientRequest::ws(host, path);
            let (_c, head) = exchange(gw.addr(), &req, b"").await;
            assert_101(&head, &req.key, None);
            let gained: Vec<&str> = ups
                .iter()
                .zip(&before)
                .filter(|((_, u), b)| u.requests().len() > **b)
                .map(|((n, _), _)| *n)
                .collect();
            assert_eq!(gained, [want], "Host {host} {path} routed to {gained:?}");
            let seen = ups
                .iter()
                .find(|(n, _)| *n == want)
                .map(|(_, u)| u.requests())
                .unwrap_or_default();
            assert_eq!(
                seen.last().map(|r| r.target.as_str()),
                Some(path),
                "target forwarded"
            );
        }
        let req = ClientRequest::ws("x.test", "/other");
        let mut c = Client::connect(gw.addr()).await;
        let _ = c.send(&req.to_bytes()).await;
        expect_failure(&mut c, 404, "no route for /other").await;
        let total: usize = ups.iter().map(|(_, u)| u.connections()).sum();
        assert_eq!(
            total, 4,
            "one upstream connection per successful handshake, none for the 404"
        );
    })
    .await;
}
