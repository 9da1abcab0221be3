//! The hot path: moves bytes between an upgraded client and its upstream (SPEC §5).
//!
//! This module owns one thing: after the handshake succeeded, copy bytes verbatim both ways,
//! count them, propagate half-closes, and decide when the tunnel is over (both EOFs, a reset,
//! the idle deadline, or the drain deadline). It knows no HTTP and no WebSocket framing; the
//! caller hands it two connected streams plus the bytes already read past each handshake head.
//!
//! Shape, so that other copy engines can slot in beside the buffered one:
//!
//! - [`run`] is the policy: early bytes, idle deadline, drain, closing both streams, the
//!   [`TunnelOutcome`]. It is engine-agnostic.
//! - `copy_buffered` is one engine: a fixed [`COPY_BUF_SIZE`] buffer per direction, works for any
//!   `AsyncRead + AsyncWrite` (TCP, TLS, an h2 stream). A zero-copy `splice(2)` engine for plain
//!   TCP on both sides, or an "inspected" engine that parses WebSocket frame headers, is another
//!   function with the same contract: report progress to the `Meter`, return a `CopyEnd`.
//!
//! Memory: a direction holds a copy buffer only while bytes are in flight through it; when its
//! read side has nothing to give, the buffer goes back to a small per-thread pool, so an idle
//! tunnel holds no user-space copy buffer (SPEC §5) and a busy one allocates nothing per chunk.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of the copy buffer of one direction while bytes flow through it.
///
/// 16 KiB matches the largest TLS record (RFC 8446 §5.1), so one read drains one record.
pub const COPY_BUF_SIZE: usize = 16 * 1024;

/// At most this many chunks per direction per poll before yielding, so one fire-hose tunnel
/// cannot starve its own idle/drain checks or the other tasks on the worker thread.
const MAX_CHUNKS_PER_POLL: usize = 16;

/// How a tunnel behaves; built once by the caller from the validated config.
#[derive(Debug, Clone, Default)]
pub struct TunnelConfig {
    /// End the tunnel after this long with no byte moving in either direction.
    /// `None` (config `"0s"`) means never; a zero duration is treated the same way.
    pub idle_timeout: Option<Duration>,
    /// Live counters bumped as bytes are delivered, for metrics read while tunnels run.
    /// One `ByteCounters` may be shared by many tunnels to get process-wide totals.
    pub counters: Option<ByteCounters>,
}

/// Byte counters the metrics layer can read while tunnels run; cheap to clone (shared atomics).
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl ByteCounters {
    /// Fresh counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes delivered client -> upstream so far (`direction="client_to_upstream"`, SPEC §7).
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Bytes delivered upstream -> client so far (`direction="upstream_to_client"`, SPEC §7).
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// Who ended a tunnel; the `closed_by` field of the access log (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClosedBy {
    /// The client sent EOF first and both directions then finished, or the client's connection
    /// failed (reset, broken pipe, EOF inside a TLS record).
    Client,
    /// Same as `Client`, for the upstream side.
    Upstream,
    /// No byte moved in either direction for `idle_timeout`.
    Idle,
    /// The graceful-shutdown deadline passed while the tunnel was open.
    Drain,
    /// An I/O failure that says nothing about which peer went away (e.g. a TLS protocol error).
    Error,
}

impl ClosedBy {
    /// The lowercase word used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Idle => "idle",
            ClosedBy::Drain => "drain",
            ClosedBy::Error => "error",
        }
    }
}

impl fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished tunnel reports to its caller for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelOutcome {
    /// Bytes delivered client -> upstream, early bytes included.
    pub bytes_up: u64,
    /// Bytes delivered upstream -> client, early bytes included.
    pub bytes_down: u64,
    /// Why it ended.
    pub closed_by: ClosedBy,
    /// From the call to [`run`] until both streams were closed.
    pub duration: Duration,
}

/// Runs a tunnel to its end, then closes both streams (dropping them) and reports.
///
/// `client_early` is what the client sent right after its request head and goes to the upstream
/// before anything read from `client`; `upstream_early` is what the upstream sent right after its
/// 101 head and goes to the client first (hyper's `Upgraded` read buffer; never drop it).
///
/// The tunnel ends when:
/// - both directions reached EOF and each EOF was passed on as a write shutdown (half-close);
///   `closed_by` is the side whose EOF came first;
/// - a read, write or shutdown on either side fails; the other side is closed at once so its
///   peer sees it; `closed_by` is the failing side, or `Error` if the failure is not a sign of
///   that peer going away;
/// - no byte moved either way for `cfg.idle_timeout` (`Idle`);
/// - `drain` completes (`Drain`).
///
/// The returned future is `Send` when `C`, `U` and `D` are.
pub async fn run<C, U, D>(
    mut client: C,
    client_early: Bytes,
    mut upstream: U,
    upstream_early: Bytes,
    cfg: &TunnelConfig,
    drain: D,
) -> TunnelOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    D: Future<Output = ()>,
{
    let meter = Meter::new(cfg.counters.as_ref());
    let closed_by = {
        let copy = copy_buffered(
            &mut client,
            client_early,
            &mut upstream,
            upstream_early,
            &meter,
        );
        let idle = idle_deadline(cfg.idle_timeout, &meter);
        tokio::select! {
            biased;
            () = drain => ClosedBy::Drain,
            end = copy => end.closed_by(),
            () = idle => ClosedBy::Idle,
        }
    };
    // Closing both sockets here is what tells each peer the tunnel is over.
    drop(client);
    drop(upstream);
    TunnelOutcome {
        bytes_up: meter.up.load(Ordering::Relaxed),
        bytes_down: meter.down.load(Ordering::Relaxed),
        closed_by,
        duration: meter.started.elapsed(),
    }
}

/// Waits until no byte has moved for `timeout`. One timer, re-armed only when it fires early:
/// the copy loop just stores a timestamp per chunk.
async fn idle_deadline(timeout: Option<Duration>, meter: &Meter<'_>) {
    let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
        return std::future::pending().await;
    };
    let Some(first) = meter.last_activity().checked_add(timeout) else {
        return std::future::pending().await;
    };
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let Some(deadline) = meter.last_activity().checked_add(timeout) else {
            return std::future::pending().await;
        };
        if deadline <= Instant::now() {
            return;
        }
        sleep.as_mut().reset(deadline);
    }
}

/// Progress shared between a copy engine and [`run`]: byte totals and the last activity time.
/// Atomics (not `Cell`s) so the tunnel future stays `Send`; all accesses are `Relaxed`.
struct Meter<'a> {
    started: Instant,
    /// Nanoseconds after `started` at which a byte last moved.
    last_nanos: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    counters: Option<&'a ByteCounters>,
}

impl<'a> Meter<'a> {
    fn new(counters: Option<&'a ByteCounters>) -> Self {
        Meter {
            started: Instant::now(),
            last_nanos: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            counters,
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        let since = Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed));
        self.started.checked_add(since).unwrap_or(self.started)
    }

    /// `n` bytes were delivered in direction `dir`.
    fn delivered(&self, dir: Direction, n: usize) {
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

/// One end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

/// One direction of the tunnel; `Up` reads the client and writes the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

impl Direction {
    fn source(self) -> Side {
        match self {
            Direction::Up => Side::Client,
            Direction::Down => Side::Upstream,
        }
    }

    fn sink(self) -> Side {
        match self {
            Direction::Up => Side::Upstream,
            Direction::Down => Side::Client,
        }
    }
}

/// How a copy engine finished; every engine returns this.
#[derive(Debug)]
enum CopyEnd {
    /// Both directions saw EOF and passed it on; `first` sent its EOF first.
    BothEof { first: Side },
    /// I/O on `side` failed; the engine stopped at once.
    Failed { side: Side, error: io::Error },
}

impl CopyEnd {
    fn closed_by(self) -> ClosedBy {
        let side_word = |side| match side {
            Side::Client => ClosedBy::Client,
            Side::Upstream => ClosedBy::Upstream,
        };
        match self {
            CopyEnd::BothEof { first } => side_word(first),
            CopyEnd::Failed { side, error } => {
                tracing::debug!(side = ?side, cause = %error, "tunnel I/O failed");
                if peer_went_away(&error) {
                    side_word(side)
                } else {
                    ClosedBy::Error
                }
            }
        }
    }
}

/// Errors that mean the peer on that side closed, reset, or vanished.
fn peer_went_away(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero
            | io::ErrorKind::TimedOut
    )
}

/// The buffered engine: both directions driven from one task, no locks, no split halves,
/// so it works for any stream type. Returns when both directions are done or one fails.
async fn copy_buffered<C, U>(
    client: &mut C,
    client_early: Bytes,
    upstream: &mut U,
    upstream_early: Bytes,
    meter: &Meter<'_>,
) -> CopyEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pump::new(Direction::Up, client_early);
    let mut down = Pump::new(Direction::Down, upstream_early);
    let mut first_eof: Option<Side> = None;
    poll_fn(|cx| {
        let up_done = match up.poll_copy(cx, &mut *client, &mut *upstream, meter) {
            Poll::Ready(Err(failure)) => return Poll::Ready(failure.into()),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        if up.saw_eof && first_eof.is_none() {
            first_eof = Some(Side::Client);
        }
        let down_done = match down.poll_copy(cx, &mut *upstream, &mut *client, meter) {
            Poll::Ready(Err(failure)) => return Poll::Ready(failure.into()),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        if down.saw_eof && first_eof.is_none() {
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

/// An I/O failure inside a [`Pump`], attributed to the side it happened on.
#[derive(Debug)]
struct Failure {
    side: Side,
    error: io::Error,
}

impl From<Failure> for CopyEnd {
    fn from(f: Failure) -> Self {
        CopyEnd::Failed {
            side: f.side,
            error: f.error,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpState {
    /// Reading the source and writing the sink.
    Copying,
    /// The source sent EOF; passing it on as a write shutdown (half-close).
    ShuttingDown,
    /// EOF passed on; nothing more to do in this direction.
    Done,
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
            early,
            buf: None,
            pos: 0,
            end: 0,
            need_flush: false,
            saw_eof: false,
            state: PumpState::Copying,
        }
    }

    fn read_failed(&self, error: io::Error) -> Failure {
        Failure {
            side: self.dir.source(),
            error,
        }
    }

    fn write_failed(&self, error: io::Error) -> Failure {
        Failure {
            side: self.dir.sink(),
            error,
        }
    }

    /// Writes `bytes` once; `Ok(0)` from a writer means it can take no more (closed).
    fn poll_write_some<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        writer: &mut W,
        bytes: &[u8],
    ) -> Poll<Result<usize, Failure>> {
        match ready!(Pin::new(writer).poll_write(cx, bytes)) {
            Ok(0) => Poll::Ready(Err(self.write_failed(io::ErrorKind::WriteZero.into()))),
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(self.write_failed(e))),
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
                        return Poll::Ready(Err(self.write_failed(e)));
                    }
                    self.state = PumpState::Done;
                    return Poll::Ready(Ok(()));
                }
                PumpState::Done => return Poll::Ready(Ok(())),
            }

            // Bytes read past the handshake head go before anything read from the stream.
            while !self.early.is_empty() {
                let n = ready!(self.poll_write_some(cx, writer, &self.early))?;
                self.early.advance(n);
                self.need_flush = true;
                meter.delivered(self.dir, n);
            }

            while self.pos < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                let n = ready!(self.poll_write_some(cx, writer, &buf[self.pos..self.end]))?;
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
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(self.write_failed(e))),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.read_failed(e))),
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

impl Drop for Pump {
    fn drop(&mut self) {
        self.release_buf();
    }
}

/// Per-thread free list of copy buffers: taking and giving back is a `Vec` pop/push, so a
/// direction that goes idle between chunks costs no allocation when it wakes up.
mod pool {
    use super::{COPY_BUF_SIZE, RefCell};

    /// At most this many spare buffers per worker thread (1 MiB).
    const MAX_SPARE: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> Box<[u8]> {
        SPARE
            .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0u8; COPY_BUF_SIZE].into_boxed_slice())
    }

    pub(super) fn give(buf: Box<[u8]>) {
        // If the thread is exiting or the list is full, the buffer is simply freed.
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if spare.len() < MAX_SPARE {
                    spare.push(buf);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(30);

    /// A connected loopback pair: (the application's end, the gateway's end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (app.unwrap(), accepted.unwrap().0)
    }

    struct Rig {
        client_app: TcpStream,
        upstream_app: TcpStream,
        tunnel: JoinHandle<TunnelOutcome>,
    }

    /// Starts a tunnel between two loopback pairs; `drain` fires when its sender sends.
    async fn rig(
        client_early: &'static [u8],
        upstream_early: &'static [u8],
        cfg: TunnelConfig,
        drain: oneshot::Receiver<()>,
    ) -> Rig {
        let (client_app, client_gw) = tcp_pair().await;
        let (upstream_app, upstream_gw) = tcp_pair().await;
        let tunnel = tokio::spawn(async move {
            run(
                client_gw,
                Bytes::from_static(client_early),
                upstream_gw,
                Bytes::from_static(upstream_early),
                &cfg,
                async move {
                    // A dropped sender means "never drain".
                    if drain.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                },
            )
            .await
        });
        Rig {
            client_app,
            upstream_app,
            tunnel,
        }
    }

    fn no_drain() -> oneshot::Receiver<()> {
        oneshot::channel().1
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        v
    }

    /// Writes `data` in random-sized pieces, then half-closes.
    async fn write_in_pieces<W: AsyncWrite + Unpin>(mut w: W, data: Vec<u8>, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=65_536).min(rest.len());
            w.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
        }
        w.shutdown().await.unwrap();
    }

    async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        v
    }

    /// 16 MiB each way at once over real sockets: every byte arrives, once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_mib_both_ways_concurrently_verbatim() {
        timeout(Duration::from_secs(120), async {
            const LEN: usize = 16 << 20;
            let up_data = random_bytes(LEN, 1);
            let down_data = random_bytes(LEN, 2);
            let counters = ByteCounters::new();
            let cfg = TunnelConfig {
                idle_timeout: Some(Duration::from_secs(60)),
                counters: Some(counters.clone()),
            };
            let rig = rig(b"", b"", cfg, no_drain()).await;
            let (c_read, c_write) = rig.client_app.into_split();
            let (u_read, u_write) = rig.upstream_app.into_split();
            let (_, _, got_up, got_down) = tokio::join!(
                write_in_pieces(c_write, up_data.clone(), 3),
                write_in_pieces(u_write, down_data.clone(), 4),
                read_all(u_read),
                read_all(c_read),
            );
            assert!(got_up == up_data, "client -> upstream bytes differ");
            assert!(got_down == down_data, "upstream -> client bytes differ");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.bytes_up, LEN as u64);
            assert_eq!(out.bytes_down, LEN as u64);
            assert_eq!(counters.up(), LEN as u64);
            assert_eq!(counters.down(), LEN as u64);
            assert!(matches!(
                out.closed_by,
                ClosedBy::Client | ClosedBy::Upstream
            ));
        })
        .await
        .unwrap();
    }

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
                    client_gw,
                    Bytes::from_static(b"ce"),
                    upstream_gw,
                    Bytes::from_static(b"ue"),
                    &TunnelConfig::default(),
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
            assert_eq!(out.bytes_up, 300_002);
            assert_eq!(out.bytes_down, 200_002);
        })
        .await
        .unwrap();
    }

    /// Early bytes go first even when later bytes are already waiting in the socket.
    #[tokio::test]
    async fn early_bytes_are_delivered_before_later_bytes_both_ways() {
        timeout(LIMIT, async {
            let (mut client_app, client_gw) = tcp_pair().await;
            let (mut upstream_app, upstream_gw) = tcp_pair().await;
            // Queue the later bytes before the tunnel starts reading.
            client_app.write_all(b"later-from-client").await.unwrap();
            client_app.shutdown().await.unwrap();
            upstream_app
                .write_all(b"later-from-upstream")
                .await
                .unwrap();
            upstream_app.shutdown().await.unwrap();
            let out = run(
                client_gw,
                Bytes::from_static(b"EARLY-C\x00\xff"),
                upstream_gw,
                Bytes::from_static(b"EARLY-U\x81\x05"),
                &TunnelConfig::default(),
                std::future::pending(),
            )
            .await;
            assert_eq!(
                read_all(&mut upstream_app).await,
                b"EARLY-C\x00\xfflater-from-client"
            );
            assert_eq!(
                read_all(&mut client_app).await,
                b"EARLY-U\x81\x05later-from-upstream"
            );
            assert_eq!(out.bytes_up, 9 + 17);
            assert_eq!(out.bytes_down, 9 + 19);
        })
        .await
        .unwrap();
    }

    /// Client half-closes; the upstream still talks and the client still hears it.
    #[tokio::test]
    async fn client_half_close_keeps_the_other_direction_open() {
        timeout(LIMIT, async {
            let mut rig = rig(b"", b"", TunnelConfig::default(), no_drain()).await;
            rig.client_app.write_all(b"hello").await.unwrap();
            rig.client_app.shutdown().await.unwrap();
            // The upstream sees the bytes, then EOF.
            let mut got = Vec::new();
            rig.upstream_app.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            rig.upstream_app.write_all(b"reply").await.unwrap();
            let mut reply = [0u8; 5];
            rig.client_app.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"reply");
            assert!(!rig.tunnel.is_finished(), "tunnel ended after one EOF");
            rig.upstream_app.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Client);
            assert_eq!((out.bytes_up, out.bytes_down), (5, 5));
        })
        .await
        .unwrap();
    }

    /// Upstream half-closes first (its EOF right behind the early bytes); the client can still send.
    #[tokio::test]
    async fn upstream_half_close_keeps_the_other_direction_open() {
        timeout(LIMIT, async {
            let mut rig = rig(b"", b"bye", TunnelConfig::default(), no_drain()).await;
            rig.upstream_app.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.client_app).await, b"bye");
            rig.client_app
                .write_all(b"client-still-sending")
                .await
                .unwrap();
            let mut got = [0u8; 20];
            rig.upstream_app.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"client-still-sending");
            assert!(!rig.tunnel.is_finished(), "tunnel ended after one EOF");
            rig.client_app.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Upstream);
        })
        .await
        .unwrap();
    }

    /// A reset from one side closes the other promptly and names the side that reset.
    async fn reset_closes_other_side(reset_client: bool) {
        let mut rig = rig(b"", b"", TunnelConfig::default(), no_drain()).await;
        // Prove the tunnel is up before resetting.
        rig.client_app.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        rig.upstream_app.read_exact(&mut got).await.unwrap();
        let (resetter, mut survivor) = if reset_client {
            (rig.client_app, rig.upstream_app)
        } else {
            (rig.upstream_app, rig.client_app)
        };
        resetter.set_zero_linger().unwrap();
        drop(resetter);
        let out = timeout(Duration::from_secs(2), rig.tunnel)
            .await
            .expect("tunnel still running 2s after a reset")
            .unwrap();
        let expected = if reset_client {
            ClosedBy::Client
        } else {
            ClosedBy::Upstream
        };
        assert_eq!(out.closed_by, expected);
        let mut rest = Vec::new();
        let seen = timeout(Duration::from_secs(2), survivor.read_to_end(&mut rest))
            .await
            .expect("other side not closed within 2s");
        assert!(seen.is_err() || rest.is_empty());
    }

    #[tokio::test]
    async fn client_reset_closes_upstream_promptly() {
        timeout(LIMIT, reset_closes_other_side(true)).await.unwrap();
    }

    #[tokio::test]
    async fn upstream_reset_closes_client_promptly() {
        timeout(LIMIT, reset_closes_other_side(false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn idle_timeout_ends_a_silent_tunnel_and_closes_both_sides() {
        timeout(LIMIT, async {
            let idle = Duration::from_millis(200);
            let cfg = TunnelConfig {
                idle_timeout: Some(idle),
                counters: None,
            };
            let mut rig = rig(b"", b"", cfg, no_drain()).await;
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Idle);
            assert!(out.duration >= idle, "fired after {:?}", out.duration);
            assert!(out.duration < Duration::from_secs(5));
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
        })
        .await
        .unwrap();
    }

    /// Traffic in one direction only keeps the whole tunnel alive; silence then ends it.
    async fn slow_traffic_keeps_tunnel_open(client_talks: bool) {
        let idle = Duration::from_millis(300);
        let cfg = TunnelConfig {
            idle_timeout: Some(idle),
            counters: None,
        };
        let rig = rig(b"", b"", cfg, no_drain()).await;
        let (mut talker, mut listener) = if client_talks {
            (rig.client_app, rig.upstream_app)
        } else {
            (rig.upstream_app, rig.client_app)
        };
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..12 {
            tick.tick().await;
            talker.write_all(b"k").await.unwrap();
            let mut k = [0u8; 1];
            listener.read_exact(&mut k).await.unwrap();
        }
        let busy_for = started.elapsed();
        assert!(
            !rig.tunnel.is_finished(),
            "idle fired with traffic every 50ms"
        );
        let out = rig.tunnel.await.unwrap();
        assert_eq!(out.closed_by, ClosedBy::Idle);
        assert!(out.duration >= busy_for + idle / 2);
        assert_eq!(out.bytes_up + out.bytes_down, 12);
    }

    #[tokio::test]
    async fn idle_timeout_does_not_fire_while_client_sends_slowly() {
        timeout(LIMIT, slow_traffic_keeps_tunnel_open(true))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn idle_timeout_does_not_fire_while_upstream_sends_slowly() {
        timeout(LIMIT, slow_traffic_keeps_tunnel_open(false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn zero_idle_timeout_means_never() {
        timeout(LIMIT, async {
            let cfg = TunnelConfig {
                idle_timeout: Some(Duration::ZERO),
                counters: None,
            };
            let (drain_tx, drain_rx) = oneshot::channel();
            let rig = rig(b"", b"", cfg, drain_rx).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!rig.tunnel.is_finished());
            drain_tx.send(()).unwrap();
            assert_eq!(rig.tunnel.await.unwrap().closed_by, ClosedBy::Drain);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn drain_ends_the_tunnel_and_closes_both_sides() {
        timeout(LIMIT, async {
            let (drain_tx, drain_rx) = oneshot::channel();
            let mut rig = rig(b"", b"", TunnelConfig::default(), drain_rx).await;
            rig.upstream_app.write_all(b"up").await.unwrap();
            let mut got = [0u8; 2];
            rig.client_app.read_exact(&mut got).await.unwrap();
            drain_tx.send(()).unwrap();
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            assert_eq!((out.bytes_up, out.bytes_down), (0, 2));
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
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
            assert_eq!(meter.up.load(Ordering::Relaxed), 3);
        })
        .await
        .unwrap();
    }

    #[test]
    fn closed_by_words_match_the_access_log() {
        let words: Vec<String> = [
            ClosedBy::Client,
            ClosedBy::Upstream,
            ClosedBy::Idle,
            ClosedBy::Drain,
            ClosedBy::Error,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(words, ["client", "upstream", "idle", "drain", "error"]);
    }

    #[test]
    fn only_peer_failures_are_attributed_to_a_side() {
        let reset = CopyEnd::Failed {
            side: Side::Upstream,
            error: io::ErrorKind::ConnectionReset.into(),
        };
        assert_eq!(reset.closed_by(), ClosedBy::Upstream);
        let tls = CopyEnd::Failed {
            side: Side::Client,
            error: io::ErrorKind::InvalidData.into(),
        };
        assert_eq!(tls.closed_by(), ClosedBy::Error);
    }

    #[test]
    fn tunnel_future_is_send_for_tcp_streams() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = TunnelConfig::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = tcp_pair().await;
            let fut = run(a, Bytes::new(), b, Bytes::new(), &cfg, async {});
            assert_send(&fut);
        });
    }
}
