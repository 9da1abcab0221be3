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

    use proptest::prelude::*;

    /// RFC 9110 tokens, short.
    const TOKEN: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}";

    proptest! {
        /// A list joined with commas and any OWS, spread over any number of lines, splits back
        /// into the same elements; `lists_token` finds exactly its elements, in any case.
        #[test]
        fn join_then_split_round_trips(
            tokens in proptest::collection::vec(TOKEN, 0..10),
            cuts in proptest::collection::vec(any::<bool>(), 10),
            ows in proptest::collection::vec("[ \t]{0,2}", 20),
            probe in TOKEN,
        ) {
            let mut h = HeaderMap::new();
            let mut line = String::new();
            for (i, t) in tokens.iter().enumerate() {
                if i > 0 && cuts[i] {
                    h.append("x", http::HeaderValue::from_str(&line).unwrap());
                    line.clear();
                } else if i > 0 {
                    line.push(',');
                }
                line.push_str(&ows[2 * i]);
                line.push_str(t);
                line.push_str(&ows[2 * i + 1]);
            }
            h.append("x", http::HeaderValue::from_str(&line).unwrap());
            let got: Vec<&[u8]> = elements(&h, "x").collect();
            let want: Vec<&[u8]> = tokens.iter().map(|t| t.as_bytes()).collect();
            prop_assert_eq!(&got, &want);
            for t in &tokens {
                prop_assert!(lists_token(&h, "x", &t.to_ascii_uppercase()));
                prop_assert!(is_token(t.as_bytes()));
                prop_assert_eq!(protocol_name(t.as_bytes()), Some(t.as_bytes()));
            }
            let listed = tokens.iter().any(|t| t.eq_ignore_ascii_case(&probe));
            prop_assert_eq!(lists_token(&h, "x", &probe), listed);
        }

        /// Any field value: elements are non-empty, comma-free and trimmed, and every helper
        /// answers without panicking, consistently with the others.
        #[test]
        fn arbitrary_values_give_typed_answers(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
            probe in "[ -~]{0,10}",
        ) {
            let mut h = HeaderMap::new();
            for l in &lines {
                if let Ok(v) = http::HeaderValue::from_bytes(l) {
                    h.append(CONNECTION, v);
                }
            }
            let hop = HopByHop::of(&h);
            for e in elements(&h, CONNECTION) {
                prop_assert!(!e.is_empty() && !e.contains(&b','));
                prop_assert_eq!(trim_ows(e), e);
                if let Some(name) = protocol_name(e) {
                    prop_assert!(is_token(name) && e.starts_with(name));
                }
                prop_assert!(!protocol_matches(e, &probe) || protocol_name(e).is_some());
                if let Ok(name) = HeaderName::from_bytes(e) {
                    prop_assert!(hop.contains(&name));
                }
            }
        }
    }
}
