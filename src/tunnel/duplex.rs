//! What every copy engine shares: driving both directions from one task until both passed
//! their EOF on or one failed, the state of one direction, and how a failure is attributed.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::CopyEnd;
use super::meter::{Direction, Meter, Side};

/// One direction of an engine, reading `R` and writing `W`.
pub(super) trait Pump<R, W> {
    /// Moves bytes until it must wait; `Ready(Ok)` once the source's EOF has been passed on.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut R,
        sink: &mut W,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>>;

    /// The source's EOF has been seen (it may not be passed on yet).
    fn saw_eof(&self) -> bool;
}

/// Drives `up` (client -> upstream) and `down` from one task, no locks, no split halves.
pub(super) async fn both_ways<C, U, P>(
    client: &mut C,
    upstream: &mut U,
    mut up: P,
    mut down: P,
    meter: &Meter<'_>,
) -> CopyEnd
where
    P: Pump<C, U> + Pump<U, C>,
{
    let mut first_eof: Option<Side> = None;
    poll_fn(|cx| {
        let up_done = match Pump::<C, U>::poll_copy(&mut up, cx, client, upstream, meter) {
            Poll::Ready(Err(failure)) => return Poll::Ready(failure.into()),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        if Pump::<C, U>::saw_eof(&up) && first_eof.is_none() {
            first_eof = Some(Side::Client);
        }
        let down_done = match Pump::<U, C>::poll_copy(&mut down, cx, upstream, client, meter) {
            Poll::Ready(Err(failure)) => return Poll::Ready(failure.into()),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        if Pump::<U, C>::saw_eof(&down) && first_eof.is_none() {
            first_eof = Some(Side::Upstream);
        }
        if up_done && down_done {
            Poll::Ready(CopyEnd::BothEof {
                first: first_eof.unwrap_or(Side::Client),
            })
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Where one direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PumpState {
    /// Reading the source and writing the sink.
    Copying,
    /// The source sent EOF; passing it on as a write shutdown (half-close).
    ShuttingDown,
    /// EOF passed on; nothing more to do in this direction.
    Done,
}

/// An I/O failure inside a pump, attributed to the side it happened on.
#[derive(Debug)]
pub(super) struct Failure {
    side: Side,
    error: io::Error,
}

impl Failure {
    /// Reading `dir`'s source failed.
    pub(super) fn reading(dir: Direction, error: io::Error) -> Self {
        Failure {
            side: dir.source(),
            error,
        }
    }

    /// Writing (or shutting down) `dir`'s sink failed.
    pub(super) fn writing(dir: Direction, error: io::Error) -> Self {
        Failure {
            side: dir.sink(),
            error,
        }
    }
}

impl From<Failure> for CopyEnd {
    fn from(f: Failure) -> Self {
        CopyEnd::Failed {
            side: f.side,
            error: f.error,
        }
    }
}

/// Writes `bytes` once to `dir`'s sink; `Ok(0)` from a writer means it can take no more
/// (closed), which is a failure of that side like any write error.
pub(super) fn write_some<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    sink: &mut W,
    bytes: &[u8],
    dir: Direction,
) -> Poll<Result<usize, Failure>> {
    match ready!(Pin::new(sink).poll_write(cx, bytes)) {
        Ok(0) => Poll::Ready(Err(Failure::writing(dir, io::ErrorKind::WriteZero.into()))),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(Failure::writing(dir, e))),
    }
}

/// Early bytes to keep: none when empty, since an empty slice still pins the read buffer it was
/// cut from (hyper's, or the first head's), and every idle tunnel would hold both of its own.
pub(super) fn unpinned(early: Bytes) -> Bytes {
    if early.is_empty() {
        Bytes::new()
    } else {
        early
    }
}
