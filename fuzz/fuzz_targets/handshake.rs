//! The handshake steps the gateway runs on a request before dialing (`request_host`, the route
//! table, `classify`, `Upgrade::check`, the upstream request), on the `http` parts of a head
//! that httparse accepts, against a fixed route configuration. Input: `[flags, head...]`;
//! flags bit 0 carries the request as an h2 extended CONNECT (`:protocol` = the `Upgrade` line).
//!
//! Checked: never a panic; every outcome is a success naming a configured upstream, or a typed
//! client-side refusal (4xx) whose full answer can be built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{HandshakeOutcome, MAPPED_SUBPROTOCOLS, handshake};

const UPSTREAMS: [&str; 5] = ["chat", "mqtt", "fb", "web", "raw"];

fuzz_target!(|input: &[u8]| {
    let [flags, head @ ..] = input else {
        return;
    };
    match handshake(head, flags & 1 != 0) {
        None => {}
        Some(HandshakeOutcome::Plain { upstream }) => assert_eq!(upstream, "web"),
        Some(HandshakeOutcome::Upgrade {
            upstream,
            subprotocol,
            upstream_headers,
        }) => {
            assert!(UPSTREAMS.contains(&upstream.as_str()), "{upstream}");
            if let Some(s) = subprotocol {
                assert!(MAPPED_SUBPROTOCOLS.contains(&s.as_str()), "{s}");
            }
            assert!(upstream_headers > 0);
        }
        Some(HandshakeOutcome::Rejected(r)) => {
            assert!(
                (400..500).contains(&r.status),
                "not a client refusal: {r:?}"
            );
        }
    }
});
