//! SPEC §10: authentication at the handshake. JWTs signed here with jsonwebtoken (RS256, ES256,
//! EdDSA) against a JWKS file the test writes; forward auth against a real HTTP service started
//! in the test; raw, tungstenite and h2 (RFC 8441) clients.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::h2_client::H2Conn;
use crate::support::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

/// `[auth.api]` (jwt, defaults but issuer, audience and claims_to_headers) and `[auth.rs]`
/// (algorithms = ["RS256"]) over the JWKS at `jwks`.
fn jwt_tables(jwks: &std::path::Path) -> String {
    let jwks = q(&jwks.display().to_string());
    format!(
        "[auth.api]\njwt = {{ jwks = {jwks}, issuer = \"https://id.test\", audience = \"chat\", claims_to_headers = {{ sub = \"x-user\", tier = \"x-tier\" }} }}\n\n\
         [auth.rs]\njwt = {{ jwks = {jwks}, issuer = \"https://id.test\", audience = \"chat\", algorithms = [\"RS256\"] }}\n"
    )
}

/// `/ws` (auth api: chat.v2 -> chat, fallback fb), `/rs` (auth rs), `/open` (no auth).
fn jwt_config(chat: &WsUpstream, fb: &WsUpstream, jwks: &std::path::Path) -> String {
    let base = ConfigBuilder::new()
        .admin()
        .upstream("chat", &[chat.addr()])
        .upstream("fb", &[fb.addr()])
        .route(
            Route::new("/ws")
                .sub("chat.v2", "chat")
                .fallback("fb")
                .key("auth", "\"api\""),
        )
        .route(
            Route::new("/rs")
                .sub("chat.v2", "chat")
                .key("auth", "\"rs\""),
        )
        .build();
    format!("{base}\n{}", jwt_tables(jwks))
}

fn write_jwks(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("jwks.json");
    let tmp = dir.join("jwks.json.tmp");
    std::fs::write(&tmp, text).expect("write jwks");
    std::fs::rename(&tmp, &path).expect("move jwks");
    path
}

/// One handshake on a fresh connection; its answer head and body.
async fn attempt(gw: &Gateway, req: &ClientRequest) -> (ResponseHead, Vec<u8>) {
    let mut c = Client::connect(gw.addr()).await;
    c.send(&req.to_bytes()).await.expect("send");
    c.read_response().await
}

#[tokio::test]
async fn jwt_tokens_from_each_source_verify_and_leave_the_request() {
    bounded("jwt_sources", async {
        let (chat, fb) = (WsUpstream::start().await, WsUpstream::start().await);
        let keys = JwtKeys::new();
        let dir = unique_temp_dir("jwt");
        let jwks = write_jwks(&dir, &keys.jwks(&["RS256", "ES256", "EdDSA"]));
        let gw = Gateway::start(&jwt_config(&chat, &fb, &jwks)).await;
        let host = gw.addr().to_string();

        // Header, RS256: claims become headers; the client's own of those names never pass.
        let rs = keys.sign(Algorithm::RS256, &claims(json!({"tier": 3})));
        let req = ClientRequest::ws(&host, "/ws")
            .protocol("chat.v2")
            .header("Authorization", &format!("Bearer {rs}"))
            .header("X-User", "mallory")
            .header("X-Tier", "99");
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        c.abort();
        let up = chat.requests().pop().expect("chat got the handshake");
        assert_eq!(up.headers.all("x-user"), ["alice"]);
        assert_eq!(up.headers.all("x-tier"), ["3"]);

        // Query, ES256: the parameter leaves the forwarded query, the rest stays in order.
        let es = keys.sign(Algorithm::ES256, &claims(json!({"sub": "bob"})));
        let req = ClientRequest::ws(&host, &format!("/ws/q?room=5&access_token={es}&x=y"))
            .protocol("chat.v2")
            .header("X-Tier", "99");
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        c.abort();
        let up = chat.requests().pop().expect("chat got the handshake");
        assert_eq!(up.target, "/ws/q?room=5&x=y");
        assert_eq!(up.headers.all("x-user"), ["bob"]);
        assert!(!up.headers.has("x-tier"), "a token without tier: {up:?}");

        // Subprotocol, EdDSA: the element leaves the offer before selection.
        let ed = keys.sign(Algorithm::EdDSA, &claims(json!({})));
        let req = ClientRequest::ws(&host, "/ws").protocol(&format!("bearer.{ed}, chat.v2"));
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        c.abort();
        let up = chat.requests().pop().expect("chat got the handshake");
        assert_eq!(up.headers.all("sec-websocket-protocol"), ["chat.v2"]);
        // Alone, it leaves nothing mapped: the fallback, with no subprotocol.
        let ed2 = keys.sign(Algorithm::EdDSA, &claims(json!({"jti": "2"})));
        let req = ClientRequest::ws(&host, "/ws").protocol(&format!("bearer.{ed2}"));
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, None);
        c.abort();
        let up = fb.requests().pop().expect("fb got the handshake");
        assert!(!up.headers.has("sec-websocket-protocol"), "{up:?}");

        // A token without kid is tried against every key of its type.
        let nokid = keys.sign_without_kid(Algorithm::EdDSA, &claims(json!({"jti": "nokid"})));
        let req = ClientRequest::ws(&host, "/ws")
            .protocol("chat.v2")
            .header("Authorization", &format!("Bearer {nokid}"));
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        c.abort();

        let secrets = [rs, es, ed, ed2];
        let log = gw.stderr_text();
        for s in &secrets {
            let sig = s.rsplit('.').next().unwrap();
            assert!(!log.contains(sig), "a token signature is in the log");
        }
        let events = gw.access_events();
        let words: Vec<&str> = events
            .iter()
            .filter_map(|e| {
                e.get("fields")
                    .and_then(|f| f.get("auth"))
                    .or(e.get("auth"))
            })
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            words.iter().filter(|w| **w == "allowed").count() >= 5,
            "{words:?}"
        );
        let (_, _, metrics) = gw.admin_get("/metrics").await;
        assert!(
            metrics.contains("switchyard_auth_total{route=\"/ws\",result=\"allowed\"} 5"),
            "{metrics}"
        );
        for s in &secrets {
            assert!(!metrics.contains(s.as_str()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn jwt_refusals_are_401_and_nothing_reaches_an_upstream() {
    bounded("jwt_refusals", async {
        let (chat, fb) = (WsUpstream::start().await, WsUpstream::start().await);
        let keys = JwtKeys::new();
        let dir = unique_temp_dir("jwt-bad");
        let jwks = write_jwks(&dir, &keys.jwks(&["RS256", "ES256", "EdDSA"]));
        let gw = Gateway::start(&jwt_config(&chat, &fb, &jwks)).await;
        let host = gw.addr().to_string();
        let t = now();
        let good_es = keys.sign(Algorithm::ES256, &claims(json!({})));
        let mut tampered = keys.sign(Algorithm::RS256, &claims(json!({})));
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        // (what, path, Authorization, expected WWW-Authenticate)
        let invalid = "Bearer error=\"invalid_token\"";
        let rows: Vec<(&str, &str, Option<String>, &str)> = vec![
            ("no token", "/ws", None, "Bearer"),
            (
                "another scheme",
                "/ws",
                Some("Basic dXNlcjpwYXNz".into()),
                "Bearer",
            ),
            (
                "expired",
                "/ws",
                Some(keys.sign(Algorithm::RS256, &claims(json!({"exp": t - 300})))),
                invalid,
            ),
            (
                "expired within leeway passes the exp check, bad aud",
                "/ws",
                Some(keys.sign(
                    Algorithm::RS256,
                    &claims(json!({"exp": t - 20, "aud": "other"})),
                )),
                invalid,
            ),
            (
                "nbf ahead",
                "/ws",
                Some(keys.sign(Algorithm::ES256, &claims(json!({"nbf": t + 300})))),
                invalid,
            ),
            (
                "no exp",
                "/ws",
                Some(keys.sign(Algorithm::ES256, &claims(json!({"exp": null})))),
                invalid,
            ),
            (
                "wrong issuer",
                "/ws",
                Some(keys.sign(
                    Algorithm::EdDSA,
                    &claims(json!({"iss": "https://evil.test"})),
                )),
                invalid,
            ),
            ("bad signature", "/ws", Some(tampered.clone()), invalid),
            (
                "hmac with the public key",
                "/ws",
                Some(keys.hs256_confusion(&claims(json!({})))),
                invalid,
            ),
            (
                "alg not in algorithms",
                "/rs",
                Some(good_es.clone()),
                invalid,
            ),
            ("garbage", "/ws", Some("not.a.jwt".into()), invalid),
        ];
        for (what, path, token, challenge) in &rows {
            let mut req = ClientRequest::ws(&host, path).protocol("chat.v2");
            if let Some(tok) = token {
                let value = if tok.starts_with("Basic ") {
                    tok.clone()
                } else {
                    format!("Bearer {tok}")
                };
                req = req.header("Authorization", &value);
            }
            let mut c = Client::connect(gw.addr()).await;
            c.send(&req.to_bytes()).await.expect("send");
            let (head, body) = expect_failure(&mut c, 401, what).await;
            assert_eq!(head.headers.all("www-authenticate"), [*challenge], "{what}");
            let text = String::from_utf8_lossy(&body);
            if let Some(tok) = token {
                assert!(
                    !text.contains(tok.as_str()),
                    "{what}: the body echoes the token"
                );
            }
        }
        // Leeway: exp 20s ago and nbf 20s ahead pass.
        for (what, extra) in [
            ("exp 20s ago", json!({"exp": t - 20})),
            ("nbf 20s ahead", json!({"nbf": t + 20})),
        ] {
            let tok = keys.sign(Algorithm::RS256, &claims(extra));
            let req = ClientRequest::ws(&host, "/ws")
                .protocol("chat.v2")
                .header("Authorization", &format!("Bearer {tok}"));
            let (head, _) = attempt(&gw, &req).await;
            assert_eq!(head.status, 101, "{what}: {head:?}");
        }
        assert_eq!(
            chat.connections(),
            2,
            "only the two leeway handshakes reached chat"
        );
        assert_eq!(fb.connections(), 0);
        let (_, _, metrics) = gw.admin_get("/metrics").await;
        let denied = rows.iter().filter(|r| r.1 == "/ws").count();
        assert!(
            metrics.contains(&format!(
                "switchyard_auth_total{{route=\"/ws\",result=\"denied\"}} {denied}"
            )),
            "{metrics}"
        );
        let log = gw.stderr_text();
        assert!(!log.contains(tampered.rsplit('.').next().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn jwks_is_reread_on_sighup() {
    bounded("jwks_sighup", async {
        let (chat, fb) = (WsUpstream::start().await, WsUpstream::start().await);
        let keys = JwtKeys::new();
        let dir = unique_temp_dir("jwks-hup");
        let jwks = write_jwks(&dir, &keys.jwks(&["RS256"]));
        let config = jwt_config(&chat, &fb, &jwks);
        let gw = Gateway::start(&config).await;
        let host = gw.addr().to_string();
        let es = keys.sign(Algorithm::ES256, &claims(json!({})));
        let rs = keys.sign(Algorithm::RS256, &claims(json!({})));
        let req = |tok: &str| {
            ClientRequest::ws(&host, "/ws")
                .protocol("chat.v2")
                .header("Authorization", &format!("Bearer {tok}"))
        };
        assert_eq!(
            attempt(&gw, &req(&es)).await.0.status,
            401,
            "ES256 key not in the JWKS yet"
        );
        write_jwks(&dir, &keys.jwks(&["RS256", "ES256"]));
        let ev = gw.reload(&config).await;
        assert!(is_event(&ev, RELOADED), "{ev}");
        assert_eq!(
            attempt(&gw, &req(&es)).await.0.status,
            101,
            "the new key verifies after SIGHUP"
        );
        assert_eq!(
            attempt(&gw, &req(&rs)).await.0.status,
            101,
            "the old key still verifies"
        );
        // A JWKS gone bad fails the reload; the running keys stay.
        write_jwks(&dir, "{\"keys\": []}");
        let ev = gw.reload(&config).await;
        assert!(is_event(&ev, RELOAD_FAILED), "{ev}");
        assert_eq!(attempt(&gw, &req(&es)).await.0.status, 101);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn a_browser_style_client_sends_its_token_as_a_subprotocol() {
    bounded("tungstenite_subprotocol_token", async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (chat, fb) = (WsUpstream::start().await, WsUpstream::start().await);
        let keys = JwtKeys::new();
        let dir = unique_temp_dir("jwt-tung");
        let jwks = write_jwks(&dir, &keys.jwks(&["EdDSA"]));
        let gw = Gateway::start(&jwt_config(&chat, &fb, &jwks)).await;
        // new WebSocket(url, ["bearer." + token, "chat.v2"])
        let tok = keys.sign(Algorithm::EdDSA, &claims(json!({})));
        // No space after the comma: tungstenite's client compares the answer with the offer split
        // on "," without trimming (browsers send ", ", which the gateway reads either way).
        let offer = format!("bearer.{tok},chat.v2");
        let (mut ws, response) = ws_connect(gw.addr(), "/ws", Some(&offer)).await;
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
        ws.send(Message::text("hello")).await.expect("send");
        let echoed = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("echo in time");
        assert_eq!(
            echoed.expect("a message").expect("ok"),
            Message::text("hello")
        );
        let up = chat.requests().pop().expect("chat got the handshake");
        assert_eq!(up.headers.all("x-user"), ["alice"]);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// The forward-auth service of the forward tests, by bearer token: `good` 200 with X-User and
/// X-Extra; `deny` 401 with a challenge and a 5000-byte body; `redirect` 302; `broken` 500;
/// `slow` never answers; else 204.
fn decide(head: &RequestHead) -> Option<Vec<u8>> {
    Some(match bearer_of(head).as_str() {
        "good" => auth_answer(200, &[("X-User", "alice"), ("X-Extra", "no")], b"ok"),
        "deny" => auth_answer(
            401,
            &[
                ("WWW-Authenticate", "Bearer realm=\"test\""),
                ("Content-Type", "text/html"),
            ],
            &[b'x'; 5000],
        ),
        "redirect" => auth_answer(302, &[("Location", "https://login.test/start")], b""),
        "broken" => auth_answer(500, &[], b"oops"),
        "slow" => return None,
        _ => auth_answer(204, &[], b""),
    })
}

fn forward_config(svc: &AuthService, chat: &RawUpstream, web: &RawUpstream) -> String {
    let base = ConfigBuilder::new()
        .admin()
        .upstream("chat", &[chat.addr()])
        .upstream("web", &[web.addr()])
        .route(
            Route::new("/ws")
                .sub("chat.v2", "chat")
                .fallback("chat")
                .key("auth", "\"sso\""),
        )
        .route(Route::new("/web").http("web").key("auth", "\"sso\""))
        .route(
            Route::new("/dead")
                .sub("chat.v2", "chat")
                .key("auth", "\"dead\""),
        )
        .build();
    format!(
        "{base}\n[auth.sso]\nforward = {{ url = {}, timeout = \"500ms\", copy_headers = [\"x-user\"] }}\n\n\
         [auth.dead]\nforward = {{ url = \"http://{}/check\" }}\n",
        q(&svc.url()),
        refused_addr()
    )
}

#[tokio::test]
async fn forward_auth_allows_with_copied_headers_and_relays_refusals() {
    bounded("forward_auth", async {
        let svc = AuthService::start(decide).await;
        let chat = RawUpstream::start(accept_then_hold()).await;
        let web = RawUpstream::start(respond(|head| {
            let body = format!(
                "web:{}:{}",
                head.target,
                head.headers.get("x-user").unwrap_or("-")
            );
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }))
        .await;
        let gw = Gateway::start(&forward_config(&svc, &chat, &web)).await;
        let host = "app.test:8080";

        let req = ClientRequest::ws(host, "/ws/room?x=1")
            .protocol("stomp, chat.v2")
            .header("Authorization", "Bearer good")
            .header("Cookie", "sid=1")
            .header("X-Other", "private")
            .header("X-User", "mallory")
            .header("X-Forwarded-Uri", "/spoofed");
        let (c, head) = exchange(gw.addr(), &req, b"").await;
        assert_101(&head, &req.key, Some("chat.v2"));
        let up = chat.conn(0, IO_TIMEOUT).await.head().expect("chat head");
        assert_eq!(
            up.headers.all("x-user"),
            ["alice"],
            "copy_headers, the client's removed"
        );
        assert!(!up.headers.has("x-extra"));
        c.abort();
        let asked = svc.requests().pop().expect("the service was asked");
        assert_eq!(
            (asked.method.as_str(), asked.target.as_str()),
            ("GET", "/check?app=chat")
        );
        let h = &asked.headers;
        assert_eq!(h.all("authorization"), ["Bearer good"]);
        assert_eq!(h.all("cookie"), ["sid=1"]);
        for name in [
            "x-other",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-protocol",
            "x-user",
        ] {
            assert!(!h.has(name), "{name} reached the auth service: {asked:?}");
        }
        assert_eq!(h.all("x-forwarded-method"), ["GET"]);
        assert_eq!(h.all("x-forwarded-proto"), ["http"]);
        assert_eq!(h.all("x-forwarded-host"), [host]);
        assert_eq!(h.all("x-forwarded-uri"), ["/ws/room?x=1"]);
        assert_eq!(h.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(h.all("x-forwarded-subprotocol"), ["chat.v2"]);
        // A fallback has no subprotocol to tell.
        let req = ClientRequest::ws(host, "/ws").header("Authorization", "Bearer other");
        let (head, _) = attempt(&gw, &req).await;
        assert_eq!(head.status, 101);
        assert!(
            !svc.requests()
                .pop()
                .unwrap()
                .headers
                .has("x-forwarded-subprotocol")
        );
        let before = chat.conns().len();

        let ask = |tok: &str, path: &str| {
            ClientRequest::ws(host, path)
                .protocol("chat.v2")
                .header("Authorization", &format!("Bearer {tok}"))
        };
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ask("deny", "/ws").to_bytes()).await.unwrap();
        let (head, body) = expect_failure(&mut c, 401, "auth 401").await;
        assert_eq!(
            head.headers.all("www-authenticate"),
            ["Bearer realm=\"test\""]
        );
        assert_eq!(body, vec![b'x'; 4096], "the body is cut at 4 KiB");
        assert!(
            head.headers
                .get("content-type")
                .unwrap()
                .starts_with("text/plain")
        );

        let (head, _) = attempt(&gw, &ask("redirect", "/ws")).await;
        assert_eq!(head.status, 302);
        assert_eq!(head.headers.all("location"), ["https://login.test/start"]);
        assert!(
            head.headers
                .tokens("connection")
                .contains(&"close".to_string())
        );

        let mut c = Client::connect(gw.addr()).await;
        c.send(&ask("broken", "/ws").to_bytes()).await.unwrap();
        expect_failure(&mut c, 502, "auth 500").await;

        let started = Instant::now();
        let mut c = Client::connect(gw.addr()).await;
        c.send(&ask("slow", "/ws").to_bytes()).await.unwrap();
        expect_failure(&mut c, 504, "auth silent").await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );

        let mut c = Client::connect(gw.addr()).await;
        c.send(&ask("good", "/dead").to_bytes()).await.unwrap();
        expect_failure(&mut c, 502, "auth service unreachable").await;
        assert_eq!(
            chat.conns().len(),
            before,
            "no refused handshake dialed an upstream"
        );

        // Ordinary requests to the route's http upstream are checked too.
        let plain = ClientRequest::plain(host, "/web/page?a=1")
            .header("Authorization", "Bearer good")
            .header("X-User", "mallory");
        let (head, body) = attempt(&gw, &plain).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(String::from_utf8_lossy(&body), "web:/web/page?a=1:alice");
        let asked = svc.requests().pop().unwrap();
        assert_eq!(asked.headers.all("x-forwarded-uri"), ["/web/page?a=1"]);
        let post = ClientRequest::plain(host, "/web/submit")
            .method("POST")
            .header("Content-Length", "0")
            .header("Authorization", "Bearer deny");
        let mut c = Client::connect(gw.addr()).await;
        c.send(&post.to_bytes()).await.unwrap();
        expect_failure(&mut c, 401, "denied POST").await;
        assert_eq!(
            svc.requests()
                .pop()
                .unwrap()
                .headers
                .all("x-forwarded-method"),
            ["POST"]
        );
        assert_eq!(web.conns().len(), 1, "the denied POST reached no upstream");

        let (_, _, metrics) = gw.admin_get("/metrics").await;
        for (result, n) in [("allowed", 2), ("denied", 2), ("error", 2)] {
            let series = format!("switchyard_auth_total{{route=\"/ws\",result=\"{result}\"}} {n}");
            assert!(metrics.contains(&series), "{series} in\n{metrics}");
        }
        let log = gw.stderr_text();
        assert!(!log.contains("sid=1"), "a cookie is in the log");
    })
    .await;
}

#[tokio::test]
async fn forward_auth_over_h2_answers_the_stream_and_keeps_the_connection() {
    bounded("forward_auth_h2", async {
        let svc = AuthService::start(decide).await;
        let chat = RawUpstream::start(accept_then_echo(b"")).await;
        let base = ConfigBuilder::new()
            .tls_h2()
            .upstream("chat", &[chat.addr()])
            .route(
                Route::new("/ws")
                    .sub("chat.v2", "chat")
                    .key("auth", "\"sso\""),
            )
            .build();
        let config = format!(
            "{base}\n[auth.sso]\nforward = {{ url = {}, copy_headers = [\"x-user\"] }}\n",
            q(&svc.url())
        );
        let gw = Gateway::start(&config).await;
        let mut conn = H2Conn::connect(gw.addr()).await;
        let mut req = conn.websocket_request("/ws", Some("chat.v2"), Some("13"));
        req.headers_mut()
            .insert("authorization", "Bearer deny".parse().unwrap());
        let mut refused = conn.open(req, false).await;
        assert_eq!(refused.head.status, 401);
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer realm=\"test\"")
        );
        assert!(!refused.head.headers.contains_key("connection"));
        let (body, _) = refused.recv_to_end().await;
        assert_eq!(body.len(), 4096);
        assert_eq!(
            chat.conns().len(),
            0,
            "nothing dialed for the refused stream"
        );

        let mut req = conn.websocket_request("/ws", Some("chat.v2"), Some("13"));
        req.headers_mut()
            .insert("authorization", "Bearer good".parse().unwrap());
        let mut stream = conn.open(req, false).await;
        assert_eq!(stream.head.status, 200, "{:?}", stream.head);
        stream.send_all(b"after-401").await;
        assert_eq!(stream.recv_exact(9).await, b"after-401");
        let up = chat.conn(0, IO_TIMEOUT).await.head().expect("chat head");
        assert_eq!(up.headers.all("x-user"), ["alice"]);
        for asked in svc.requests() {
            assert_eq!(
                asked.headers.all("x-forwarded-method"),
                ["GET"],
                "{asked:?}"
            );
            assert_eq!(asked.headers.all("x-forwarded-proto"), ["https"]);
        }
        assert_eq!(svc.requests().len(), 2);
    })
    .await;
}
