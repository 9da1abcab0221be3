//! A builder for test configs (SPEC §2): listeners on 127.0.0.1:0, upstreams, routes, limits and
//! the TLS sub-tables, rendered as TOML.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::gateway::Gateway;
use super::tls::dev_cert;

/// A TOML basic string with the escaping TOML requires.
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One `[[route]]` of a test config.
#[derive(Debug, Clone)]
pub struct Route {
    path: String,
    host: Option<String>,
    origins: Option<Vec<String>>,
    select_server: bool,
    fallback: Option<String>,
    http: Option<String>,
    subprotocols: Vec<(String, String)>,
    /// `upgrades = [{ token, upstream }]`.
    upgrades: Vec<(String, String)>,
    /// Other keys, as `KEY = VALUE` with the value already TOML.
    keys: Vec<(String, String)>,
}

impl Route {
    /// A route on `path` for any host, select = client, no fallback, no subprotocols.
    pub fn new(path: &str) -> Route {
        Route {
            path: path.to_string(),
            host: None,
            origins: None,
            select_server: false,
            fallback: None,
            http: None,
            subprotocols: Vec::new(),
            upgrades: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Any other route key, `value` written as TOML (`"1s"` quoted, numbers and booleans bare),
    /// e.g. `.key("max_lifetime", "\"1s\"")` or `.key("inspect", "true")`.
    pub fn key(mut self, key: &str, value: &str) -> Route {
        self.keys.push((key.to_string(), value.to_string()));
        self
    }

    /// `http = "UPSTREAM"`: ordinary requests are reverse-proxied there.
    pub fn http(mut self, upstream: &str) -> Route {
        self.http = Some(upstream.to_string());
        self
    }

    /// Adds `{ token = TOKEN, upstream = UPSTREAM }` to `upgrades`.
    pub fn upgrade(mut self, token: &str, upstream: &str) -> Route {
        self.upgrades
            .push((token.to_string(), upstream.to_string()));
        self
    }

    /// Restricts the route to a host pattern (`name`, `*.suffix`).
    pub fn host(mut self, host: &str) -> Route {
        self.host = Some(host.to_string());
        self
    }

    /// Maps a subprotocol to an upstream (config order matters for select = server).
    pub fn sub(mut self, name: &str, upstream: &str) -> Route {
        self.subprotocols
            .push((name.to_string(), upstream.to_string()));
        self
    }

    /// The upstream for requests offering no mapped subprotocol.
    pub fn fallback(mut self, upstream: &str) -> Route {
        self.fallback = Some(upstream.to_string());
        self
    }

    /// An `Origin` allowlist.
    pub fn origins(mut self, origins: &[&str]) -> Route {
        self.origins = Some(origins.iter().map(|o| o.to_string()).collect());
        self
    }

    /// `select = "server"`.
    pub fn select_server(mut self) -> Route {
        self.select_server = true;
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("[[route]]\n");
        if let Some(host) = &self.host {
            out.push_str(&format!("host = {}\n", q(host)));
        }
        out.push_str(&format!("path = {}\n", q(&self.path)));
        if let Some(origins) = &self.origins {
            let list: Vec<String> = origins.iter().map(|o| q(o)).collect();
            out.push_str(&format!("origins = [{}]\n", list.join(", ")));
        }
        out.push_str(&format!(
            "select = {}\n",
            q(if self.select_server {
                "server"
            } else {
                "client"
            })
        ));
        if let Some(fb) = &self.fallback {
            out.push_str(&format!("fallback = {}\n", q(fb)));
        }
        if let Some(http) = &self.http {
            out.push_str(&format!("http = {}\n", q(http)));
        }
        if !self.upgrades.is_empty() {
            let list: Vec<String> = self
                .upgrades
                .iter()
                .map(|(t, u)| format!("{{ token = {}, upstream = {} }}", q(t), q(u)))
                .collect();
            out.push_str(&format!("upgrades = [{}]\n", list.join(", ")));
        }
        for (key, value) in &self.keys {
            out.push_str(&format!("{key} = {value}\n"));
        }
        for (name, upstream) in &self.subprotocols {
            out.push_str(&format!(
                "[[route.subprotocol]]\nname = {}\nupstream = {}\n",
                q(name),
                q(upstream)
            ));
        }
        out.push('\n');
    }
}

/// A test config: one listener on 127.0.0.1:0 unless told otherwise.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    listeners: usize,
    admin: bool,
    versions: Option<Vec<u8>>,
    limits: Vec<(String, String)>,
    upstreams: Vec<(String, Vec<String>)>,
    /// Extra `key = value` lines (value is TOML) per upstream name.
    upstream_options: Vec<(String, String, String)>,
    /// `tls = true` settings by upstream name.
    upstream_tls: Vec<(String, UpstreamTlsOpts)>,
    /// TLS for the first listener.
    tls: Option<ListenerTls>,
    routes: Vec<Route>,
    proxy_protocol: bool,
    /// Upstream tables with settings beyond `servers`, rendered whole.
    upstream_tables: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            listeners: 1,
            admin: false,
            versions: None,
            limits: Vec::new(),
            upstreams: Vec::new(),
            upstream_options: Vec::new(),
            upstream_tls: Vec::new(),
            tls: None,
            routes: Vec::new(),
            proxy_protocol: false,
            upstream_tables: Vec::new(),
        }
    }
}

impl ConfigBuilder {
    /// One listener, no admin, defaults everywhere else.
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// `n` listeners, each on 127.0.0.1:0.
    pub fn listeners(mut self, n: usize) -> ConfigBuilder {
        self.listeners = n;
        self
    }

    /// Adds an `[admin]` listener on 127.0.0.1:0.
    pub fn admin(mut self) -> ConfigBuilder {
        self.admin = true;
        self
    }

    /// Makes the first listener a TLS listener with `http2 = true`, serving the committed dev
    /// certificate `certs/server.pem` (localhost, 127.0.0.1, ::1; trust `certs/ca.pem`).
    pub fn tls_h2(self) -> ConfigBuilder {
        let dev = ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem"));
        self.tls(dev.http2(true))
    }

    /// `[websocket] versions`.
    pub fn versions(mut self, versions: &[u8]) -> ConfigBuilder {
        self.versions = Some(versions.to_vec());
        self
    }

    /// A `[limits]` entry; `value` is TOML (`"300ms"` must be passed quoted, `8192` bare).
    pub fn limit(mut self, key: &str, value: &str) -> ConfigBuilder {
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    /// An `[upstreams.NAME]` with these servers (round robin).
    pub fn upstream(mut self, name: &str, servers: &[SocketAddr]) -> ConfigBuilder {
        self.upstreams.push((
            name.to_string(),
            servers.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// An extra line in `[upstreams.NAME]`; `value` is TOML (`"\"v2\""` for a string).
    pub fn upstream_option(mut self, name: &str, key: &str, value: &str) -> ConfigBuilder {
        self.upstream_options
            .push((name.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// `proxy_protocol = true` on every listener: connections must start with a PROXY header.
    pub fn proxy_protocol(mut self) -> ConfigBuilder {
        self.proxy_protocol = true;
        self
    }

    /// An `[upstreams.NAME]` whose servers are written as given (IPs or host names) followed by
    /// `settings`, raw TOML lines such as `balance = "least_connections"`.
    pub fn upstream_with(
        mut self,
        name: &str,
        servers: &[String],
        settings: &str,
    ) -> ConfigBuilder {
        let list: Vec<String> = servers.iter().map(|s| q(s)).collect();
        self.upstream_tables.push(format!(
            "[upstreams.{name}]\nservers = [{}]\n{settings}\n\n",
            list.join(", ")
        ));
        self
    }

    /// Appends a route.
    pub fn route(mut self, route: Route) -> ConfigBuilder {
        self.routes.push(route);
        self
    }

    /// Makes the first listener a TLS listener with these files.
    pub fn tls(mut self, tls: ListenerTls) -> ConfigBuilder {
        self.tls = Some(tls);
        self
    }

    /// `tls = true` for upstream `name` (added with [`ConfigBuilder::upstream`]), verifying
    /// against `ca` (else the public roots) under `server_name` (else the server's host).
    pub fn upstream_tls(
        mut self,
        name: &str,
        ca: Option<&Path>,
        server_name: Option<&str>,
    ) -> ConfigBuilder {
        self.upstream_tls.push((
            name.to_string(),
            UpstreamTlsOpts {
                ca: ca.map(Path::to_path_buf),
                server_name: server_name.map(str::to_string),
            },
        ));
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut out = String::new();
        for i in 0..self.listeners {
            out.push_str("[[listener]]\nbind = \"127.0.0.1:0\"\n");
            if self.proxy_protocol {
                out.push_str("proxy_protocol = true\n");
            }
            if let (0, Some(tls)) = (i, &self.tls) {
                tls.render(&mut out);
            }
            out.push('\n');
        }
        if self.admin {
            out.push_str("[admin]\nbind = \"127.0.0.1:0\"\n\n");
        }
        if let Some(versions) = &self.versions {
            let list: Vec<String> = versions.iter().map(u8::to_string).collect();
            out.push_str(&format!(
                "[websocket]\nversions = [{}]\n\n",
                list.join(", ")
            ));
        }
        if !self.limits.is_empty() {
            out.push_str("[limits]\n");
            for (k, v) in &self.limits {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        for (name, servers) in &self.upstreams {
            let list: Vec<String> = servers.iter().map(|s| q(s)).collect();
            out.push_str(&format!(
                "[upstreams.{name}]\nservers = [{}]\n",
                list.join(", ")
            ));
            for (_, key, value) in self.upstream_options.iter().filter(|(n, ..)| n == name) {
                out.push_str(&format!("{key} = {value}\n"));
            }
            if let Some((_, tls)) = self.upstream_tls.iter().find(|(n, _)| n == name) {
                tls.render(&mut out);
            }
            out.push('\n');
        }
        out.extend(self.upstream_tables.iter().map(String::as_str));
        for route in &self.routes {
            route.render(&mut out);
        }
        out
    }

    /// Builds and starts a gateway on it.
    pub async fn start(&self) -> Gateway {
        Gateway::start(&self.build()).await
    }
}

/// A TLS listener's files for a test config, rendered as SPEC §2's `[listener.tls]` sub-table.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    /// (names, cert, key) per `sni` entry.
    sni: Vec<(Vec<String>, PathBuf, PathBuf)>,
    http2: Option<bool>,
    http3: bool,
    strict_sni: Option<bool>,
}

impl ListenerTls {
    /// A default certificate and key; no SNI entries; `http2` left to its default.
    pub fn new(cert: &Path, key: &Path) -> ListenerTls {
        ListenerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            sni: Vec::new(),
            http2: None,
            http3: false,
            strict_sni: None,
        }
    }

    /// `certs/server.pem` (localhost, 127.0.0.1, ::1) as the default and `certs/chat.pem` for
    /// `chat.example.com`, as in SPEC §2's example.
    pub fn dev() -> ListenerTls {
        ListenerTls::new(&dev_cert("server.pem"), &dev_cert("server-key.pem")).sni(
            &["chat.example.com"],
            &dev_cert("chat.pem"),
            &dev_cert("chat-key.pem"),
        )
    }

    /// Adds an `sni` entry.
    pub fn sni(mut self, names: &[&str], cert: &Path, key: &Path) -> ListenerTls {
        self.sni.push((
            names.iter().map(|n| n.to_string()).collect(),
            cert.to_path_buf(),
            key.to_path_buf(),
        ));
        self
    }

    /// The listener's `http2` key.
    pub fn http2(mut self, on: bool) -> ListenerTls {
        self.http2 = Some(on);
        self
    }

    /// The listener's `http3` key (SPEC §12).
    pub fn http3(mut self, on: bool) -> ListenerTls {
        self.http3 = on;
        self
    }

    /// The listener's `tls.strict_sni` key.
    pub fn strict_sni(mut self, on: bool) -> ListenerTls {
        self.strict_sni = Some(on);
        self
    }

    /// Lines for the `[[listener]]` just opened.
    fn render(&self, out: &mut String) {
        let path = |p: &Path| q(&p.to_string_lossy());
        if let Some(on) = self.http2 {
            out.push_str(&format!("http2 = {on}\n"));
        }
        if self.http3 {
            out.push_str("http3 = true\n");
        }
        out.push_str(&format!(
            "[listener.tls]\ncert = {}\nkey = {}\n",
            path(&self.cert),
            path(&self.key)
        ));
        if !self.sni.is_empty() {
            let entries: Vec<String> = self
                .sni
                .iter()
                .map(|(names, cert, key)| {
                    let names: Vec<String> = names.iter().map(|n| q(n)).collect();
                    format!(
                        "{{ names = [{}], cert = {}, key = {} }}",
                        names.join(", "),
                        path(cert),
                        path(key)
                    )
                })
                .collect();
            out.push_str(&format!("sni = [{}]\n", entries.join(", ")));
        }
        if let Some(on) = self.strict_sni {
            out.push_str(&format!("strict_sni = {on}\n"));
        }
    }
}

/// An upstream's `tls = true` settings in a test config.
#[derive(Debug, Clone)]
struct UpstreamTlsOpts {
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

impl UpstreamTlsOpts {
    /// Lines for the `[upstreams.NAME]` just opened.
    fn render(&self, out: &mut String) {
        out.push_str("tls = true\n");
        if let Some(ca) = &self.ca {
            out.push_str(&format!("ca = {}\n", q(&ca.to_string_lossy())));
        }
        if let Some(name) = &self.server_name {
            out.push_str(&format!("server_name = {}\n", q(name)));
        }
    }
}
