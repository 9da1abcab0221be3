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
