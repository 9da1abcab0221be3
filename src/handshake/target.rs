//! The request target checks of SPEC §3 that come before routing: the host must be a valid
//! `host[:port]` and the path must mean the same to the gateway's router as to an upstream
//! that normalizes it. Either would otherwise let a request reach a route it does not name.

use crate::error::Reject;

/// RFC 9112 §3.2 and RFC 3986 §3.2.2: `Host`, the authority of an absolute-form target, or
/// `:authority` is a reg-name, an IPv4 address or a bracketed IPv6 address, with an optional
/// decimal port 1–65535. Refused, as SPEC §3 lists: userinfo (`@`), whitespace, `/`, `,`
/// (a list of hosts), an empty host, an empty or bad port, an unclosed or invalid `[...]`.
pub(crate) fn check_authority(authority: &str) -> Result<(), Reject> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(Reject::BadHost)?;
        // IPvFuture (`[v1.x]`) names nothing a gateway can serve.
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| Reject::BadHost)?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or(Reject::BadHost)?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() || !host.bytes().all(reg_name_byte) || !pct_encoded_ok(host) {
            return Err(Reject::BadHost);
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(Reject::BadHost);
        }
    }
    Ok(())
}

/// RFC 3986 §3.2.2 reg-name: unreserved, pct-encoded and sub-delims, without the `,` that
/// would make `Host: a, b` a list (RFC 9110 §7.2 allows one host only).
fn reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b';'
                | b'='
        )
}

/// Every `%` starts a two-hex-digit escape.
fn pct_encoded_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// SPEC §3: a path with a `.` or `..` segment (RFC 3986 §5.2.4), also percent-encoded (`%2e`),
/// or a `%00` is refused. The router matches the raw path, so `/public/../admin` would match
/// the `/public` route while an upstream that removes dot segments serves `/admin`; `%00`
/// truncates the path in C-string upstreams. The query is not part of the path.
pub(crate) fn check_path(path_and_query: &str) -> Result<(), Reject> {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let nul = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if nul || path.split('/').any(is_dot_segment) {
        return Err(Reject::BadPath);
    }
    Ok(())
}

/// `.` or `..`, each dot written as `.` or `%2e`/`%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let good = [
            "example.com",
            "example.com:443",
            "EXAMPLE.com.",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::7]:1",
            "a_b-c~d",
            "xn--bcher-kva.example",
            "caf%C3%A9.example",
            "h:65535",
        ];
        for a in good {
            assert_eq!(check_authority(a), Ok(()), "{a}");
        }
        let bad = [
            "",
            ":80",
            "a, b",
            "a,b",
            "user@host",
            "user:pw@host",
            "a b",
            " a",
            "a\t",
            "a/b",
            "a:",
            "a:0",
            "a:65536",
            "a:99999",
            "a:8o",
            "a:+80",
            "a:-1",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[v1.x]",
            "[zz::1]",
            "::1",
            "a%",
            "a%2",
            "a%zz",
            "a\"b",
            "a<b",
            "a\\b",
            "a#b",
            "a?b",
            "a[b",
        ];
        for a in bad {
            assert_eq!(check_authority(a), Err(Reject::BadHost), "{a:?}");
        }
    }

    #[test]
    fn paths() {
        let good = [
            "/",
            "/ws",
            "/a/b/",
            "/a.b/c..d/...",
            "/.well-known/x",
            "/a%2eb",
            "/x?y=/../z",
            "/x?%00",
            "*",
            "",
            "/%20",
            "/a/%2e%2e%2e",
        ];
        for p in good {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        let bad = [
            "/.",
            "/..",
            "/public/../strict",
            "/public/./x",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2e",
            "/a/%2e",
            "/a/%2E/",
            "/x%00",
            "/%00/y",
            "/a/..?q",
        ];
        for p in bad {
            assert_eq!(check_path(p), Err(Reject::BadPath), "{p}");
        }
    }
}
