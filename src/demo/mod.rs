//! `switchyard demo` (SPEC §1): the real gateway in front of in-process upstreams, with no set-up.
//!
//! The demo starts three upstreams on `127.0.0.1:0` ([`upstreams`]): a WebSocket echo server
//! (`echo.v1`), a chat server that broadcasts to every chat client (`chat.v1`) and a tiny HTTP
//! server for the page. It then writes an ordinary config file (plus the embedded dev
//! certificates) to a private temp directory, loads it with [`config::load`] exactly as `run`
//! would, and runs [`run::run`]. Nothing here is a special path through the gateway: the page
//! reaches the web upstream through a route's `http` upstream, and the WebSockets go through
//! the same handshake, routing and tunnel code as in production.
//!
//! The dev certificates are compiled in (`certs/` of this repository, public keys and all — see
//! certs/README.md), so the binary works from any directory, including inside a container.

mod upstreams;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigErrors};
use crate::run::{self, RunError};

/// The page served at `/` on both listeners.
pub(crate) const PAGE: &str = include_str!("page.html");

/// The dev server certificate (`localhost`, `127.0.0.1`, `::1`) and its key, signed by [`DEV_CA`].
const DEV_CERT: &str = include_str!("../../certs/server.pem");
const DEV_KEY: &str = include_str!("../../certs/server-key.pem");
/// The dev CA, written next to the config so that `curl --cacert` has a file to point at.
const DEV_CA: &str = include_str!("../../certs/ca.pem");

/// How long open tunnels may live on after Ctrl-C. Short, because a demo's tunnels are browser
/// tabs that would otherwise hold the exit for the production default of 30 s.
const DRAIN_TIMEOUT: &str = "5s";

/// Where the demo listens. [`Default`] is SPEC §1's fixed set; tests pass port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoAddrs {
    /// Plain listener: the page over HTTP/1.1 and `ws://`.
    pub http: SocketAddr,
    /// TLS listener with h2 and h3: the page over h2 or HTTP/3 and `wss://` over h2 (RFC 8441),
    /// HTTP/3 (RFC 9220) or HTTP/1.1.
    pub https: SocketAddr,
    /// Admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin: SocketAddr,
}

impl Default for DemoAddrs {
    fn default() -> Self {
        DemoAddrs {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Why the demo could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The temp directory for the config and certificates could not be written.
    #[error("cannot write the demo config to {path}: {source}")]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An in-process upstream could not bind its loopback port.
    #[error("cannot start the demo's {name} upstream: {source}")]
    Upstream {
        name: &'static str,
        source: std::io::Error,
    },
    /// The generated config did not validate: a bug in this module, shown in full.
    #[error("the demo config is invalid:\n{0}")]
    Config(ConfigErrors),
    /// The gateway itself failed (e.g. a port already in use). Boxed: it is large and rare.
    #[error(transparent)]
    Run(Box<RunError>),
}

/// The addresses of the in-process upstreams, once bound.
#[derive(Debug, Clone, Copy)]
struct UpstreamAddrs {
    echo: SocketAddr,
    chat: SocketAddr,
    web: SocketAddr,
}

/// Runs the demo until Ctrl-C (or SIGTERM) has drained it. Prints the URLs to try on stdout.
pub async fn run(addrs: DemoAddrs) -> Result<(), DemoError> {
    let ups = UpstreamAddrs {
        echo: upstreams::spawn_echo()
            .await
            .map_err(|source| DemoError::Upstream {
                name: "echo.v1",
                source,
            })?,
        chat: upstreams::spawn_chat()
            .await
            .map_err(|source| DemoError::Upstream {
                name: "chat.v1",
                source,
            })?,
        web: upstreams::spawn_web()
            .await
            .map_err(|source| DemoError::Upstream {
                name: "web",
                source,
            })?,
    };
    let dir = TempDir::create()?;
    dir.write("server.pem", DEV_CERT)?;
    dir.write("server-key.pem", DEV_KEY)?;
    dir.write("ca.pem", DEV_CA)?;
    let config_path = dir.write("switchyard-demo.toml", &config_toml(&addrs, &ups))?;
    let config = config::load(&config_path).map_err(DemoError::Config)?;
    print!("{}", banner(&addrs, &dir.path.join("ca.pem"), &config_path));
    run::run(config)
        .await
        .map_err(|e| DemoError::Run(Box::new(e)))
}

/// The gateway config for the demo: an ordinary SPEC §2 file, so `switchyard check` accepts it
/// and operators can copy it. Cert paths are relative to the file (SPEC §2).
fn config_toml(addrs: &DemoAddrs, ups: &UpstreamAddrs) -> String {
    format!(
        r#"# Written by `switchyard demo`; the upstreams are in-process on loopback.

[[listener]]
bind = "{http}"

[[listener]]
bind = "{https}"
http2 = true
http3 = true
tls = {{ cert = "server.pem", key = "server-key.pem" }}

[admin]
bind = "{admin}"

[limits]
drain_timeout = "{DRAIN_TIMEOUT}"

[upstreams.echo]
servers = ["{echo}"]

[upstreams.chat]
servers = ["{chat}"]

[upstreams.web]
servers = ["{web}"]

# The page, on both listeners (over h2 on the TLS one, so that a browser can then open its
# WebSocket over that same h2 connection, RFC 8441).
[[route]]
path = "/"
http = "web"

[[route]]
path = "/ws"
select = "client"

[[route.subprotocol]]
name = "echo.v1"
upstream = "echo"

[[route.subprotocol]]
name = "chat.v1"
upstream = "chat"
"#,
        http = addrs.http,
        https = addrs.https,
        admin = addrs.admin,
        echo = ups.echo,
        chat = ups.chat,
        web = ups.web,
    )
}

/// What to try, printed once the config is valid.
fn banner(addrs: &DemoAddrs, ca: &Path, config: &Path) -> String {
    let (http, https, admin) = (addrs.http, addrs.https, addrs.admin);
    let ca = ca.display();
    let mut s = String::new();
    let _ = writeln!(s, "switchyard demo");
    let _ = writeln!(
        s,
        "  page, HTTP/1.1 + ws://      http://{http}/   (pick a subprotocol, connect, send)"
    );
    let _ = writeln!(
        s,
        "  page, h2 + wss:// over h2   https://{https}/   (dev certificate: accept the warning, or trust {ca})"
    );
    let _ = writeln!(
        s,
        "  WebSocket endpoint          ws://{http}/ws  wss://{https}/ws   subprotocols echo.v1, chat.v1"
    );
    let _ = writeln!(
        s,
        "  admin                       http://{admin}/healthz  /readyz  /metrics"
    );
    let _ = writeln!(s, "  config                      {}", config.display());
    let _ = writeln!(s, "try:");
    let _ = writeln!(s, "  websocat --protocol chat.v1 ws://{http}/ws");
    let _ = writeln!(s, "  websocat --protocol echo.v1 ws://{http}/ws");
    let _ = writeln!(s, "  curl --cacert {ca} https://{https}/");
    let _ = writeln!(s, "  open http://{http}/ or https://{https}/ in a browser");
    if [http, https, admin].iter().any(|a| a.port() == 0) {
        let _ = writeln!(
            s,
            "(port 0 was asked for: the `listening` log events carry the real ports)"
        );
    }
    let _ = writeln!(
        s,
        "Ctrl-C drains open connections (at most {DRAIN_TIMEOUT}) and exits."
    );
    s
}

/// A private directory for the generated files, removed when the demo ends.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `create_dir` (not `create_dir_all`) so that a directory someone else prepared is never
    /// reused; the random suffix makes a clash unlikely and the retry makes it harmless.
    fn create() -> Result<TempDir, DemoError> {
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let path = base.join(format!(
                "switchyard-demo-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) => last = Some((path, e)),
            }
        }
        let (path, source) = last.unwrap_or_else(|| {
            (
                base,
                std::io::Error::other("no temp directory name was tried"),
            )
        });
        Err(DemoError::Files { path, source })
    }

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf, DemoError> {
        let path = self.path.join(name);
        std::fs::write(&path, contents).map_err(|source| DemoError::Files {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> UpstreamAddrs {
        UpstreamAddrs {
            echo: SocketAddr::from(([127, 0, 0, 1], 1)),
            chat: SocketAddr::from(([127, 0, 0, 1], 2)),
            web: SocketAddr::from(([127, 0, 0, 1], 3)),
        }
    }

    /// The generated config passes the same validation as `switchyard check`, with the dev
    /// certificate and key as they are written at run time.
    #[test]
    fn generated_config_validates() {
        let dir = TempDir::create().expect("temp dir");
        dir.write("server.pem", DEV_CERT).expect("cert");
        dir.write("server-key.pem", DEV_KEY).expect("key");
        let path = dir
            .write(
                "switchyard-demo.toml",
                &config_toml(&DemoAddrs::default(), &ups()),
            )
            .expect("config");
        let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listeners.len(), 2);
        assert!(config.listeners[0].tls.is_none());
        assert!(config.listeners[1].tls.is_some());
        assert!(config.listeners[1].http2);
        assert!(config.listeners[1].http3);
        assert_eq!(config.routes.len(), 2);
        let dir_path = dir.path.clone();
        drop(dir);
        assert!(!dir_path.exists(), "temp dir removed on drop");
    }

    #[test]
    fn default_addrs_are_the_spec_ports() {
        let a = DemoAddrs::default();
        assert_eq!(a.http.to_string(), "127.0.0.1:8080");
        assert_eq!(a.https.to_string(), "127.0.0.1:8443");
        assert_eq!(a.admin.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn banner_names_every_url_and_the_websocat_line() {
        let b = banner(
            &DemoAddrs::default(),
            Path::new("/t/ca.pem"),
            Path::new("/t/c.toml"),
        );
        for want in [
            "http://127.0.0.1:8080/",
            "https://127.0.0.1:8443/",
            "ws://127.0.0.1:8080/ws",
            "wss://127.0.0.1:8443/ws",
            "http://127.0.0.1:9090/healthz",
            "websocat --protocol chat.v1 ws://127.0.0.1:8080/ws",
            "curl --cacert /t/ca.pem https://127.0.0.1:8443/",
        ] {
            assert!(b.contains(want), "banner lacks {want:?}:\n{b}");
        }
        assert!(!b.contains("port 0"));
    }
}
