//! Test fixtures: the acceptance harness's standard routes (checks/common.py `STD_ROUTES`,
//! handshake.py `UPG_ROUTES`) and a request builder shaped like its `ws_request`.

use http::request::Parts;
use http::{Method, StatusCode, Version};

use super::{Kind, check_other_upgrade, classify, negotiate, request_host};
use crate::config::{
    HostPattern, RouteConfig, Select, SubprotocolRoute, UpgradeRoute, WebSocketConfig,
};
use crate::error::{Carrier, Reject};
use crate::route::RouteTable;

/// RFC 6455 §1.3's sample key.
pub(crate) const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn route(path: &str, subprotocols: &[(&str, &str)]) -> RouteConfig {
    RouteConfig {
        host: HostPattern::Any,
        path: path.to_string(),
        origins: None,
        select: Select::Client,
        fallback: None,
        http: None,
        upgrades: vec![],
        subprotocols: subprotocols
            .iter()
            .map(|(n, u)| SubprotocolRoute {
                name: n.to_string(),
                upstream: u.to_string(),
            })
            .collect(),
        inspect: None,
        max_lifetime: None,
        max_lifetime_jitter: std::time::Duration::ZERO,
        auth: None,
    }
}

pub(crate) fn std_routes() -> Vec<RouteConfig> {
    let both = [("chat.v2", "chat"), ("mqtt", "mqtt")];
    let chat = [("chat.v2", "chat")];
    let fb = Some("fb".to_string());
    vec![
        route("/ws", &both),
        RouteConfig {
            select: Select::Server,
            ..route("/srv", &both)
        },
        RouteConfig {
            fallback: fb.clone(),
            ..route("/fb", &chat)
        },
        RouteConfig {
            fallback: fb.clone(),
            origins: Some(vec!["https://app.example.com".into()]),
            ..route("/strict", &chat)
        },
        RouteConfig {
            fallback: fb.clone(),
            http: Some("web".into()),
            ..route("/web", &chat)
        },
        RouteConfig {
            fallback: fb,
            host: HostPattern::Exact("only.example".into()),
            ..route("/hostonly", &chat)
        },
    ]
}

pub(crate) fn raw_route() -> RouteConfig {
    RouteConfig {
        fallback: Some("fb".into()),
        upgrades: vec![UpgradeRoute {
            token: "tcp".into(),
            upstream: "raw".into(),
        }],
        ..route("/raw", &[("chat.v2", "chat")])
    }
}

pub(crate) fn std_routes_with_raw() -> Vec<RouteConfig> {
    let mut r = std_routes();
    r.push(raw_route());
    r
}

pub(crate) fn std_route(path: &str) -> RouteConfig {
    std_routes_with_raw()
        .into_iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no fixture route {path}"))
}

/// `versions = [13, 8, 7]`, mismatch 426: the harness's `[websocket]`.
pub(crate) fn std_ws_config() -> WebSocketConfig {
    WebSocketConfig {
        versions: vec![13, 8, 7],
        version_mismatch_status: StatusCode::UPGRADE_REQUIRED,
    }
}

/// A request shape: headers in order, edited like the harness's `set_`/`drop`/`add`.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    method: Method,
    path: String,
    version: Version,
    headers: Vec<(String, String)>,
    carrier: Carrier,
    pub(crate) routes: Vec<RouteConfig>,
}

impl Req {
    /// A valid version-13 handshake offering `chat.v2`.
    pub(crate) fn ws(path: &str) -> Self {
        Req {
            method: Method::GET,
            path: path.to_string(),
            version: Version::HTTP_11,
            headers: [
                ("Host", "gw.test:8080"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", SAMPLE_KEY),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Protocol", "chat.v2"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
            carrier: Carrier::H1,
            routes: std_routes(),
        }
    }

    /// An ordinary request.
    pub(crate) fn plain(method: &str, path: &str) -> Self {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            headers: vec![
                ("Host".into(), "gw.test:8080".into()),
                ("Accept".into(), "*/*".into()),
            ],
            ..Req::ws(path)
        }
    }

    pub(crate) fn set(mut self, name: &str, value: &str) -> Self {
        let at = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name));
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        let line = (name.to_string(), value.to_string());
        match at {
            Some(i) => self.headers.insert(i.min(self.headers.len()), line),
            None => self.headers.push(line),
        }
        self
    }

    pub(crate) fn drop(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub(crate) fn add(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub(crate) fn method(mut self, m: &str) -> Self {
        self.method = Method::from_bytes(m.as_bytes()).expect("method");
        self
    }

    pub(crate) fn version(mut self, v: Version) -> Self {
        self.version = v;
        self
    }

    /// Carry it as RFC 8441 extended CONNECT (an upgrade) or a plain h2 request: Host becomes
    /// `:authority`, connection-specific headers go, `Upgrade` becomes `:protocol`.
    pub(crate) fn h2(mut self) -> Self {
        self.carrier = Carrier::H2;
        self
    }

    /// The `http` parts the I/O layer would hand over, and the h2 `:protocol`.
    pub(crate) fn parts(&self) -> (Parts, Option<String>) {
        let mut b = http::Request::builder().version(self.version);
        let mut protocol = None;
        if self.carrier.extended_connect() {
            let host = self
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map_or("gw.test:8080", |(_, v)| v.as_str());
            b = b
                .version(Version::HTTP_2)
                .uri(format!("https://{host}{}", self.path));
            let upgrade = self
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
            match upgrade {
                Some((_, p)) => {
                    protocol = Some(p.clone());
                    b = b.method(Method::CONNECT);
                }
                None => b = b.method(self.method.clone()),
            }
            for (n, v) in &self.headers {
                if !["host", "upgrade", "connection"].contains(&n.to_ascii_lowercase().as_str()) {
                    b = b.header(n.to_ascii_lowercase(), v);
                }
            }
        } else {
            b = b.method(self.method.clone()).uri(self.path.as_str());
            for (n, v) in &self.headers {
                b = b.header(n.as_str(), v.as_str());
            }
        }
        let (parts, ()) = b.body(()).expect("fixture request").into_parts();
        (parts, protocol)
    }
}

/// The I/O layer's call sequence up to choosing the upstream: (upstream, selected subprotocol).
pub(crate) fn run(req: &Req, ws: &WebSocketConfig) -> Result<(String, Option<String>), Reject> {
    let (parts, protocol) = req.parts();
    let host = request_host(&parts, req.carrier)?;
    let table = RouteTable::new(&req.routes);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = table.find(host, target).ok_or(Reject::NoRoute)?;
    match classify(&parts, route, req.carrier, protocol.as_deref())? {
        Kind::Plain => route
            .http
            .clone()
            .map(|u| (u, None))
            .ok_or(Reject::UpgradeRequired),
        Kind::WebSocket => {
            let n = negotiate(&parts, route, ws, req.carrier)?;
            Ok((n.upstream, n.subprotocol))
        }
        Kind::Other { upstream, .. } => {
            check_other_upgrade(&parts, req.carrier)?;
            Ok((upstream, None))
        }
    }
}
