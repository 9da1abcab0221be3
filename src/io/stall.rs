//! The send timeout of a client connection (SPEC §5, last bullet): a relayed non-101 answer or
//! an ordinary response whose client reads nothing for `idle_timeout` is abandoned, so that a
//! client that never reads cannot hold its connection slot and the upstream connection forever.
//!
//! [`WriteStall`] wraps the client stream before hyper gets it. A write, flush or shutdown that
//! returns `Pending` (the client's receive window and our socket buffer are full) arms a timer;
//! any write that completes disarms it; once it fires, the next such call fails with
//! `ErrorKind::TimedOut` and hyper ends the connection. Writes that complete at once cost no
//! timer work at all: the timer is allocated on the first stall and only reset after that.
//! Reads pass through untouched (a client that sends but does not read is still stalled).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client stream whose writes fail with `TimedOut` once they made no progress for `limit`.
#[derive(Debug)]
pub(crate) struct WriteStall<T> {
    inner: T,
    /// `None` (`idle_timeout = "0s"`): never times out.
    limit: Option<Duration>,
    /// Allocated on the first stall, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current stall.
    armed: bool,
}

impl<T> WriteStall<T> {
    /// Wraps `inner`; writes stalled for `limit` fail.
    pub(crate) fn new(inner: T, limit: Option<Duration>) -> Self {
        WriteStall {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The stream itself, for the tunnel once the connection has been upgraded (the tunnel has
    /// its own `idle_timeout`).
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    /// Passes on what the inner stream's write side answered; a `Pending` arms (or keeps
    /// polling) the timer, anything else disarms it.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            None => self.timer.insert(Box::pin(tokio::time::sleep(limit))),
            Some(timer) if !self.armed => {
                timer.as_mut().reset(Instant::now() + limit);
                timer
            }
            Some(timer) => timer,
        };
        self.armed = true;
        // Polling registers the task's waker, so hyper is polled again when the timer fires.
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for idle_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.watch(cx, polled)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A peer that never reads: the write fails with `TimedOut` exactly `LIMIT` after it stalled.
    #[tokio::test(start_paused = true)]
    async fn a_write_stalled_for_the_limit_times_out() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut io = WriteStall::new(ours, Some(LIMIT));
        let started = Instant::now();
        let err = io.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
        // Still stalled: the next write fails at once, it does not start a new wait.
        let err = io.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }

    /// A peer that reads a little every `LIMIT - 1s`: each read is progress and restarts the
    /// wait, so a write that takes far longer than `LIMIT` in total still completes.
    #[tokio::test(start_paused = true)]
    async fn progress_disarms_the_timer() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
                got += peer.read(&mut chunk).await.unwrap();
            }
            peer
        });
        let mut io = WriteStall::new(ours, Some(LIMIT));
        let started = Instant::now();
        io.write_all(&[7u8; 1024]).await.unwrap();
        io.flush().await.unwrap();
        assert!(started.elapsed() > LIMIT * 3, "{:?}", started.elapsed());
        drop(reader.await.unwrap());
    }

    /// `idle_timeout = "0s"`: a stalled write just waits.
    #[tokio::test(start_paused = true)]
    async fn no_limit_never_times_out() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut io = WriteStall::new(ours, None);
        let waited = tokio::time::timeout(LIMIT * 100, io.write_all(&[7u8; 1024])).await;
        assert!(waited.is_err(), "a write without a limit ended: {waited:?}");
    }

    /// Writes that complete at once never touch a timer.
    #[tokio::test(start_paused = true)]
    async fn writes_that_complete_allocate_no_timer() {
        let (mut peer, ours) = tokio::io::duplex(4096);
        let mut io = WriteStall::new(ours, Some(LIMIT));
        io.write_all(b"hello").await.unwrap();
        io.flush().await.unwrap();
        assert!(io.timer.is_none() && !io.armed);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // Reads pass through.
        peer.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
