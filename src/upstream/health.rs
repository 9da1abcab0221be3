//! Active health checks (`health = { path = "/health", interval = "5s" }`) and the start-up
//! check that upstream host names resolve.
//!
//! One task per server of every upstream with `health`. Every `interval` it connects as traffic
//! would (TCP, then TLS for a TLS upstream) within `upstream_connect_timeout`; with a `path` it
//! then sends `GET path` (HTTP/1.1, `Host` = the server, `Connection: close`) and wants a 2xx or
//! 3xx head within `upstream_handshake_timeout`. A failed check takes the server out of rotation
//! until a check passes; a passing check puts it back and also ends any passive backoff (see
//! [`super::pool`] for how the two verdicts combine). Only changes of verdict are logged.
//!
//! This room knows pools, servers and dialing only, never [`super::Upstreams`].
//!
//! The tasks belong to one configuration generation ([`Checks`]): they stop when it is replaced
//! on reload, when it is dropped, or when a drain begins. Nothing here ever panics on what a
//! server sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use super::dial::{self, Connect};
use super::pool::{Pool, Server};
use crate::config::{Config, ServerAddr};
use crate::shutdown::Shutdown;

/// Bounds on one check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// TCP (and TLS) connect: `upstream_connect_timeout`.
    pub(crate) connect: Duration,
    /// From the request to the response head: `upstream_handshake_timeout`.
    pub(crate) response: Duration,
}

/// The running check tasks of one configuration generation. Dropping it stops them.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Checks {
    /// Spawns one task per server of every pool that has `health`. Calling it again while the
    /// tasks run starts nothing new.
    pub(crate) fn start<'a>(
        &self,
        pools: impl IntoIterator<Item = &'a Arc<Pool>>,
        timeouts: Timeouts,
        shutdown: &Shutdown,
    ) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        for pool in pools {
            if pool.health_check().is_none() {
                continue;
            }
            for server in pool.servers() {
                let task = check_loop(
                    Arc::clone(pool),
                    Arc::clone(server),
                    timeouts,
                    shutdown.clone(),
                );
                tasks.push(tokio::spawn(task).abort_handle());
            }
        }
    }

    /// Stops every task; idempotent.
    pub(crate) fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks `server` every interval until a drain begins (or the task is aborted).
async fn check_loop(pool: Arc<Pool>, server: Arc<Server>, timeouts: Timeouts, shutdown: Shutdown) {
    let Some(check) = pool.health_check().cloned() else {
        return;
    };
    let mut ticker = tokio::time::interval(check.interval);
    // A check slower than the interval delays the next one instead of bunching them up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let draining = shutdown.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => return,
            _ = ticker.tick() => {}
        }
        let verdict = tokio::select! {
            () = &mut draining => return,
            v = probe(&pool, &server, check.path.as_deref(), timeouts) => v,
        };
        let (upstream, label) = (pool.name(), server.label.as_str());
        match verdict {
            Ok(()) => {
                if server.check_passed() {
                    tracing::info!(
                        upstream,
                        server = label,
                        "health check passed: server back in rotation"
                    );
                }
            }
            Err(why) => {
                if server.check_failed() {
                    tracing::warn!(upstream, server = label, reason = %why, "health check failed: server out of rotation");
                } else {
                    tracing::debug!(upstream, server = label, reason = %why, "health check failed again");
                }
            }
        }
    }
}

/// One check of `server`: a connect, and with `path` an HTTP/1.1 GET answered 2xx or 3xx.
/// `Err` says why it failed, for the log.
pub(crate) async fn probe(
    pool: &Pool,
    server: &Server,
    path: Option<&str>,
    timeouts: Timeouts,
) -> Result<(), String> {
    let dial = pool.dialer().connect(server.addr(), None);
    let stream = match tokio::time::timeout(timeouts.connect, dial).await {
        Err(_) => return Err(format!("connect timed out after {:?}", timeouts.connect)),
        Ok(Err(e)) => return Err(format!("connect failed: {e}")),
        Ok(Ok(stream)) => stream,
    };
    let Some(path) = path else {
        return Ok(());
    };
    let mut request = Request::get(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the check request: {e}"))?;
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&server.label) {
        headers.insert(HOST, host);
    }
    // RFC 9112 §9.6: one request, then the connection is closed.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static("switchyard-health-check"),
    );
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let answer = sender.send_request(request);
        tokio::pin!(answer, conn);
        // The connection task runs in this future (no spawned task to outlive the check). If it
        // ends first, the answer is either already delivered or lost: `answer` says which.
        let response = tokio::select! {
            biased;
            r = &mut answer => r,
            _ = &mut conn => answer.await,
        };
        response
            .map(|r| r.status())
            .map_err(|e| format!("no valid HTTP response: {e}"))
    };
    match tokio::time::timeout(timeouts.response, exchange).await {
        Err(_) => Err(format!("no response within {:?}", timeouts.response)),
        Ok(Err(why)) => Err(why),
        Ok(Ok(status)) if healthy(status) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {}", status.as_u16())),
    }
}

/// 2xx and 3xx mean healthy: a redirect still proves the server is up and answering.
fn healthy(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// Logs a warning for every upstream server whose host name does not resolve now. Names are
/// resolved again at every connect, so this only tells the operator early; it changes nothing.
pub(crate) async fn warn_unresolved(config: Config, within: Duration) {
    let names: Vec<(String, ServerAddr)> = config
        .upstreams
        .values()
        .flat_map(|u| u.servers.iter().map(|s| (u.name.clone(), s.clone())))
        .filter(|(_, s)| s.host.parse::<std::net::IpAddr>().is_err())
        .collect();
    for (name, server) in names {
        let lookup = tokio::net::lookup_host((server.host.as_str(), server.port));
        let problem = match tokio::time::timeout(within, lookup).await {
            Err(_) => Some(format!("no answer within {within:?}")),
            Ok(Err(e)) => Some(e.to_string()),
            Ok(Ok(mut addrs)) => addrs.next().is_none().then(|| "no addresses".to_owned()),
        };
        if let Some(problem) = problem {
            tracing::warn!(
                event = "upstream_unresolved",
                upstream = %name,
                server = %dial::format_addr(&server),
                error = %problem,
                "upstream server name does not resolve; connects to it will fail until it does"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HealthCheck, UpstreamConfig};
    use crate::metrics::Metrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response: Duration::from_secs(2),
    };

    fn pool_for(port: u16, path: Option<&str>) -> Pool {
        let cfg = UpstreamConfig {
            name: "p".into(),
            servers: vec![ServerAddr {
                host: "127.0.0.1".into(),
                port,
            }],
            balance: Balance::RoundRobin,
            tls: None,
            send_proxy_protocol: None,
            health: Some(HealthCheck {
                path: path.map(str::to_owned),
                interval: Duration::from_secs(1),
            }),
        };
        Pool::new(&cfg, &Metrics::default()).unwrap()
    }

    /// A server answering every connection's request with `answer`; returns its port and the
    /// request heads it read.
    async fn http_server(answer: &'static [u8]) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = s.write_all(answer).await;
                });
            }
        });
        (port, heads)
    }

    async fn probe_port(port: u16, path: Option<&str>) -> Result<(), String> {
        let pool = pool_for(port, path);
        let server = Arc::clone(&pool.servers()[0]);
        tokio::time::timeout(
            Duration::from_secs(10),
            probe(&pool, &server, path, TIMEOUTS),
        )
        .await
        .expect("probe is bounded by its own timeouts")
    }

    fn refused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn tcp_check_is_a_connect() {
        let (port, heads) = http_server(b"").await;
        assert_eq!(probe_port(port, None).await, Ok(()));
        assert!(
            heads.lock().unwrap().is_empty(),
            "a TCP check sends nothing"
        );
        assert!(probe_port(refused_port(), None).await.is_err());
    }

    #[tokio::test]
    async fn http_check_statuses() {
        // (response, healthy)
        let rows: &[(&'static [u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
            (
                b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nfail", false),
            (b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n", false),
            (b"not http at all\r\n\r\n", false),
            (b"", false),
        ];
        for (answer, want) in rows {
            let (port, heads) = http_server(answer).await;
            let got = probe_port(port, Some("/health")).await;
            assert_eq!(
                got.is_ok(),
                *want,
                "{:?}: {got:?}",
                String::from_utf8_lossy(answer)
            );
            let heads = heads.lock().unwrap();
            let head = heads
                .first()
                .expect("the check sent a request")
                .to_ascii_lowercase();
            assert!(head.starts_with("get /health http/1.1\r\n"), "{head}");
            assert!(
                head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
                "{head}"
            );
            assert!(head.contains("connection: close\r\n"), "{head}");
        }
    }

    #[tokio::test]
    async fn silent_server_fails_within_the_response_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let pool = pool_for(port, Some("/health"));
        let short = Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_millis(200),
        };
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            probe(&pool, &pool.servers()[0], Some("/health"), short),
        )
        .await
        .unwrap();
        assert!(got.unwrap_err().contains("no response"));
    }

    #[tokio::test]
    async fn checks_stop_when_told() {
        let (port, heads) = http_server(b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n").await;
        let pool = Arc::new(pool_for(port, Some("/health")));
        let checks = Checks::default();
        let shutdown = Shutdown::default();
        checks.start([&pool], TIMEOUTS, &shutdown);
        let handles = checks.tasks.lock().unwrap().clone();
        assert_eq!(handles.len(), 1, "one task per server");
        // The first check runs at once and takes the server out.
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.servers()[0].in_rotation() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first check took the failing server out");
        assert!(!heads.lock().unwrap().is_empty());
        checks.stop();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !handles.iter().all(AbortHandle::is_finished) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("every check task ended after stop");
    }

    #[tokio::test]
    async fn checks_end_when_a_drain_begins() {
        let (port, _heads) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let pool = Arc::new(pool_for(port, Some("/health")));
        let checks = Checks::default();
        let shutdown = Shutdown::default();
        checks.start([&pool], TIMEOUTS, &shutdown);
        let handles = checks.tasks.lock().unwrap().clone();
        let drain = shutdown.clone();
        tokio::spawn(async move { drain.drain(Duration::from_secs(1)).await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while !handles.iter().all(AbortHandle::is_finished) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("check tasks ended when the drain began");
    }
}
