//! The header-list grammar of `handshake/tokens.rs`: comma lists, tokens, `Upgrade` protocols
//! and hop-by-hop names. Input: `probe\nline\nline...` — the first line is the token looked
//! for, the rest are the lines of one header.
//!
//! Checked: elements are non-empty, comma-free and OWS-trimmed; joining them with ", " and
//! splitting again gives them back; `lists_token` is "some element equals the probe, ignoring
//! case"; a protocol name is a token prefix of its element; a token is its own protocol name;
//! a listed probe is hop-by-hop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::token_list;

fuzz_target!(|input: &[u8]| {
    let mut lines = input.split(|b| *b == b'\n');
    let Some(Ok(probe)) = lines.next().map(std::str::from_utf8) else {
        return;
    };
    let lines: Vec<&[u8]> = lines.collect();
    let Some(got) = token_list(&lines, probe) else {
        return;
    };
    for e in &got.elements {
        assert!(!e.is_empty() && !e.contains(&b','), "{e:?}");
        assert!(!matches!(e.first(), Some(b' ' | b'\t')), "{e:?}");
        assert!(!matches!(e.last(), Some(b' ' | b'\t')), "{e:?}");
    }
    let joined = got.elements.join(&b", "[..]);
    let again = token_list(&[&joined], probe).expect("joined elements are a field value");
    assert_eq!(again.elements, got.elements, "join -> split round trip");
    assert_eq!(again.lists_probe, got.lists_probe);
    let listed = got
        .elements
        .iter()
        .any(|e| e.eq_ignore_ascii_case(probe.as_bytes()));
    assert_eq!(got.lists_probe, listed);
    for (i, e) in got.elements.iter().enumerate() {
        if let Some(name) = &got.protocol_names[i] {
            assert!(!name.is_empty() && e.starts_with(name), "{e:?} -> {name:?}");
            assert!(e.len() == name.len() || e[name.len()] == b'/', "{e:?}");
        }
        if got.is_token[i] {
            assert_eq!(got.protocol_names[i].as_deref(), Some(&e[..]));
        }
        if got.protocol_matches_probe[i] {
            assert!(got.protocol_names[i].is_some(), "malformed {e:?} matched");
        }
    }
    if listed && got.hop_by_hop_probe.is_some() {
        assert_eq!(
            got.hop_by_hop_probe,
            Some(true),
            "listed {probe:?} not hop-by-hop"
        );
    }
});
