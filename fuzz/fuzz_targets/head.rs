//! The first-request-head reader (`head::read_head`) over a stream whose read boundaries the
//! input chooses. Input: `[chunking seed, size selector, stream bytes...]`; seed 0 delivers the
//! stream in one piece, otherwise a xorshift of the seed cuts it (high bit: pieces of 1..=8
//! bytes, else 1..=512). The limit is `64 * (selector + 1)` bytes.
//!
//! Checked: a complete head is the stream's prefix and every byte handed out is returned (none
//! lost, none invented); httparse accepts it within the limit; a refusal is what httparse says
//! of the bytes read (or, for a complete head, a framing refusal); EOF is reported only when the whole stream held no complete head; and the
//! head found does not depend on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{HEAD_MAX_HEADERS, HeadOutcome, HeadRead, read_head_chunked};

fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let span = if seed & 0x80 != 0 { 8 } else { 512 };
    let mut x = u32::from(seed) | 0x9e37_0000;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (1 + x as usize % span).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// httparse with the reader's header-line limit: `Some(len)` for a complete head.
fn parse_head(buf: &[u8]) -> Result<Option<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEAD_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    Ok(match req.parse(buf)? {
        httparse::Status::Complete(n) => Some(n),
        httparse::Status::Partial => None,
    })
}

/// The head length of a complete outcome.
fn head_len(r: &HeadRead) -> Option<usize> {
    match &r.outcome {
        HeadOutcome::Complete(buf) => parse_head(buf).ok().flatten(),
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let [seed, size, data @ ..] = input else {
        return;
    };
    let max = 64 * (usize::from(*size) + 1);
    let got = read_head_chunked(&chunks(*seed, data), max);
    assert!(got.consumed <= data.len());
    let read = &data[..got.consumed];
    match &got.outcome {
        HeadOutcome::Complete(buf) => {
            assert_eq!(&buf[..], read, "returned bytes differ from the bytes read");
            match parse_head(buf) {
                Ok(Some(n)) => assert!(n <= max, "head of {n} bytes over the {max} limit"),
                other => panic!("returned a head httparse does not accept: {other:?}"),
            }
        }
        HeadOutcome::Rejected(r) if r.status == 431 => match parse_head(read) {
            Err(httparse::Error::TooManyHeaders) => {}
            Ok(Some(n)) => assert!(n > max, "431 for a {n}-byte head under {max}"),
            Ok(None) => assert!(read.len() > max, "431 for {} bytes under {max}", read.len()),
            Err(e) => panic!("431 for a malformed head ({e})"),
        },
        // Malformed for httparse, or a complete head whose framing or target the reader
        // refuses (Content-Length, Transfer-Encoding, a target that is no URI).
        HeadOutcome::Rejected(r) if r.status == 400 => {
            assert!(
                matches!(parse_head(read), Err(e) if e != httparse::Error::TooManyHeaders)
                    || matches!(parse_head(read), Ok(Some(n)) if n <= max),
                "400 for bytes httparse accepts so far"
            );
        }
        HeadOutcome::Rejected(r) => panic!("unexpected refusal {r:?}"),
        HeadOutcome::Closed => {
            assert_eq!(
                got.consumed,
                data.len(),
                "closed before the end of the input"
            );
            assert!(
                data.len() <= max,
                "{} bytes over {max} not refused",
                data.len()
            );
            assert!(
                !matches!(parse_head(data), Ok(Some(_))),
                "a complete head was in the input"
            );
        }
    }
    let whole = read_head_chunked(&[data], max);
    assert_eq!(
        head_len(&got),
        head_len(&whole),
        "the head found depends on the chunking: {:?} vs {:?}",
        got.outcome,
        whole.outcome
    );
});
