//! The PROXY v1/v2 header parser (`proxy_protocol::parse`) and its builder (`encode`).
//! Input: the bytes at the start of a connection; its first 37 bytes also make an address pair
//! for the round trip (`[flags, source ip 16, destination ip 16, ports 4]`, flags bit 0: v2,
//! bits 1/2: source/destination are IPv4 from the first 4 of their 16 bytes).
//!
//! Checked: a complete header is self-contained (the same from its own bytes alone); reading
//! the way `read_header` does — exactly `at_least` more each time — reaches a header exactly
//! at its end, and reaches one whenever the whole input starts with one; `encode` -> `parse`
//! gives back the addresses (IPv4-mapped ones as IPv4) and consumes exactly the header.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{ProxyParse, proxy_encode, proxy_parse};

fn addr(bytes: &[u8], v4: bool, port: [u8; 2]) -> SocketAddr {
    let ip = if v4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        let octets: [u8; 16] = bytes[..16].try_into().unwrap();
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, u16::from_be_bytes(port))
}

fn canonical(a: SocketAddr) -> (IpAddr, u16) {
    (a.ip().to_canonical(), a.port())
}

fuzz_target!(|input: &[u8]| {
    let whole = proxy_parse(input);
    match whole {
        ProxyParse::Complete { len, .. } => {
            assert!(len <= input.len());
            assert_eq!(
                proxy_parse(&input[..len]),
                whole,
                "header not self-contained"
            );
        }
        ProxyParse::Incomplete { at_least } => assert!(at_least >= 1),
        ProxyParse::Invalid => {}
    }

    let mut have = 0;
    let driven = loop {
        match proxy_parse(&input[..have]) {
            ProxyParse::Incomplete { at_least } if have + at_least <= input.len() => {
                have += at_least;
            }
            other => break other,
        }
    };
    if let ProxyParse::Complete { len, .. } = driven {
        assert_eq!(len, have, "a read went past the header");
        assert_eq!(driven, whole);
    }
    if let ProxyParse::Complete { .. } = whole {
        assert_eq!(driven, whole, "incremental reads missed the header");
    }

    if input.len() >= 37 {
        let flags = input[0];
        let source = addr(&input[1..17], flags & 2 != 0, [input[33], input[34]]);
        let destination = addr(&input[17..33], flags & 4 != 0, [input[35], input[36]]);
        let bytes = proxy_encode(flags & 1 != 0, source, destination);
        match proxy_parse(&bytes) {
            ProxyParse::Complete {
                len,
                addrs: Some((s, d)),
            } => {
                assert_eq!(len, bytes.len());
                assert_eq!(canonical(s), canonical(source));
                assert_eq!(canonical(d), canonical(destination));
            }
            other => panic!("{source} {destination}: {other:?} from {bytes:?}"),
        }
    }
});
