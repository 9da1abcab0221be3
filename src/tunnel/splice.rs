//! The `splice(2)` engine: for a tunnel whose legs are both plain TCP (SPEC §5), bytes go
//! socket -> pipe -> socket inside the kernel and never through a user-space buffer.
//!
//! Each direction holds a pipe only while bytes sit in it: it takes one from a small per-thread
//! pool when its source is readable, and gives the (empty) pipe back once the sink has taken
//! every byte, so an idle tunnel holds no pipe and no buffer, and a busy one creates none per
//! chunk. A pipe that still holds bytes when the tunnel ends is closed, never pooled.
//!
//! Readiness: tokio's readiness of a socket is cleared only by a `WouldBlock` seen through
//! [`TcpStream::try_io`] with the matching [`Interest`]. A non-blocking `splice` returns
//! `EAGAIN` both for "the socket is not ready" and "the pipe is full/empty", so each call is
//! made only where the pipe cannot be the cause: reading a socket into an *empty* pipe, writing
//! a *non-empty* pipe into a socket. An `EAGAIN` then always means the socket's readiness.
//!
//! When no pipe can be had (file descriptors exhausted), a direction moves that chunk through
//! a pooled copy buffer instead, so descriptor pressure slows a tunnel but never fails it.
//!
//! A sink that is gone answers `EPIPE` (Rust's runtime ignores `SIGPIPE`), attributed to it.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with};
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::CopyEnd;
use super::duplex::{self, Failure, PumpState};
use super::meter::{Direction, Meter};
use super::pool;

/// The capacity asked of each pipe (`F_SETPIPE_SZ`), and so the most one `splice` moves.
///
/// Four times Linux's default of 64 KiB: bulk transfers then take a quarter of the system calls
/// (the pipe holds references to the socket's pages, not copies, so its size costs no memory
/// while it is empty). Within the unprivileged `pipe-max-size` (1 MiB).
const PIPE_SIZE: usize = 256 * 1024;

/// At most this many spare pipes per worker thread (two descriptors each); more are closed.
const MAX_SPARE_PIPES: usize = 16;

/// At most this many chunks per direction per poll before yielding (as in the buffered engine),
/// so one fire-hose tunnel cannot starve its own idle/drain checks or the worker's other tasks.
const MAX_CHUNKS_PER_POLL: usize = 16;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Whether a pipe can be had now; the engine pick falls back to the buffered engine if not.
/// The pipe made to find out stays in the pool for this tunnel's first chunk.
pub(super) fn pipes_available() -> io::Result<()> {
    give_pipe(take_pipe()?);
    Ok(())
}

/// Copies both ways, early bytes first; returns when both directions passed their EOF on or
/// one side failed. The same contract as [`super::buffered::copy`].
pub(super) async fn copy(
    mut client: TcpStream,
    client_early: Bytes,
    mut upstream: TcpStream,
    upstream_early: Bytes,
    meter: &Meter<'_>,
) -> CopyEnd {
    let up = Pump::new(Direction::Up, client_early);
    let down = Pump::new(Direction::Down, upstream_early);
    duplex::both_ways(&mut client, &mut upstream, up, down, meter).await
}

/// A pipe's two ends.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        #[cfg(test)]
        if tests::REFUSE_NEW_PIPES.get() {
            return Err(rustix::io::Errno::MFILE.into());
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: a pipe left at the default size works, with more calls per MiB.
        if let Err(e) = fcntl_setpipe_size(&write, PIPE_SIZE) {
            tracing::debug!(cause = %e, size = PIPE_SIZE, "F_SETPIPE_SZ refused");
        }
        Ok(Pipe { read, write })
    }
}

thread_local! {
    static SPARE_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe: a spare one if this thread has one, else a new one.
fn take_pipe() -> io::Result<Pipe> {
    let spare = SPARE_PIPES
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match spare {
        Some(pipe) => Ok(pipe),
        None => Pipe::new(),
    }
}

/// Hands back a pipe that holds no byte, for the next [`take_pipe`] on this thread.
fn give_pipe(pipe: Pipe) {
    // If the thread is exiting or the pool is full, the pipe is simply closed.
    let _ = SPARE_PIPES.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < MAX_SPARE_PIPES {
                spare.push(pipe);
            }
        }
    });
}

/// What one direction holds between reading a chunk and writing all of it.
#[derive(Debug)]
enum Chunk {
    /// Nothing in flight: no pipe, no buffer.
    Empty,
    /// `len` bytes sit in `pipe`.
    Piped { pipe: Pipe, len: usize },
    /// No pipe could be had: `buf[pos..end]` is still to be written.
    Buffered {
        buf: Box<[u8]>,
        pos: usize,
        end: usize,
    },
}

/// One direction of the splice engine: early bytes first, then source -> pipe -> sink.
struct Pump {
    dir: Direction,
    early: Bytes,
    chunk: Chunk,
    saw_eof: bool,
    state: PumpState,
}

impl duplex::Pump<TcpStream, TcpStream> for Pump {
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut TcpStream,
        sink: &mut TcpStream,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>> {
        Pump::poll_copy(self, cx, source, sink, meter)
    }

    fn saw_eof(&self) -> bool {
        self.saw_eof
    }
}

impl Pump {
    fn new(dir: Direction, early: Bytes) -> Self {
        Pump {
            dir,
            early: duplex::unpinned(early),
            chunk: Chunk::Empty,
            saw_eof: false,
            state: PumpState::Copying,
        }
    }

    /// Drives this direction until it must wait; `Ready(Ok)` once EOF has been passed on.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut TcpStream,
        sink: &mut TcpStream,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>> {
        let mut chunks = 0;
        loop {
            match self.state {
                PumpState::Copying => {}
                PumpState::ShuttingDown => {
                    if let Err(e) = ready!(Pin::new(&mut *sink).poll_shutdown(cx)) {
                        return Poll::Ready(Err(Failure::writing(self.dir, e)));
                    }
                    self.state = PumpState::Done;
                    return Poll::Ready(Ok(()));
                }
                PumpState::Done => return Poll::Ready(Ok(())),
            }

            // Bytes read past the handshake head go before anything read from the socket.
            while !self.early.is_empty() {
                let n = ready!(duplex::write_some(cx, sink, &self.early, self.dir))?;
                self.early.advance(n);
                meter.delivered(self.dir, n);
                if self.early.is_empty() {
                    self.early = Bytes::new(); // unpin the buffer (see `Pump::new`)
                }
            }

            // Whatever was read is written out before the next read, and before an EOF.
            ready!(self.poll_drain(cx, sink, meter))?;

            if chunks >= MAX_CHUNKS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }

            if ready!(self.poll_fill(cx, source))? == 0 {
                self.saw_eof = true;
                self.state = PumpState::ShuttingDown;
            } else {
                chunks += 1;
                meter.touch();
            }
        }
    }

    /// Writes the chunk in flight to `sink` until none is left; its pipe or buffer goes back.
    fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut TcpStream,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>> {
        let dir = self.dir;
        let failed = |error| Poll::Ready(Err(Failure::writing(dir, error)));
        loop {
            let written = match &mut self.chunk {
                Chunk::Empty => return Poll::Ready(Ok(())),
                Chunk::Piped { pipe, len } => {
                    if let Err(e) = ready!(sink.poll_write_ready(cx)) {
                        return failed(e);
                    }
                    // The pipe holds bytes, so EAGAIN can only mean the socket is full.
                    let moved = sink.try_io(Interest::WRITABLE, || {
                        Ok(rustix::pipe::splice(
                            &pipe.read, None, &*sink, None, *len, FLAGS,
                        )?)
                    });
                    match moved {
                        Ok(0) => return failed(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            *len -= n;
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return failed(e),
                    }
                }
                Chunk::Buffered { buf, pos, end } => {
                    match ready!(Pin::new(&mut *sink).poll_write(cx, &buf[*pos..*end])) {
                        Ok(0) => return failed(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            *pos += n;
                            n
                        }
                        Err(e) => return failed(e),
                    }
                }
            };
            meter.delivered(self.dir, written);
            self.release_if_empty();
        }
    }

    /// Reads one chunk from `source`; `Ready(Ok(0))` is its EOF. Called with no chunk in flight.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut TcpStream,
    ) -> Poll<Result<usize, Failure>> {
        debug_assert!(matches!(self.chunk, Chunk::Empty));
        loop {
            // Readiness first: a direction waiting for its source holds no pipe.
            if let Err(e) = ready!(source.poll_read_ready(cx)) {
                return Poll::Ready(Err(Failure::reading(self.dir, e)));
            }
            let pipe = match take_pipe() {
                Ok(pipe) => pipe,
                Err(e) => {
                    tracing::debug!(cause = %e, "no pipe for a splice chunk, using a buffer");
                    return self.poll_fill_buffer(cx, source);
                }
            };
            // The pipe is empty, so EAGAIN can only mean the socket has nothing to read.
            let moved = source.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    &*source,
                    None,
                    &pipe.write,
                    None,
                    PIPE_SIZE,
                    FLAGS,
                )?)
            });
            match moved {
                Ok(0) => {
                    give_pipe(pipe);
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => {
                    self.chunk = Chunk::Piped { pipe, len: n };
                    return Poll::Ready(Ok(n));
                }
                Err(e) => {
                    // Nothing moved: the pipe is still empty.
                    give_pipe(pipe);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Poll::Ready(Err(Failure::reading(self.dir, e)));
                    }
                }
            }
        }
    }

    /// [`Pump::poll_fill`] through a pooled copy buffer, for when no pipe can be had.
    fn poll_fill_buffer(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut TcpStream,
    ) -> Poll<Result<usize, Failure>> {
        let mut buf = pool::take();
        loop {
            match source.try_read(&mut buf) {
                Ok(0) => {
                    pool::give(buf);
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => {
                    self.chunk = Chunk::Buffered {
                        buf,
                        pos: 0,
                        end: n,
                    };
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // `try_read` cleared the readiness; wait for it again, holding nothing.
                    match source.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            pool::give(buf);
                            return Poll::Ready(Err(Failure::reading(self.dir, e)));
                        }
                        Poll::Pending => {
                            pool::give(buf);
                            return Poll::Pending;
                        }
                    }
                }
                Err(e) => {
                    pool::give(buf);
                    return Poll::Ready(Err(Failure::reading(self.dir, e)));
                }
            }
        }
    }

    /// Gives back the pipe or buffer of a chunk that has been written out.
    fn release_if_empty(&mut self) {
        let written_out = match &self.chunk {
            Chunk::Empty => false,
            Chunk::Piped { len, .. } => *len == 0,
            Chunk::Buffered { pos, end, .. } => pos == end,
        };
        if written_out {
            match std::mem::replace(&mut self.chunk, Chunk::Empty) {
                Chunk::Piped { pipe, .. } => give_pipe(pipe),
                Chunk::Buffered { buf, .. } => pool::give(buf),
                Chunk::Empty => {}
            }
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // A pipe still holding bytes is dropped (closed) with them; an empty one is pooled.
        self.release_if_empty();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::poll_fn;
    use std::os::fd::{AsRawFd, RawFd};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    use super::*;
    use crate::tunnel::leg::LegIo;
    use crate::tunnel::testing::{
        LIMIT, no_drain, random_bytes, read_all, rig, tcp_pair, write_in_pieces,
    };
    use crate::tunnel::{ByteCounters, ClosedBy, Engine, TunnelConfig, buffered};

    thread_local! {
        /// Makes [`Pipe::new`] fail as if out of descriptors (`EMFILE`), on this thread only.
        pub(super) static REFUSE_NEW_PIPES: Cell<bool> = const { Cell::new(false) };
    }

    fn spare_pipe_fds() -> Vec<RawFd> {
        SPARE_PIPES.with(|s| s.borrow().iter().map(|p| p.read.as_raw_fd()).collect())
    }

    /// SPEC §5: a direction waiting for its source holds no pipe; the pipe it used is back in
    /// this thread's pool and the next chunk reuses it instead of making a new one.
    #[tokio::test]
    async fn waiting_direction_holds_no_pipe_and_reuses_the_pooled_one() {
        timeout(LIMIT, async {
            let (mut src_app, mut src) = tcp_pair().await;
            let (mut dst, mut dst_app) = tcp_pair().await;
            let meter = Meter::new(None);
            let mut pump = Pump::new(Direction::Up, Bytes::new());
            let mut pooled = None;
            for round in 0..3u8 {
                let data = [round; 1000];
                src_app.write_all(&data).await.unwrap();
                let mut got = [0u8; 1000];
                tokio::select! {
                    _ = poll_fn(|cx| pump.poll_copy(cx, &mut src, &mut dst, &meter)) => {
                        panic!("the pump ended without an EOF")
                    }
                    read = dst_app.read_exact(&mut got) => { read.unwrap(); }
                }
                assert_eq!(got, data);
                // One more poll: the pump sees nothing to read and waits.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(
                    pump.poll_copy(&mut cx, &mut src, &mut dst, &meter)
                        .is_pending()
                );
                assert!(matches!(pump.chunk, Chunk::Empty), "{:?}", pump.chunk);
                let spare = spare_pipe_fds();
                assert_eq!(spare.len(), 1, "the used pipe is not back in the pool");
                assert!(
                    pooled.is_none_or(|fd| fd == spare[0]),
                    "a new pipe was made"
                );
                pooled = Some(spare[0]);
            }
            assert_eq!(meter.bytes_up(), 3000);
        })
        .await
        .unwrap();
    }

    /// The pool keeps at most `MAX_SPARE_PIPES` pipes and hands back the same ones.
    #[test]
    fn pipe_pool_reuses_and_is_capped() {
        let pipes: Vec<Pipe> = (0..MAX_SPARE_PIPES + 4)
            .map(|_| take_pipe().unwrap())
            .collect();
        let fds: Vec<RawFd> = pipes.iter().map(|p| p.read.as_raw_fd()).collect();
        assert!(spare_pipe_fds().is_empty());
        for pipe in pipes {
            give_pipe(pipe);
        }
        let spare = spare_pipe_fds();
        assert_eq!(spare, fds[..MAX_SPARE_PIPES]);
        let again = take_pipe().unwrap();
        assert_eq!(again.read.as_raw_fd(), fds[MAX_SPARE_PIPES - 1]);
        assert!(
            rustix::pipe::fcntl_getpipe_size(&again.write).unwrap() >= PIPE_SIZE,
            "pipe not resized"
        );
    }

    /// A tunnel ended with bytes still in a pipe (its sink never read) closes that pipe rather
    /// than pooling it: a pooled pipe must be empty.
    #[tokio::test]
    async fn a_pipe_holding_bytes_is_not_pooled() {
        timeout(LIMIT, async {
            let (drain_tx, drain_rx) = tokio::sync::oneshot::channel();
            let counters = ByteCounters::new();
            let cfg = TunnelConfig {
                idle_timeout: None,
                counters: Some(counters.clone()),
                ..TunnelConfig::default()
            };
            let mut rig = rig(Engine::Splice, b"", b"", cfg, drain_rx).await;
            // The upstream application reads nothing: its socket buffers fill, then the pipe.
            let blob = random_bytes(32 << 20, 31);
            let writer = tokio::spawn(async move {
                let _ = rig.client_app.write_all(&blob).await;
                rig.client_app
            });
            let mut last = u64::MAX;
            while counters.up() != last || last == 0 {
                last = counters.up();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drain_tx.send(()).unwrap();
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            assert!(out.bytes_up < 32 << 20, "everything was delivered");
            let _ = writer.await;
            // The tunnel ran on this thread: its one pipe was full, so it was closed, not pooled.
            assert!(
                spare_pipe_fds().is_empty(),
                "a pipe holding bytes was pooled"
            );
            let got = read_all(&mut rig.upstream_app).await;
            assert_eq!(got.len() as u64, out.bytes_up);
        })
        .await
        .unwrap();
    }

    /// With no pipe to be had, the pick falls back to the buffered engine, and a splice tunnel
    /// that loses its pipes mid-way moves its chunks through buffers; either way, verbatim.
    #[tokio::test]
    async fn no_pipes_means_buffers_not_failures() {
        timeout(LIMIT, async {
            REFUSE_NEW_PIPES.set(true);
            assert!(spare_pipe_fds().is_empty());
            let data = random_bytes(1 << 20, 41);

            let cfg = TunnelConfig::default();
            let rig = rig(Engine::Splice, b"ce", b"ue", cfg, no_drain()).await;
            let (got_up, got_down) = echo_both_ways(rig.client_app, rig.upstream_app, &data).await;
            assert!(got_up[..2] == *b"ce" && got_up[2..] == data[..]);
            assert!(got_down[..2] == *b"ue" && got_down[2..] == data[..]);
            assert_eq!(rig.tunnel.await.unwrap().engine, Engine::Buffered);

            let (client_app, client_gw) = tcp_pair().await;
            let (upstream_app, upstream_gw) = tcp_pair().await;
            let engine = tokio::spawn(async move {
                let meter = Meter::new(None);
                let end = copy(client_gw, Bytes::new(), upstream_gw, Bytes::new(), &meter).await;
                (end, meter.bytes_up(), meter.bytes_down())
            });
            let (got_up, got_down) = echo_both_ways(client_app, upstream_app, &data).await;
            assert!(got_up == data && got_down == data);
            let (end, up, down) = engine.await.unwrap();
            assert!(matches!(end, CopyEnd::BothEof { .. }), "{end:?}");
            assert_eq!((up, down), (data.len() as u64, data.len() as u64));
            REFUSE_NEW_PIPES.set(false);
        })
        .await
        .unwrap();
    }

    /// Writes `data` from both applications at once, then half-closes; returns what the upstream
    /// and the client application received.
    async fn echo_both_ways(
        client_app: TcpStream,
        upstream_app: TcpStream,
        data: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let (c_read, c_write) = client_app.into_split();
        let (u_read, u_write) = upstream_app.into_split();
        let (_, _, got_up, got_down) = tokio::join!(
            write_in_pieces(c_write, data.to_vec(), 42),
            write_in_pieces(u_write, data.to_vec(), 43),
            read_all(u_read),
            read_all(c_read),
        );
        (got_up, got_down)
    }

    /// The same random traffic, early bytes and half-closes through both engines over TCP:
    /// both deliver exactly the same bytes and report the same counts and the same end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_engines_carry_identical_bytes() {
        timeout(Duration::from_secs(60), async {
            let up_data = random_bytes(3 << 20, 51);
            let down_data = random_bytes(2 << 20, 52);
            let mut results = Vec::new();
            for splice in [true, false] {
                let (client_app, client_gw) = tcp_pair().await;
                let (upstream_app, upstream_gw) = tcp_pair().await;
                let engine = tokio::spawn(async move {
                    let meter = Meter::new(None);
                    let (ce, ue) = (Bytes::from_static(b"C\x00"), Bytes::from_static(b"U\xff"));
                    let end = if splice {
                        copy(client_gw, ce, upstream_gw, ue, &meter).await
                    } else {
                        let (c, u): (LegIo, LegIo) = (
                            tokio_util::either::Either::Left(client_gw),
                            tokio_util::either::Either::Left(upstream_gw),
                        );
                        buffered::copy(c, ce, u, ue, &meter).await
                    };
                    let CopyEnd::BothEof { .. } = end else {
                        panic!("{end:?}")
                    };
                    (meter.bytes_up(), meter.bytes_down())
                });
                let (c_read, c_write) = client_app.into_split();
                let (u_read, u_write) = upstream_app.into_split();
                let (_, _, got_up, got_down) = tokio::join!(
                    write_in_pieces(c_write, up_data.clone(), 53),
                    write_in_pieces(u_write, down_data.clone(), 54),
                    read_all(u_read),
                    read_all(c_read),
                );
                results.push((got_up, got_down, engine.await.unwrap()));
            }
            let (splice, buffered) = (&results[0], &results[1]);
            assert!(splice == buffered, "the engines delivered different bytes");
            assert!(splice.0[..2] == *b"C\x00" && splice.0[2..] == up_data[..]);
            assert!(splice.1[..2] == *b"U\xff" && splice.1[2..] == down_data[..]);
            assert_eq!(
                splice.2,
                (up_data.len() as u64 + 2, down_data.len() as u64 + 2)
            );
        })
        .await
        .unwrap();
    }
}
