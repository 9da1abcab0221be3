//! The PROXY protocol, v1 (text) and v2 (binary), as HAProxy's `proxy-protocol.txt` defines it,
//! in both directions (SPEC §2 `proxy_protocol` / `send_proxy_protocol`, §7).
//!
//! Receiving: a listener with `proxy_protocol = true` calls [`read_header`] before anything else
//! (before TLS). It reads exactly the header's bytes and never one past it — each read asks for a
//! lower bound on what the header still needs — so the stream continues to TLS or HTTP untouched
//! and no replay buffer is needed. The parsing itself is the `ppp` crate's; this module decides how
//! much more to read and what a header means here: TCP4/TCP6 (v1) and PROXY over IPv4/IPv6 (v2)
//! name the client; v1 `UNKNOWN`, v2 `LOCAL` and v2 UNSPEC/UNIX carry no usable address, so the
//! socket's own addresses stay in force (proxy-protocol.txt §2.1 and §2.2).
//!
//! Sending: [`encode`] builds the header an upstream with `send_proxy_protocol` gets first.
//!
//! Pure except for [`read_header`]; network input never panics.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyVersion;

/// The shortest valid header of either version: `PROXY UNKNOWN\r\n` (v2 needs at least 16 bytes),
/// so this many bytes can always be read first without reading past a header.
const MIN_HEADER_LEN: usize = 15;

/// A v2 header's fixed part: 12-byte signature, version/command, family/protocol, length (§2.2).
const V2_FIXED_LEN: usize = 16;

/// proxy-protocol.txt §2.1: a v1 line is at most 107 bytes including the CRLF.
const V1_MAX_LEN: usize = 107;

/// A v1 TCP4/TCP6 line has exactly five single spaces: `PROXY TCP4 src dst sport dport\r\n`.
const V1_TCP_SEPARATORS: usize = 5;

/// The two ends of the client connection as a PROXY header names them (or as the gateway sees
/// them when there is no header): who connected, and to which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxiedAddrs {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

/// A complete header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes; what follows belongs to the next protocol (TLS or HTTP).
    pub(crate) len: usize,
    /// `None` for v1 `UNKNOWN`, v2 `LOCAL` and v2 families without IP addresses: the receiver then
    /// keeps the socket's addresses (proxy-protocol.txt §2.1, §2.2).
    pub(crate) addrs: Option<ProxiedAddrs>,
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parse {
    Complete(Header),
    /// Could still become a valid header; it needs at least `at_least` (≥ 1) more bytes, and
    /// reading exactly that many never reads past the header.
    Incomplete {
        at_least: usize,
    },
}

/// Why a connection on a `proxy_protocol` listener is closed without an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("no complete PROXY header within the handshake budget")]
    TimedOut,
    #[error("connection ended before a complete PROXY header: {0}")]
    Io(#[source] io::Error),
}

/// Parses the PROXY header at the start of `buf` (bytes after it are ignored). v2 is recognised
/// by its first byte (`\r`, the signature's start), anything else is taken as v1.
pub(crate) fn parse(buf: &[u8]) -> Result<Parse, ProxyError> {
    match buf.first() {
        None => Ok(Parse::Incomplete {
            at_least: MIN_HEADER_LEN,
        }),
        Some(b'\r') => parse_v2(buf),
        Some(_) => parse_v1(buf),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyError> {
    use ppp::v2::{Addresses, Command, ParseError};
    match ppp::v2::Header::try_from(buf) {
        Ok(header) => {
            let addrs = match (header.command, header.addresses) {
                (Command::Local, _) => None,
                (Command::Proxy, Addresses::IPv4(a)) => Some(ProxiedAddrs {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                (Command::Proxy, Addresses::IPv6(a)) => Some(ProxiedAddrs {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                (Command::Proxy, Addresses::Unspecified | Addresses::Unix(_)) => None,
            };
            Ok(Parse::Complete(Header {
                len: header.len(),
                addrs,
            }))
        }
        // The signature matched so far, the fixed part is not complete yet.
        Err(ParseError::Incomplete(_)) => Ok(Parse::Incomplete {
            at_least: V2_FIXED_LEN.saturating_sub(buf.len()).max(1),
        }),
        // The fixed part announced `total` bytes after itself; `have` of them are here.
        Err(ParseError::Partial(have, total)) => Ok(Parse::Incomplete {
            at_least: total.saturating_sub(have).max(1),
        }),
        Err(e) => Err(ProxyError::Invalid(format!("v2: {e}"))),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    use ppp::v1::Addresses;
    let line_end = buf.iter().position(|b| *b == b'\r');
    // §2.1: the line ends in CRLF. `ppp` splits on CR like on a space, so it takes a line ending
    // in " \n" as complete: the header's end would depend on where a read stopped (found by
    // fuzzing). A bare LF is never part of a v1 line.
    if buf[..line_end.unwrap_or(buf.len())].contains(&b'\n') {
        return Err(ProxyError::Invalid("v1: LF before the CRLF".into()));
    }
    let complete_line = line_end.is_some();
    // `ppp` reads a trailing space as an empty (invalid) field; while the line is incomplete that
    // space only means the next field has not arrived yet.
    let probe = match buf.strip_suffix(b" ") {
        Some(trimmed) if !complete_line => trimmed,
        _ => buf,
    };
    match ppp::v1::Header::try_from(probe) {
        Ok(header) => {
            let addrs = match header.addresses {
                Addresses::Tcp4(a) => Some(ProxiedAddrs {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                Addresses::Tcp6(a) => Some(ProxiedAddrs {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                Addresses::Unknown => None,
            };
            Ok(Parse::Complete(Header {
                len: header.header.len(),
                addrs,
            }))
        }
        // A read may stop inside a multi-byte UTF-8 character of an `UNKNOWN` line's ignored
        // text; `ppp` calls that invalid UTF-8, yet the next bytes may complete it (found by
        // fuzzing: the header was refused or not depending on where reads stopped).
        Err(ppp::v1::BinaryParseError::InvalidUtf8(u))
            if !complete_line && u.error_len().is_none() =>
        {
            incomplete_v1(buf)
        }
        Err(e) if e.is_incomplete() => incomplete_v1(buf),
        Err(e) => Err(ProxyError::Invalid(format!("v1: {e}"))),
    }
}

/// An incomplete v1 line: how much more it needs, unless it can no longer fit.
fn incomplete_v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    let at_least = v1_min_remaining(buf);
    if buf.len() + at_least > V1_MAX_LEN {
        return Err(ProxyError::Invalid(format!(
            "v1: no CRLF within {V1_MAX_LEN} bytes"
        )));
    }
    Ok(Parse::Incomplete { at_least })
}

/// A lower bound on the bytes an incomplete v1 line still needs: a TCP4/TCP6 line still lacks its
/// missing ` field`s (a space and at least one character each), at least one character for a
/// field just opened by a trailing space, and its CRLF; any line needs at least its CRLF and
/// [`MIN_HEADER_LEN`] bytes in all.
fn v1_min_remaining(buf: &[u8]) -> usize {
    let to_min_len = MIN_HEADER_LEN.saturating_sub(buf.len());
    let structural = if buf.ends_with(b"\r") {
        1
    } else if buf.starts_with(b"PROXY TCP") {
        let spaces = buf.iter().filter(|&&b| b == b' ').count();
        let missing_fields = V1_TCP_SEPARATORS.saturating_sub(spaces);
        let open_field = usize::from(buf.ends_with(b" "));
        missing_fields * 2 + open_field + 2
    } else {
        2
    };
    to_min_len.max(structural)
}

/// Reads a PROXY header from `io` within `timeout`, consuming exactly its bytes. `Ok(None)`: a
/// valid header that carries no client address (v1 `UNKNOWN`, v2 `LOCAL`).
pub(crate) async fn read_header<S>(
    io: &mut S,
    deadline: tokio::time::Instant,
) -> Result<Option<ProxiedAddrs>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        let mut buf = Vec::with_capacity(V1_MAX_LEN);
        loop {
            match parse(&buf)? {
                Parse::Complete(header) => return Ok(header.addrs),
                Parse::Incomplete { at_least } => {
                    let start = buf.len();
                    buf.resize(start + at_least, 0);
                    io.read_exact(&mut buf[start..])
                        .await
                        .map_err(ProxyError::Io)?;
                }
            }
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::TimedOut)?
}

/// The header an upstream with `send_proxy_protocol = version` gets before anything else.
/// Both addresses are put in one family as the protocol requires: IPv4-mapped IPv6 addresses
/// become IPv4, and when the two still differ the IPv4 one is written IPv4-mapped.
pub(crate) fn encode(version: ProxyVersion, addrs: ProxiedAddrs) -> io::Result<Vec<u8>> {
    let (source, destination) = same_family(addrs.source, addrs.destination);
    match version {
        ProxyVersion::V1 => {
            let addresses = match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                }
                (s, d) => {
                    ppp::v1::Addresses::new_tcp6(to_v6(s.ip()), to_v6(d.ip()), s.port(), d.port())
                }
            };
            Ok(addresses.to_string().into_bytes())
        }
        ProxyVersion::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            )
            .build()
        }
    }
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (source, destination) = (canonical(source), canonical(destination));
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let widen = |a: SocketAddr| SocketAddr::new(IpAddr::V6(to_v6(a.ip())), a.port());
    (widen(source), widen(destination))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

    fn addrs(source: &str, destination: &str) -> Option<ProxiedAddrs> {
        Some(ProxiedAddrs {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        })
    }

    fn complete(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn invalid(buf: &[u8]) -> bool {
        matches!(parse(buf), Err(ProxyError::Invalid(_)))
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = SIG.to_vec();
        out.extend_from_slice(&[0x20 | command, family]);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn v2_ipv4_payload() -> Vec<u8> {
        [203, 0, 113, 9, 127, 0, 0, 1, 0x9c, 0x42, 0x1f, 0x90].to_vec()
    }

    /// Feeds `header` to `parse` the way `read_header` does and returns the number of reads; fails
    /// if a read would go past the header.
    fn reads_needed(header: &[u8]) -> usize {
        let mut have = 0;
        for reads in 0.. {
            match parse(&header[..have]) {
                Ok(Parse::Complete(h)) => {
                    assert_eq!(h.len, header.len());
                    return reads;
                }
                Ok(Parse::Incomplete { at_least }) => {
                    assert!(
                        have + at_least <= header.len(),
                        "asked for {at_least} more after {have} of {} bytes",
                        header.len()
                    );
                    have += at_least;
                }
                Err(e) => panic!("{e} after {have} bytes"),
            }
        }
        unreachable!()
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client() {
        let line = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n";
        let h = complete(line);
        assert_eq!(h.len, 45);
        assert_eq!(h.addrs, addrs("203.0.113.7:56324", "127.0.0.1:8080"));
        let h = complete(b"PROXY TCP6 2001:db8::7 ::1 40001 443\r\n");
        assert_eq!(h.addrs, addrs("[2001:db8::7]:40001", "[::1]:443"));
    }

    #[test]
    fn v1_unknown_keeps_the_socket_address() {
        assert_eq!(
            complete(b"PROXY UNKNOWN\r\n"),
            Header {
                len: 15,
                addrs: None
            }
        );
        // §2.1: a receiver must ignore anything after UNKNOWN up to the CRLF.
        let h = complete(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n");
        assert_eq!(h.addrs, None);
    }

    #[test]
    fn v1_truncated_is_incomplete_never_invalid() {
        let line = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n";
        for end in 0..line.len() {
            assert!(
                matches!(parse(&line[..end]), Ok(Parse::Incomplete { .. })),
                "{:?}",
                String::from_utf8_lossy(&line[..end])
            );
        }
    }

    #[test]
    fn reads_never_go_past_the_header() {
        for header in [
            &b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 2001:db8::7 ::1 40001 443\r\n",
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN 1.2.3.4\r\n",
            &v2(1, 0x11, &v2_ipv4_payload()),
            &v2(0, 0x00, &[]),
        ] {
            // A few reads, not one per byte; the worst is the longest TCP6 line (16 reads).
            let reads = reads_needed(header);
            assert!(reads <= 16, "{reads} reads for {header:?}");
        }
    }

    #[test]
    fn v1_too_long_or_malformed_is_invalid() {
        let long = format!("PROXY UNKNOWN {}", "x".repeat(100));
        assert!(invalid(long.as_bytes()));
        let long_line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert!(invalid(long_line.as_bytes()));
        assert!(invalid(b"GET /ws HTTP/1.1\r\n"));
        assert!(invalid(b"PROXY GARBAGE 1 2 3\r\n"));
        assert!(invalid(b"PROXY TCP4 203.0.113.7 ::1 1 2\r\n"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"));
        assert!(invalid(b"X"));
    }

    #[test]
    fn v1_lower_bound_counts_the_missing_fields() {
        assert_eq!(v1_min_remaining(b""), 15);
        assert_eq!(v1_min_remaining(b"PROXY TCP4 1.2."), 8);
        assert_eq!(v1_min_remaining(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 "), 3);
        assert_eq!(v1_min_remaining(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), 2);
        assert_eq!(v1_min_remaining(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), 1);
        assert_eq!(v1_min_remaining(b"PROXY UNKNOWN x"), 2);
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_name_the_client() {
        let mut bytes = v2(1, 0x11, &v2_ipv4_payload());
        bytes.extend_from_slice(b"GET");
        let h = complete(&bytes);
        assert_eq!(h.len, 28);
        assert_eq!(h.addrs, addrs("203.0.113.9:40002", "127.0.0.1:8080"));

        let mut payload = "2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        payload.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        payload.extend_from_slice(&[0x9c, 0x43, 0x01, 0xbb]);
        let h = complete(&v2(1, 0x21, &payload));
        assert_eq!(h.addrs, addrs("[2001:db8::9]:40003", "[::1]:443"));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut payload = v2_ipv4_payload();
        payload.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // PP2_TYPE_NOOP, one byte
        let bytes = v2(1, 0x11, &payload);
        let h = complete(&bytes);
        assert_eq!(h.len, bytes.len());
        assert_eq!(h.addrs, addrs("203.0.113.9:40002", "127.0.0.1:8080"));
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_address() {
        // §2.2: LOCAL (health checks from the proxy itself) carries no client; addresses ignored.
        assert_eq!(complete(&v2(0, 0x11, &v2_ipv4_payload())).addrs, None);
        assert_eq!(complete(&v2(0, 0x00, &[])).addrs, None);
        assert_eq!(complete(&v2(1, 0x00, &[])).addrs, None);
    }

    #[test]
    fn v2_truncated_asks_for_exactly_the_rest() {
        let bytes = v2(1, 0x11, &v2_ipv4_payload());
        assert_eq!(
            parse(&bytes[..5]).unwrap(),
            Parse::Incomplete { at_least: 11 }
        );
        assert_eq!(
            parse(&bytes[..15]).unwrap(),
            Parse::Incomplete { at_least: 1 }
        );
        assert_eq!(
            parse(&bytes[..16]).unwrap(),
            Parse::Incomplete { at_least: 12 }
        );
        assert_eq!(
            parse(&bytes[..20]).unwrap(),
            Parse::Incomplete { at_least: 8 }
        );
    }

    #[test]
    fn v2_bad_version_signature_or_length_is_invalid() {
        let mut bad_version = v2(1, 0x11, &v2_ipv4_payload());
        bad_version[12] = 0x31;
        assert!(invalid(&bad_version));
        let mut bad_sig = v2(1, 0x11, &v2_ipv4_payload());
        bad_sig[5] = b'X';
        assert!(invalid(&bad_sig));
        assert!(invalid(&v2(1, 0x11, &[0; 4]))); // shorter than the IPv4 addresses
        assert!(invalid(&v2(2, 0x11, &v2_ipv4_payload()))); // unknown command
    }

    #[test]
    fn encode_v1_and_v2_round_trip() {
        let a = addrs("203.0.113.7:56324", "127.0.0.1:8080").unwrap();
        let v1 = encode(ProxyVersion::V1, a).unwrap();
        assert_eq!(v1, b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n");
        let mut payload = vec![203, 0, 113, 7, 127, 0, 0, 1];
        payload.extend_from_slice(&56324u16.to_be_bytes());
        payload.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(encode(ProxyVersion::V2, a).unwrap(), v2(1, 0x11, &payload));
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let bytes = encode(version, a).unwrap();
            assert_eq!(complete(&bytes).addrs, Some(a));
        }
    }

    #[test]
    fn encode_puts_both_addresses_in_one_family() {
        let mapped = addrs("[::ffff:203.0.113.7]:1", "127.0.0.1:2").unwrap();
        assert_eq!(
            encode(ProxyVersion::V1, mapped).unwrap(),
            b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n"
        );
        let mixed = addrs("203.0.113.7:1", "[2001:db8::1]:2").unwrap();
        assert_eq!(
            encode(ProxyVersion::V1, mixed).unwrap(),
            b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 1 2\r\n"
        );
        let binary = encode(ProxyVersion::V2, mixed).unwrap();
        assert_eq!(binary[13], 0x21, "v2 family byte: TCP over IPv6");
    }

    use std::time::Duration;

    fn soon(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client
                .write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        });
        let got = read_header(&mut server, soon(5000)).await.unwrap();
        assert_eq!(got, addrs("203.0.113.7:56324", "127.0.0.1:8080"));
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(5), server.read_to_string(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn read_header_times_out_and_reports_eof() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let err = read_header(&mut server, soon(50)).await.unwrap_err();
        assert!(matches!(err, ProxyError::TimedOut), "{err}");
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let err = read_header(&mut server, soon(5000)).await.unwrap_err();
        assert!(matches!(err, ProxyError::Io(_)), "{err}");
    }

    #[test]
    fn v1_bare_lf_is_invalid() {
        // Found by fuzzing: `ppp` took " \n" for the line's end, so the header ended at the LF
        // when a read stopped there and at the next CRLF otherwise.
        assert!(invalid(b"PROXY UNKNOWN \n"));
        assert!(invalid(b"PROXY UNKNOWN \n PROXY TCP4\r\n"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \n"));
        assert!(invalid(b"PROXY TCP4 1.2.3.4\n"));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n\n").len, 15);
    }

    #[test]
    fn v1_unknown_text_split_inside_a_utf8_character_is_incomplete() {
        // Found by fuzzing: a read stopping between the two bytes of "Ɲ" made the line invalid.
        let line = "PROXY UNKNOWN \u{19d}x\r\n".as_bytes();
        assert!(matches!(parse(&line[..15]), Ok(Parse::Incomplete { .. })));
        assert_eq!(reads_needed(line), 3);
        assert!(invalid(b"PROXY UNKNOWN \xff"));
        assert!(invalid(b"PROXY UNKNOWN \xc6\r\n"));
    }

    use proptest::prelude::*;

    /// `read_header`'s loop over `input`: ask `at_least` more each time; the last parse, and
    /// how many bytes it saw.
    fn drive(input: &[u8]) -> (Result<Parse, String>, usize) {
        let mut have = 0;
        loop {
            match parse(&input[..have]) {
                Ok(Parse::Incomplete { at_least }) if have + at_least <= input.len() => {
                    have += at_least;
                }
                other => return (other.map_err(|e| e.to_string()), have),
            }
        }
    }

    fn canonical(a: SocketAddr) -> (IpAddr, u16) {
        (a.ip().to_canonical(), a.port())
    }

    proptest! {
        /// `encode` -> `parse` names the same two addresses (an IPv4-mapped one as IPv4), for
        /// v1 and v2, and the incremental reads stop exactly at the header's end even with bytes
        /// after it.
        #[test]
        fn encode_parse_round_trip(
            source in any::<SocketAddr>(),
            destination in any::<SocketAddr>(),
            v2 in any::<bool>(),
            after in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let version = if v2 { ProxyVersion::V2 } else { ProxyVersion::V1 };
            let mut bytes = encode(version, ProxiedAddrs { source, destination }).unwrap();
            let len = bytes.len();
            bytes.extend_from_slice(&after);
            let h = complete(&bytes);
            prop_assert_eq!(h.len, len);
            let got = h.addrs.unwrap();
            prop_assert_eq!(canonical(got.source), canonical(source));
            prop_assert_eq!(canonical(got.destination), canonical(destination));
            prop_assert_eq!(drive(&bytes), (Ok(Parse::Complete(h)), len));
        }

        /// Any bytes: a typed answer; a complete header is self-contained; the incremental reads
        /// find a header exactly when the whole input starts with one, at its end.
        #[test]
        fn arbitrary_bytes_give_typed_answers(
            prefix in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(SIG)],
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&rest);
            let whole = parse(&input);
            match &whole {
                Ok(Parse::Complete(h)) => {
                    prop_assert!(h.len <= input.len());
                    prop_assert_eq!(parse(&input[..h.len]).unwrap(), Parse::Complete(*h));
                    prop_assert_eq!(drive(&input), (Ok(Parse::Complete(*h)), h.len));
                }
                Ok(Parse::Incomplete { at_least }) => prop_assert!(*at_least >= 1),
                Err(e) => prop_assert!(matches!(e, ProxyError::Invalid(_))),
            }
            if let (Ok(Parse::Complete(h)), have) = drive(&input) {
                prop_assert_eq!(h.len, have);
            }
        }
    }
}
