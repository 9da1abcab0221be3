//! `load` end to end: SPEC §2's example, defaults, and one row per rejection rule checking the
//! `FILE:LINE: KEY: problem` output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-config-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// A self-signed certificate and its key, written as PEM to `cert` and `key`.
    fn cert_pair(&self, cert: &str, key: &str, names: &[&str]) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let pair = rcgen::generate_simple_self_signed(names).expect("rcgen");
        self.write(cert, &pair.cert.pem());
        self.write(key, &pair.key_pair.serialize_pem());
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SPEC §2's example, verbatim (as in the acceptance harness's `SPEC_EXAMPLE`).
const SPEC_EXAMPLE: &str = r#"[[listener]]                      # one or more
bind = "127.0.0.1:8080"

[[listener]]
bind = "127.0.0.1:8443"
http2 = true                      # offer h2 by ALPN and accept RFC 8441 extended CONNECT (default true with tls)
proxy_protocol = false            # expect a PROXY v1/v2 header first (from an L4 load balancer)
[listener.tls]                    # same as: tls = { cert = "...", key = "...", sni = [...] }
cert = "certs/server.pem"         # default certificate (no or unknown SNI)
key = "certs/server-key.pem"
sni = [{ names = ["chat.example.com"], cert = "certs/chat.pem", key = "certs/chat-key.pem" }]
strict_sni = true                 # a request whose host is not the SNI name the client sent: 421 (§3)

[admin]                           # optional: /healthz, /readyz, /metrics
bind = "127.0.0.1:9090"

[websocket]
versions = [13]                   # accepted Sec-WebSocket-Version values, in advertised order; 13, 8 and 7 are known
version_mismatch_status = 426     # 426 (default) or 400, as in RFC 6455 §4.4

[limits]
max_header_bytes = 16384          # request head larger than this: 431
handshake_timeout = "10s"         # from accept: PROXY header + TLS handshake + first request head (h2: first HEADERS), all together; else closed
keepalive_timeout = "60s"         # a client connection with no request in flight and no tunnel (h1 keep-alive, h2 without streams) is closed after this
upstream_connect_timeout = "5s"
upstream_handshake_timeout = "10s"
idle_timeout = "5m"               # tunnel closed after no bytes in either direction; "0s" = never
drain_timeout = "30s"             # on SIGTERM, how long open tunnels may live on
max_connections = 100000          # over this: 503 + Retry-After
max_connections_per_ip = 0        # 0 = unlimited; over it: 429
connection_rate_per_ip = 0        # new connections (and h2/h3 tunnel streams) per second per client address, burst the same; 0 = unlimited; over it: 429
h2_max_concurrent_streams = 128   # SETTINGS_MAX_CONCURRENT_STREAMS offered on h2 (and the h3 equivalent)

[upstreams.chat]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "round_robin"           # or "least_connections"
tls = false                       # true: connect with TLS (wss to the upstream)
# ca = "certs/upstream-ca.pem"; server_name = "chat.internal"
# send_proxy_protocol = "v2"
# health = { path = "/health", interval = "5s" }   # active checks: HTTP GET, or TCP connect without path

[upstreams.mqtt]
servers = ["127.0.0.1:1883"]

[upstreams.web]
servers = ["127.0.0.1:3000"]

[[route]]
host = "*"                        # exact host, "*.example.com", or "*" (default)
path = "/chat"                    # path prefix on segment boundaries, longest match wins (default "/")
origins = ["https://app.example.com"]   # optional allowlist of Origin values; absent: any
select = "client"                 # "client": first client-offered subprotocol that is mapped; "server": first in the list below that the client offered
fallback = "chat"                 # optional upstream when no offered subprotocol is mapped (incl. none offered); the upstream then gets no Sec-WebSocket-Protocol
http = "web"                      # optional upstream for ordinary (non-upgrade) requests on this route
upgrades = []                     # optional other Upgrade tokens tunnelled as-is, e.g. [{ token = "tcp", upstream = "raw" }]

[[route.subprotocol]]
name = "chat.v2"
upstream = "chat"

[[route.subprotocol]]
name = "mqtt"
upstream = "mqtt"
"#;

const SPEC_TLS_BLOCK: &str = r#"[listener.tls]                    # same as: tls = { cert = "...", key = "...", sni = [...] }
cert = "certs/server.pem"         # default certificate (no or unknown SNI)
key = "certs/server-key.pem"
sni = [{ names = ["chat.example.com"], cert = "certs/chat.pem", key = "certs/chat-key.pem" }]
strict_sni = true                 # a request whose host is not the SNI name the client sent: 421 (§3)
"#;

fn spec_certs(dir: &TestDir) {
    dir.cert_pair("certs/server.pem", "certs/server-key.pem", &["localhost"]);
    dir.cert_pair(
        "certs/chat.pem",
        "certs/chat-key.pem",
        &["chat.example.com"],
    );
}

fn load_ok(path: &Path) -> Config {
    load(path).unwrap_or_else(|errors| panic!("expected a valid config, got:\n{errors}"))
}

fn assert_spec_example(config: &Config, dir: &Path) {
    assert_eq!(config.listeners.len(), 2);
    let plain = &config.listeners[0];
    assert_eq!(plain.bind, "127.0.0.1:8080".parse().unwrap());
    assert!(!plain.http2 && !plain.proxy_protocol && plain.tls.is_none());
    let secure = &config.listeners[1];
    assert!(secure.http2);
    let tls = secure.tls.as_ref().expect("tls");
    let certs = std::path::absolute(dir).unwrap().join("certs");
    assert_eq!(tls.cert, certs.join("server.pem"));
    assert_eq!(tls.key, certs.join("server-key.pem"));
    assert_eq!(
        tls.sni,
        vec![SniCert {
            names: vec!["chat.example.com".into()],
            cert: certs.join("chat.pem"),
            key: certs.join("chat-key.pem"),
        }]
    );
    assert_eq!(config.admin.as_ref().map(|a| a.bind.port()), Some(9090));
    assert_eq!(config.websocket.versions, vec![13]);
    assert_eq!(config.limits.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(config.limits.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.upstreams.len(), 3);
    let chat = &config.upstreams["chat"];
    assert_eq!(chat.servers.len(), 2);
    assert_eq!(
        chat.servers[1],
        ServerAddr {
            host: "127.0.0.1".into(),
            port: 9002
        }
    );
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.host, HostPattern::Any);
    assert_eq!(route.path, "/chat");
    assert_eq!(
        route.origins,
        Some(vec!["https://app.example.com".to_string()])
    );
    assert_eq!(route.fallback.as_deref(), Some("chat"));
    assert_eq!(route.http.as_deref(), Some("web"));
    assert!(route.upgrades.is_empty());
    let names: Vec<_> = route
        .subprotocols
        .iter()
        .map(|s| (s.name.as_str(), s.upstream.as_str()))
        .collect();
    assert_eq!(names, [("chat.v2", "chat"), ("mqtt", "mqtt")]);
}

#[test]
fn spec_example_verbatim_loads() {
    let dir = TestDir::new();
    spec_certs(&dir);
    let path = dir.write("spec.toml", SPEC_EXAMPLE);
    let config = load_ok(&path);
    assert_eq!(config.source, path);
    assert_spec_example(&config, &dir.0);
}

#[test]
fn inline_tls_table_is_the_same_as_the_sub_table() {
    let dir = TestDir::new();
    spec_certs(&dir);
    let inline = SPEC_EXAMPLE.replace(
        SPEC_TLS_BLOCK,
        "tls = { cert = \"certs/server.pem\", key = \"certs/server-key.pem\", sni = [{ names = [\"chat.example.com\"], cert = \"certs/chat.pem\", key = \"certs/chat-key.pem\" }], strict_sni = true }\n",
    );
    assert_ne!(
        inline, SPEC_EXAMPLE,
        "the [listener.tls] block was not found"
    );
    let config = load_ok(&dir.write("inline.toml", &inline));
    assert_spec_example(&config, &dir.0);
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let dir = TestDir::new();
    let config = load_ok(&dir.write("min.toml", "[[listener]]\nbind = \"[::1]:8080\"\n"));
    assert_eq!(
        config.listeners,
        vec![ListenerConfig {
            bind: "[::1]:8080".parse().unwrap(),
            http2: false,
            http3: false,
            proxy_protocol: false,
            tls: None,
        }]
    );
    assert!(config.admin.is_none());
    assert_eq!(
        config.websocket,
        WebSocketConfig {
            versions: vec![13],
            version_mismatch_status: StatusCode::UPGRADE_REQUIRED,
        }
    );
    assert_eq!(
        config.limits,
        Limits {
            max_header_bytes: 16384,
            handshake_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            drain_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_connections_per_ip: None,
            connection_rate_per_ip: None,
            h2_max_concurrent_streams: 128,
        }
    );
    assert!(config.upstreams.is_empty() && config.routes.is_empty());
}

#[test]
fn explicit_values_and_route_defaults() {
    let dir = TestDir::new();
    dir.cert_pair("s.pem", "s-key.pem", &["localhost"]);
    dir.cert_pair("ca.pem", "ca-key.pem", &["ca.test"]);
    let text = r#"
[[listener]]
bind = "127.0.0.1:8443"
proxy_protocol = true
tls = { cert = "s.pem", key = "s-key.pem" }

[[listener]]
bind = "127.0.0.1:8444"
http2 = false
tls = { cert = "s.pem", key = "s-key.pem", strict_sni = false }

[websocket]
versions = [8, 13]
version_mismatch_status = 400

[limits]
idle_timeout = "0s"
keepalive_timeout = "2s"
max_connections_per_ip = 7
connection_rate_per_ip = 20
h2_max_concurrent_streams = 4
drain_timeout = "1m30s"

[upstreams.up]
servers = ["Backend.Internal:443", "[::1]:9000"]
balance = "least_connections"
tls = true
ca = "ca.pem"
server_name = "backend.internal"
send_proxy_protocol = "v1"
health = { interval = "2s" }

[[route]]
upgrades = [{ token = "tcp", upstream = "up" }]

[[route]]
host = "Chat.Example.COM"
select = "server"
fallback = "up"

[[route]]
host = "*.Example.com"
path = "/ws"
"#;
    let config = load_ok(&dir.write("explicit.toml", text));
    assert!(config.listeners[0].http2 && config.listeners[0].proxy_protocol);
    assert!(!config.listeners[1].http2);
    assert_eq!(config.websocket.versions, vec![8, 13]);
    assert_eq!(
        config.websocket.version_mismatch_status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(config.limits.idle_timeout, None);
    assert_eq!(config.limits.max_connections_per_ip, Some(7));
    assert_eq!(config.limits.keepalive_timeout, Duration::from_secs(2));
    assert_eq!(config.limits.connection_rate_per_ip, Some(20));
    assert_eq!(config.limits.h2_max_concurrent_streams, 4);
    let strict = |i: usize| config.listeners[i].tls.as_ref().unwrap().strict_sni;
    assert!(strict(0) && !strict(1));
    assert_eq!(config.limits.drain_timeout, Duration::from_secs(90));
    let up = &config.upstreams["up"];
    assert_eq!(up.name, "up");
    assert_eq!(
        up.servers,
        vec![
            ServerAddr {
                host: "backend.internal".into(),
                port: 443
            },
            ServerAddr {
                host: "::1".into(),
                port: 9000
            },
        ]
    );
    assert_eq!(up.balance, Balance::LeastConnections);
    let tls = up.tls.as_ref().expect("upstream tls");
    assert_eq!(
        tls.ca,
        Some(std::path::absolute(&dir.0).unwrap().join("ca.pem"))
    );
    assert_eq!(tls.server_name.as_deref(), Some("backend.internal"));
    assert_eq!(up.send_proxy_protocol, Some(ProxyVersion::V1));
    assert_eq!(
        up.health,
        Some(HealthCheck {
            path: None,
            interval: Duration::from_secs(2)
        })
    );
    let routes = &config.routes;
    assert_eq!(
        (&routes[0].host, routes[0].path.as_str()),
        (&HostPattern::Any, "/")
    );
    assert_eq!(routes[0].select, Select::Client);
    assert_eq!(routes[0].origins, None);
    assert_eq!(
        routes[0].upgrades,
        vec![UpgradeRoute {
            token: "tcp".into(),
            upstream: "up".into()
        }]
    );
    assert_eq!(
        routes[1].host,
        HostPattern::Exact("chat.example.com".into())
    );
    assert_eq!(routes[1].select, Select::Server);
    assert_eq!(routes[2].host, HostPattern::Suffix(".example.com".into()));
}

#[test]
fn missing_file_names_the_file() {
    let dir = TestDir::new();
    let path = dir.0.join("absent.toml");
    let errors = load(&path).expect_err("missing file");
    let shown = errors.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read config file", path.display())),
        "{shown}"
    );
    assert_eq!(errors.errors.len(), 1);
}

/// A config touching every section, with no files to read; the rejection rows mutate it.
const GOOD: &str = r#"[[listener]]
bind = "127.0.0.1:18080"

[admin]
bind = "127.0.0.1:19090"

[websocket]
versions = [13, 8, 7]
version_mismatch_status = 426

[limits]
max_header_bytes = 16384
handshake_timeout = "10s"
keepalive_timeout = "60s"
upstream_connect_timeout = "5s"
upstream_handshake_timeout = "10s"
idle_timeout = "5m"
drain_timeout = "250ms"
max_connections = 100000
max_connections_per_ip = 0
connection_rate_per_ip = 0
h2_max_concurrent_streams = 128

[upstreams.chat]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "round_robin"
tls = false

[upstreams.mqtt]
servers = ["127.0.0.1:1883"]
balance = "least_connections"
send_proxy_protocol = "v2"
health = { path = "/health", interval = "5s" }

[upstreams.web]
servers = ["127.0.0.1:3000"]

[upstreams.raw]
servers = ["127.0.0.1:4000"]

[[route]]
host = "*"
path = "/chat"
origins = ["https://app.example.com"]
select = "client"
fallback = "chat"
http = "web"
upgrades = [{ token = "tcp", upstream = "raw" }]

[[route.subprotocol]]
name = "chat.v2"
upstream = "chat"

[[route.subprotocol]]
name = "mqtt"
upstream = "mqtt"

[[route]]
host = "*.example.com"
path = "/"
select = "server"

[[route.subprotocol]]
name = "chat.v2"
upstream = "chat"
"#;

#[test]
fn good_base_config_loads() {
    let dir = TestDir::new();
    let config = load_ok(&dir.write("good.toml", GOOD));
    assert_eq!(
        config.upstreams["mqtt"].send_proxy_protocol,
        Some(ProxyVersion::V2)
    );
    assert_eq!(
        config.upstreams["mqtt"].health,
        Some(HealthCheck {
            path: Some("/health".into()),
            interval: Duration::from_secs(5)
        })
    );
}

#[test]
fn hash_balance_takes_every_hash_key_form() {
    let dir = TestDir::new();
    let header = HashKey::Header(http::HeaderName::from_static("x-room"));
    let rows = [
        ("header:X-Room", header),
        ("cookie:room", HashKey::Cookie("room".into())),
        ("query:room", HashKey::Query("room".into())),
        ("client_ip", HashKey::ClientIp),
    ];
    for (text, want) in rows {
        let with = GOOD.replacen(
            "balance = \"round_robin\"",
            &format!("balance = \"hash\"\nhash_key = \"{text}\""),
            1,
        );
        let config = load_ok(&dir.write("hash.toml", &with));
        assert_eq!(
            config.upstreams["chat"].balance,
            Balance::Hash(want),
            "{text}"
        );
    }
}

/// One rejection: replace the first `from` in [`GOOD`] by `to`; the single error must name
/// `key` on the line holding occurrence `nth` of `at`, and say `says`.
struct Reject {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    at: (&'static str, usize),
    key: &'static str,
    says: &'static str,
}

const REJECTS: &[Reject] = &[
    Reject {
        name: "http3 without tls",
        from: "bind = \"127.0.0.1:18080\"\n",
        to: "bind = \"127.0.0.1:18080\"\nhttp3 = true\n",
        at: ("http3", 0),
        key: "listener[0].http3",
        says: "needs tls",
    },
    Reject {
        name: "max_message_bytes without inspect",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_message_bytes = 1000\n",
        at: ("max_message_bytes", 0),
        key: "route[0].max_message_bytes",
        says: "set inspect = true on this route",
    },
    Reject {
        name: "max_message_bytes with inspect = false",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = false\nmax_message_bytes = 1000\n",
        at: ("max_message_bytes", 0),
        key: "route[0].max_message_bytes",
        says: "only applies to inspected tunnels",
    },
    Reject {
        name: "max_frame_bytes without inspect",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_frame_bytes = 1000\n",
        at: ("max_frame_bytes", 0),
        key: "route[0].max_frame_bytes",
        says: "set inspect = true on this route",
    },
    Reject {
        name: "max_frame_bytes with inspect = false",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = false\nmax_frame_bytes = 1000\n",
        at: ("max_frame_bytes", 0),
        key: "route[0].max_frame_bytes",
        says: "only applies to inspected tunnels",
    },
    Reject {
        name: "ping_interval without inspect",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nping_interval = \"5s\"\n",
        at: ("ping_interval", 0),
        key: "route[0].ping_interval",
        says: "set inspect = true on this route",
    },
    Reject {
        name: "ping_interval with inspect = false",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = false\nping_interval = \"5s\"\n",
        at: ("ping_interval", 0),
        key: "route[0].ping_interval",
        says: "only applies to inspected tunnels",
    },
    Reject {
        name: "ping_timeout without inspect",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nping_timeout = \"5s\"\n",
        at: ("ping_timeout", 0),
        key: "route[0].ping_timeout",
        says: "set inspect = true on this route",
    },
    Reject {
        name: "ping_timeout with inspect = false",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = false\nping_timeout = \"5s\"\n",
        at: ("ping_timeout", 0),
        key: "route[0].ping_timeout",
        says: "only applies to inspected tunnels",
    },
    Reject {
        name: "close_code without inspect",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nclose_code = 1001\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "set inspect = true on this route",
    },
    Reject {
        name: "close_code with inspect = false",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = false\nclose_code = 1001\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "only applies to inspected tunnels",
    },
    Reject {
        name: "close_code 999",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 999\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 999 cannot be sent",
    },
    Reject {
        name: "close_code 1004",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 1004\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 1004 cannot be sent",
    },
    Reject {
        name: "close_code 1005",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 1005\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 1005 cannot be sent",
    },
    Reject {
        name: "close_code 1006",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 1006\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 1006 cannot be sent",
    },
    Reject {
        name: "close_code 1015",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 1015\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 1015 cannot be sent",
    },
    Reject {
        name: "close_code 5000",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nclose_code = 5000\n",
        at: ("close_code", 0),
        key: "route[0].close_code",
        says: "close_code 5000 cannot be sent",
    },
    Reject {
        name: "ping_interval as bare integer",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nping_interval = 30\n",
        at: ("ping_interval", 0),
        key: "route[0].ping_interval",
        says: "integer `30`",
    },
    Reject {
        name: "max_lifetime with an unknown unit",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_lifetime = \"10 fortnights\"\n",
        at: ("max_lifetime", 0),
        key: "route[0].max_lifetime",
        says: "\"10 fortnights\"",
    },
    Reject {
        name: "ping_timeout zero",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nping_timeout = \"0s\"\n",
        at: ("ping_timeout", 0),
        key: "route[0].ping_timeout",
        says: "greater than 0s",
    },
    Reject {
        name: "negative max_message_bytes",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nmax_message_bytes = -1\n",
        at: ("max_message_bytes", 0),
        key: "route[0].max_message_bytes",
        says: "-1 must be 0 (no limit)",
    },
    Reject {
        name: "negative max_frame_bytes",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = true\nmax_frame_bytes = -5\n",
        at: ("max_frame_bytes", 0),
        key: "route[0].max_frame_bytes",
        says: "-5 must be 0 (no limit)",
    },
    Reject {
        name: "jitter without max_lifetime",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_lifetime_jitter = \"1m\"\n",
        at: ("max_lifetime_jitter", 0),
        key: "route[0].max_lifetime_jitter",
        says: "does not set",
    },
    Reject {
        name: "jitter with max_lifetime 0s",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_lifetime = \"0s\"\nmax_lifetime_jitter = \"1s\"\n",
        at: ("max_lifetime_jitter", 0),
        key: "route[0].max_lifetime_jitter",
        says: "does not set",
    },
    Reject {
        name: "jitter as long as max_lifetime",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\nmax_lifetime = \"5m\"\nmax_lifetime_jitter = \"300s\"\n",
        at: ("max_lifetime_jitter", 0),
        key: "route[0].max_lifetime_jitter",
        says: "must be shorter than max_lifetime \"5m\"",
    },
    Reject {
        name: "inspect not a boolean",
        from: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n",
        to: "upgrades = [{ token = \"tcp\", upstream = \"raw\" }]\ninspect = \"yes\"\n",
        at: ("inspect", 0),
        key: "route[0].inspect",
        says: "expected a boolean",
    },
    Reject {
        name: "undefined subprotocol upstream",
        from: "name = \"chat.v2\"\nupstream = \"chat\"",
        to: "name = \"chat.v2\"\nupstream = \"nosuch_upstream\"",
        at: ("nosuch_upstream", 0),
        key: "route[0].subprotocol[0].upstream",
        says: "undefined upstream \"nosuch_upstream\"",
    },
    Reject {
        name: "undefined fallback",
        from: "fallback = \"chat\"",
        to: "fallback = \"ghost_fallback\"",
        at: ("ghost_fallback", 0),
        key: "route[0].fallback",
        says: "\"ghost_fallback\"",
    },
    Reject {
        name: "undefined http upstream",
        from: "http = \"web\"",
        to: "http = \"ghost_http\"",
        at: ("ghost_http", 0),
        key: "route[0].http",
        says: "\"ghost_http\"",
    },
    Reject {
        name: "undefined upgrade upstream",
        from: "upstream = \"raw\"",
        to: "upstream = \"ghost_raw\"",
        at: ("ghost_raw", 0),
        key: "route[0].upgrades[0].upstream",
        says: "\"ghost_raw\"",
    },
    Reject {
        name: "unknown key",
        from: "max_connections_per_ip = 0\n",
        to: "max_connections_per_ip = 0\nbogus_key = 5\n",
        at: ("bogus_key", 0),
        key: "limits.bogus_key",
        says: "unknown key `bogus_key`",
    },
    Reject {
        name: "unknown top-level table",
        from: "[admin]",
        to: "[bogus_section]\na = 1\n\n[admin]",
        at: ("bogus_section", 0),
        key: "bogus_section",
        says: "unknown key `bogus_section`",
    },
    Reject {
        name: "unknown key in a route subprotocol",
        from: "name = \"mqtt\"",
        to: "name = \"mqtt\"\nweight = 2",
        at: ("weight", 0),
        key: "route[0].subprotocol[1].weight",
        says: "`weight`",
    },
    Reject {
        name: "wrong type",
        from: "tls = false",
        to: "tls = \"no\"",
        at: ("tls = \"no\"", 0),
        key: "upstreams.chat.tls",
        says: "\"no\"",
    },
    Reject {
        name: "missing required key",
        from: "bind = \"127.0.0.1:18080\"",
        to: "http2 = false",
        at: ("[[listener]]", 0),
        key: "listener[0]",
        says: "missing key `bind`",
    },
    Reject {
        name: "unknown websocket version",
        from: "versions = [13, 8, 7]",
        to: "versions = [13, 99]",
        at: ("99", 0),
        key: "websocket.versions[1]",
        says: "unknown WebSocket version 99",
    },
    Reject {
        name: "duplicate websocket version",
        from: "versions = [13, 8, 7]",
        to: "versions = [13, 8, 13]",
        at: ("versions", 0),
        key: "websocket.versions[2]",
        says: "version 13 is listed twice",
    },
    Reject {
        name: "empty versions",
        from: "versions = [13, 8, 7]",
        to: "versions = []",
        at: ("versions", 0),
        key: "websocket.versions",
        says: "empty versions list",
    },
    Reject {
        name: "version_mismatch_status 500",
        from: "version_mismatch_status = 426",
        to: "version_mismatch_status = 500",
        at: ("version_mismatch_status", 0),
        key: "websocket.version_mismatch_status",
        says: "500",
    },
    Reject {
        name: "malformed duration",
        from: "handshake_timeout = \"10s\"",
        to: "handshake_timeout = \"10 parsecs\"",
        at: ("handshake_timeout", 0),
        key: "limits.handshake_timeout",
        says: "\"10 parsecs\"",
    },
    Reject {
        name: "duration string without unit",
        from: "idle_timeout = \"5m\"",
        to: "idle_timeout = \"10\"",
        at: ("idle_timeout", 0),
        key: "limits.idle_timeout",
        says: "no unit",
    },
    Reject {
        name: "duration as bare integer",
        from: "drain_timeout = \"250ms\"",
        to: "drain_timeout = 10",
        at: ("drain_timeout", 0),
        key: "limits.drain_timeout",
        says: "integer `10`",
    },
    Reject {
        name: "zero handshake timeout",
        from: "handshake_timeout = \"10s\"",
        to: "handshake_timeout = \"0s\"",
        at: ("handshake_timeout", 0),
        key: "limits.handshake_timeout",
        says: "greater than 0s",
    },
    Reject {
        name: "max_header_bytes too small",
        from: "max_header_bytes = 16384",
        to: "max_header_bytes = 100",
        at: ("max_header_bytes", 0),
        key: "limits.max_header_bytes",
        says: "100",
    },
    Reject {
        name: "max_header_bytes too large",
        from: "max_header_bytes = 16384",
        to: "max_header_bytes = 2000000",
        at: ("max_header_bytes", 0),
        key: "limits.max_header_bytes",
        says: "2000000",
    },
    Reject {
        name: "zero max_connections",
        from: "max_connections = 100000",
        to: "max_connections = 0",
        at: ("max_connections =", 0),
        key: "limits.max_connections",
        says: "at least 1",
    },
    Reject {
        name: "negative max_connections_per_ip",
        from: "max_connections_per_ip = 0",
        to: "max_connections_per_ip = -1",
        at: ("max_connections_per_ip", 0),
        key: "limits.max_connections_per_ip",
        says: "-1",
    },
    Reject {
        name: "zero keepalive timeout",
        from: "keepalive_timeout = \"60s\"",
        to: "keepalive_timeout = \"0s\"",
        at: ("keepalive_timeout", 0),
        key: "limits.keepalive_timeout",
        says: "greater than 0s",
    },
    Reject {
        name: "negative connection rate",
        from: "connection_rate_per_ip = 0",
        to: "connection_rate_per_ip = -5",
        at: ("connection_rate_per_ip", 0),
        key: "limits.connection_rate_per_ip",
        says: "-5",
    },
    Reject {
        name: "zero h2 streams",
        from: "h2_max_concurrent_streams = 128",
        to: "h2_max_concurrent_streams = 0",
        at: ("h2_max_concurrent_streams", 0),
        key: "limits.h2_max_concurrent_streams",
        says: "at least 1",
    },
    Reject {
        name: "duplicate subprotocol",
        from: "name = \"mqtt\"",
        to: "name = \"chat.v2\"",
        at: ("name = \"chat.v2\"", 1),
        key: "route[0].subprotocol[1].name",
        says: "duplicate subprotocol \"chat.v2\"",
    },
    Reject {
        name: "subprotocol not a token",
        from: "name = \"mqtt\"",
        to: "name = \"mq tt\"",
        at: ("mq tt", 0),
        key: "route[0].subprotocol[1].name",
        says: "\"mq tt\"",
    },
    Reject {
        name: "upstream without servers",
        from: "servers = [\"127.0.0.1:1883\"]",
        to: "servers = []",
        at: ("servers = []", 0),
        key: "upstreams.mqtt.servers",
        says: "upstream \"mqtt\" has no servers",
    },
    Reject {
        name: "duplicate listener binds",
        from: "[admin]",
        to: "[[listener]]\nbind = \"127.0.0.1:18080\"\n\n[admin]",
        at: ("bind = \"127.0.0.1:18080\"", 1),
        key: "listener[1].bind",
        says: "127.0.0.1:18080",
    },
    Reject {
        name: "admin bind equal to a listener's",
        from: "bind = \"127.0.0.1:19090\"",
        to: "bind = \"127.0.0.1:18080\"",
        at: ("bind = \"127.0.0.1:18080\"", 1),
        key: "admin.bind",
        says: "duplicate bind address 127.0.0.1:18080",
    },
    Reject {
        name: "malformed bind",
        from: "bind = \"127.0.0.1:18080\"",
        to: "bind = \"127.0.0.1:notaport\"",
        at: ("notaport", 0),
        key: "listener[0].bind",
        says: "\"127.0.0.1:notaport\"",
    },
    Reject {
        name: "bind to a host name",
        from: "bind = \"127.0.0.1:19090\"",
        to: "bind = \"localhost:19090\"",
        at: ("localhost", 0),
        key: "admin.bind",
        says: "\"localhost:19090\"",
    },
    Reject {
        name: "malformed server address",
        from: "servers = [\"127.0.0.1:3000\"]",
        to: "servers = [\"not an address\"]",
        at: ("not an address", 0),
        key: "upstreams.web.servers[0]",
        says: "\"not an address\"",
    },
    Reject {
        name: "server port 0",
        from: "servers = [\"127.0.0.1:3000\"]",
        to: "servers = [\"web.internal:0\"]",
        at: ("web.internal", 0),
        key: "upstreams.web.servers[0]",
        says: "port 0",
    },
    Reject {
        name: "duplicate server",
        from: "\"127.0.0.1:9002\"",
        to: "\"127.0.0.1:9001\"",
        at: ("9001", 0),
        key: "upstreams.chat.servers[1]",
        says: "listed twice",
    },
    Reject {
        name: "unknown balance",
        from: "balance = \"round_robin\"",
        to: "balance = \"random_walk\"",
        at: ("random_walk", 0),
        key: "upstreams.chat.balance",
        says: "\"random_walk\"",
    },
    Reject {
        name: "hash without hash_key",
        from: "balance = \"round_robin\"",
        to: "balance = \"hash\"",
        at: ("hash", 0),
        key: "upstreams.chat.balance",
        says: "balance = \"hash\" needs a hash_key",
    },
    Reject {
        name: "hash_key with round_robin",
        from: "balance = \"round_robin\"",
        to: "balance = \"round_robin\"\nhash_key = \"query:room\"",
        at: ("query:room", 0),
        key: "upstreams.chat.hash_key",
        says: "only used with balance = \"hash\"",
    },
    Reject {
        name: "hash_key with the default balance",
        from: "servers = [\"127.0.0.1:3000\"]",
        to: "servers = [\"127.0.0.1:3000\"]\nhash_key = \"client_ip\"",
        at: ("client_ip", 0),
        key: "upstreams.web.hash_key",
        says: "\"client_ip\" is only used with balance = \"hash\"",
    },
    Reject {
        name: "hash_key of an unknown kind",
        from: "balance = \"round_robin\"",
        to: "balance = \"hash\"\nhash_key = \"bogus:room\"",
        at: ("bogus:room", 0),
        key: "upstreams.chat.hash_key",
        says: "unknown kind \"bogus\"",
    },
    Reject {
        name: "hash_key without a name",
        from: "balance = \"round_robin\"",
        to: "balance = \"hash\"\nhash_key = \"query:\"",
        at: ("query:", 0),
        key: "upstreams.chat.hash_key",
        says: "empty name",
    },
    Reject {
        name: "unknown send_proxy_protocol",
        from: "send_proxy_protocol = \"v2\"",
        to: "send_proxy_protocol = \"v3\"",
        at: ("v3", 0),
        key: "upstreams.mqtt.send_proxy_protocol",
        says: "\"v3\"",
    },
    Reject {
        name: "ca without tls",
        from: "tls = false",
        to: "tls = false\nca = \"ca.pem\"",
        at: ("ca.pem", 0),
        key: "upstreams.chat.ca",
        says: "tls = true",
    },
    Reject {
        name: "zero health interval",
        from: "interval = \"5s\"",
        to: "interval = \"0s\"",
        at: ("health", 0),
        key: "upstreams.mqtt.health.interval",
        says: "greater than 0s",
    },
    Reject {
        name: "health path without slash",
        from: "path = \"/health\"",
        to: "path = \"health\"",
        at: ("health =", 0),
        key: "upstreams.mqtt.health.path",
        says: "\"health\"",
    },
    Reject {
        name: "unknown select",
        from: "select = \"client\"",
        to: "select = \"whoever\"",
        at: ("whoever", 0),
        key: "route[0].select",
        says: "\"whoever\"",
    },
    Reject {
        name: "route path without slash",
        from: "path = \"/chat\"",
        to: "path = \"chat\"",
        at: ("path = \"chat\"", 0),
        key: "route[0].path",
        says: "\"chat\"",
    },
    Reject {
        name: "malformed host pattern",
        from: "host = \"*.example.com\"",
        to: "host = \"a.*.com\"",
        at: ("a.*.com", 0),
        key: "route[1].host",
        says: "\"a.*.com\"",
    },
    Reject {
        name: "empty origins",
        from: "origins = [\"https://app.example.com\"]",
        to: "origins = []",
        at: ("origins", 0),
        key: "route[0].origins",
        says: "empty origins",
    },
    Reject {
        name: "empty upgrade token",
        from: "token = \"tcp\"",
        to: "token = \"\"",
        at: ("token", 0),
        key: "route[0].upgrades[0].token",
        says: "not an RFC 7230 token",
    },
    Reject {
        name: "websocket as an upgrade token",
        from: "token = \"tcp\"",
        to: "token = \"WebSocket\"",
        at: ("token", 0),
        key: "route[0].upgrades[0].token",
        says: "\"websocket\"",
    },
    Reject {
        name: "duplicate route",
        from: "host = \"*.example.com\"\npath = \"/\"",
        to: "host = \"*\"\npath = \"/chat\"",
        at: ("[[route]]", 1),
        key: "route[1]",
        says: "duplicate route",
    },
];

#[test]
fn every_rejection_rule_names_key_line_and_value() {
    let dir = TestDir::new();
    for row in REJECTS {
        assert!(GOOD.contains(row.from), "{}: `from` not in GOOD", row.name);
        let text = GOOD.replacen(row.from, row.to, 1);
        let (anchor, nth) = row.at;
        let offset = text
            .match_indices(anchor)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("{}: anchor {anchor:?} #{nth} not found", row.name));
        let line = text[..offset].matches('\n').count() + 1;
        let path = dir.write("bad.toml", &text);
        let errors = match load(&path) {
            Ok(_) => panic!("{}: accepted", row.name),
            Err(errors) => errors,
        };
        let shown = errors.to_string();
        assert_eq!(
            errors.errors.len(),
            1,
            "{}: expected one error:\n{shown}",
            row.name
        );
        let prefix = format!("{}:{line}: {}: ", path.display(), row.key);
        assert!(
            shown.starts_with(&prefix),
            "{}: expected prefix {prefix:?}, got:\n{shown}",
            row.name
        );
        assert!(
            shown.contains(row.says),
            "{}: expected {:?} in:\n{shown}",
            row.name,
            row.says
        );
        assert!(
            !shown.contains('\n'),
            "{}: one error, one line:\n{shown}",
            row.name
        );
    }
}

#[test]
fn every_semantic_error_is_reported_in_file_order() {
    let dir = TestDir::new();
    let text = GOOD
        .replacen(
            "upstream = \"chat\"",
            "upstream = \"first_missing_upstream\"",
            1,
        )
        .replacen("drain_timeout = \"250ms\"", "drain_timeout = \"soon\"", 1);
    // The last `upstream = "chat"` is route[1]'s subprotocol.
    let last = text
        .rfind("upstream = \"chat\"")
        .expect("route[1] subprotocol");
    let text = format!(
        "{}upstream = \"second_missing_upstream\"{}",
        &text[..last],
        &text[last + 17..]
    );
    let path = dir.write("every.toml", &text);
    let errors = load(&path).expect_err("three problems");
    let keys: Vec<_> = errors
        .errors
        .iter()
        .map(|e| e.key.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "limits.drain_timeout",
            "route[0].subprotocol[0].upstream",
            "route[1].subprotocol[0].upstream",
        ],
        "{errors}"
    );
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    assert!(shown.contains("first_missing_upstream") && shown.contains("second_missing_upstream"));
}

#[test]
fn syntax_error_gives_line_and_text() {
    let dir = TestDir::new();
    let text = GOOD.replacen("[limits]", "[limits", 1);
    let line = text[..text.find("[limits").unwrap()].matches('\n').count() + 1;
    let path = dir.write("syntax.toml", &text);
    let shown = load(&path).expect_err("syntax error").to_string();
    assert!(
        shown.starts_with(&format!("{}:{line}: ", path.display())),
        "{shown}"
    );
    assert!(shown.contains("[limits"), "{shown}");
    assert!(!shown.contains('\n'), "{shown}");
}

#[test]
fn no_listener_is_an_error() {
    let dir = TestDir::new();
    let path = dir.write("none.toml", "[upstreams.a]\nservers = [\"127.0.0.1:1\"]\n");
    let shown = load(&path).expect_err("no listener").to_string();
    assert_eq!(
        shown,
        format!(
            "{}: listener: no listener: at least one [[listener]] with a bind address is required",
            path.display()
        )
    );
}

/// TLS rows: the listener's files are generated, then broken one way each.
#[test]
fn tls_listener_files_are_checked() {
    let dir = TestDir::new();
    dir.cert_pair("one.pem", "one-key.pem", &["localhost"]);
    dir.cert_pair("two.pem", "two-key.pem", &["chat.example.com"]);
    let rows: &[(&str, &str, &str, &str)] = &[
        // (tls table, key, what the message must say, anchor for the line)
        (
            r#"tls = { cert = "nope-cert.pem", key = "nope-key.pem" }"#,
            "listener[0].tls.cert",
            "nope-cert.pem",
            "nope-cert.pem",
        ),
        (
            r#"tls = { cert = "one.pem", key = "nope-key.pem" }"#,
            "listener[0].tls.key",
            "nope-key.pem",
            "nope-key.pem",
        ),
        (
            r#"tls = { cert = "one.pem", key = "two-key.pem" }"#,
            "listener[0].tls.key",
            "does not match",
            "two-key.pem",
        ),
        (
            r#"tls = { cert = "one-key.pem", key = "one-key.pem" }"#,
            "listener[0].tls.cert",
            "no PEM certificate",
            "cert =",
        ),
        (
            "[listener.tls]\ncert = \"one.pem\"\nkey = \"one-key.pem\"\nsni = [{ names = [\"chat.example.com\"], cert = \"two.pem\", key = \"one-key.pem\" }]",
            "listener[0].tls.sni[0].key",
            "does not match",
            "sni",
        ),
        (
            "[listener.tls]\ncert = \"one.pem\"\nkey = \"one-key.pem\"\nsni = [{ names = [\"127.0.0.1\"], cert = \"two.pem\", key = \"two-key.pem\" }]",
            "listener[0].tls.sni[0].names[0]",
            "\"127.0.0.1\" is not a DNS name",
            "sni",
        ),
    ];
    for (tls, key, says, anchor) in rows {
        let text = format!("[[listener]]\nbind = \"127.0.0.1:8443\"\n{tls}\n");
        let line = text[..text.find(anchor).unwrap()].matches('\n').count() + 1;
        let path = dir.write("tls.toml", &text);
        let shown = match load(&path) {
            Ok(_) => panic!("{tls}: accepted"),
            Err(errors) => errors.to_string(),
        };
        let prefix = format!("{}:{line}: {key}: ", path.display());
        assert!(
            shown.starts_with(&prefix),
            "{tls}: expected {prefix:?}, got:\n{shown}"
        );
        assert!(
            shown.contains(says),
            "{tls}: expected {says:?} in:\n{shown}"
        );
    }
}

#[test]
fn unreadable_upstream_ca_is_an_error() {
    let dir = TestDir::new();
    let text = "[[listener]]\nbind = \"127.0.0.1:1\"\n\n[upstreams.a]\nservers = [\"a.internal:443\"]\ntls = true\nca = \"missing-ca.pem\"\n";
    let path = dir.write("ca.toml", text);
    let shown = load(&path).expect_err("missing ca").to_string();
    assert!(
        shown.starts_with(&format!("{}:7: upstreams.a.ca: ", path.display())),
        "{shown}"
    );
    assert!(shown.contains("missing-ca.pem"), "{shown}");
}

/// A route's SPEC §9 keys: every one set, the inspected defaults, and the lifetime keys without
/// inspect; the valid close codes around the refused ones pass.
#[test]
fn inspect_and_lifetime_keys_load() {
    let dir = TestDir::new();
    let route = |keys: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[route]]\nfallback = \"app\"\n{keys}\n"
        )
    };
    let one = |keys: &str| {
        let config = load_ok(&dir.write("route.toml", &route(keys)));
        config.routes[0].clone()
    };
    let full = one(
        "inspect = true\nmax_message_bytes = 1048576\nmax_frame_bytes = 0\nping_interval = \"30s\"\nping_timeout = \"10s\"\nclose_code = 1012\nmax_lifetime = \"1h\"\nmax_lifetime_jitter = \"5m\"",
    );
    assert_eq!(
        full.inspect,
        Some(InspectRoute {
            max_message_bytes: Some(1_048_576),
            max_frame_bytes: None,
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
            close_code: 1012,
        })
    );
    assert_eq!(full.max_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(full.max_lifetime_jitter, Duration::from_secs(300));

    let defaults = one("inspect = true");
    assert_eq!(
        defaults.inspect,
        Some(InspectRoute {
            max_message_bytes: None,
            max_frame_bytes: None,
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            close_code: 1001,
        })
    );
    assert_eq!(
        (defaults.max_lifetime, defaults.max_lifetime_jitter),
        (None, Duration::ZERO)
    );

    let off =
        one("inspect = true\nping_interval = \"0s\"\nmax_frame_bytes = 125\nmax_lifetime = \"0s\"");
    let inspect = off.inspect.expect("inspected");
    assert_eq!(
        (inspect.ping_interval, inspect.max_frame_bytes),
        (None, Some(125))
    );
    assert_eq!(off.max_lifetime, None);

    let plain = one("max_lifetime = \"10m\"\nmax_lifetime_jitter = \"1m\"");
    assert_eq!(plain.inspect, None);
    assert_eq!(plain.max_lifetime, Some(Duration::from_secs(600)));
    assert_eq!(plain.max_lifetime_jitter, Duration::from_secs(60));
    assert_eq!(one("inspect = false").inspect, None);
    assert_eq!(one("").inspect, None);

    for code in [1000, 1003, 1007, 1012, 1016, 2999, 3000, 4999] {
        let r = one(&format!("inspect = true\nclose_code = {code}"));
        assert_eq!(r.inspect.map(|i| i.close_code), Some(code), "{code}");
    }
}

/// SPEC §10's `[auth.NAME]` tables as SPEC §2 shows them, with every key set.
const AUTH_GOOD: &str = r#"[[listener]]
bind = "127.0.0.1:8080"

[upstreams.chat]
servers = ["127.0.0.1:9001"]

[[route]]
path = "/sso"
fallback = "chat"
auth = "sso"

[[route]]
path = "/api"
fallback = "chat"
auth = "api"

[auth.sso]
forward = { url = "https://auth.example.com/check?app=chat", timeout = "1500ms", forward_headers = ["Cookie", "x-api-key"], copy_headers = ["X-User"] }

[auth.api]
jwt = { jwks = "keys/jwks.json", issuer = "https://id.example.com", audience = "chat", algorithms = ["ES256", "EdDSA"], leeway = "5s", from = ["header:x-token", "subprotocol:jwt."], claims_to_headers = { sub = "x-user", tier = "X-Tier" } }
"#;

/// An Ed25519 public JWK (RFC 8037 §2) and an HMAC key that must never be used.
const AUTH_JWKS: &str = r#"{"keys": [
  {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
  {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
]}"#;

#[test]
fn auth_tables_load_with_every_key() {
    use jsonwebtoken::Algorithm;
    let dir = TestDir::new();
    dir.write("keys/jwks.json", AUTH_JWKS);
    let config = load_ok(&dir.write("auth.toml", AUTH_GOOD));
    assert_eq!(config.routes[0].auth.as_deref(), Some("sso"));
    let AuthConfig::Forward(f) = &config.auth["sso"] else {
        panic!("sso is not forward auth");
    };
    assert!(f.tls);
    assert_eq!(
        f.server,
        ServerAddr {
            host: "auth.example.com".into(),
            port: 443
        }
    );
    assert_eq!(f.url.path_and_query().unwrap().as_str(), "/check?app=chat");
    assert_eq!(f.timeout, Duration::from_millis(1500));
    assert_eq!(f.forward_headers, ["cookie", "x-api-key"]);
    assert_eq!(f.copy_headers, ["x-user"]);
    let AuthConfig::Jwt(j) = &config.auth["api"] else {
        panic!("api is not jwt auth");
    };
    assert_eq!(j.keys.len(), 1, "the oct key is skipped");
    assert_eq!(j.keys[0].common.key_id.as_deref(), Some("ed-1"));
    assert_eq!(j.algorithms, [Algorithm::ES256, Algorithm::EdDSA]);
    assert_eq!(j.leeway, Duration::from_secs(5));
    assert_eq!(
        j.from,
        [
            TokenSource::Header(http::HeaderName::from_static("x-token")),
            TokenSource::Subprotocol("jwt.".into())
        ]
    );
    let claims: Vec<_> = j
        .claims_to_headers
        .iter()
        .map(|(c, h)| (c.as_str(), h.as_str()))
        .collect();
    assert_eq!(claims, [("sub", "x-user"), ("tier", "x-tier")]);
}

#[test]
fn auth_defaults_are_spec_defaults() {
    use jsonwebtoken::Algorithm;
    let dir = TestDir::new();
    dir.write("jwks.json", AUTH_JWKS);
    let text = "[[listener]]\nbind = \"127.0.0.1:8080\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n\
        [[route]]\nfallback = \"u\"\nauth = \"f\"\n\
        [auth.f]\nforward = { url = \"http://127.0.0.1:4180\" }\n\
        [auth.j]\njwt = { jwks = \"jwks.json\" }\n";
    let config = load_ok(&dir.write("defaults.toml", text));
    let AuthConfig::Forward(f) = &config.auth["f"] else {
        panic!("f is not forward auth");
    };
    assert_eq!((f.server.port, f.tls), (4180, false));
    assert_eq!(f.timeout, Duration::from_secs(2));
    assert_eq!(f.forward_headers, ["cookie", "authorization"]);
    assert!(f.copy_headers.is_empty());
    let AuthConfig::Jwt(j) = &config.auth["j"] else {
        panic!("j is not jwt auth");
    };
    assert_eq!(
        j.algorithms,
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
    );
    assert_eq!(j.leeway, Duration::from_secs(60));
    assert_eq!((j.issuer.as_deref(), j.audience.as_deref()), (None, None));
    assert_eq!(
        j.from,
        [
            TokenSource::Header(http::header::AUTHORIZATION),
            TokenSource::Query("access_token".into()),
            TokenSource::Subprotocol("bearer.".into())
        ]
    );
}

#[test]
fn every_auth_rejection_names_key_line_and_problem() {
    // (name, replace this in AUTH_GOOD, by this, key named, line of the key, the message says)
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str, &str, usize, &str)] = &[
        ("undefined auth", "auth = \"api\"", "auth = \"ghost\"", "route[1].auth", 15, "undefined auth \"ghost\""),
        ("both forward and jwt", "[auth.api]\njwt", "[auth.api]\nforward = { url = \"http://a\" }\njwt", "auth.api", 20, "both forward and jwt"),
        ("neither", "[auth.api]\njwt = {", "[auth.api]\n[auth.unused]\njwt = {", "auth.api", 20, "neither forward nor jwt"),
        ("jwks missing", "keys/jwks.json", "keys/none.json", "auth.api.jwt.jwks", 21, "cannot read JWKS file"),
        ("url not http", "https://auth.example.com/check", "ftp://auth.example.com/check", "auth.sso.forward.url", 18, "not http or https"),
        ("url without host", "https://auth.example.com/check?app=chat", "/check", "auth.sso.forward.url", 18, "\"/check\""),
        ("url with credentials", "https://auth.example.com", "https://u:p@auth.example.com", "auth.sso.forward.url", 18, "credentials"),
        ("bad timeout", "timeout = \"1500ms\"", "timeout = \"2\"", "auth.sso.forward.timeout", 18, "no unit"),
        ("zero timeout", "timeout = \"1500ms\"", "timeout = \"0s\"", "auth.sso.forward.timeout", 18, "greater than 0s"),
        ("bad header name", "copy_headers = [\"X-User\"]", "copy_headers = [\"X User\"]", "auth.sso.forward.copy_headers[0]", 18, "not a valid header name"),
        ("alg none", "algorithms = [\"ES256\", \"EdDSA\"]", "algorithms = [\"ES256\", \"none\"]", "auth.api.jwt.algorithms[1]", 21, "never accepted"),
        ("alg HS256", "algorithms = [\"ES256\", \"EdDSA\"]", "algorithms = [\"HS256\"]", "auth.api.jwt.algorithms[0]", 21, "never accepted"),
        ("no algorithms", "algorithms = [\"ES256\", \"EdDSA\"]", "algorithms = []", "auth.api.jwt.algorithms", 21, "empty algorithms"),
        ("bad leeway", "leeway = \"5s\"", "leeway = \"soon\"", "auth.api.jwt.leeway", 21, "\"soon\""),
        ("bad source", "\"header:x-token\"", "\"cookie:sid\"", "auth.api.jwt.from[0]", 21, "unknown token source"),
        ("empty from", "from = [\"header:x-token\", \"subprotocol:jwt.\"]", "from = []", "auth.api.jwt.from", 21, "empty from"),
        ("bad claim header", "tier = \"X-Tier\"", "tier = \"X:Tier\"", "auth.api.jwt.claims_to_headers.tier", 21, "not a valid header name"),
        ("claim key behind forward auth", "auth = \"sso\"", "auth = \"sso\"", "route[0]", 0, "\"claim:sub\" needs a verified JWT, but its auth \"sso\" is not jwt"),
        ("claim key without auth", "auth = \"sso\"\n", "", "route[0]", 0, "but it has no auth"),
    ];
    let dir = TestDir::new();
    dir.write("keys/jwks.json", AUTH_JWKS);
    for (name, from, to, key, line, says) in rows {
        assert!(AUTH_GOOD.contains(from), "{name}: `from` not in AUTH_GOOD");
        let mut text = AUTH_GOOD.replacen(from, to, 1);
        if *line == 0 {
            // The `claim:` rows: the pool hashes by a claim; the line is route[0]'s header.
            text = text.replacen(CHAT_SERVERS, CLAIM_POOL, 1);
        }
        let path = dir.write("bad.toml", &text);
        let line = if *line == 0 {
            1 + text.lines().position(|l| l == "[[route]]").unwrap()
        } else {
            *line
        };
        let errors = load(&path)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let shown = errors.to_string();
        assert_eq!(
            errors.errors.len(),
            1,
            "{name}: expected one error:\n{shown}"
        );
        let prefix = format!("{}:{line}: {key}: ", path.display());
        assert!(
            shown.starts_with(&prefix),
            "{name}: expected {prefix:?}, got:\n{shown}"
        );
        assert!(
            shown.contains(says),
            "{name}: expected {says:?} in:\n{shown}"
        );
    }
}

const CHAT_SERVERS: &str = "servers = [\"127.0.0.1:9001\"]";
const CLAIM_POOL: &str =
    "servers = [\"127.0.0.1:9001\"]\nbalance = \"hash\"\nhash_key = \"claim:sub\"";

#[test]
fn claim_hash_keys_load_behind_jwt_routes() {
    let dir = TestDir::new();
    dir.write("keys/jwks.json", AUTH_JWKS);
    let text = (AUTH_GOOD.replacen(CHAT_SERVERS, CLAIM_POOL, 1)).replacen(
        "auth = \"sso\"",
        "auth = \"api\"",
        1,
    );
    let config = load_ok(&dir.write("claims.toml", &text));
    assert_eq!(
        config.upstreams["chat"].balance,
        Balance::Hash(HashKey::Claim("sub".into()))
    );
}

#[test]
fn jwks_files_without_a_usable_key_are_rejected() {
    let dir = TestDir::new();
    let rows = [
        ("not json", "this is not {json", "is not JSON"),
        ("no keys member", "{\"k\": []}", "not a JWK set"),
        ("empty", "{\"keys\": []}", "no usable key"),
        (
            "only hmac",
            "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
            "no usable key",
        ),
        (
            "only an encryption key",
            "{\"keys\": [{\"kty\": \"OKP\", \"crv\": \"Ed25519\", \"use\": \"enc\", \"x\": \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}",
            "no usable key",
        ),
    ];
    for (name, jwks, says) in rows {
        dir.write("keys/jwks.json", jwks);
        let path = dir.write("jwks.toml", AUTH_GOOD);
        let shown = load(&path)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"))
            .to_string();
        assert!(
            shown.contains("auth.api.jwt.jwks: ") && shown.contains(says),
            "{name}: {shown}"
        );
        assert!(
            shown.contains("jwks.json"),
            "{name}: the file is named: {shown}"
        );
    }
}
