//! PURE WebSocket framing for inspected tunnels (SPEC §9): the [`Follower`] that judges one
//! direction's frame headers as its bytes pass, and the writer of the gateway's own control
//! frames. No I/O, no allocation per frame, never a whole message: a payload is never unmasked
//! except a close frame's (for its code and reason) and a pong the gateway may have to swallow.
//!
//! - `follower.rs`: [`Follower`], fed byte slices of one direction, answering with a [`Step`];
//! - `writer.rs`: [`ControlFrame`], a close or ping frame built on the stack.
//!
//! The tunnel engine (`tunnel/inspect.rs`) owns the I/O; this module knows nothing of it.

mod follower;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

use std::fmt;

#[cfg(feature = "fuzzing")]
pub(crate) use follower::follow_chunks;
pub(crate) use follower::{Follower, Limits, MAX_HELD, PING_PAYLOAD, Sender, Step, Verdict};
pub(crate) use writer::ControlFrame;

/// RFC 6455 §7.4.1: the close codes the gateway itself sends.
pub(crate) mod code {
    /// 1001: an endpoint is going away (ping timeout; the default `close_code`).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// 1002: protocol error.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// 1005: no status code present (never sent; reported for an empty close frame).
    pub(crate) const NO_STATUS: u16 = 1005;
    /// 1009: message too big.
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// The WebSocket extensions in force on a tunnel (the upstream's `Sec-WebSocket-Extensions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// `permessage-deflate` was accepted: RSV1 marks compressed messages.
    pub(crate) permessage_deflate: bool,
    /// Some extension was accepted: RSV2/RSV3 may be in use.
    pub(crate) any: bool,
}

/// A close reason held inline, so reporting a close allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseReason {
    bytes: [u8; CloseReason::MAX],
    len: u8,
}

impl CloseReason {
    /// RFC 6455 §5.5: a control payload is at most 125 bytes, two of them the code.
    pub(crate) const MAX: usize = 123;

    /// The reason, cut at [`CloseReason::MAX`] bytes.
    pub(crate) fn new(reason: &[u8]) -> Self {
        let mut r = CloseReason::empty();
        r.push(reason);
        r
    }

    /// No reason.
    pub(crate) const fn empty() -> Self {
        CloseReason {
            bytes: [0; Self::MAX],
            len: 0,
        }
    }

    /// Appends what fits of `more` (a reason arriving in pieces).
    fn push(&mut self, more: &[u8]) {
        let at = usize::from(self.len);
        let n = more.len().min(Self::MAX - at);
        self.bytes[at..at + n].copy_from_slice(&more[..n]);
        self.len += n as u8;
    }

    /// The reason's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii().to_string())
    }
}
