//! The gateway's own control frames (RFC 6455 §5.5): a close with code and reason, a ping with
//! a payload the gateway chose. Built on the stack; masked with a fresh random key when they go
//! to the upstream (a client's frames must be masked, §5.3), unmasked to the client.

use super::CloseReason;

const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
const MAX_PAYLOAD: usize = 125;

/// One control frame, ready to write: 2 header bytes, the mask key if any, at most 125 bytes.
#[derive(Clone, Copy)]
pub(crate) struct ControlFrame {
    bytes: [u8; 2 + 4 + MAX_PAYLOAD],
    len: u8,
}

impl ControlFrame {
    /// A close frame with `code` and `reason` (cut at 123 bytes); `masked` for the upstream.
    pub(crate) fn close(code: u16, reason: &[u8], masked: bool) -> Self {
        let reason = &reason[..reason.len().min(CloseReason::MAX)];
        Self::build(OP_CLOSE, &code.to_be_bytes(), reason, masked)
    }

    /// A ping carrying `payload` (cut at 125 bytes); `masked` for the upstream.
    pub(crate) fn ping(payload: &[u8], masked: bool) -> Self {
        let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
        Self::build(OP_PING, payload, &[], masked)
    }

    /// FIN set, no RSV bit, 7-bit length: the payload is `a` then `b`.
    fn build(opcode: u8, a: &[u8], b: &[u8], masked: bool) -> Self {
        let n = a.len() + b.len();
        let mut bytes = [0u8; 2 + 4 + MAX_PAYLOAD];
        bytes[0] = 0x80 | opcode;
        bytes[1] = n as u8;
        let mut at = 2;
        let key = masked.then(mask_key);
        if let Some(key) = key {
            bytes[1] |= 0x80;
            bytes[2..6].copy_from_slice(&key);
            at = 6;
        }
        for (i, &byte) in a.iter().chain(b).enumerate() {
            bytes[at + i] = match key {
                Some(key) => byte ^ key[i % 4],
                None => byte,
            };
        }
        ControlFrame {
            bytes,
            len: (at + n) as u8,
        }
    }

    /// The frame's bytes on the wire.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A fresh random mask key (RFC 6455 §5.3), never all zeros: a zero key would leave the payload
/// readable on the wire, which is what masking is there to prevent.
fn mask_key() -> [u8; 4] {
    loop {
        let key: [u8; 4] = rand::random();
        if key != [0; 4] {
            return key;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_the_client_is_unmasked() {
        let f = ControlFrame::close(1009, b"too big", false);
        assert_eq!(f.as_bytes(), b"\x88\x09\x03\xf1too big");
    }

    #[test]
    fn close_to_the_upstream_is_masked_with_fresh_keys() {
        let a = ControlFrame::close(4321, b"going away", true);
        let b = ControlFrame::close(4321, b"going away", true);
        for f in [a, b] {
            let bytes = f.as_bytes();
            assert_eq!(&bytes[..2], &[0x88, 0x80 | 12]);
            let key = &bytes[2..6];
            assert_ne!(key, [0; 4]);
            let payload: Vec<u8> = bytes[6..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(payload, b"\x10\xe1going away");
        }
        assert_ne!(
            a.as_bytes()[2..6],
            b.as_bytes()[2..6],
            "same mask key twice"
        );
    }

    #[test]
    fn long_reasons_are_cut_to_fit_a_control_frame() {
        let f = ControlFrame::close(1001, &[b'r'; 300], false);
        assert_eq!(f.as_bytes().len(), 2 + 125);
        assert_eq!(f.as_bytes()[1], 125);
    }

    #[test]
    fn ping_carries_its_payload() {
        assert_eq!(
            ControlFrame::ping(b"12345678", false).as_bytes(),
            b"\x89\x0812345678"
        );
        let m = ControlFrame::ping(b"abcd", true);
        let bytes = m.as_bytes();
        assert_eq!(&bytes[..2], &[0x89, 0x84]);
        let key = &bytes[2..6];
        let payload: Vec<u8> = bytes[6..].iter().zip(key).map(|(b, k)| b ^ k).collect();
        assert_eq!(payload, b"abcd");
    }
}
