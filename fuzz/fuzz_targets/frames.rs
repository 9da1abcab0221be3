//! The WebSocket frame follower of inspected tunnels (`ws/follower.rs`): one direction's bytes,
//! arriving in reads whose boundaries the input chooses (first byte: chunk size and the
//! follower's settings), judged frame header by frame header.
//!
//! Checked: it never panics; what it lets through is a prefix of the input (nothing is changed
//! or reordered, nothing of a refused frame passes); the same stream read whole gives the same
//! bytes, boundaries, counts, close frame and verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::ws_follow;

fuzz_target!(|input: &[u8]| {
    let Some((&settings, stream)) = input.split_first() else {
        return;
    };
    let size = usize::from(settings & 0x1F) + 1;
    let (client, deflate, limits) = (settings & 0x20 != 0, settings & 0x40 != 0, settings & 0x80 != 0);
    let chunks: Vec<&[u8]> = stream.chunks(size).collect();
    let split = ws_follow(&chunks, client, deflate, limits);
    assert!(stream.starts_with(&split.forwarded), "forwarded bytes are not a prefix");
    let whole = ws_follow(&[stream], client, deflate, limits);
    assert_eq!(whole, split, "read boundaries changed what the follower did");
});
