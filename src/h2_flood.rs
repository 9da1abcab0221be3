//! Control-frame flood guard for h2 connections (SPEC §6 "h2 limits"). The `h2` crate answers
//! every PING and applies every SETTINGS without limit, so a client can keep a server busy with
//! them at no cost of its own; [`FloodGuard`] sits between TLS and hyper, follows the frame
//! headers the client sends (type and length only; every byte passes through unchanged), and
//! when PING, SETTINGS or RST_STREAM frames come faster than [`MAX_CONTROL_FRAMES`] per second
//! it ends the connection itself: GOAWAY(ENHANCE_YOUR_CALM) written at the next outbound frame
//! boundary, TLS close, then what the client still sends is read and dropped for [`LINGER`] so
//! that the GOAWAY is not destroyed by a reset in flight, then end of stream to hyper. h2's own
//! GOAWAYs (its reset and CONTINUATION limits, errors, graceful closes) get the same linger
//! when h2 shuts the connection down.
//!
//! RST_STREAM is counted too: `h2` only limits resets of streams not yet accepted (hyper's
//! `max_pending_accept_reset_streams`), which a client that paces its HEADERS/RST_STREAM pairs
//! slips under (CVE-2023-44487).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most PING, SETTINGS or RST_STREAM frames (each kind counted on its own) a client may send in
/// one burst, and per second sustained: SPEC §6 "more than 1,000 within a second".
pub(crate) const MAX_CONTROL_FRAMES: u32 = 1000;

/// How long a flooding client's bytes are still read (and dropped) after our GOAWAY.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// RFC 9113 §3.4: the client connection preface, before its first frame.
const PREFACE_LEN: usize = 24;
/// RFC 9113 §4.1: length (24 bits), type, flags, stream identifier (31 bits).
const HEADER_LEN: usize = 9;

const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
/// RFC 9113 §7.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Follows frame boundaries in one direction of an h2 byte stream from the headers alone.
#[derive(Debug, Clone)]
struct Frames {
    /// Preface bytes still to pass (inbound only).
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    payload_left: usize,
}

impl Frames {
    fn new(preface_len: usize) -> Frames {
        Frames {
            preface_left: preface_len,
            header: [0; HEADER_LEN],
            header_filled: 0,
            payload_left: 0,
        }
    }

    /// Between two frames (after the preface).
    fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.header_filled == 0 && self.payload_left == 0
    }

    /// Consumes `bytes` up to the end of the current frame (or all of them); returns how many,
    /// and the header if one was completed.
    fn advance(&mut self, bytes: &[u8]) -> (usize, Option<[u8; HEADER_LEN]>) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            self.preface_left -= n;
            return (n, None);
        }
        if self.header_filled < HEADER_LEN && self.payload_left == 0 {
            let n = (HEADER_LEN - self.header_filled).min(bytes.len());
            self.header[self.header_filled..self.header_filled + n].copy_from_slice(&bytes[..n]);
            self.header_filled += n;
            if self.header_filled < HEADER_LEN {
                return (n, None);
            }
            let header = self.header;
            self.header_filled = 0;
            self.payload_left =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            return (n, Some(header));
        }
        let n = self.payload_left.min(bytes.len());
        self.payload_left -= n;
        (n, None)
    }

    /// Feeds all of `bytes`, calling `on_header` for every header completed.
    fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&[u8; HEADER_LEN])) {
        while !bytes.is_empty() {
            let (n, header) = self.advance(bytes);
            if let Some(h) = header {
                on_header(&h);
            }
            bytes = &bytes[n..];
        }
    }

    /// How many of `bytes` complete the current frame; `None` if they do not reach its end.
    fn to_boundary(&self, bytes: &[u8]) -> Option<usize> {
        let mut probe = self.clone();
        let mut used = 0;
        while !probe.at_boundary() {
            if used == bytes.len() {
                return None;
            }
            used += probe.advance(&bytes[used..]).0;
        }
        Some(used)
    }
}

/// A token bucket of [`MAX_CONTROL_FRAMES`]: full burst, refilled at that rate per second.
/// Counted in millionths of a frame so that a client at exactly the limit never trips it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    micro_tokens: u64,
    last: Option<Instant>,
}

impl Bucket {
    const ONE: u64 = 1_000_000;
    const FULL: Bucket = Bucket {
        micro_tokens: MAX_CONTROL_FRAMES as u64 * Bucket::ONE,
        last: None,
    };

    /// Takes one token at `now`; false once the bucket is empty.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let micros =
                u64::try_from(now.saturating_duration_since(last).as_micros()).unwrap_or(u64::MAX);
            let refill = micros.saturating_mul(u64::from(MAX_CONTROL_FRAMES));
            self.micro_tokens = self
                .micro_tokens
                .saturating_add(refill)
                .min(Bucket::FULL.micro_tokens);
        }
        self.last = Some(now);
        match self.micro_tokens.checked_sub(Bucket::ONE) {
            Some(left) => {
                self.micro_tokens = left;
                true
            }
            None => false,
        }
    }
}

/// What the client has sent, as far as the flood guard cares.
#[derive(Debug)]
struct Inbound {
    frames: Frames,
    ping: Bucket,
    settings: Bucket,
    reset: Bucket,
    /// Highest stream a HEADERS frame opened: our GOAWAY's last stream identifier.
    last_stream: u32,
}

impl Inbound {
    /// Follows `bytes`; the kind of frame that overflowed its bucket, if one did.
    fn feed(&mut self, bytes: &[u8]) -> Option<&'static str> {
        let mut flood = None;
        let Inbound {
            frames,
            ping,
            settings,
            reset,
            last_stream,
        } = self;
        frames.feed(bytes, |h| {
            let (bucket, kind) = match h[3] {
                PING => (&mut *ping, "PING"),
                SETTINGS => (&mut *settings, "SETTINGS"),
                RST_STREAM => (&mut *reset, "RST_STREAM"),
                HEADERS => {
                    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    *last_stream = (*last_stream).max(id);
                    return;
                }
                _ => return,
            };
            if !bucket.take(Instant::now()) && flood.is_none() {
                flood = Some(kind);
            }
        });
        flood
    }
}

enum State {
    Serving,
    /// A flood was seen: `goaway` goes out at the next outbound frame boundary; nothing more
    /// reaches hyper.
    Tripped {
        goaway: [u8; HEADER_LEN + 8],
        written: usize,
    },
    /// GOAWAY flushed (ours, or h2's before its shutdown): shutting the write side, then
    /// reading and dropping until `until` or the client's end of stream.
    Closing {
        until: Pin<Box<Sleep>>,
        shut: bool,
        drained: usize,
    },
    /// End of stream to hyper; writes are dropped.
    Closed,
}

impl State {
    fn lingering() -> State {
        State::Closing {
            until: Box::pin(tokio::time::sleep(LINGER)),
            shut: false,
            drained: 0,
        }
    }
}

/// An h2 server connection's IO with the control-frame flood guard (see the module docs).
pub(crate) struct FloodGuard<S> {
    io: S,
    inbound: Inbound,
    outbound: Frames,
    state: State,
    /// The reader parked while a flood waits for the outbound frame in progress to end.
    parked_reader: Option<Waker>,
}

impl<S> FloodGuard<S> {
    pub(crate) fn new(io: S) -> FloodGuard<S> {
        FloodGuard {
            io,
            inbound: Inbound {
                frames: Frames::new(PREFACE_LEN),
                ping: Bucket::FULL,
                settings: Bucket::FULL,
                reset: Bucket::FULL,
                last_stream: 0,
            },
            outbound: Frames::new(0),
            state: State::Serving,
            parked_reader: None,
        }
    }

    fn trip(&mut self, kind: &'static str) {
        tracing::info!(
            frame = kind,
            limit = MAX_CONTROL_FRAMES,
            "h2 control frame flood: GOAWAY ENHANCE_YOUR_CALM"
        );
        let mut goaway = [0u8; HEADER_LEN + 8];
        goaway[..HEADER_LEN].copy_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0]);
        goaway[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&self.inbound.last_stream.to_be_bytes());
        goaway[HEADER_LEN + 4..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.state = State::Tripped { goaway, written: 0 };
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FloodGuard<S> {
    /// Moves a tripped connection on towards its close as far as it can without blocking on
    /// hyper: GOAWAY (at a frame boundary), TLS close, lingering reads. Ready once closed.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Serving => unreachable!("poll_close while serving"),
                State::Tripped { goaway, written } => {
                    if !self.outbound.at_boundary() {
                        // The frame hyper is writing must end first; its next write does it.
                        self.parked_reader = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    while *written < goaway.len() {
                        let n = ready!(Pin::new(&mut self.io).poll_write(cx, &goaway[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    self.state = State::lingering();
                }
                State::Closing {
                    until,
                    shut,
                    drained,
                } => {
                    if !*shut {
                        // An error here only means the client is gone already.
                        let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                        *shut = true;
                    }
                    let mut sink = [0u8; 4096];
                    loop {
                        if until.as_mut().poll(cx).is_ready() || *drained > LINGER_BYTES {
                            break;
                        }
                        let mut buf = ReadBuf::new(&mut sink);
                        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                            Ok(()) if !buf.filled().is_empty() => *drained += buf.filled().len(),
                            _ => break,
                        }
                    }
                    self.state = State::Closed;
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }

    /// After a write of `n` bytes while tripped: wakes the parked reader once the frame in
    /// progress has ended, so the GOAWAY can go out.
    fn wrote_while_tripped(&mut self) {
        if self.outbound.at_boundary() {
            if let Some(w) = self.parked_reader.take() {
                w.wake();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !matches!(me.state, State::Serving) {
            // End of stream once closed; hyper sees nothing more from this client.
            return me.poll_close(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
        match me.inbound.feed(&buf.filled()[before..]) {
            None => Poll::Ready(Ok(())),
            Some(kind) => {
                buf.set_filled(before);
                me.trip(kind);
                me.poll_close(cx)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let len = match me.state {
            State::Serving => buf.len(),
            // Only the rest of the frame in progress still goes out, then the GOAWAY.
            State::Tripped { .. } => match me.outbound.to_boundary(buf) {
                Some(0) => return Poll::Ready(Ok(buf.len())),
                Some(n) => n,
                None => buf.len(),
            },
            State::Closing { .. } | State::Closed => return Poll::Ready(Ok(buf.len())),
        };
        let n = ready!(Pin::new(&mut me.io).poll_write(cx, &buf[..len]))?;
        me.outbound.feed(&buf[..n], |_| {});
        if matches!(me.state, State::Tripped { .. }) {
            me.wrote_while_tripped();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if !matches!(me.state, State::Serving) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(me).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut me.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            let take = left.min(b.len());
            me.outbound.feed(&b[..take], |_| {});
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.state {
            State::Serving => Pin::new(&mut me.io).poll_flush(cx),
            State::Tripped { .. } if !me.outbound.at_boundary() => {
                Pin::new(&mut me.io).poll_flush(cx)
            }
            // The GOAWAY (and its flush) is the read side's job; hyper's frames are dropped.
            _ => {
                if let Some(w) = me.parked_reader.take() {
                    w.wake();
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// h2 shuts down after its own GOAWAY (a flood it caught, a protocol error, or the end of a
    /// graceful close): the same close and linger as after ours.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if matches!(me.state, State::Serving) {
            me.state = State::lingering();
        }
        me.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        wire.extend(frame(0x0, 0, 1, &[7; 300]));
        wire.extend(frame(PING, 0, 0, &[1; 8]));
        for step in [1, 2, 9, 10, 31, 4096] {
            let mut frames = Frames::new(PREFACE_LEN);
            let mut seen = Vec::new();
            for chunk in wire.chunks(step) {
                frames.feed(chunk, |h| seen.push(h[3]));
            }
            assert_eq!(seen, [SETTINGS, 0x0, PING], "chunks of {step}");
            assert!(frames.at_boundary());
        }
        let mut frames = Frames::new(0);
        let data = frame(0x0, 0, 1, &[0; 20]);
        frames.feed(&data[..5], |_| {});
        assert_eq!(frames.to_boundary(&data[5..]), Some(24));
        assert_eq!(frames.to_boundary(&data[5..20]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_over_the_limit_trips_and_a_steady_rate_does_not() {
        let mut inbound = Inbound {
            frames: Frames::new(0),
            ping: Bucket::FULL,
            settings: Bucket::FULL,
            reset: Bucket::FULL,
            last_stream: 0,
        };
        let ping = frame(PING, 0, 0, &[0; 8]);
        // One burst of the limit, then the limit again per second, spread out: fine.
        for _ in 0..MAX_CONTROL_FRAMES {
            assert_eq!(inbound.feed(&ping), None);
        }
        for _ in 0..3 * MAX_CONTROL_FRAMES {
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(inbound.feed(&ping), None);
        }
        // SETTINGS have their own bucket.
        assert_eq!(inbound.feed(&frame(SETTINGS, 1, 0, &[])), None);
        // One more PING within the same millisecond is one too many.
        assert_eq!(inbound.feed(&ping), Some("PING"));
    }

    /// A flood gets the GOAWAY after the frame the server was writing, then the close; hyper's
    /// reader sees end of stream and none of the flood's bytes.
    #[tokio::test(start_paused = true)]
    async fn a_flood_is_answered_with_goaway_at_a_frame_boundary() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut guard = FloodGuard::new(server);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 0x4, 5, &[0x82]));
        let ping = frame(PING, 0, 0, &[0; 8]);
        for _ in 0..=MAX_CONTROL_FRAMES {
            wire.extend_from_slice(&ping);
        }
        client.write_all(&wire).await.unwrap();
        // The server is half way through a DATA frame when the flood arrives.
        let data = frame(0x0, 0, 5, &[9; 100]);
        guard.write_all(&data[..50]).await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut passed = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(10), guard.read(&mut buf)).await {
                Ok(Ok(n)) => {
                    assert!(n > 0, "end of stream before the GOAWAY could go out");
                    passed += n;
                }
                Ok(Err(e)) => panic!("{e}"),
                // Parked: the GOAWAY waits for the DATA frame to end.
                Err(_) => break,
            }
        }
        assert!(passed < wire.len(), "the whole flood reached hyper");
        // Hyper finishes its frame; what it writes after that is dropped.
        guard.write_all(&data[50..]).await.unwrap();
        guard.write_all(&frame(PING, 1, 0, &[0; 8])).await.unwrap();
        guard.flush().await.unwrap();
        assert_eq!(guard.read(&mut buf).await.unwrap(), 0, "end of stream");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let mut want = data.clone();
        want.extend(frame(0x7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0xb]));
        assert_eq!(out, want);
    }
}
