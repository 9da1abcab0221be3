//! The keep-alive gate of `h1_gate.rs`: a stream of HTTP/1.1 requests, arriving in reads whose
//! boundaries the input chooses (first byte: chunk size), followed through heads and bodies.
//!
//! Checked: what hyper is handed is a prefix of the input, never reordered; a refusal is a 400
//! or 431; the same stream read whole hands over the same bytes, and refuses what the split
//! one refused (a split read may instead end at a partial head: the gate parses again only
//! when a line end arrives).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::keep_alive_stream;

fuzz_target!(|input: &[u8]| {
    let Some((&size, stream)) = input.split_first() else {
        return;
    };
    let size = usize::from(size % 64) + 1;
    let chunks: Vec<&[u8]> = stream.chunks(size).collect();
    let got = keep_alive_stream(&chunks, 1024);
    assert!(stream.starts_with(&got.delivered), "delivered bytes are not a prefix");
    if let Some(status) = got.refused {
        assert!(status == 400 || status == 431, "{status}");
    }
    let whole = keep_alive_stream(&[stream], 1024);
    assert_eq!(whole.delivered, got.delivered, "read boundaries changed what hyper got");
    if got.refused.is_some() {
        assert_eq!(whole.refused, got.refused, "read boundaries changed the refusal");
    }
});
