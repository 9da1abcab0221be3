//! The frame follower: one direction's RFC 6455 §5.2 headers, judged as the bytes pass.
//!
//! The engine hands [`Follower::step`] the bytes it has not judged yet; each call looks at no
//! more than one frame and says what to do with a prefix of them ([`Step`]). A header is judged
//! whole before any byte of it goes out, because nothing of an offending frame may be forwarded:
//! a header cut by a read is taken into the follower ([`Step::Hold`]) and given back with the
//! read that completes it ([`Step::Release`]). Payload passes as it comes, counted, never held,
//! never unmasked, except the close frame's (code and reason) and a pong that may answer the
//! gateway's own ping, which is held whole (at most 131 bytes) to compare its payload.

use super::{CloseReason, Extensions, code};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// 2 bytes, a 64-bit length, a mask key.
const MAX_HEADER: usize = 14;
/// The most bytes a follower holds back: a whole masked pong (2 header bytes, the key, 125
/// payload bytes); an engine keeps this much room in front of each read for [`Step::Release`].
pub(crate) const MAX_HELD: usize = 2 + 4 + MAX_CONTROL_PAYLOAD as usize;

/// Length of the payload of the gateway's pings (and so of the pongs it swallows).
pub(crate) const PING_PAYLOAD: usize = 8;

/// Whose frames a follower reads: RFC 6455 §5.1, a client masks every frame, a server none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Client,
    Upstream,
}

/// The limits of SPEC §9 on data frames; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Payload bytes of one data frame.
    pub(crate) max_frame_bytes: Option<u64>,
    /// Payload bytes of one data message, summed over its frames as they travel.
    pub(crate) max_message_bytes: Option<u64>,
}

/// What to do with a prefix of the bytes just given to [`Follower::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Forward the first `n` bytes as they are.
    Forward(usize),
    /// The first `n` bytes (the whole input) were taken into the follower: the start of a
    /// header, or of a pong it must see whole. Forward nothing; give it the next bytes.
    Hold(usize),
    /// The held frame start is fine: forward [`Follower::released`] (bytes of earlier inputs),
    /// then the first `n` bytes of this input.
    Release(usize),
    /// The held frame plus the first `n` bytes of this input were the pong answering the
    /// gateway's ping: forward none of it.
    Swallow(usize),
    /// The frame starting here may not pass (input not consumed; every later call says the
    /// same): nothing of it, held bytes included, may be forwarded.
    Stop(Verdict),
}

/// Why a frame may not pass (SPEC §9): a protocol violation visible in its header, or a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A client frame without the mask bit.
    Unmasked,
    /// An upstream frame with the mask bit.
    Masked,
    /// RSV1 without a negotiated permessage-deflate.
    Rsv1,
    /// RSV2 or RSV3 without any negotiated extension.
    Rsv23,
    /// An opcode RFC 6455 §5.2 reserves (0x3-0x7, 0xB-0xF).
    ReservedOpcode,
    /// A control frame over 125 bytes.
    ControlTooLong,
    /// A control frame without FIN.
    FragmentedControl,
    /// A continuation frame with no message started.
    OrphanContinuation,
    /// A text or binary frame inside a fragmented message.
    MessageInMessage,
    /// A data frame over `max_frame_bytes`.
    FrameTooBig,
    /// A data message going over `max_message_bytes`.
    MessageTooBig,
}

impl Verdict {
    /// A limit (close 1009), not a protocol violation (close 1002).
    pub(crate) fn is_limit(self) -> bool {
        matches!(self, Verdict::FrameTooBig | Verdict::MessageTooBig)
    }

    /// The code of the close frame the offender gets.
    pub(crate) fn close_code(self) -> u16 {
        if self.is_limit() {
            code::TOO_BIG
        } else {
            code::PROTOCOL_ERROR
        }
    }
}

/// A close frame's code (1005 when it has none) and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: CloseReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a header; `held` has its first bytes.
    Head,
    /// Inside the current frame's payload; its header has been forwarded.
    Payload,
    /// Holding a whole pong (header of `head` bytes, `total` bytes in all) in `held`.
    Pong { head: u8, total: u8 },
    /// A verdict was given; nothing more is judged.
    Stopped(Verdict),
}

/// One direction's frames as they pass (see the module doc). Holds at most 131 bytes inline.
#[derive(Clone)]
pub(crate) struct Follower {
    masked: bool,
    extensions: Extensions,
    limits: Limits,
    state: State,
    held: [u8; MAX_HELD],
    held_len: u8,
    released: u8,
    // The current frame.
    opcode: u8,
    mask: Option<[u8; 4]>,
    remaining: u64,
    offset: u64,
    close_code: [u8; 2],
    close_reason: CloseReason,
    // The conversation.
    in_message: bool,
    message_bytes: u64,
    frames: u64,
    messages: u64,
    close: Option<Close>,
    pong: Option<[u8; PING_PAYLOAD]>,
}

impl Follower {
    /// A follower of `sender`'s frames on a tunnel with these extensions and limits.
    pub(crate) fn new(sender: Sender, extensions: Extensions, limits: Limits) -> Self {
        Follower {
            masked: sender == Sender::Client,
            extensions,
            limits,
            state: State::Head,
            held: [0; MAX_HELD],
            held_len: 0,
            released: 0,
            opcode: 0,
            mask: None,
            remaining: 0,
            offset: 0,
            close_code: [0; 2],
            close_reason: CloseReason::empty(),
            in_message: false,
            message_bytes: 0,
            frames: 0,
            messages: 0,
            close: None,
            pong: None,
        }
    }

    /// Judges the start of `input` (bytes not given before); see [`Step`].
    pub(crate) fn step(&mut self, input: &[u8]) -> Step {
        match self.state {
            State::Stopped(verdict) => Step::Stop(verdict),
            State::Head => self.head(input),
            State::Payload => {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.payload(&input[..n]);
                Step::Forward(n)
            }
            State::Pong { head, total } => {
                let held = usize::from(self.held_len);
                let n = (usize::from(total) - held).min(input.len());
                self.held[held..held + n].copy_from_slice(&input[..n]);
                self.held_len += n as u8;
                if self.held_len < total {
                    return Step::Hold(n);
                }
                self.held_len = held as u8;
                self.pong_done(usize::from(head), usize::from(total), n)
            }
        }
    }

    /// After [`Step::Release`]: the held bytes to forward before the input's.
    pub(crate) fn released(&self) -> &[u8] {
        &self.held[..usize::from(self.released)]
    }

    /// Everything forwarded so far ends at a frame boundary: a frame of the gateway's own may
    /// go out now (held bytes have not been forwarded, so they do not count).
    pub(crate) fn at_boundary(&self) -> bool {
        self.state != State::Payload
    }

    /// Frames whose header passed, control frames included.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// Data messages started (a fragmented message counts once).
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// The first close frame this sender sent, once all of it has passed.
    pub(crate) fn close(&self) -> Option<Close> {
        self.close
    }

    /// The gateway sent this sender a ping with `payload`: the pong that answers it is held
    /// whole and swallowed ([`Step::Swallow`]), other pongs still pass.
    pub(crate) fn expect_pong(&mut self, payload: [u8; PING_PAYLOAD]) {
        self.pong = Some(payload);
    }

    fn head(&mut self, input: &[u8]) -> Step {
        let held = usize::from(self.held_len);
        let mut hdr = [0u8; MAX_HEADER];
        let have = (held + input.len()).min(MAX_HEADER);
        hdr[..held].copy_from_slice(&self.held[..held]);
        hdr[held..have].copy_from_slice(&input[..have - held]);
        let need = if have >= 2 {
            header_len(hdr[1])
        } else {
            MAX_HEADER
        };
        if have < 2 || have < need {
            // `input` is shorter than the rest of the header, so it fits.
            self.held[held..held + input.len()].copy_from_slice(input);
            self.held_len += input.len() as u8;
            return Step::Hold(input.len());
        }
        let header = Header::parse(&hdr[..need]);
        if let Err(verdict) = self.judge(&header) {
            self.state = State::Stopped(verdict);
            return Step::Stop(verdict);
        }
        self.accept(&header);
        let from_input = need - held;
        if header.opcode == OP_PONG && self.pong.is_some() {
            let total = need + header.len as usize;
            if held + input.len() < total {
                self.held[held..held + input.len()].copy_from_slice(input);
                self.held_len += input.len() as u8;
                self.state = State::Pong {
                    head: need as u8,
                    total: total as u8,
                };
                return Step::Hold(input.len());
            }
            // The whole pong is here: its header bytes are `held` + `input`, its payload in
            // `input`. Lay it out in `held` to compare, as if it had been held.
            let n = total - held;
            self.held[held..total].copy_from_slice(&input[..n]);
            return self.pong_done(need, total, n);
        }
        let rest = usize::try_from(header.len).unwrap_or(usize::MAX);
        let p = rest.min(input.len() - from_input);
        self.state = State::Payload;
        self.payload(&input[from_input..from_input + p]);
        self.release(held, from_input + p)
    }

    /// A frame whose first `held` bytes came in earlier inputs goes on with `n` input bytes.
    fn release(&mut self, held: usize, n: usize) -> Step {
        self.held_len = 0;
        if held == 0 {
            Step::Forward(n)
        } else {
            self.released = held as u8;
            Step::Release(n)
        }
    }

    /// The pong in `held[..total]` (its first `held_len` bytes from earlier inputs, the last
    /// `n` from this one) is whole: swallow it if it answers the gateway's ping.
    fn pong_done(&mut self, head: usize, total: usize, n: usize) -> Step {
        let key = self.mask;
        let payload = &self.held[head..total];
        let answers = self.pong.is_some_and(|want| {
            payload.len() == want.len()
                && payload.iter().enumerate().all(|(i, &b)| {
                    let b = key.map_or(b, |k| b ^ k[i % 4]);
                    b == want[i]
                })
        });
        self.end_frame();
        if answers {
            self.pong = None;
            self.held_len = 0;
            Step::Swallow(n)
        } else {
            let held = usize::from(self.held_len);
            self.release(held, n)
        }
    }

    /// SPEC §9's header rules, then its limits.
    fn judge(&self, h: &Header) -> Result<(), Verdict> {
        if h.masked != self.masked {
            return Err(if self.masked {
                Verdict::Unmasked
            } else {
                Verdict::Masked
            });
        }
        if h.rsv & 0b100 != 0 && !self.extensions.permessage_deflate {
            return Err(Verdict::Rsv1);
        }
        let any_extension = self.extensions.any || self.extensions.permessage_deflate;
        if h.rsv & 0b011 != 0 && !any_extension {
            return Err(Verdict::Rsv23);
        }
        match h.opcode {
            OP_CONTINUATION if !self.in_message => return Err(Verdict::OrphanContinuation),
            OP_TEXT | OP_BINARY if self.in_message => return Err(Verdict::MessageInMessage),
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if h.len > MAX_CONTROL_PAYLOAD {
                    return Err(Verdict::ControlTooLong);
                }
                if !h.fin {
                    return Err(Verdict::FragmentedControl);
                }
                return Ok(());
            }
            _ => return Err(Verdict::ReservedOpcode),
        }
        if self.limits.max_frame_bytes.is_some_and(|max| h.len > max) {
            return Err(Verdict::FrameTooBig);
        }
        let so_far = if h.opcode == OP_CONTINUATION {
            self.message_bytes
        } else {
            0
        };
        if self
            .limits
            .max_message_bytes
            .is_some_and(|max| so_far.saturating_add(h.len) > max)
        {
            return Err(Verdict::MessageTooBig);
        }
        Ok(())
    }

    /// A judged header: count it and follow its frame.
    fn accept(&mut self, h: &Header) {
        self.frames += 1;
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                self.messages += 1;
                self.message_bytes = h.len;
                self.in_message = !h.fin;
            }
            OP_CONTINUATION => {
                self.message_bytes = self.message_bytes.saturating_add(h.len);
                self.in_message = !h.fin;
            }
            _ => {}
        }
        self.opcode = h.opcode;
        self.mask = h.mask;
        self.remaining = h.len;
        self.offset = 0;
        if h.opcode == OP_CLOSE {
            self.close_reason = CloseReason::empty();
        }
    }

    /// `bytes` of the current frame's payload pass.
    fn payload(&mut self, bytes: &[u8]) {
        if self.opcode == OP_CLOSE {
            for (i, &b) in bytes.iter().enumerate() {
                let at = self.offset + i as u64;
                let b = self.mask.map_or(b, |k| b ^ k[(at % 4) as usize]);
                match at {
                    0 | 1 => self.close_code[at as usize] = b,
                    _ => self.close_reason.push(&[b]),
                }
            }
        }
        self.offset += bytes.len() as u64;
        self.remaining -= bytes.len() as u64;
        if self.remaining == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        if self.opcode == OP_CLOSE && self.close.is_none() {
            let code = if self.offset >= 2 {
                u16::from_be_bytes(self.close_code)
            } else {
                code::NO_STATUS
            };
            self.close = Some(Close {
                code,
                reason: self.close_reason,
            });
        }
        self.state = State::Head;
    }
}

/// RFC 6455 §5.2 header fields.
struct Header {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// The header's length from its second byte: 2, the extended length, the mask key.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl Header {
    /// `b` is exactly one whole header (`header_len(b[1])` bytes).
    fn parse(b: &[u8]) -> Header {
        let masked = b[1] & 0x80 != 0;
        let (len, at) = match b[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Header {
            fin: b[0] & 0x80 != 0,
            rsv: (b[0] >> 4) & 0b111,
            opcode: b[0] & 0x0F,
            masked,
            mask,
            len,
        }
    }
}

/// What following a whole stream gave, for tests and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Followed {
    /// Every byte the engine would have forwarded, in order.
    pub(crate) forwarded: Vec<u8>,
    /// Offsets into `forwarded` at which it ended at a frame boundary.
    pub(crate) boundaries: Vec<usize>,
    pub(crate) verdict: Option<Verdict>,
    pub(crate) frames: u64,
    pub(crate) messages: u64,
    pub(crate) close: Option<Close>,
}

/// Feeds `chunks` one by one, as an engine does with its reads, applying every [`Step`].
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn follow_chunks(follower: &mut Follower, chunks: &[&[u8]]) -> Followed {
    let mut forwarded = Vec::new();
    let mut boundaries = vec![0];
    let mut verdict = None;
    'chunks: for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            let n = match follower.step(rest) {
                Step::Forward(n) => {
                    forwarded.extend_from_slice(&rest[..n]);
                    n
                }
                Step::Release(n) => {
                    forwarded.extend_from_slice(follower.released());
                    forwarded.extend_from_slice(&rest[..n]);
                    n
                }
                Step::Hold(n) | Step::Swallow(n) => n,
                Step::Stop(v) => {
                    verdict = Some(v);
                    break 'chunks;
                }
            };
            assert!(n > 0, "a step on {} bytes consumed none", rest.len());
            rest = &rest[n..];
            if follower.at_boundary() && boundaries.last() != Some(&forwarded.len()) {
                boundaries.push(forwarded.len());
            }
        }
    }
    Followed {
        forwarded,
        boundaries,
        verdict,
        frames: follower.frames(),
        messages: follower.messages(),
        close: follower.close(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ws::testing::frame;

    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    fn client(limits: Limits) -> Follower {
        Follower::new(Sender::Client, Extensions::default(), limits)
    }

    fn upstream(limits: Limits) -> Follower {
        Follower::new(Sender::Upstream, Extensions::default(), limits)
    }

    fn whole(f: &mut Follower, bytes: &[u8]) -> Followed {
        follow_chunks(f, &[bytes])
    }

    fn limits(frame: Option<u64>, message: Option<u64>) -> Limits {
        Limits {
            max_frame_bytes: frame,
            max_message_bytes: message,
        }
    }

    #[test]
    fn every_length_form_masked_and_not_passes_whole() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload = vec![b'x'; len];
            for (mut f, mask) in [
                (client(Limits::default()), KEY),
                (upstream(Limits::default()), None),
            ] {
                let bytes = frame(true, 0, OP_BINARY, &payload, mask);
                let got = whole(&mut f, &bytes);
                assert_eq!(got.forwarded, bytes, "{len}");
                assert_eq!(got.boundaries, [0, bytes.len()], "{len}");
                assert_eq!((got.frames, got.messages, got.verdict), (1, 1, None));
            }
        }
    }

    /// A header (and payload) cut at every offset into two reads gives the same result; no byte
    /// of a header goes out before the whole header is in.
    #[test]
    fn a_frame_split_at_every_offset_is_followed_the_same() {
        for len in [0, 5, 125, 126, 300, 65536] {
            for (sender, mask) in [(Sender::Client, KEY), (Sender::Upstream, None)] {
                let bytes = frame(false, 0, OP_TEXT, &vec![7u8; len], mask);
                let head = bytes.len() - len;
                let mut f = Follower::new(sender, Extensions::default(), Limits::default());
                let expected = whole(&mut f, &bytes);
                for cut in 0..=bytes.len().min(head + 3) {
                    let mut f = Follower::new(sender, Extensions::default(), Limits::default());
                    let first = f.step(&bytes[..cut]);
                    if cut < head {
                        assert_eq!(first, Step::Hold(cut), "{len} cut {cut}");
                    }
                    let mut f = Follower::new(sender, Extensions::default(), Limits::default());
                    let got = follow_chunks(&mut f, &[&bytes[..cut], &bytes[cut..]]);
                    assert_eq!(got, expected, "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn fragmented_message_with_control_frames_between_counts_once() {
        let mut bytes = frame(false, 0, OP_TEXT, b"frag-1", KEY);
        bytes.extend(frame(true, 0, OP_PING, b"between", KEY));
        bytes.extend(frame(false, 0, OP_CONTINUATION, b"frag-2", KEY));
        bytes.extend(frame(true, 0, OP_PONG, b"", KEY));
        bytes.extend(frame(true, 0, OP_CONTINUATION, b"frag-3", KEY));
        bytes.extend(frame(true, 0, OP_BINARY, b"next", KEY));
        let got = whole(&mut client(Limits::default()), &bytes);
        assert_eq!(got.forwarded, bytes);
        assert_eq!((got.frames, got.messages, got.verdict), (6, 2, None));
        assert_eq!(got.boundaries.len(), 7);
    }

    /// Each header rule of SPEC §9: the offending frame is refused whole, held bytes too, and
    /// what came before it was forwarded.
    #[test]
    fn violations_stop_before_the_offending_frame() {
        let ok_c = frame(true, 0, OP_TEXT, b"fine", KEY);
        let ok_u = frame(true, 0, OP_TEXT, b"fine", None);
        let open_c = frame(false, 0, OP_BINARY, b"part", KEY);
        let cases: Vec<(Sender, Vec<u8>, Vec<u8>, Verdict)> = vec![
            (
                Sender::Client,
                ok_c.clone(),
                frame(true, 0, OP_TEXT, b"x", None),
                Verdict::Unmasked,
            ),
            (
                Sender::Upstream,
                ok_u.clone(),
                frame(true, 0, OP_TEXT, b"x", KEY),
                Verdict::Masked,
            ),
            (
                Sender::Upstream,
                ok_u.clone(),
                frame(true, 4, OP_TEXT, b"x", None),
                Verdict::Rsv1,
            ),
            (
                Sender::Client,
                ok_c.clone(),
                frame(true, 2, OP_TEXT, b"x", KEY),
                Verdict::Rsv23,
            ),
            (
                Sender::Upstream,
                ok_u.clone(),
                frame(true, 1, OP_TEXT, b"x", None),
                Verdict::Rsv23,
            ),
            (
                Sender::Client,
                ok_c.clone(),
                frame(true, 0, 0x3, b"x", KEY),
                Verdict::ReservedOpcode,
            ),
            (
                Sender::Upstream,
                ok_u.clone(),
                frame(true, 0, 0xB, b"x", None),
                Verdict::ReservedOpcode,
            ),
            (
                Sender::Client,
                ok_c.clone(),
                frame(true, 0, OP_PING, &[b'p'; 126], KEY),
                Verdict::ControlTooLong,
            ),
            (
                Sender::Client,
                ok_c.clone(),
                frame(false, 0, OP_PING, b"half", KEY),
                Verdict::FragmentedControl,
            ),
            (
                Sender::Upstream,
                ok_u.clone(),
                frame(true, 0, OP_CONTINUATION, b"orphan", None),
                Verdict::OrphanContinuation,
            ),
            (
                Sender::Client,
                open_c.clone(),
                frame(true, 0, OP_TEXT, b"new", KEY),
                Verdict::MessageInMessage,
            ),
        ];
        for (sender, before, bad, verdict) in cases {
            let mut stream = before.clone();
            stream.extend(&bad);
            stream.extend(&ok_c);
            for cut in before.len()..before.len() + 3 {
                let mut f = Follower::new(sender, Extensions::default(), Limits::default());
                let got = follow_chunks(&mut f, &[&stream[..cut], &stream[cut..]]);
                assert_eq!(got.verdict, Some(verdict), "{verdict:?} cut {cut}");
                assert_eq!(got.forwarded, before, "{verdict:?} cut {cut}");
                assert_eq!(got.frames, 1);
                assert_eq!(f.step(b"more"), Step::Stop(verdict), "verdicts stick");
                assert!(f.at_boundary());
                assert_eq!(verdict.close_code(), 1002);
            }
        }
    }

    #[test]
    fn negotiated_extensions_allow_their_rsv_bits() {
        let deflate = Extensions {
            permessage_deflate: true,
            any: true,
        };
        let mut bytes = frame(true, 4, OP_TEXT, b"zz", KEY);
        bytes.extend(frame(true, 3, OP_BINARY, b"zz", KEY));
        let got = whole(
            &mut Follower::new(Sender::Client, deflate, Limits::default()),
            &bytes,
        );
        assert_eq!((got.forwarded, got.verdict), (bytes, None));
        let other = Extensions {
            permessage_deflate: false,
            any: true,
        };
        let rsv2 = frame(true, 2, OP_TEXT, b"zz", None);
        let got = whole(
            &mut Follower::new(Sender::Upstream, other, Limits::default()),
            &rsv2,
        );
        assert_eq!(got.verdict, None);
        let rsv1 = frame(true, 4, OP_TEXT, b"zz", None);
        let got = whole(
            &mut Follower::new(Sender::Upstream, other, Limits::default()),
            &rsv1,
        );
        assert_eq!(got.verdict, Some(Verdict::Rsv1));
    }

    #[test]
    fn frame_limit_applies_to_data_frames_only() {
        let mut ok = frame(true, 0, OP_BINARY, &[1; 100], KEY);
        ok.extend(frame(true, 0, OP_PING, &[2; 125], KEY));
        ok.extend(frame(false, 0, OP_TEXT, &[3; 100], KEY));
        ok.extend(frame(true, 0, OP_CONTINUATION, &[3; 100], KEY));
        let mut stream = ok.clone();
        stream.extend(frame(true, 0, OP_BINARY, &[4; 101], KEY));
        let got = whole(&mut client(limits(Some(100), None)), &stream);
        assert_eq!(got.forwarded, ok);
        assert_eq!(got.verdict, Some(Verdict::FrameTooBig));
        assert_eq!(Verdict::FrameTooBig.close_code(), 1009);
    }

    /// The message limit sums a message's frames and stops at the header that goes over, before
    /// any byte of that frame; exactly the limit passes.
    #[test]
    fn message_limit_sums_frames_and_exactly_the_limit_passes() {
        let mut ok = frame(false, 0, OP_TEXT, &[1; 400], None);
        ok.extend(frame(false, 0, OP_CONTINUATION, &[2; 400], None));
        ok.extend(frame(true, 0, OP_PING, b"p", None));
        ok.extend(frame(true, 0, OP_CONTINUATION, &[3; 200], None));
        ok.extend(frame(true, 0, OP_BINARY, &[4; 1000], None));
        ok.extend(frame(false, 0, OP_BINARY, &[5; 400], None));
        ok.extend(frame(false, 0, OP_CONTINUATION, &[6; 400], None));
        let mut stream = ok.clone();
        // Only the header of the frame that goes over has arrived.
        stream.extend(&frame(true, 0, OP_CONTINUATION, &[7; 400], None)[..4]);
        let got = whole(&mut upstream(limits(None, Some(1000))), &stream);
        assert_eq!(got.forwarded, ok);
        assert_eq!(got.verdict, Some(Verdict::MessageTooBig));
        assert_eq!(got.messages, 3);
    }

    #[test]
    fn close_code_and_reason_are_read_through_the_mask_and_across_reads() {
        let bytes = frame(true, 0, OP_CLOSE, b"\x03\xe8bye now", KEY);
        for cut in 0..bytes.len() {
            let got = follow_chunks(
                &mut client(Limits::default()),
                &[&bytes[..cut], &bytes[cut..]],
            );
            assert_eq!(got.forwarded, bytes);
            let close = got.close.unwrap();
            assert_eq!(
                (close.code, close.reason.as_bytes()),
                (1000, &b"bye now"[..])
            );
        }
        let got = whole(
            &mut upstream(Limits::default()),
            &frame(true, 0, OP_CLOSE, b"", None),
        );
        let close = got.close.unwrap();
        assert_eq!((close.code, close.reason.as_bytes()), (1005, &b""[..]));
        // Only the first close frame is kept.
        let mut two = frame(true, 0, OP_CLOSE, b"\x0f\xa1first", None);
        two.extend(frame(true, 0, OP_CLOSE, b"\x03\xe8second", None));
        assert_eq!(
            whole(&mut upstream(Limits::default()), &two)
                .close
                .unwrap()
                .code,
            4001
        );
    }

    /// The pong answering the gateway's ping is swallowed (whole, however it is cut); a pong
    /// with another payload passes, as does everything around them.
    #[test]
    fn the_answering_pong_is_swallowed_and_others_pass() {
        let ping = *b"gw-ping1";
        let before = frame(true, 0, OP_TEXT, b"a", KEY);
        let other = frame(true, 0, OP_PONG, b"heartbeat", KEY);
        let answer = frame(true, 0, OP_PONG, &ping, KEY);
        let after = frame(true, 0, OP_TEXT, b"b", KEY);
        let stream = [&before[..], &other, &answer, &after].concat();
        let expected = [&before[..], &other, &after].concat();
        for cut in 0..stream.len() {
            let mut f = client(Limits::default());
            f.expect_pong(ping);
            let got = follow_chunks(&mut f, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(got.forwarded, expected, "cut {cut}");
            assert_eq!(got.frames, 4);
            // Swallowed once: the same pong again passes.
            let again = whole(&mut f, &answer);
            assert_eq!(again.forwarded, answer);
        }
    }

    fn arb_frames() -> impl Strategy<Value = Vec<(u8, usize, bool)>> {
        // (kind, payload length, fin): 0 data, 1 ping, 2 pong, 3 close.
        let len = prop_oneof![0usize..=125, 126usize..=300, 65530usize..=65540];
        prop::collection::vec((0u8..4, len, any::<bool>()), 1..12)
    }

    /// A valid frame sequence from `spec`: data frames form messages (fragments, control frames
    /// between), control frames are at most 125 bytes.
    fn encode(spec: &[(u8, usize, bool)], masked: bool) -> (Vec<u8>, u64, u64) {
        let (mut out, mut open, mut messages) = (Vec::new(), false, 0);
        for (i, &(kind, len, fin)) in spec.iter().enumerate() {
            let mask = masked.then_some([i as u8, 0x5a, 0xa5, 0x11]);
            let payload: Vec<u8> = (0..len.max(2)).map(|j| (i + j) as u8).collect();
            let (opcode, len, fin) = match kind {
                0 => {
                    let op = if open { OP_CONTINUATION } else { OP_BINARY };
                    messages += u64::from(!open);
                    open = !fin;
                    (op, len, fin)
                }
                1 => (OP_PING, len.min(125), true),
                2 => (OP_PONG, len.min(125), true),
                _ => (OP_CLOSE, len.clamp(2, 125), true),
            };
            out.extend(frame(fin, 0, opcode, &payload[..len], mask));
        }
        (out, spec.len() as u64, messages)
    }

    proptest! {
        #[test]
        fn chunking_changes_nothing(spec in arb_frames(), masked in any::<bool>(), cuts in prop::collection::vec(1usize..200, 1..40)) {
            let (bytes, frames, messages) = encode(&spec, masked);
            let sender = if masked { Sender::Client } else { Sender::Upstream };
            let new = || Follower::new(sender, Extensions::default(), Limits::default());
            let all = follow_chunks(&mut new(), &[&bytes]);
            prop_assert_eq!(&all.forwarded, &bytes);
            prop_assert_eq!((all.frames, all.messages, all.verdict), (frames, messages, None));
            prop_assert_eq!(all.boundaries.len() as u64, frames + 1);
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            for n in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*n).min(rest.len());
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            prop_assert_eq!(follow_chunks(&mut new(), &chunks), all);
        }

        #[test]
        fn chunking_changes_no_verdict(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 1usize..50, client in any::<bool>()) {
            let sender = if client { Sender::Client } else { Sender::Upstream };
            let lim = limits(Some(200), Some(300));
            let all = follow_chunks(&mut Follower::new(sender, Extensions::default(), lim), &[&bytes]);
            let chunks: Vec<&[u8]> = bytes.chunks(cut).collect();
            let split = follow_chunks(&mut Follower::new(sender, Extensions::default(), lim), &chunks);
            prop_assert!(bytes.starts_with(&all.forwarded));
            prop_assert_eq!(split, all);
        }
    }
}
