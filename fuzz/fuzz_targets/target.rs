//! The request-target checks of `handshake/target.rs`. Input: `authority\npath`.
//!
//! Checked: an accepted authority has no userinfo, whitespace, `/` or `,`, and a port, when
//! present, is 1-65535; an accepted path has no `%00` and no `.`/`..` segment (dots also as
//! `%2e`) before its query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (authority, path) = text.split_once('\n').unwrap_or((text, "/"));
    let (host_ok, path_ok) = target(authority, path);
    if host_ok {
        assert!(
            !authority.contains(['@', ',', '/', ' ', '\t', '\r', '\n']),
            "{authority:?}"
        );
        let port = if authority.starts_with('[') {
            authority.rsplit_once("]:").map(|(_, p)| p)
        } else {
            authority.split_once(':').map(|(_, p)| p)
        };
        if let Some(port) = port {
            let n: u32 = port.parse().expect("accepted port is decimal");
            assert!((1..=65535).contains(&n), "{authority:?}");
        }
    }
    if path_ok {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        assert!(!path.contains("%00"), "{path:?}");
        for segment in path.split('/') {
            let dots = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(dots != "." && dots != "..", "{path:?}");
        }
    }
});
