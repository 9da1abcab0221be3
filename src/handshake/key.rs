//! `Sec-WebSocket-Key` and `Sec-WebSocket-Accept` (RFC 6455 §1.3, §4.1, §4.2.1, §4.2.2).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: the GUID every accept value is derived with.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a key. RFC 6455 §4.2.2 step 5.4: "the base64-encoded
/// SHA-1 of the concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with
/// the string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"".
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// A `Sec-WebSocket-Key` made from 16 bytes the caller drew at random (RFC 6455 §4.1: "a
/// randomly selected 16-byte value ... base64-encoded"). Needed towards the upstream for h2
/// clients, which send no key (RFC 8441 §5); taking the bytes keeps this module free of a
/// random source.
pub(crate) fn key_from_bytes(bytes: [u8; 16]) -> String {
    STANDARD.encode(bytes)
}

/// RFC 6455 §4.2.1 item 5: the key, "when decoded, is 16 bytes in length". Standard alphabet
/// with padding; non-canonical trailing bits are rejected.
pub(crate) fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes always encode to 24 characters; checking first bounds the decode work.
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|k| k.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_sample_accept() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generated_keys_are_valid_and_distinct_per_input() {
        let a = key_from_bytes([0; 16]);
        let b = key_from_bytes([0xff; 16]);
        assert_eq!(a, "AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(is_valid_key(a.as_bytes()) && is_valid_key(b.as_bytes()));
        assert_ne!(a, b);
    }

    #[test]
    fn key_validity_rows() {
        let rows = [
            ("dGhlIHNhbXBsZSBub25jZQ==", true),
            ("", false),
            ("!!!!not*base64!!!!!!!==", false),
            ("AAAAAAAAAAAAAAAAAAAA", false),        // 15 bytes
            ("AAAAAAAAAAAAAAAAAAAAAAA=", false),    // 17 bytes
            ("AAAAAAAAAAAAAAAAAAAAAAAA", false),    // 18 bytes, no padding
            ("dGhlIHNhbXBsZSBub25jZQ", false),      // padding missing
            ("dGhlIHNhbXBsZSBub25jZR==", false),    // non-canonical trailing bits
            ("dGhlIHNhbXBsZSBub25jZQ==, x", false), // a list is not a key
        ];
        for (key, want) in rows {
            assert_eq!(is_valid_key(key.as_bytes()), want, "{key:?}");
        }
    }
}
