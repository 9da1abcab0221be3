//! The buffered engine: works for any pair of streams (TCP, TLS, an h2 stream).
//!
//! Each direction copies through one [`COPY_BUF_SIZE`](super::pool::COPY_BUF_SIZE) buffer taken from the per-thread pool
//! only while bytes are in flight: when its read side has nothing to give, the buffer goes back,
//! so an idle tunnel holds no user-space copy buffer (SPEC §5) and a busy one allocates nothing
//! per chunk. Both directions are driven from one task, with no locks and no split halves.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::CopyEnd;
use super::duplex::{self, Failure, PumpState};
use super::meter::{Direction, Meter};
use super::pool;

/// At most this many chunks per direction per poll before yielding, so one fire-hose tunnel
/// cannot starve its own idle/drain checks or the other tasks on the worker thread.
const MAX_CHUNKS_PER_POLL: usize = 16;

/// Copies both ways, early bytes first; returns when both directions passed their EOF on or
/// one side failed.
pub(super) async fn copy<C, U>(
    mut client: C,
    client_early: Bytes,
    mut upstream: U,
    upstream_early: Bytes,
    meter: &Meter<'_>,
) -> CopyEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let up = Pump::new(Direction::Up, client_early);
    let down = Pump::new(Direction::Down, upstream_early);
    duplex::both_ways(&mut client, &mut upstream, up, down, meter).await
}

/// One direction of the buffered engine: early bytes first, then read -> write in a loop.
struct Pump {
    dir: Direction,
    early: Bytes,
    /// Present only while `pos..end` holds bytes not yet written (or during a read attempt).
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// Bytes were written since the last flush (TLS writers buffer a record until flushed).
    need_flush: bool,
    saw_eof: bool,
    state: PumpState,
}

impl Pump {
    fn new(dir: Direction, early: Bytes) -> Self {
        Pump {
            dir,
            early: duplex::unpinned(early),
            buf: None,
            pos: 0,
            end: 0,
            need_flush: false,
            saw_eof: false,
            state: PumpState::Copying,
        }
    }

    fn release_buf(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
    }

    /// Drives this direction until it must wait; `Ready(Ok)` once EOF has been passed on.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut chunks = 0;
        loop {
            match self.state {
                PumpState::Copying => {}
                PumpState::ShuttingDown => {
                    if let Err(e) = ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                        return Poll::Ready(Err(Failure::writing(self.dir, e)));
                    }
                    self.state = PumpState::Done;
                    return Poll::Ready(Ok(()));
                }
                PumpState::Done => return Poll::Ready(Ok(())),
            }

            // Bytes read past the handshake head go before anything read from the stream.
            while !self.early.is_empty() {
                let n = ready!(duplex::write_some(cx, writer, &self.early, self.dir))?;
                self.early.advance(n);
                self.need_flush = true;
                meter.delivered(self.dir, n);
                if self.early.is_empty() {
                    self.early = Bytes::new(); // unpin the buffer (see `Pump::new`)
                }
            }

            while self.pos < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                let n = ready!(duplex::write_some(
                    cx,
                    writer,
                    &buf[self.pos..self.end],
                    self.dir
                ))?;
                self.pos += n;
                self.need_flush = true;
                meter.delivered(self.dir, n);
            }
            self.pos = 0;
            self.end = 0;

            if chunks >= MAX_CHUNKS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }

            let buf = self.buf.get_or_insert_with(pool::take);
            let mut read_buf = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                Poll::Pending => {
                    // Nothing in flight: give the buffer back while this direction waits.
                    self.release_buf();
                    if self.need_flush {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => {
                                return Poll::Ready(Err(Failure::writing(self.dir, e)));
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::reading(self.dir, e))),
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.release_buf();
                        self.saw_eof = true;
                        self.state = PumpState::ShuttingDown;
                    } else {
                        self.end = n;
                        chunks += 1;
                        meter.touch();
                    }
                }
            }
        }
    }
}

impl<R, W> duplex::Pump<R, W> for Pump
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut R,
        sink: &mut W,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>> {
        Pump::poll_copy(self, cx, source, sink, meter)
    }

    fn saw_eof(&self) -> bool {
        self.saw_eof
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.release_buf();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    use super::*;
    use crate::tunnel::testing::{LIMIT, random_bytes, read_all, write_in_pieces};
    use crate::tunnel::{Engine, Leg, TunnelConfig, run};

    /// A writer that accepts at most a few bytes per call exercises the partial-write path.
    #[tokio::test]
    async fn tiny_pipes_with_partial_writes_stay_verbatim() {
        timeout(LIMIT, async {
            let (client_app, client_gw) = tokio::io::duplex(7);
            let (upstream_app, upstream_gw) = tokio::io::duplex(13);
            let up_data = random_bytes(300_000, 5);
            let down_data = random_bytes(200_000, 6);
            let tunnel = tokio::spawn(async move {
                run(
                    Leg::stream(client_gw, Bytes::from_static(b"ce")),
                    Leg::stream(upstream_gw, Bytes::from_static(b"ue")),
                    &TunnelConfig::default(),
                    std::future::pending(),
                    std::future::pending(),
                )
                .await
            });
            let (c_read, c_write) = tokio::io::split(client_app);
            let (u_read, u_write) = tokio::io::split(upstream_app);
            let (_, _, got_up, got_down) = tokio::join!(
                write_in_pieces(c_write, up_data.clone(), 7),
                write_in_pieces(u_write, down_data.clone(), 8),
                read_all(u_read),
                read_all(c_read),
            );
            assert!(got_up.starts_with(b"ce") && got_up[2..] == up_data[..]);
            assert!(got_down.starts_with(b"ue") && got_down[2..] == down_data[..]);
            let out = tunnel.await.unwrap();
            assert_eq!(out.engine, Engine::Buffered);
            assert_eq!(out.bytes_up, 300_002);
            assert_eq!(out.bytes_down, 200_002);
        })
        .await
        .unwrap();
    }

    /// SPEC §5: a direction waiting for its reader holds no copy buffer.
    #[tokio::test]
    async fn waiting_direction_holds_no_buffer() {
        timeout(LIMIT, async {
            let (mut src_app, mut src) = tokio::io::duplex(64);
            let (mut dst, mut dst_app) = tokio::io::duplex(64);
            let meter = Meter::new(None);
            let mut pump = Pump::new(Direction::Up, Bytes::new());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(
                pump.poll_copy(&mut cx, &mut src, &mut dst, &meter)
                    .is_pending()
            );
            assert!(pump.buf.is_none());
            src_app.write_all(b"abc").await.unwrap();
            assert!(
                pump.poll_copy(&mut cx, &mut src, &mut dst, &meter)
                    .is_pending()
            );
            assert!(pump.buf.is_none());
            let mut got = [0u8; 3];
            dst_app.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"abc");
            assert_eq!(meter.bytes_up(), 3);
        })
        .await
        .unwrap();
    }

    /// Early bytes are slices of a larger read buffer (hyper's, or the first head's). Once
    /// delivered, or when there are none, the pump must not keep that buffer alive: with
    /// thousands of idle tunnels it was most of their memory.
    #[tokio::test]
    async fn early_bytes_do_not_pin_their_read_buffer() {
        timeout(LIMIT, async {
            for early_len in [0, 3] {
                let mut read_buf = Bytes::from(vec![b'x'; 8192]);
                let early = read_buf.split_off(8192 - early_len);
                let (mut src_app, mut src) = tokio::io::duplex(64);
                let (mut dst, mut dst_app) = tokio::io::duplex(64);
                let meter = Meter::new(None);
                let mut pump = Pump::new(Direction::Up, early);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(
                    pump.poll_copy(&mut cx, &mut src, &mut dst, &meter)
                        .is_pending()
                );
                let mut got = vec![0u8; early_len];
                dst_app.read_exact(&mut got).await.unwrap();
                assert!(
                    read_buf.is_unique(),
                    "{early_len} early bytes: buffer still pinned"
                );
                src_app.write_all(b"later").await.unwrap();
            }
        })
        .await
        .unwrap();
    }
}
