//! Ordinary requests for a route's `http` upstream: one keep-alive client per pool whose
//! connector picks and dials servers exactly as the upgrades do, and the answer timeout that
//! restarts on every request body chunk.

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
    request: Request<ForwardBody>,
    stall_limit: Duration,
) -> Result<Response<Incoming>, Reject> {
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
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let pool = Arc::clone(&self.pool);
        let timeout = self.timeout;
        Box::pin(async move {
            // A connection is shared by many requests, so no one request's key picks it.
            match pool.connect_any(timeout, None, None).await {
                Ok((stream, _)) => Ok(TokioIo::new(stream)),
                Err(reject) => Err(ConnectError(reject)),
            }
        })
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
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
