//! When an h2 connection has nothing left to do (SPEC §6 "h2 limits"): hyper keeps an h2
//! connection open for as long as the client does, so the listener counts the connection's open
//! streams here and closes it when [`OpenStreams::idle`] says so. A stream counts from the
//! service call (its HEADERS arrived) until its response body ends or its tunnel ends.
//! Knows no hyper: the listener decides what closing means.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The open streams of one connection; clones share the count. One per connection.
#[derive(Debug, Clone)]
pub(crate) struct OpenStreams(Arc<watch::Sender<Activity>>);

#[derive(Debug, Clone, Copy)]
struct Activity {
    open: usize,
    /// Whether any stream was ever opened: before the first, the handshake budget applies.
    requested: bool,
    /// When `open` last dropped to zero.
    idle_since: Instant,
}

/// One open stream; dropping it closes it in the count.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<watch::Sender<Activity>>);

/// Why [`OpenStreams::idle`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// No request arrived within the handshake budget.
    NoRequest,
    /// Requests came, but none has been open for the keep-alive timeout.
    KeepaliveExpired,
}

impl Default for OpenStreams {
    fn default() -> Self {
        OpenStreams(Arc::new(watch::Sender::new(Activity {
            open: 0,
            requested: false,
            idle_since: Instant::now(),
        })))
    }
}

impl OpenStreams {
    /// Counts one more open stream until the guard is dropped.
    pub(crate) fn open(&self) -> StreamGuard {
        self.0.send_modify(|a| {
            a.open += 1;
            a.requested = true;
        });
        StreamGuard(Arc::clone(&self.0))
    }

    /// Resolves once no stream has been opened by `first_by`, or, after the first, once no
    /// stream has been open for `keepalive` (counted from the later of the last stream's end
    /// and this call). Pending for as long as a stream is open.
    pub(crate) async fn idle(&self, first_by: Instant, keepalive: Duration) -> Idle {
        let called = Instant::now();
        let mut changes = self.0.subscribe();
        loop {
            let now = *changes.borrow_and_update();
            let (deadline, why) = match now {
                Activity { open: 1.., .. } => {
                    // Cannot fail: `self` holds the sender.
                    let _ = changes.changed().await;
                    continue;
                }
                Activity {
                    requested: false, ..
                } => (first_by, Idle::NoRequest),
                Activity { idle_since, .. } => {
                    (idle_since.max(called) + keepalive, Idle::KeepaliveExpired)
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return why,
                _ = changes.changed() => {}
            }
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.open -= 1;
            if a.open == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: Duration = Duration::from_secs(60);

    /// Whether `idle` resolves within `within` of paused time (and with what).
    async fn idle_within(
        streams: &OpenStreams,
        first_by: Instant,
        within: Duration,
    ) -> Option<Idle> {
        tokio::time::timeout(within, streams.idle(first_by, KEEPALIVE))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_by_the_budget() {
        let streams = OpenStreams::default();
        let first_by = Instant::now() + Duration::from_secs(10);
        let t0 = Instant::now();
        assert_eq!(
            idle_within(&streams, first_by, KEEPALIVE * 2).await,
            Some(Idle::NoRequest)
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_holds_the_connection_then_keepalive_runs_from_its_end() {
        let streams = OpenStreams::default();
        let first_by = Instant::now() + Duration::from_secs(10);
        let guard = streams.open();
        let second = streams.open();
        // Far past the budget and the keep-alive timeout: a stream is open.
        assert_eq!(idle_within(&streams, first_by, KEEPALIVE * 3).await, None);
        drop(second);
        assert_eq!(idle_within(&streams, first_by, KEEPALIVE * 3).await, None);
        drop(guard);
        let closed = Instant::now();
        assert_eq!(
            idle_within(&streams, first_by, KEEPALIVE * 2).await,
            Some(Idle::KeepaliveExpired)
        );
        assert_eq!(closed.elapsed(), KEEPALIVE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_opened_while_waiting_restarts_the_wait() {
        let streams = OpenStreams::default();
        let first_by = Instant::now() + Duration::from_secs(10);
        drop(streams.open());
        let t0 = Instant::now();
        let watcher = {
            let streams = streams.clone();
            tokio::spawn(async move { streams.idle(first_by, KEEPALIVE).await })
        };
        tokio::time::sleep(KEEPALIVE / 2).await;
        drop(streams.open());
        assert_eq!(watcher.await.unwrap(), Idle::KeepaliveExpired);
        assert_eq!(t0.elapsed(), KEEPALIVE / 2 + KEEPALIVE);
        // Long idle already: a new wait still gets its full time.
        let t1 = Instant::now();
        assert_eq!(
            streams.idle(first_by, Duration::from_secs(1)).await,
            Idle::KeepaliveExpired
        );
        assert_eq!(t1.elapsed(), Duration::from_secs(1));
    }
}
