//! The inspecting engine (SPEC §9): the buffered engine's copy loop with a [`Follower`] on each
//! direction, for any pair of legs whose route asks for inspection.
//!
//! Bytes pass verbatim and in place (a direction writes the judged part of its read buffer,
//! never a copy); what it adds are the gateway's own control frames, each written at a frame
//! boundary of its direction, and what it drops is the pong answering a gateway ping and,
//! once the gateway has sent its close to a side, whatever else would still go to that side.
//! As in the buffered engine, a direction holds a pool buffer only while bytes are in flight;
//! a header cut by a read waits inside the follower (at most 131 bytes) and is put back in
//! front of the next read, in the room kept there for it.
//!
//! How a tunnel ends, besides EOFs and failures as everywhere:
//! - a verdict of a follower (limit: close 1009 to the offender, `close_code` "going away" to
//!   the other side; violation: 1002 "protocol error" / `close_code` "going away"), then both
//!   legs are closed once those frames are out (`Limit` / `Protocol`);
//! - a polite end (the `polite` future, `Drain`; `max_lifetime`, `Lifetime`): `close_code`
//!   with the polite reason to both sides, then the peers' close frames are awaited: the client
//!   is done once its close frame came (or its EOF), the upstream once it closed TCP (RFC 6455
//!   §7.1.1: the server closes first);
//! - a ping timeout: close 1001 "ping timeout" to both, the live side's reply awaited
//!   (`PingTimeout`).
//!
//! Each ending gives up [`GIVE_UP`] after it began, or after the last of its close frames went
//! out, whichever is later. A polite end that finds a close handshake under way sends nothing
//! and leaves it [`GIVE_UP`] to finish (`closed_by` = the side that sent the first close).
//!
//! The meter counts every byte written to a side, the gateway's own frames included.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::WsReport;
use super::duplex::{Failure, write_some};
use super::meter::{Direction, Meter, Side};
use super::pool;
use super::{CloseReason, CloseSeen, ClosedBy, CopyEnd, Initiator, InspectConfig, PoliteEnd};
use crate::ws::{self, ControlFrame, Follower, Limits, PING_PAYLOAD, Sender, Step, Verdict};

/// How long an ending waits for the peers' close frames and TCP close (SPEC §9).
pub(super) const GIVE_UP: Duration = Duration::from_secs(5);

/// At most this many reads per direction per poll before yielding (as in `buffered.rs`).
const MAX_CHUNKS_PER_POLL: usize = 16;

/// Room in front of each read for the held start of a frame ([`Step::Release`]).
const HEADROOM: usize = ws::MAX_HELD;

/// Reason of the close the offender of a limit gets.
const REASON_TOO_BIG: &[u8] = b"too big";
/// Reason of the close the offender of a protocol violation gets.
const REASON_PROTOCOL: &[u8] = b"protocol error";
/// Reason of the close the other side of a limit or violation gets.
const REASON_PEER: &[u8] = b"going away";
/// Reason of the closes of a ping timeout.
const REASON_PING_TIMEOUT: &[u8] = b"ping timeout";
/// Reason of the closes at `max_lifetime` (SPEC §9: "going away").
const REASON_LIFETIME: &[u8] = b"going away";

/// What the engine needs beyond the legs.
pub(super) struct Setup<'a, P> {
    pub(super) cfg: &'a InspectConfig,
    /// The tunnel's age cap (from the meter's start).
    pub(super) max_lifetime: Option<Duration>,
    /// Completes when the gateway wants the tunnel ended politely.
    pub(super) polite: P,
}

/// Copies both ways, following frames, until the tunnel ends; keeps `report` up to date as it
/// goes, so it is right even when the caller stops this future at the drain deadline.
pub(super) async fn copy<C, U, P>(
    client: C,
    client_early: Bytes,
    upstream: U,
    upstream_early: Bytes,
    setup: Setup<'_, P>,
    meter: &Meter<'_>,
    report: &mut WsReport,
) -> CopyEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    P: Future<Output = PoliteEnd>,
{
    let cfg = setup.cfg;
    let limits = Limits {
        max_frame_bytes: cfg.max_frame_bytes,
        max_message_bytes: cfg.max_message_bytes,
    };
    let follower = |sender| Follower::new(sender, cfg.extensions, limits);
    let now = Instant::now();
    let mut tunnel = Tunnel {
        client,
        upstream,
        up: Dir::new(Direction::Up, follower(Sender::Client), client_early, now),
        down: Dir::new(
            Direction::Down,
            follower(Sender::Upstream),
            upstream_early,
            now,
        ),
        cfg,
        ping_interval: cfg.ping_interval.filter(|i| !i.is_zero()),
        lifetime_at: setup
            .max_lifetime
            .filter(|l| !l.is_zero())
            .and_then(|l| meter.started().checked_add(l)),
        phase: Phase::Open,
        first_eof: None,
        changed: false,
        meter,
        report,
    };
    let mut polite = Some(pin!(setup.polite));
    let mut timer = pin!(tokio::time::sleep_until(now));
    poll_fn(|cx| tunnel.poll(cx, &mut polite, timer.as_mut())).await
}

/// Where the tunnel is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Bytes flow; the peers may be in a close handshake of their own.
    Open,
    /// A polite end found a close handshake under way: it may finish until `deadline`.
    Finishing {
        closed_by: ClosedBy,
        deadline: Instant,
    },
    /// The gateway sent (or is sending) its close frames.
    Closing {
        closed_by: ClosedBy,
        deadline: Instant,
        /// Wait for the peers' close frames and TCP close (not after a limit or violation).
        await_replies: bool,
        /// The side a ping timeout found dead: its reply is not awaited.
        dead: Option<Side>,
        /// The deadline was moved to [`GIVE_UP`] after the last close frame went out.
        all_out: bool,
    },
}

struct Tunnel<'a, 'm, C, U> {
    client: C,
    upstream: U,
    up: Dir,
    down: Dir,
    cfg: &'a InspectConfig,
    ping_interval: Option<Duration>,
    lifetime_at: Option<Instant>,
    phase: Phase,
    first_eof: Option<Side>,
    /// A decision was taken that the directions must see before the task sleeps.
    changed: bool,
    meter: &'a Meter<'m>,
    report: &'a mut WsReport,
}

impl<C, U> Tunnel<'_, '_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll<P: Future<Output = PoliteEnd>>(
        &mut self,
        cx: &mut Context<'_>,
        polite: &mut Option<Pin<&mut P>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<CopyEnd> {
        loop {
            let now = Instant::now();
            self.events(cx, polite, now);
            let up = self
                .up
                .poll(cx, &mut self.client, &mut self.upstream, self.meter);
            if let Poll::Ready(Err(failure)) = up {
                return Poll::Ready(self.failed(failure));
            }
            let down = self
                .down
                .poll(cx, &mut self.upstream, &mut self.client, self.meter);
            if let Poll::Ready(Err(failure)) = down {
                return Poll::Ready(self.failed(failure));
            }
            let now = Instant::now();
            self.after_io(now);
            if let Some(end) = self.end(now) {
                return Poll::Ready(end);
            }
            if std::mem::take(&mut self.changed) {
                continue;
            }
            if let Some(at) = self.next_deadline() {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    fn dir_from(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }

    fn dir_to(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.down,
            Side::Upstream => &mut self.up,
        }
    }

    /// Polite ends, the lifetime, keepalive pings and their timeouts.
    fn events<P: Future<Output = PoliteEnd>>(
        &mut self,
        cx: &mut Context<'_>,
        polite: &mut Option<Pin<&mut P>>,
        now: Instant,
    ) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if let Some(p) = polite {
            if let Poll::Ready(end) = p.as_mut().poll(cx) {
                *polite = None;
                self.polite_end(end.reason().as_bytes(), ClosedBy::Drain, now);
                return;
            }
        }
        if self.lifetime_at.is_some_and(|at| at <= now) {
            self.polite_end(REASON_LIFETIME, ClosedBy::Lifetime, now);
            return;
        }
        if self.keepalive_on() {
            for side in [Side::Client, Side::Upstream] {
                self.keepalive(side, now);
                if !matches!(self.phase, Phase::Open) {
                    return;
                }
            }
        }
    }

    /// Pings go out only while the conversation is open: not once a close frame was seen.
    fn keepalive_on(&self) -> bool {
        self.ping_interval.is_some() && self.report.close.is_none()
    }

    /// Pings `side` after `ping_interval` of silence; ends the tunnel if it stays silent for
    /// `ping_timeout` after the ping went out.
    fn keepalive(&mut self, side: Side, now: Instant) {
        let Some(interval) = self.ping_interval else {
            return;
        };
        let timeout = self.cfg.ping_timeout;
        let from = self.dir_from(side);
        if let Some(ping) = from.ping_sent {
            if from.reads > ping.reads {
                from.ping_sent = None;
            } else {
                if now >= ping.at + timeout {
                    self.ping_timeout(side, now);
                }
                return;
            }
        }
        if now < from.last_rx + interval {
            return;
        }
        let to = self.dir_to(side);
        if to.ping_queued.is_some() || to.own.is_some_and(|o| o.ping.is_some()) {
            return;
        }
        let payload: [u8; PING_PAYLOAD] = rand::random();
        to.ping_queued = Some((
            ControlFrame::ping(&payload, side == Side::Upstream),
            payload,
        ));
        self.changed = true;
    }

    fn polite_end(&mut self, reason: &[u8], closed_by: ClosedBy, now: Instant) {
        if let Some(first) = self.report.close {
            // A close handshake under way is left to finish (SPEC §9).
            let closed_by = match first.initiator {
                Initiator::Client => ClosedBy::Client,
                Initiator::Upstream => ClosedBy::Upstream,
                Initiator::Gateway => closed_by,
            };
            self.phase = Phase::Finishing {
                closed_by,
                deadline: now + GIVE_UP,
            };
            self.changed = true;
            return;
        }
        let code = self.cfg.close_code;
        self.gateway_close(
            [(Side::Client, code, reason), (Side::Upstream, code, reason)],
            closed_by,
            true,
            None,
            now,
        );
    }

    fn ping_timeout(&mut self, dead: Side, now: Instant) {
        let live = match dead {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        };
        let frames = [
            (live, ws::code::GOING_AWAY, REASON_PING_TIMEOUT),
            (dead, ws::code::GOING_AWAY, REASON_PING_TIMEOUT),
        ];
        self.gateway_close(frames, ClosedBy::PingTimeout, true, Some(dead), now);
    }

    /// Queues the gateway's close frames (each goes at the next boundary towards its side); the
    /// first one is the tunnel's first close if none was seen yet.
    fn gateway_close(
        &mut self,
        frames: [(Side, u16, &[u8]); 2],
        closed_by: ClosedBy,
        await_replies: bool,
        dead: Option<Side>,
        now: Instant,
    ) {
        for (side, code, reason) in frames {
            let to = self.dir_to(side);
            to.close_queued = Some(ControlFrame::close(code, reason, side == Side::Upstream));
            to.ping_queued = None;
        }
        if self.report.close.is_none() {
            let (_, code, reason) = frames[0];
            self.report.close = Some(CloseSeen {
                code,
                reason: CloseReason::new(reason),
                initiator: Initiator::Gateway,
            });
        }
        self.phase = Phase::Closing {
            closed_by,
            deadline: now + GIVE_UP,
            await_replies,
            dead,
            all_out: false,
        };
        self.changed = true;
    }

    /// What the directions did: verdicts, close frames, pings out, counts, and in the closing
    /// phase which side is done.
    fn after_io(&mut self, now: Instant) {
        for side in [Side::Client, Side::Upstream] {
            let from = self.dir_from(side);
            let (eof, verdict, close) =
                (from.source_eof, from.verdict.take(), from.follower.close());
            if eof && self.first_eof.is_none() {
                self.first_eof = Some(side);
            }
            if let Some(verdict) = verdict {
                if matches!(self.phase, Phase::Open) {
                    self.offended(side, verdict, now);
                }
            }
            if self.report.close.is_none() {
                if let Some(close) = close {
                    self.report.close = Some(CloseSeen {
                        code: close.code,
                        reason: close.reason,
                        initiator: initiator(side),
                    });
                }
            }
            let to = self.dir_to(side);
            if let Some(payload) = to.ping_written.take() {
                let from = self.dir_from(side);
                from.ping_sent = Some(PingSent {
                    at: now,
                    reads: from.reads,
                });
                from.follower.expect_pong(payload);
            }
        }
        self.report.frames_up = self.up.follower.frames();
        self.report.messages_up = self.up.follower.messages();
        self.report.frames_down = self.down.follower.frames();
        self.report.messages_down = self.down.follower.messages();
        if let Phase::Closing {
            await_replies,
            dead,
            ref mut deadline,
            ref mut all_out,
            ..
        } = self.phase
        {
            if !*all_out && self.up.closed_out() && self.down.closed_out() {
                *all_out = true;
                *deadline = (*deadline).max(now + GIVE_UP);
            }
            for side in [Side::Client, Side::Upstream] {
                let replied = {
                    let from = self.dir_from(side);
                    from.source_eof || (side == Side::Client && from.follower.close().is_some())
                };
                let to = self.dir_to(side);
                let done = to.closed_out() && (!await_replies || dead == Some(side) || replied);
                if done && !to.shut_requested {
                    to.shut_requested = true;
                    self.changed = true;
                }
                // Its bytes are not needed once it is done, unless a frame of it in flight
                // must still reach the other side before the other side's close.
                let from = self.dir_from(side);
                if done && from.closed_out() && !from.source_done {
                    from.source_done = true;
                    self.changed = true;
                }
            }
        }
    }

    /// A follower of `offender`'s frames gave `verdict`.
    fn offended(&mut self, offender: Side, verdict: Verdict, now: Instant) {
        let other = match offender {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        };
        let (reason, closed_by) = if verdict.is_limit() {
            (REASON_TOO_BIG, ClosedBy::Limit)
        } else {
            (REASON_PROTOCOL, ClosedBy::Protocol)
        };
        tracing::debug!(side = ?offender, ?verdict, "inspected tunnel: frame refused");
        let frames = [
            (offender, verdict.close_code(), reason),
            (other, self.cfg.close_code, REASON_PEER),
        ];
        self.gateway_close(frames, closed_by, false, None, now);
    }

    fn end(&self, now: Instant) -> Option<CopyEnd> {
        match self.phase {
            Phase::Open => (self.up.done() && self.down.done()).then(|| CopyEnd::BothEof {
                first: self.first_eof.unwrap_or(Side::Client),
            }),
            Phase::Finishing {
                closed_by,
                deadline,
            } => (now >= deadline || (self.up.done() && self.down.done()))
                .then_some(CopyEnd::Ended(closed_by)),
            Phase::Closing {
                closed_by,
                deadline,
                ..
            } => {
                let shut = self.up.sink == SinkState::Shut && self.down.sink == SinkState::Shut;
                let read = self.up.reading_over() && self.down.reading_over();
                (now >= deadline || (shut && read)).then_some(CopyEnd::Ended(closed_by))
            }
        }
    }

    /// A failed read or write: before the gateway began ending the tunnel it says who ended
    /// it; after, the ending simply completes early.
    fn failed(&self, failure: Failure) -> CopyEnd {
        match self.phase {
            Phase::Open => failure.into(),
            Phase::Finishing { closed_by, .. } | Phase::Closing { closed_by, .. } => {
                tracing::debug!(?failure, "inspected tunnel: I/O failed while closing");
                CopyEnd::Ended(closed_by)
            }
        }
    }

    /// The earliest time something must be looked at again without any I/O.
    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Finishing { deadline, .. } | Phase::Closing { deadline, .. } => Some(deadline),
            Phase::Open => {
                let mut next = self.lifetime_at;
                let mut soonest = |at: Instant| {
                    next = Some(next.map_or(at, |n| n.min(at)));
                };
                if let (true, Some(interval)) = (self.keepalive_on(), self.ping_interval) {
                    for (from, to) in [(&self.up, &self.down), (&self.down, &self.up)] {
                        match from.ping_sent {
                            Some(ping) => soonest(ping.at + self.cfg.ping_timeout),
                            None if to.ping_queued.is_none() => soonest(from.last_rx + interval),
                            None => {}
                        }
                    }
                }
                next
            }
        }
    }
}

/// A gateway ping that went out towards a side.
#[derive(Debug, Clone, Copy)]
struct PingSent {
    at: Instant,
    /// The side's read count then: any later read means it is alive.
    reads: u64,
}

/// A frame of the gateway's own being written.
#[derive(Clone, Copy)]
struct Own {
    frame: ControlFrame,
    at: usize,
    /// The ping's payload; `None` for a close.
    ping: Option<[u8; PING_PAYLOAD]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkState {
    Open,
    ShuttingDown,
    Shut,
}

/// One direction: reads its source, follows its frames, writes its sink.
struct Dir {
    dir: Direction,
    follower: Follower,
    early: Bytes,
    /// Present only while bytes are in flight: `pos..ok` judged and not yet written, `ok..end`
    /// not yet judged; each read lands at [`HEADROOM`].
    buf: Option<Box<[u8]>>,
    pos: usize,
    ok: usize,
    end: usize,
    need_flush: bool,
    sink: SinkState,
    source_eof: bool,
    /// The tunnel needs nothing more from the source.
    source_done: bool,
    /// Forward nothing more (after a verdict here, or the gateway's close went to the sink).
    discard: bool,
    /// A verdict not yet seen by the tunnel.
    verdict: Option<Verdict>,
    own: Option<Own>,
    close_queued: Option<ControlFrame>,
    ping_queued: Option<(ControlFrame, [u8; PING_PAYLOAD])>,
    /// The gateway's close frame reached the sink (written and flushed).
    close_out: bool,
    /// A gateway ping was just written to the sink (for the tunnel to note).
    ping_written: Option<[u8; PING_PAYLOAD]>,
    /// The tunnel asks for the sink to be shut down (the side is done with).
    shut_requested: bool,
    /// About the source: when it last gave bytes, how many reads did, the ping it owes.
    last_rx: Instant,
    reads: u64,
    ping_sent: Option<PingSent>,
}

impl Dir {
    fn new(dir: Direction, follower: Follower, early: Bytes, now: Instant) -> Self {
        Dir {
            dir,
            follower,
            early: super::duplex::unpinned(early),
            buf: None,
            pos: 0,
            ok: 0,
            end: 0,
            need_flush: false,
            sink: SinkState::Open,
            source_eof: false,
            source_done: false,
            discard: false,
            verdict: None,
            own: None,
            close_queued: None,
            ping_queued: None,
            close_out: false,
            ping_written: None,
            shut_requested: false,
            last_rx: now,
            reads: 0,
            ping_sent: None,
        }
    }

    /// Both halves finished: EOF passed on.
    fn done(&self) -> bool {
        self.sink == SinkState::Shut && self.source_eof
    }

    /// No more reading needed.
    fn reading_over(&self) -> bool {
        self.source_eof || self.source_done
    }

    /// Nothing more of the gateway's will go to the sink: its close is out, or the sink closed.
    fn closed_out(&self) -> bool {
        self.close_out || self.sink != SinkState::Open
    }

    /// A frame of the gateway's own waits for a boundary.
    fn wants_to_inject(&self) -> bool {
        self.sink == SinkState::Open
            && (self.close_queued.is_some() || (self.ping_queued.is_some() && !self.close_out))
    }

    fn release_buf(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
    }

    /// Drives this direction until it must wait; `Ready(Ok)` once it has nothing left to do.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut R,
        sink: &mut W,
        meter: &Meter<'_>,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut chunks = 0;
        loop {
            while self.pos < self.ok {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                let n = ready!(write_some(cx, sink, &buf[self.pos..self.ok], self.dir))?;
                self.pos += n;
                self.need_flush = true;
                meter.delivered(self.dir, n);
            }
            if let Some(own) = &mut self.own {
                let bytes = own.frame.as_bytes();
                while own.at < bytes.len() {
                    let n = ready!(write_some(cx, sink, &bytes[own.at..], self.dir))?;
                    own.at += n;
                    meter.delivered(self.dir, n);
                }
                self.need_flush = true;
                match own.ping {
                    Some(payload) => self.ping_written = Some(payload),
                    None => {
                        ready!(Pin::new(&mut *sink).poll_flush(cx))
                            .map_err(|e| Failure::writing(self.dir, e))?;
                        self.need_flush = false;
                        self.close_out = true;
                        self.discard = true;
                    }
                }
                self.own = None;
            }
            if self.sink == SinkState::ShuttingDown {
                ready!(Pin::new(&mut *sink).poll_shutdown(cx))
                    .map_err(|e| Failure::writing(self.dir, e))?;
                self.sink = SinkState::Shut;
            }
            if self.sink == SinkState::Shut {
                if self.reading_over() {
                    self.release_buf();
                    return Poll::Ready(Ok(()));
                }
                if self.ok < self.end {
                    // Nothing more goes to a shut sink, but the source is still followed: its
                    // close reply (e.g. the client's, after the upstream already answered and
                    // left) is what the closing tunnel waits for.
                    self.discard = true;
                    self.judge();
                    continue;
                }
            } else {
                if self.wants_to_inject() && self.follower.at_boundary() {
                    let (frame, ping) = match self.close_queued.take() {
                        Some(close) => {
                            self.ping_queued = None;
                            (close, None)
                        }
                        None => match self.ping_queued.take() {
                            Some((frame, payload)) => (frame, Some(payload)),
                            None => unreachable!("wants_to_inject without a frame"),
                        },
                    };
                    self.own = Some(Own { frame, at: 0, ping });
                    continue;
                }
                let eof_passes = self.source_eof && self.ok == self.end;
                if self.shut_requested || eof_passes {
                    // A frame that could not reach a boundary before the end is not sent.
                    self.close_queued = None;
                    self.ping_queued = None;
                    self.sink = SinkState::ShuttingDown;
                    continue;
                }
                if self.ok < self.end {
                    self.judge();
                    continue;
                }
            }
            if self.reading_over() {
                return Poll::Pending;
            }
            if chunks >= MAX_CHUNKS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let buf = self.buf.get_or_insert_with(pool::take);
            let n = if self.early.is_empty() {
                let mut read_buf = ReadBuf::new(&mut buf[HEADROOM..]);
                match Pin::new(&mut *source).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        // Nothing in flight: give the buffer back while this direction waits.
                        self.release_buf();
                        if self.need_flush {
                            match Pin::new(&mut *sink).poll_flush(cx) {
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
                    Poll::Ready(Ok(())) => read_buf.filled().len(),
                }
            } else {
                // Early bytes are followed like any read (from a copy, so a held header can be
                // put back in front of them).
                let n = self.early.len().min(buf.len() - HEADROOM);
                buf[HEADROOM..HEADROOM + n].copy_from_slice(&self.early[..n]);
                self.early.advance(n);
                if self.early.is_empty() {
                    self.early = Bytes::new(); // unpin the buffer (see `duplex::unpinned`)
                }
                n
            };
            if n == 0 {
                self.release_buf();
                self.source_eof = true;
                continue;
            }
            self.pos = HEADROOM;
            self.ok = HEADROOM;
            self.end = HEADROOM + n;
            self.last_rx = Instant::now();
            self.reads += 1;
            meter.touch();
            chunks += 1;
        }
    }

    /// Runs the follower over `ok..end`: judged bytes join `pos..ok`; stops at a boundary when
    /// a frame of the gateway's own waits, and at a verdict.
    fn judge(&mut self) {
        let Dir {
            buf,
            follower,
            pos,
            ok,
            end,
            ..
        } = self;
        let Some(buf) = buf.as_deref_mut() else {
            return;
        };
        if self.discard {
            let mut at = *ok;
            while at < *end {
                match follower.step(&buf[at..*end]) {
                    Step::Forward(n) | Step::Release(n) | Step::Hold(n) | Step::Swallow(n) => {
                        at += n
                    }
                    Step::Stop(_) => break,
                }
            }
            *end = *ok;
            return;
        }
        while *ok < *end {
            if follower.at_boundary()
                && self.sink == SinkState::Open
                && (self.close_queued.is_some() || (self.ping_queued.is_some() && !self.close_out))
            {
                return;
            }
            match follower.step(&buf[*ok..*end]) {
                Step::Forward(n) => *ok += n,
                Step::Release(n) => {
                    // A release is the first step on a read: the held bytes go in the room
                    // kept in front of it.
                    let held = follower.released();
                    debug_assert!(*pos == HEADROOM && *ok == HEADROOM);
                    let start = HEADROOM - held.len();
                    buf[start..HEADROOM].copy_from_slice(held);
                    *pos = start;
                    *ok += n;
                }
                Step::Hold(n) => {
                    debug_assert_eq!(*ok + n, *end);
                    *end = *ok;
                }
                Step::Swallow(n) => {
                    // Close the gap: move the judged bytes up over the swallowed pong.
                    buf.copy_within(*pos..*ok, *pos + n);
                    *pos += n;
                    *ok += n;
                }
                Step::Stop(verdict) => {
                    self.verdict = Some(verdict);
                    self.discard = true;
                    *end = *ok;
                    return;
                }
            }
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        self.release_buf();
    }
}

/// The side as the `close_initiator` of a close frame it sent.
fn initiator(side: Side) -> Initiator {
    match side {
        Side::Client => Initiator::Client,
        Side::Upstream => Initiator::Upstream,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;
    use crate::tunnel::testing::{LIMIT, PAUSED_LIMIT, random_bytes, read_all};
    use crate::tunnel::{Engine, Extensions, Leg, TunnelConfig, TunnelOutcome, run};
    use crate::ws::testing::frame;

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONT: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const CC: u16 = 4321;

    /// A frame as the client sends it (masked).
    fn cf(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, 0, opcode, payload, Some(KEY))
    }

    /// A frame as the upstream sends it.
    fn sf(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, 0, opcode, payload, None)
    }

    fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], reason].concat()
    }

    fn inspect(f: impl FnOnce(&mut InspectConfig)) -> TunnelConfig {
        let mut i = InspectConfig {
            max_message_bytes: None,
            max_frame_bytes: None,
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            close_code: CC,
            extensions: Extensions::default(),
        };
        f(&mut i);
        TunnelConfig {
            inspect: Some(i),
            ..TunnelConfig::default()
        }
    }

    struct Rig {
        client: DuplexStream,
        upstream: DuplexStream,
        polite: Option<oneshot::Sender<PoliteEnd>>,
        drain: Option<oneshot::Sender<()>>,
        tunnel: JoinHandle<TunnelOutcome>,
    }

    fn rig_with(
        cfg: TunnelConfig,
        client_early: &'static [u8],
        upstream_early: &'static [u8],
    ) -> Rig {
        let (client, client_gw) = tokio::io::duplex(64 * 1024);
        let (upstream, upstream_gw) = tokio::io::duplex(64 * 1024);
        let (polite_tx, polite_rx) = oneshot::channel::<PoliteEnd>();
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let tunnel = tokio::spawn(async move {
            let polite = async move {
                match polite_rx.await {
                    Ok(end) => end,
                    Err(_) => std::future::pending().await,
                }
            };
            run(
                Leg::stream(client_gw, Bytes::from_static(client_early)),
                Leg::stream(upstream_gw, Bytes::from_static(upstream_early)),
                &cfg,
                polite,
                crate::tunnel::testing::drain_on(drain_rx),
            )
            .await
        });
        Rig {
            client,
            upstream,
            polite: Some(polite_tx),
            drain: Some(drain_tx),
            tunnel,
        }
    }

    fn rig(cfg: TunnelConfig) -> Rig {
        rig_with(cfg, b"", b"")
    }

    /// One frame read off `r`: (opcode, unmasked payload, mask key, the raw bytes).
    struct Got {
        opcode: u8,
        fin: bool,
        payload: Vec<u8>,
        key: Option<[u8; 4]>,
        raw: Vec<u8>,
    }

    impl Got {
        fn close(&self) -> (u16, &[u8]) {
            assert_eq!(self.opcode, CLOSE, "not a close frame");
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                &self.payload[2..],
            )
        }
    }

    async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Got {
        let mut raw = vec![0u8; 2];
        r.read_exact(&mut raw).await.unwrap();
        let ext = match raw[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = raw[1] & 0x80 != 0;
        let mut rest = vec![0u8; ext + if masked { 4 } else { 0 }];
        r.read_exact(&mut rest).await.unwrap();
        raw.extend(&rest);
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([rest[0], rest[1]])),
            8 => u64::from_be_bytes(rest[..8].try_into().unwrap()),
            _ => u64::from(raw[1] & 0x7F),
        } as usize;
        let key: Option<[u8; 4]> = masked.then(|| rest[ext..ext + 4].try_into().unwrap());
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.unwrap();
        raw.extend(&payload);
        if let Some(k) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= k[i % 4]);
        }
        Got {
            opcode: raw[0] & 0x0F,
            fin: raw[0] & 0x80 != 0,
            payload,
            key,
            raw,
        }
    }

    async fn expect_bytes<R: AsyncRead + Unpin>(r: &mut R, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).await.unwrap();
        assert!(got == want, "bytes differ");
    }

    /// Frames of every length form, a fragmented message of more than 1 MiB with pings between
    /// its frames, early bytes first: verbatim both ways, counted; then the peers' close
    /// handshake passes and the upstream's TCP close ends the tunnel.
    #[tokio::test]
    async fn frames_pass_verbatim_and_are_counted() {
        timeout(LIMIT, async {
            let c_early = cf(true, TEXT, b"early-c");
            let u_early = sf(false, TEXT, b"early-u");
            let c_early: &'static [u8] = Box::leak(c_early.into_boxed_slice());
            let u_early: &'static [u8] = Box::leak(u_early.into_boxed_slice());
            let mut rig = rig_with(inspect(|_| {}), c_early, u_early);
            let big = random_bytes(1 << 20, 3);
            let mut up = Vec::new();
            for (i, piece) in big.chunks(70_000).enumerate() {
                let last = (i + 1) * 70_000 >= big.len();
                up.extend(cf(last, if i == 0 { BINARY } else { CONT }, piece));
                up.extend(cf(true, PING, b"between"));
            }
            for len in [0, 125, 126, 65535, 65536] {
                up.extend(cf(true, BINARY, &vec![7u8; len]));
            }
            let down = [
                sf(true, CONT, b"-end"),
                sf(true, PONG, b"between"),
                sf(true, BINARY, &[9; 300]),
            ]
            .concat();
            let (mut c_read, mut c_write) = tokio::io::split(rig.client);
            let (mut u_read, mut u_write) = tokio::io::split(rig.upstream);
            let sent = up.clone();
            let writer = tokio::spawn(async move {
                for piece in sent.chunks(999) {
                    c_write.write_all(piece).await.unwrap();
                }
                c_write
            });
            expect_bytes(&mut u_read, c_early).await;
            expect_bytes(&mut u_read, &up).await;
            let mut c_write = writer.await.unwrap();
            u_write.write_all(&down).await.unwrap();
            expect_bytes(&mut c_read, u_early).await;
            expect_bytes(&mut c_read, &down).await;
            let c_close = cf(true, CLOSE, &close_body(1000, b"bye"));
            c_write.write_all(&c_close).await.unwrap();
            expect_bytes(&mut u_read, &c_close).await;
            let u_close = sf(true, CLOSE, &close_body(1000, b"bye"));
            u_write.write_all(&u_close).await.unwrap();
            u_write.shutdown().await.unwrap();
            expect_bytes(&mut c_read, &u_close).await;
            assert_eq!(read_all(&mut c_read).await, b"");
            c_write.shutdown().await.unwrap();
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.engine, Engine::Inspect);
            assert_eq!(out.closed_by, ClosedBy::Upstream);
            let ws = out.ws.unwrap();
            let pieces = big.len().div_ceil(70_000) as u64;
            assert_eq!(
                (ws.messages_up, ws.frames_up),
                (1 + 1 + 5, 1 + 2 * pieces + 5 + 1)
            );
            assert_eq!((ws.messages_down, ws.frames_down), (2, 1 + 3 + 1));
            let close = ws.close.unwrap();
            assert_eq!(
                (close.code, close.reason.as_bytes(), close.initiator),
                (1000, &b"bye"[..], Initiator::Client)
            );
            let total_up = (c_early.len() + up.len() + c_close.len()) as u64;
            assert_eq!(out.bytes_up, total_up);
            rig.polite.take();
            rig.drain.take();
        })
        .await
        .unwrap();
    }

    /// SPEC §9 limits: the offender gets 1009, the other side `close_code` (masked towards the
    /// upstream), nothing of the oversized frame passes, and both legs are closed.
    #[tokio::test]
    async fn frame_limit_closes_both_sides_and_forwards_nothing_of_the_frame() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|i| i.max_frame_bytes = Some(100)));
            let ok = [cf(true, BINARY, &[1; 100]), cf(true, PING, &[2; 125])].concat();
            rig.client.write_all(&ok).await.unwrap();
            expect_bytes(&mut rig.upstream, &ok).await;
            // The header of a 101-byte frame and part of its payload.
            rig.client
                .write_all(&cf(true, BINARY, &[3; 101])[..50])
                .await
                .unwrap();
            let to_client = read_frame(&mut rig.client).await;
            assert_eq!(to_client.close(), (1009, &b"too big"[..]));
            assert!(to_client.key.is_none());
            let to_upstream = read_frame(&mut rig.upstream).await;
            assert_eq!(to_upstream.close(), (CC, &b"going away"[..]));
            assert!(to_upstream.key.is_some_and(|k| k != [0; 4]));
            assert_eq!(read_all(&mut rig.upstream).await, b"");
            assert_eq!(read_all(&mut rig.client).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Limit);
            let ws = out.ws.unwrap();
            let close = ws.close.unwrap();
            assert_eq!((close.code, close.initiator), (1009, Initiator::Gateway));
            assert_eq!((ws.frames_up, ws.messages_up), (2, 1));
        })
        .await
        .unwrap();
    }

    /// A message going over `max_message_bytes` in its third frame, from the upstream.
    #[tokio::test]
    async fn message_limit_sums_the_frames_of_a_message() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|i| i.max_message_bytes = Some(1000)));
            let ok = [sf(false, TEXT, &[1; 400]), sf(false, CONT, &[2; 400])].concat();
            rig.upstream.write_all(&ok).await.unwrap();
            expect_bytes(&mut rig.client, &ok).await;
            rig.upstream
                .write_all(&sf(true, CONT, &[3; 400]))
                .await
                .unwrap();
            let to_client = read_frame(&mut rig.client).await;
            assert_eq!(to_client.close().0, CC);
            let to_upstream = read_frame(&mut rig.upstream).await;
            assert_eq!(to_upstream.close().0, 1009);
            assert!(to_upstream.key.is_some());
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Limit);
            assert_eq!(out.ws.unwrap().close.unwrap().code, 1009);
        })
        .await
        .unwrap();
    }

    /// SPEC §9 violations: the offender gets 1002, the other side `close_code`, nothing of the
    /// offending frame passes; while the direction towards the offender is inside a frame, its
    /// close waits for the end of that frame.
    #[tokio::test]
    async fn violation_closes_with_1002_at_the_offenders_next_boundary() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|_| {}));
            // The upstream is halfway through a frame to the client.
            let big = sf(true, BINARY, &[5; 1000]);
            rig.upstream.write_all(&big[..500]).await.unwrap();
            expect_bytes(&mut rig.client, &big[..500]).await;
            // An unmasked client frame.
            rig.client
                .write_all(&sf(true, TEXT, b"not masked"))
                .await
                .unwrap();
            let to_upstream = read_frame(&mut rig.upstream).await;
            assert_eq!(to_upstream.close(), (CC, &b"going away"[..]));
            rig.upstream.write_all(&big[500..]).await.unwrap();
            expect_bytes(&mut rig.client, &big[500..]).await;
            let to_client = read_frame(&mut rig.client).await;
            assert_eq!(to_client.close(), (1002, &b"protocol error"[..]));
            assert_eq!(read_all(&mut rig.client).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Protocol);
            let close = out.ws.unwrap().close.unwrap();
            assert_eq!((close.code, close.initiator), (1002, Initiator::Gateway));
        })
        .await
        .unwrap();
    }

    /// SPEC §9 polite ending: a drain while the client is inside a large frame. The client gets
    /// close `close_code` "going away" at once (its direction is at a boundary); the upstream
    /// gets the rest of the frame, then its close; both connections stay open for the replies,
    /// after which the tunnel ends (`Drain`).
    #[tokio::test]
    async fn drain_closes_politely_after_the_frame_in_flight() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|_| {}));
            let big = cf(true, BINARY, &random_bytes(300_000, 9));
            let cut = 100_014;
            let (mut c_read, mut c_write) = tokio::io::split(rig.client);
            let (mut u_read, mut u_write) = tokio::io::split(rig.upstream);
            c_write.write_all(&big[..cut]).await.unwrap();
            expect_bytes(&mut u_read, &big[..cut]).await;
            rig.polite.take().unwrap().send(PoliteEnd::Drain).unwrap();
            let to_client = read_frame(&mut c_read).await;
            assert_eq!(to_client.close(), (CC, &b"going away"[..]));
            let rest = big[cut..].to_vec();
            let writer = tokio::spawn(async move {
                c_write.write_all(&rest).await.unwrap();
                c_write
            });
            expect_bytes(&mut u_read, &big[cut..]).await;
            let to_upstream = read_frame(&mut u_read).await;
            assert_eq!(to_upstream.close(), (CC, &b"going away"[..]));
            assert!(to_upstream.key.is_some());
            let mut c_write = writer.await.unwrap();
            assert!(!rig.tunnel.is_finished(), "ended before the close replies");
            // The replies: neither is forwarded (each side already has the gateway's close).
            c_write
                .write_all(&cf(true, CLOSE, &close_body(CC, b"")))
                .await
                .unwrap();
            u_write
                .write_all(&sf(true, CLOSE, &close_body(CC, b"")))
                .await
                .unwrap();
            u_write.shutdown().await.unwrap();
            assert_eq!(read_all(&mut u_read).await, b"");
            assert_eq!(read_all(&mut c_read).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            let close = out.ws.unwrap().close.unwrap();
            assert_eq!(
                (close.code, close.reason.as_bytes(), close.initiator),
                (CC, &b"going away"[..], Initiator::Gateway)
            );
            rig.drain.take();
        })
        .await
        .unwrap();
    }

    /// A close handshake under way when the polite end comes is left to finish: no frame of
    /// the gateway's; `closed_by` is the side that sent the first close.
    #[tokio::test]
    async fn polite_end_leaves_a_close_handshake_to_finish() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|_| {}));
            let c_close = cf(true, CLOSE, &close_body(1000, b"client-bye"));
            rig.client.write_all(&c_close).await.unwrap();
            expect_bytes(&mut rig.upstream, &c_close).await;
            rig.polite.take().unwrap().send(PoliteEnd::Restart).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let u_close = sf(true, CLOSE, &close_body(1000, b"client-bye"));
            rig.upstream.write_all(&u_close).await.unwrap();
            rig.upstream.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.client).await, u_close);
            rig.client.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.upstream).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Client);
            assert_eq!(out.ws.unwrap().close.unwrap().initiator, Initiator::Client);
        })
        .await
        .unwrap();
    }

    /// Peers that never answer the gateway's close frames are closed `GIVE_UP` after them.
    #[tokio::test(start_paused = true)]
    async fn unanswered_close_frames_are_given_up_after_five_seconds() {
        timeout(PAUSED_LIMIT, async {
            let mut rig = rig(inspect(|_| {}));
            let started = Instant::now();
            rig.polite.take().unwrap().send(PoliteEnd::Reload).unwrap();
            assert_eq!(read_frame(&mut rig.client).await.close().0, CC);
            assert_eq!(read_frame(&mut rig.upstream).await.close().0, CC);
            assert_eq!(read_all(&mut rig.client).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            let waited = started.elapsed();
            assert!(
                waited >= GIVE_UP && waited < GIVE_UP + Duration::from_millis(50),
                "{waited:?}"
            );
            rig.drain.take();
        })
        .await
        .unwrap();
    }

    /// `max_lifetime` ends an inspected tunnel politely, traffic or not (`Lifetime`).
    #[tokio::test(start_paused = true)]
    async fn lifetime_closes_politely() {
        timeout(PAUSED_LIMIT, async {
            let mut cfg = inspect(|_| {});
            cfg.max_lifetime = Some(Duration::from_secs(60));
            let mut rig = rig(cfg);
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(30)).await;
            let m = cf(true, TEXT, b"traffic");
            rig.client.write_all(&m).await.unwrap();
            expect_bytes(&mut rig.upstream, &m).await;
            let close = read_frame(&mut rig.client).await;
            assert_eq!(close.close(), (CC, &b"going away"[..]));
            assert_eq!(started.elapsed(), Duration::from_secs(60));
            assert_eq!(read_frame(&mut rig.upstream).await.close().0, CC);
            rig.client
                .write_all(&cf(true, CLOSE, &close_body(CC, b"")))
                .await
                .unwrap();
            rig.upstream
                .write_all(&sf(true, CLOSE, &close_body(CC, b"")))
                .await
                .unwrap();
            rig.upstream.shutdown().await.unwrap();
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Lifetime);
            assert!(out.duration < Duration::from_secs(61));
            rig.drain.take();
        })
        .await
        .unwrap();
    }

    /// A peer that is silent but answers pings is kept; the pongs answering gateway pings are
    /// not forwarded, the peers' own pings and pongs are; pings to the upstream are masked.
    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_a_silent_tunnel_and_their_pongs_are_swallowed() {
        timeout(PAUSED_LIMIT, async {
            let cfg = inspect(|i| {
                i.ping_interval = Some(Duration::from_secs(30));
                i.ping_timeout = Duration::from_secs(10);
            });
            let mut rig = rig(cfg);
            let mut keys = Vec::new();
            for _ in 0..3 {
                let to_client = read_frame(&mut rig.client).await;
                assert_eq!((to_client.opcode, to_client.key), (PING, None));
                rig.client
                    .write_all(&cf(true, PONG, &to_client.payload))
                    .await
                    .unwrap();
                let to_upstream = read_frame(&mut rig.upstream).await;
                assert_eq!(to_upstream.opcode, PING);
                keys.push(to_upstream.key.unwrap());
                rig.upstream
                    .write_all(&sf(true, PONG, &to_upstream.payload))
                    .await
                    .unwrap();
            }
            assert_ne!(keys[0], keys[1]);
            // The peers' own control frames pass; no swallowed pong ever arrived before them.
            let ping = cf(true, PING, b"client-ping");
            rig.client.write_all(&ping).await.unwrap();
            expect_bytes(&mut rig.upstream, &ping).await;
            let pong = sf(true, PONG, b"client-ping");
            rig.upstream.write_all(&pong).await.unwrap();
            expect_bytes(&mut rig.client, &pong).await;
            let out_before = rig.tunnel.is_finished();
            assert!(!out_before);
            rig.client.shutdown().await.unwrap();
            rig.upstream.shutdown().await.unwrap();
            let out = rig.tunnel.await.unwrap();
            assert!(matches!(
                out.closed_by,
                ClosedBy::Client | ClosedBy::Upstream
            ));
            assert!(out.ws.unwrap().close.is_none());
            rig.drain.take();
            rig.polite.take();
        })
        .await
        .unwrap();
    }

    /// A pinged side that sends nothing within `ping_timeout` ends the tunnel: both sides get
    /// close 1001, the live side's reply is awaited, `PingTimeout`.
    #[tokio::test(start_paused = true)]
    async fn dead_peer_gets_1001_after_ping_timeout() {
        timeout(PAUSED_LIMIT, async {
            let cfg = inspect(|i| {
                i.ping_interval = Some(Duration::from_millis(500));
                i.ping_timeout = Duration::from_millis(500);
            });
            let mut rig = rig(cfg);
            let started = Instant::now();
            // The client answers, the upstream is dead.
            let close = loop {
                let f = read_frame(&mut rig.client).await;
                match f.opcode {
                    PING => rig
                        .client
                        .write_all(&cf(true, PONG, &f.payload))
                        .await
                        .unwrap(),
                    _ => break f,
                }
            };
            assert_eq!(close.close().0, 1001);
            assert_eq!(started.elapsed(), Duration::from_secs(1));
            let ping = read_frame(&mut rig.upstream).await;
            assert!(ping.opcode == PING && ping.key.is_some());
            let close = read_frame(&mut rig.upstream).await;
            assert!(close.close().0 == 1001 && close.key.is_some());
            rig.client
                .write_all(&cf(true, CLOSE, &close_body(1001, b"")))
                .await
                .unwrap();
            assert_eq!(read_all(&mut rig.client).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::PingTimeout);
            let close = out.ws.unwrap().close.unwrap();
            assert_eq!((close.code, close.initiator), (1001, Initiator::Gateway));
            rig.drain.take();
            rig.polite.take();
        })
        .await
        .unwrap();
    }

    /// A ping goes at a frame boundary of the direction towards its side: never inside the
    /// frame the upstream is sending to the silent client.
    #[tokio::test(start_paused = true)]
    async fn ping_waits_for_a_frame_boundary() {
        timeout(PAUSED_LIMIT, async {
            let cfg = inspect(|i| {
                i.ping_interval = Some(Duration::from_millis(500));
                i.ping_timeout = Duration::from_secs(2);
            });
            let mut rig = rig(cfg);
            let big = sf(true, BINARY, &random_bytes(20_000, 4));
            rig.upstream.write_all(&big[..10_000]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1300)).await;
            rig.upstream.write_all(&big[10_000..]).await.unwrap();
            let f = read_frame(&mut rig.client).await;
            assert!(f.raw == big, "the frame in flight was cut");
            let ping = read_frame(&mut rig.client).await;
            assert!(ping.opcode == PING && ping.fin && ping.key.is_none());
            rig.drain.take().unwrap().send(()).unwrap();
            assert_eq!(rig.tunnel.await.unwrap().closed_by, ClosedBy::Drain);
            rig.polite.take();
        })
        .await
        .unwrap();
    }

    /// SPEC §5/§9: a direction waiting for its source holds no copy buffer, even with the start
    /// of a header held back (it waits inside the follower).
    #[tokio::test]
    async fn waiting_direction_holds_no_buffer() {
        timeout(LIMIT, async {
            let (mut src_app, mut src) = tokio::io::duplex(64);
            let (mut dst, mut dst_app) = tokio::io::duplex(64);
            let meter = Meter::new(None);
            let follower = Follower::new(Sender::Client, Extensions::default(), Limits::default());
            let mut dir = Dir::new(Direction::Up, follower, Bytes::new(), Instant::now());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(dir.poll(&mut cx, &mut src, &mut dst, &meter).is_pending());
            assert!(dir.buf.is_none());
            let m = cf(true, TEXT, b"abc");
            src_app.write_all(&m[..4]).await.unwrap();
            assert!(dir.poll(&mut cx, &mut src, &mut dst, &meter).is_pending());
            assert!(dir.buf.is_none(), "a held header kept the buffer");
            assert_eq!(meter.bytes_up(), 0, "part of a header went out");
            src_app.write_all(&m[4..]).await.unwrap();
            assert!(dir.poll(&mut cx, &mut src, &mut dst, &meter).is_pending());
            assert!(dir.buf.is_none());
            expect_bytes(&mut dst_app, &m).await;
        })
        .await
        .unwrap();
    }

    /// Half-close: the client's EOF is passed on while the upstream still talks.
    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        timeout(LIMIT, async {
            let mut rig = rig(inspect(|_| {}));
            let m = cf(true, TEXT, b"hello");
            rig.client.write_all(&m).await.unwrap();
            rig.client.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.upstream).await, m);
            let r = sf(true, TEXT, b"reply");
            rig.upstream.write_all(&r).await.unwrap();
            expect_bytes(&mut rig.client, &r).await;
            assert!(!rig.tunnel.is_finished());
            rig.upstream.shutdown().await.unwrap();
            assert_eq!(read_all(&mut rig.client).await, b"");
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Client);
            assert_eq!(out.ws.unwrap().close, None);
            rig.drain.take();
            rig.polite.take();
        })
        .await
        .unwrap();
    }

    /// A reset from the upstream (TCP legs, which inspection takes too) closes the client.
    #[tokio::test]
    async fn reset_closes_the_other_side_on_tcp_legs() {
        timeout(LIMIT, async {
            let (mut client, client_gw) = crate::tunnel::testing::tcp_pair().await;
            let (upstream, upstream_gw) = crate::tunnel::testing::tcp_pair().await;
            let cfg = inspect(|_| {});
            let tunnel = tokio::spawn(async move {
                run(
                    Leg::tcp(client_gw, Bytes::new()),
                    Leg::tcp(upstream_gw, Bytes::new()),
                    &cfg,
                    std::future::pending(),
                    std::future::pending(),
                )
                .await
            });
            let mut upstream = upstream;
            let m = cf(true, TEXT, b"up");
            client.write_all(&m).await.unwrap();
            expect_bytes(&mut upstream, &m).await;
            upstream.set_zero_linger().unwrap();
            drop(upstream);
            let out = tunnel.await.unwrap();
            assert_eq!(
                (out.closed_by, out.engine),
                (ClosedBy::Upstream, Engine::Inspect)
            );
            let mut rest = Vec::new();
            let seen = client.read_to_end(&mut rest).await;
            assert!(seen.is_err() || rest.is_empty());
        })
        .await
        .unwrap();
    }
}
