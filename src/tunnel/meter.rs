//! Progress bookkeeping shared by every copy engine and the tunnel policy: which side is which,
//! which way bytes flow, how many moved, and when a byte last moved (for the idle deadline).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::ByteCounters;

/// One end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Upstream,
}

/// One direction of the tunnel; `Up` reads the client and writes the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Up,
    Down,
}

impl Direction {
    /// The side this direction reads from.
    pub(super) fn source(self) -> Side {
        match self {
            Direction::Up => Side::Client,
            Direction::Down => Side::Upstream,
        }
    }

    /// The side this direction writes to.
    pub(super) fn sink(self) -> Side {
        match self {
            Direction::Up => Side::Upstream,
            Direction::Down => Side::Client,
        }
    }
}

/// Progress shared between a copy engine and the policy: byte totals and the last activity time.
/// Atomics (not `Cell`s) so the tunnel future stays `Send`; all accesses are `Relaxed`.
pub(super) struct Meter<'a> {
    started: Instant,
    /// Nanoseconds after `started` at which a byte last moved.
    last_nanos: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    counters: Option<&'a ByteCounters>,
}

impl<'a> Meter<'a> {
    /// A meter starting now; `counters` (process-wide, live) are bumped along with it.
    pub(super) fn new(counters: Option<&'a ByteCounters>) -> Self {
        Meter {
            started: Instant::now(),
            last_nanos: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            counters,
        }
    }

    /// When the meter was created (the tunnel started).
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Bytes delivered client -> upstream so far.
    pub(super) fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Bytes delivered upstream -> client so far.
    pub(super) fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// Something moved now (a read returned bytes); pushes the idle deadline back.
    pub(super) fn touch(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    /// When a byte last moved (the start, if none has).
    pub(super) fn last_activity(&self) -> Instant {
        let since = Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed));
        self.started.checked_add(since).unwrap_or(self.started)
    }

    /// `n` bytes were delivered in direction `dir`.
    pub(super) fn delivered(&self, dir: Direction, n: usize) {
        let n = n as u64;
        match dir {
            Direction::Up => {
                self.up.fetch_add(n, Ordering::Relaxed);
                if let Some(c) = self.counters {
                    c.up.fetch_add(n, Ordering::Relaxed);
                }
            }
            Direction::Down => {
                self.down.fetch_add(n, Ordering::Relaxed);
                if let Some(c) = self.counters {
                    c.down.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deliveries count per direction, in the tunnel and in the shared counters, and move the
    /// last-activity time the idle deadline reads (paused clock).
    #[tokio::test(start_paused = true)]
    async fn deliveries_count_and_move_the_last_activity() {
        let counters = ByteCounters::new();
        let meter = Meter::new(Some(&counters));
        assert_eq!(meter.last_activity(), meter.started());
        tokio::time::advance(Duration::from_secs(5)).await;
        meter.delivered(Direction::Up, 3);
        assert_eq!(
            meter.last_activity(),
            meter.started() + Duration::from_secs(5)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        meter.delivered(Direction::Down, 4);
        assert_eq!(
            meter.last_activity(),
            meter.started() + Duration::from_secs(7)
        );
        assert_eq!((meter.bytes_up(), meter.bytes_down()), (3, 4));
        assert_eq!((counters.up(), counters.down()), (3, 4));
    }

    #[test]
    fn directions_read_their_source_and_write_their_sink() {
        assert_eq!(
            (Direction::Up.source(), Direction::Up.sink()),
            (Side::Client, Side::Upstream)
        );
        assert_eq!(
            (Direction::Down.source(), Direction::Down.sink()),
            (Side::Upstream, Side::Client)
        );
    }
}
