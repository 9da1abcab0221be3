//! RFC 6455 pieces a test builds by hand: the handshake key and accept (§4) and frames (§5).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::{Rng, RngCore};
use sha1::{Digest, Sha1};

use super::client::Client;

/// RFC 6455 §1.3: the GUID appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client key, as RFC 6455 §4.2.2 step 5.4 defines it.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    B64.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 §4.1 item 7).
pub fn new_key() -> String {
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    B64.encode(nonce)
}

/// A masked client frame (RFC 6455 §5.2, §5.3) with FIN set; payloads up to 65535 bytes.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::thread_rng().r#gen();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame with a short payload; returns (opcode, payload).
pub async fn read_server_frame(c: &mut Client) -> (u8, Vec<u8>) {
    let hdr = c.read_exact(2).await;
    assert_eq!(
        hdr[1] & 0x80,
        0,
        "server frame is masked (RFC 6455 §5.1): {hdr:?}"
    );
    let len = match hdr[1] & 0x7f {
        126 => {
            let ext = c.read_exact(2).await;
            usize::from(u16::from_be_bytes([ext[0], ext[1]]))
        }
        127 => panic!("unexpected 64-bit frame length in a test echo"),
        n => usize::from(n),
    };
    (hdr[0] & 0x0f, c.read_exact(len).await)
}

/// RFC 6455 §5.2 opcodes.
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xa;
}

/// Any frame (RFC 6455 §5.2): every length form, masked with `mask` when given.
pub fn encode_frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// An unmasked frame, as a server sends it.
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, opcode, None, payload)
}

/// A frame masked with a fresh random key, as a client sends it.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, opcode, Some(rand::thread_rng().r#gen()), payload)
}

/// A close frame's payload: the code, then the reason (RFC 6455 §5.5.1).
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason);
    out
}

/// One frame as it travelled, its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// The RSV1..3 bits, as in the first byte (`0x70` mask).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code (`None` for another frame or a close without a body).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == op::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// A close frame's reason, lossily as text.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }

    /// Whether this is a close frame with `code` and `reason`.
    pub fn is_close(&self, code: u16, reason: &str) -> bool {
        self.close_code() == Some(code) && self.close_reason() == reason
    }
}

/// The first complete frame in `buf` and its encoded length; `None` while it is incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask: Option<[u8; 4]> = if b1 & 0x80 != 0 {
        let key = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let end = at + usize::try_from(len).ok()?;
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(key) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        mask,
        payload,
    };
    Some((frame, end))
}

/// Every complete frame at the start of `buf`, and how many bytes they took.
pub fn parse_frames(buf: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut used = 0;
    while let Some((frame, n)) = parse_frame(&buf[used..]) {
        frames.push(frame);
        used += n;
    }
    (frames, used)
}

/// Reads one frame of any length from a raw client (panics on EOF or a stall, naming them).
pub async fn read_frame(c: &mut Client) -> Frame {
    let mut raw = c.read_exact(2).await;
    let ext = match raw[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    } + if raw[1] & 0x80 != 0 { 4 } else { 0 };
    raw.extend(c.read_exact(ext).await);
    let len = match raw[1] & 0x7f {
        126 => usize::from(u16::from_be_bytes([raw[2], raw[3]])),
        127 => usize::try_from(u64::from_be_bytes(raw[2..10].try_into().expect("8 bytes")))
            .expect("frame length fits usize"),
        n => usize::from(n),
    };
    raw.extend(c.read_exact(len).await);
    parse_frame(&raw).expect("a whole frame was read").0
}
