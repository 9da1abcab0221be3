//! Graceful shutdown: stop accepting, let open connections and tunnels finish, and give up at the
//! drain deadline (SPEC §7). After `hyper::upgrade::on` the HTTP connection future is gone, so
//! tunnels register here themselves ([`Shutdown::track`]) to be waited for.
//!
//! A drain after a SIGUSR2 hand-over (SPEC §11) is the same drain, marked first
//! ([`Shutdown::hand_over`]) so that inspected tunnels say `"restart"` rather than "going away".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Shared shutdown state: a "draining" flag, a "deadline passed" flag, whether the drain follows a
/// hand-over, and a count of tracked connections and tunnels.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    draining: watch::Sender<bool>,
    handed_over: Arc<AtomicBool>,
    expired: watch::Sender<bool>,
    live: Arc<Live>,
}

#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    zero: Notify,
}

/// Held by a connection or tunnel while it runs; the drain waits for all of them.
#[derive(Debug)]
pub(crate) struct Tracked {
    live: Arc<Live>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.live.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.live.zero.notify_waiters();
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: watch::channel(false).0,
            handed_over: Arc::default(),
            expired: watch::channel(false).0,
            live: Arc::default(),
        }
    }
}

impl Shutdown {
    /// Counts a connection or tunnel until the returned guard is dropped.
    pub(crate) fn track(&self) -> Tracked {
        self.live.count.fetch_add(1, Ordering::AcqRel);
        Tracked {
            live: Arc::clone(&self.live),
        }
    }

    /// Whether a drain has begun (`/readyz` answers 503).
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Marks the coming drain as the old process's after a hand-over: call before [`drain`](Self::drain),
    /// so that whoever wakes from [`draining`](Self::draining) already sees it.
    pub(crate) fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// Whether the drain (begun or coming) follows a hand-over to a new process.
    pub(crate) fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Completes when a drain begins: listeners stop accepting.
    pub(crate) async fn draining(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Completes when the drain deadline has passed: open tunnels are closed with `drain`.
    pub(crate) async fn expired(&self) {
        let mut rx = self.expired.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Begins a drain and waits until every tracked connection and tunnel has ended or `grace` has
    /// passed; then tells the remaining ones to close and waits (bounded) for them to do so.
    pub(crate) async fn drain(&self, grace: Duration) {
        self.draining.send_replace(true);
        if tokio::time::timeout(grace, self.all_ended()).await.is_err() {
            self.expired.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), self.all_ended()).await;
        }
    }

    async fn all_ended(&self) {
        loop {
            let notified = self.live.zero.notified();
            if self.live.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tracked_work_then_returns() {
        let s = Shutdown::default();
        let t = s.track();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.drain(Duration::from_secs(10)).await });
        s.draining().await;
        assert!(s.is_draining());
        drop(t);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_hand_over_drain_is_marked_before_it_begins() {
        let s = Shutdown::default();
        assert!(!s.is_handed_over());
        let s2 = s.clone();
        let woken = tokio::spawn(async move {
            s2.draining().await;
            s2.is_handed_over()
        });
        s.hand_over();
        tokio::time::timeout(Duration::from_secs(5), s.drain(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(woken.await.unwrap());
    }

    #[tokio::test]
    async fn drain_deadline_expires_lingering_work() {
        let s = Shutdown::default();
        let t = s.track();
        let s2 = s.clone();
        let lingering = tokio::spawn(async move {
            s2.expired().await;
            drop(t);
        });
        tokio::time::timeout(Duration::from_secs(5), s.drain(Duration::from_millis(10)))
            .await
            .unwrap();
        lingering.await.unwrap();
    }
}
