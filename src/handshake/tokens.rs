//! Header-list grammar shared by every handshake rule: comma lists (RFC 9110 §5.6.1), tokens
//! (RFC 9110 §5.6.2), `protocol` values of `Upgrade` (RFC 9110 §7.8) and hop-by-hop headers
//! (RFC 9110 §7.6.1). Works on bytes so that no header value, however malformed, can panic.

use http::header::{AsHeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName};

/// `Keep-Alive` (RFC 9112 Appendix C.2.2), not among the `http` crate's constants.
pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The elements of a comma-separated list spread over every line of `name`, in order: OWS
/// trimmed, empty elements ignored (RFC 9110 §5.6.1: "a recipient MUST parse and ignore a
/// reasonable number of empty list elements").
pub(crate) fn elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Whether the list `name` holds `token` as a whole element, ASCII case-insensitively
/// (connection options are case-insensitive, RFC 9110 §7.6.1).
pub(crate) fn lists_token<K: AsHeaderName>(headers: &HeaderMap, name: K, token: &str) -> bool {
    elements(headers, name).any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 9110 §5.6.3: OWS = *( SP / HTAB ).
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2: token = 1*tchar.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_tchar(*b))
}

/// RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §7.8: protocol = protocol-name ["/" protocol-version], both tokens. Returns the
/// name, or `None` when `s` is not a well-formed protocol.
pub(crate) fn protocol_name(s: &[u8]) -> Option<&[u8]> {
    let (name, version) = match s.iter().position(|b| *b == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let version_ok = version.is_none_or(is_token);
    (is_token(name) && version_ok).then_some(name)
}

/// Whether an offered `Upgrade` protocol is the configured one: equal (ASCII
/// case-insensitively), or, when the configured token names no version, any version of it
/// (`tcp` accepts `tcp/1`). Malformed offers match nothing.
pub(crate) fn protocol_matches(offered: &[u8], configured: &str) -> bool {
    let Some(name) = protocol_name(offered) else {
        return false;
    };
    offered.eq_ignore_ascii_case(configured.as_bytes())
        || (!configured.contains('/') && name.eq_ignore_ascii_case(configured.as_bytes()))
}

/// The hop-by-hop headers a proxy removes (RFC 9110 §7.6.1): every name the `Connection` lines
/// list, plus `Connection`, `Keep-Alive`, `Proxy-*` (`Proxy-Connection`, `Proxy-Authorization`,
/// ...: meant for this hop's proxy), `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub(crate) struct HopByHop {
    listed: Vec<HeaderName>,
}

impl HopByHop {
    /// Reads the `Connection` options of one message.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let listed = elements(headers, CONNECTION)
            .filter_map(|e| HeaderName::from_bytes(e).ok())
            .collect();
        HopByHop { listed }
    }

    /// Whether `name` must not travel past this hop.
    pub(crate) fn contains(&self, name: &HeaderName) -> bool {
        *name == CONNECTION
            || *name == KEEP_ALIVE
            || *name == TE
            || *name == TRAILER
            || *name == TRANSFER_ENCODING
            || *name == UPGRADE
            || name.as_str().starts_with("proxy-")
            || self.listed.contains(name)
    }
}

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn map(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(*n, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn list_elements_across_lines_trimmed_without_empties() {
        #[rustfmt::skip]
        let rows: &[(&[(&str, &str)], &[&str])] = &[
            (&[("x", "a, b")], &["a", "b"]),
            (&[("x", "a,,b")], &["a", "b"]),
            (&[("x", " , a ,")], &["a"]),
            (&[("x", ""), ("x", "b")], &["b"]),
            (&[("x", "a"), ("x", "\tb\t,c")], &["a", "b", "c"]),
            (&[("x", " , ")], &[]),
            (&[], &[]),
        ];
        for (lines, want) in rows {
            let h = map(lines);
            let got: Vec<&[u8]> = elements(&h, "x").collect();
            let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(got, want, "{lines:?}");
        }
    }

    #[test]
    fn tokens_follow_rfc9110() {
        for ok in ["chat.v2", "mqtt", "a!#$%&'*+-.^_`|~9"] {
            assert!(is_token(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "chat/v2", "chat v2", "a\"b", "a;b", "a=b", "é"] {
            assert!(!is_token(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn protocol_matching_rows() {
        // (offered, configured, matches)
        let rows = [
            ("websocket", "websocket", true),
            ("WebSocket", "websocket", true),
            ("websockets", "websocket", false),
            ("websocket/13", "websocket", true),
            ("websocket/", "websocket", false),
            ("tcp/1", "tcp/2", false),
            ("TCP/2", "tcp/2", true),
            ("tcp", "tcp/2", false),
            ("web socket", "websocket", false),
        ];
        for (offered, configured, want) in rows {
            assert_eq!(
                protocol_matches(offered.as_bytes(), configured),
                want,
                "{offered} vs {configured}"
            );
        }
    }

    #[test]
    fn hop_by_hop_includes_connection_listed_names() {
        let h = map(&[
            ("connection", "Upgrade, X-Hop-Custom"),
            ("connection", "keep-alive"),
        ]);
        let hop = HopByHop::of(&h);
        for name in [
            "x-hop-custom",
            "connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(hop.contains(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["cookie", "x-end-to-end", "sec-websocket-extensions", "host"] {
            assert!(!hop.contains(&HeaderName::from_static(name)), "{name}");
        }
    }
}
