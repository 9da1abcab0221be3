//! Ordinary requests for a route's `http` upstream: one keep-alive client per pool whose
//! connector picks and dials servers exactly as the upgrades do, and the answer timeout that
//! restarts on every request body chunk.
//!
//! Affinity (`balance = "hash"`): hyper-util's pool hands its connector nothing of a request
//! but the URI's authority, and reuses idle connections by that authority. So a request with
//! an affinity key is picked here, before the client sees it, and its authority names the
//! pick: [`affine_authority`] of its first two servers in hash order. Connections are then
//! pooled per (first, second) pick, at most N·(N−1) groups; a request reuses a connection to
//! its own server, and the connector fails over to the second, then the others in rotation.
//! A connection that reached any server but the first is used for that one request only
//! (poisoned), so a key comes back to its server as soon as the server does. Requests without
//! a key keep [`HTTP_AUTHORITY`] and the pool's round robin over shared connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::pool::Pool;
use crate::error::Reject;
use crate::io::UpstreamStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an idle keep-alive connection to an `http` upstream is kept for reuse.
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The authority of every request URI given to a pool's client. Only the connection pool sees
/// it; the upstream gets the origin form and the client's `Host`.
pub(crate) const HTTP_AUTHORITY: &str = "upstream";

/// A request body to forward: hyper's `Incoming` on HTTP/1.1 and h2, the request stream's DATA
/// on HTTP/3, boxed so that one client serves every front.
pub(crate) type ForwardBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The keep-alive client of one pool: hyper-util's connection pool over [`PoolConnector`].
pub(crate) type HttpClient = Client<PoolConnector, ProgressBody>;

/// How many servers of a request's hash order its pool key names (see the module docs): the
/// first, and the second to fail over to; more would split the idle connections into more
/// groups for a failover that then needs two servers down at once.
const AFFINE_DEPTH: usize = 2;

/// The pool key of a request whose key picked the servers `order` (indices, hash order):
/// `s0.s2.upstream` for first 0, then 2. `None` when no server is up (the connector's
/// ordinary path answers 502 at once).
pub(crate) fn affine_authority(order: &[usize]) -> Option<String> {
    if order.is_empty() {
        return None;
    }
    let mut authority = String::new();
    for i in order.iter().take(AFFINE_DEPTH) {
        authority.push_str(&format!("s{i}."));
    }
    authority.push_str(HTTP_AUTHORITY);
    Some(authority)
}

/// The server indices an [`affine_authority`] names; `None` for any other host.
fn affine_order(host: &str) -> Option<Vec<usize>> {
    let picks = host.strip_suffix(HTTP_AUTHORITY)?.strip_suffix('.')?;
    picks
        .split('.')
        .map(|s| s.strip_prefix('s')?.parse().ok())
        .collect()
}

/// The keep-alive client of `pool`; a new connection must connect within `connect_timeout`.
pub(crate) fn client(pool: &Arc<Pool>, connect_timeout: Duration) -> HttpClient {
    let connector = PoolConnector {
        pool: Arc::clone(pool),
        timeout: connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        // The gateway sets Host itself (the client's, as for upgrades).
        .set_host(false)
        .pool_idle_timeout(HTTP_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Sends `request` over `client` (the pool `name`'s) and returns the answer as soon as its head
/// arrives; both bodies stream. See [`super::Upstreams::forward`] for the failures.
pub(crate) async fn forward(
    client: &HttpClient,
    name: &str,
    mut request: Request<ForwardBody>,
    affinity: Option<String>,
    stall_limit: Duration,
) -> Result<Response<Incoming>, Reject> {
    if let Some(authority) = affinity {
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.authority = Some(authority.parse().map_err(|_| Reject::UpstreamUnreachable)?);
        *request.uri_mut() = Uri::from_parts(uri).map_err(|_| Reject::UpstreamUnreachable)?;
    }
    let progress = Arc::new(Progress::new());
    let request = request.map(|body| ProgressBody {
        inner: body,
        progress: Arc::clone(&progress),
    });
    tokio::select! {
        answer = client.request(request) => answer.map_err(|e| {
            let reject = connect_reject(&e).unwrap_or(Reject::UpstreamUnreachable);
            if reject == Reject::UpstreamUnreachable || reject == Reject::UpstreamTimeout {
                tracing::warn!(upstream = name, error = %e, error_source = ?std::error::Error::source(&e), "http upstream failed");
            }
            reject
        }),
        () = progress.stalled_for(stall_limit) => Err(Reject::UpstreamTimeout),
    }
}

/// The connector of a pool's keep-alive client: every new connection goes to a server chosen by
/// the pool's balance, with failover and down-marking exactly as for upgrades. The client keys
/// its idle connections by the request URI's authority, which the gateway keeps constant per pool
/// ([`HTTP_AUTHORITY`]), so reuse is per pool and the server choice stays here.
#[derive(Debug, Clone)]
pub(crate) struct PoolConnector {
    pool: Arc<Pool>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for PoolConnector {
    type Response = TokioIo<PooledStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let pool = Arc::clone(&self.pool);
        let timeout = self.timeout;
        let preferred = dst.host().and_then(affine_order);
        Box::pin(async move {
            let connected = match preferred {
                // Requests without a key share connections, so no one request picks them.
                None => pool
                    .connect_any(timeout, None, None)
                    .await
                    .map(|(stream, _)| (stream, true)),
                Some(order) => pool.connect_preferring(timeout, &order).await,
            };
            match connected {
                Ok((stream, reusable)) => Ok(TokioIo::new(PooledStream { stream, reusable })),
                Err(reject) => Err(ConnectError(reject)),
            }
        })
    }
}

/// A connection of a pool's keep-alive client; one that must not be reused (a failover away
/// from the server its pool key names) says so to hyper-util's pool.
#[derive(Debug)]
pub(crate) struct PooledStream {
    stream: UpstreamStream,
    reusable: bool,
}

impl Connection for PooledStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if !self.reusable {
            connected.poison();
        }
        connected
    }
}

impl AsyncRead for PooledStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Why a pool's connector gave up: the same 502/504 decision as for upgrades.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(Reject);

/// The connector's verdict inside a client error, if the error is a failed connect.
fn connect_reject(error: &(dyn std::error::Error + 'static)) -> Option<Reject> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(ConnectError(reject)) = e.downcast_ref::<ConnectError>() {
            return Some(reject.clone());
        }
        cause = e.source();
    }
    None
}

/// When a forwarded request last made progress: sent a body chunk, or started.
#[derive(Debug)]
struct Progress {
    base: tokio::time::Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once `limit` has passed without progress.
    async fn stalled_for(&self, limit: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream, streamed frame by frame (never buffered
    /// whole); each frame the upstream takes counts as progress for the answer timeout.
    #[derive(Debug)]
    pub(crate) struct ProgressBody {
        #[pin]
        inner: ForwardBody,
        progress: Arc<Progress>,
    }
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if frame.is_ready() {
            this.progress.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::time::Instant;

    #[test]
    fn affine_authorities_name_the_first_two_picks() {
        // (order, authority)
        let rows: &[(&[usize], Option<&str>)] = &[
            (&[], None),
            (&[3], Some("s3.upstream")),
            (&[0, 2], Some("s0.s2.upstream")),
            (&[2, 0, 1], Some("s2.s0.upstream")),
        ];
        for (order, want) in rows {
            let got = affine_authority(order);
            assert_eq!(got.as_deref(), *want, "{order:?}");
            if let Some(authority) = got {
                let uri: Uri = format!("http://{authority}/x").parse().unwrap();
                let back = affine_order(uri.host().unwrap()).unwrap();
                assert_eq!(back, order[..order.len().min(AFFINE_DEPTH)], "{order:?}");
            }
        }
        for host in [
            HTTP_AUTHORITY,
            "s0upstream",
            "x0.upstream",
            "s.upstream",
            "s0.other",
        ] {
            assert_eq!(affine_order(host), None, "{host}");
        }
    }

    #[test]
    fn connect_errors_keep_the_502_504_decision() {
        let timeout = ConnectError(Reject::UpstreamTimeout);
        assert_eq!(connect_reject(&timeout), Some(Reject::UpstreamTimeout));
        let other = std::io::Error::other("reset");
        assert_eq!(connect_reject(&other), None);
    }

    /// Polls `stalled` once; whether it completed.
    fn fired(stalled: Pin<&mut impl Future<Output = ()>>) -> bool {
        stalled.now_or_never().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn stall_timer_restarts_on_progress() {
        let progress = Progress::new();
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let stalled = progress.stalled_for(limit);
        tokio::pin!(stalled);
        // Progress every 100ms for 600ms keeps the timer from firing.
        for _ in 0..6 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(!fired(stalled.as_mut()), "stalled while making progress");
            progress.touch();
        }
        // Once progress stops, it fires exactly `limit` after the last touch, not before.
        tokio::time::advance(Duration::from_millis(299)).await;
        assert!(!fired(stalled.as_mut()), "fired before the limit");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(fired(stalled.as_mut()), "did not fire at the limit");
        assert_eq!(started.elapsed(), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn stall_timer_fires_after_the_limit_without_progress() {
        let progress = Progress::new();
        let started = Instant::now();
        progress.stalled_for(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
