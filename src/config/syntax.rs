//! Syntax of the words a config holds: listen addresses, upstream `host:port`, DNS names, route
//! host patterns, RFC 7230 tokens and `hash_key` forms. Each parser returns the typed value or a message that
//! quotes the offending text.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::model::{HashKey, HostPattern, ServerAddr};

/// A listen address must be an IP literal and a port: a listener binds before any resolver is
/// worth trusting, and a name could resolve to several addresses.
pub(super) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("malformed address {text:?}: expected IP:PORT, such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

/// `host:port` of an upstream server, where host is an IPv4 literal, a bracketed IPv6 literal or
/// a DNS name (RFC 3986 §3.2.2 authority syntax, without userinfo).
pub(super) fn parse_server(text: &str) -> Result<ServerAddr, String> {
    let bad = |why: &str| format!("malformed server address {text:?}: {why}");
    let (host, port) = text.rsplit_once(':').ok_or_else(|| {
        bad("expected HOST:PORT, such as \"10.0.0.5:9001\" or \"chat.internal:9001\"")
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    let host = if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner
            .strip_suffix(']')
            .and_then(|h| h.parse::<Ipv6Addr>().ok())
            .ok_or_else(|| bad("the bracketed part is not an IPv6 address"))?;
        v6.to_string()
    } else if host.contains(':') {
        return Err(bad(
            "an IPv6 address must be written in brackets, as \"[::1]:9001\"",
        ));
    } else if host.parse::<Ipv4Addr>().is_ok() || is_dns_name(host) {
        host.to_ascii_lowercase()
    } else {
        return Err(bad("the host is neither an IP address nor a DNS name"));
    };
    Ok(ServerAddr { host, port })
}

/// A DNS host name (RFC 1123 §2.1): dot-separated labels of 1..=63 letters, digits, `-` (and `_`,
/// common in internal service names), not starting or ending with `-`, at most 253 characters,
/// and not all-numeric in the last label (that would be a mistyped IPv4 address).
pub(super) fn is_dns_name(text: &str) -> bool {
    if text.is_empty() || text.len() > 253 {
        return false;
    }
    let labels_ok = text.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = text
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// A route's `host`: `*`, `*.suffix` or an exact host (DNS name, IPv4 literal or bracketed IPv6
/// literal as it appears in a `Host` header, RFC 7230 §5.4), stored lower-cased.
pub(super) fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let lower = text.to_ascii_lowercase();
    if lower == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if is_dns_name(suffix) {
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        return Err(format!(
            "malformed host pattern {text:?}: after \"*.\" must come a DNS name"
        ));
    }
    let ip_literal = lower.parse::<Ipv4Addr>().is_ok()
        || lower
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
    if ip_literal || is_dns_name(&lower) {
        return Ok(HostPattern::Exact(lower));
    }
    Err(format!(
        "malformed host pattern {text:?}: expected an exact host name (no port), \"*.example.com\" or \"*\""
    ))
}

/// An RFC 7230 §3.2.6 token: what `Upgrade` protocol names (§6.7) and WebSocket subprotocol
/// names (RFC 6455 §4.1) must be.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The `hash_key` forms, for messages.
pub(super) const HASH_KEY_FORMS: &str =
    "expected \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"claim:NAME\" or \"client_ip\"";

/// A `hash_key` (SPEC §10): `KIND:NAME` or `client_ip`. Header and cookie names must be tokens
/// (nothing else can appear in a request); query parameter and claim names may be any
/// non-empty text without control characters.
pub(super) fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    let bad = |why: &str| format!("malformed hash_key {text:?}: {why}; {HASH_KEY_FORMS}");
    let Some((kind, name)) = text.split_once(':') else {
        return Err(bad("no kind"));
    };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    let named = |ok: bool| {
        if ok {
            Ok(name.to_owned())
        } else {
            Err(bad("not a valid name"))
        }
    };
    let printable = !name.chars().any(char::is_control);
    match kind {
        "header" => http::HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| bad("not a header name")),
        "cookie" => named(is_token(name)).map(HashKey::Cookie),
        "query" => named(printable).map(HashKey::Query),
        "claim" => named(printable).map(HashKey::Claim),
        _ => Err(bad(&format!("unknown kind {kind:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys() {
        let header = |n: &'static str| HashKey::Header(http::HeaderName::from_static(n));
        let ok = [
            ("header:X-Room", header("x-room")),
            ("cookie:room", HashKey::Cookie("room".into())),
            ("query:room", HashKey::Query("room".into())),
            ("query:a b", HashKey::Query("a b".into())),
            ("claim:sub", HashKey::Claim("sub".into())),
            (
                "claim:https://example.com/tenant",
                HashKey::Claim("https://example.com/tenant".into()),
            ),
            ("client_ip", HashKey::ClientIp),
        ];
        for (text, want) in ok {
            assert_eq!(parse_hash_key(text), Ok(want), "{text}");
        }
        // (text, what the message says)
        let bad = [
            ("bogus:room", "unknown kind \"bogus\""),
            ("query:", "empty name"),
            ("room", "no kind"),
            ("header", "no kind"),
            ("", "no kind"),
            ("Client_IP", "no kind"),
            ("header:x room", "not a header name"),
            ("cookie:a;b", "not a valid name"),
            ("query:a\nb", "not a valid name"),
        ];
        for (text, says) in bad {
            let err = parse_hash_key(text).expect_err(text);
            assert!(
                err.contains(says) && err.contains(&format!("{text:?}")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn binds() {
        assert!(parse_bind("127.0.0.1:8080").is_ok());
        assert!(parse_bind("[::1]:0").is_ok());
        for bad in ["127.0.0.1:notaport", "localhost:80", "127.0.0.1", ":80", ""] {
            let err = parse_bind(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn servers() {
        let ok = [
            ("127.0.0.1:9001", "127.0.0.1", 9001),
            ("[::1]:80", "::1", 80),
            ("Chat.Internal:443", "chat.internal", 443),
            ("my_service:8080", "my_service", 8080),
            ("localhost:1", "localhost", 1),
        ];
        for (text, host, port) in ok {
            let got = parse_server(text).expect(text);
            assert_eq!((got.host.as_str(), got.port), (host, port), "{text}");
        }
        for bad in [
            "not an address",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:80",
            "[nope]:80",
            "-bad.example:80",
            "a..b:80",
            "999.1.1.1:80",
            ":80",
        ] {
            let err = parse_server(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn host_patterns() {
        let rows = [
            ("*", HostPattern::Any),
            ("*.Example.com", HostPattern::Suffix(".example.com".into())),
            (
                "Chat.Example.COM",
                HostPattern::Exact("chat.example.com".into()),
            ),
            ("127.0.0.1", HostPattern::Exact("127.0.0.1".into())),
            ("[::1]", HostPattern::Exact("[::1]".into())),
        ];
        for (text, want) in rows {
            assert_eq!(parse_host_pattern(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "*.",
            "**",
            "a.*.com",
            "example.com:8080",
            "ex ample.com",
            "*example.com",
        ] {
            assert!(parse_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        for good in ["chat.v2", "mqtt", "tcp", "v1.json.api+x"] {
            assert!(is_token(good), "{good}");
        }
        for bad in ["", "a b", "a,b", "a/b", "ü", "a\"b"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
