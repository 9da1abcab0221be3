//! The `Sec-WebSocket-Protocol` list as `negotiate` (handshake/client.rs) reads it, on a
//! handshake that is otherwise valid. Input: the header's lines, separated by `\n`.
//!
//! Checked against RFC 6455 §4.1 directly: a list with an element that is not a token, or one
//! offered twice, is `BadSubprotocolList`; otherwise the client-order route picks the first
//! offered mapped name, the server-order route the first mapped name offered, and with none
//! the answer is `NoSubprotocolMatch` (these routes have no fallback). Nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{MAPPED_SUBPROTOCOLS, SubprotocolOutcome, subprotocols, token_list};

fuzz_target!(|input: &[u8]| {
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let Some(list) = token_list(&lines, "") else {
        return;
    };
    let offered = &list.elements;
    let mut seen = std::collections::HashSet::new();
    let bad = offered
        .iter()
        .zip(&list.is_token)
        .any(|(e, tok)| !tok || !seen.insert(e));
    let by_client = offered.iter().find_map(|e| {
        MAPPED_SUBPROTOCOLS
            .iter()
            .find(|m| m.as_bytes() == &e[..])
            .copied()
    });
    let by_server = MAPPED_SUBPROTOCOLS
        .iter()
        .find(|m| offered.iter().any(|e| m.as_bytes() == &e[..]))
        .copied();
    for (server_order, pick) in [(false, by_client), (true, by_server)] {
        let got = subprotocols(&lines, server_order).expect("token_list accepted these lines");
        match (&got, bad, pick) {
            (SubprotocolOutcome::BadList(_), true, _) => {}
            (SubprotocolOutcome::Selected(s), false, Some(p)) if s == p => {}
            (SubprotocolOutcome::NoMatch, false, None) => {}
            _ => panic!(
                "server_order={server_order} offered={offered:?}: got {got:?}, bad={bad} pick={pick:?}"
            ),
        }
    }
});
