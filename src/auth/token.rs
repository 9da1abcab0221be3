//! PURE: where a JWT is in a request (SPEC §10 `from`), and taking it out of what is forwarded:
//! a `query:` parameter out of the query, a `subprotocol:` element out of the offer (before
//! subprotocol selection, so it is never selected, forwarded, echoed or logged).
//!
//! No I/O, no tokio: header maps and strings in, header maps and strings out.

use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue};

use crate::config::TokenSource;

/// The token-carrying parts removed from a request, by source: `(name or prefix, value)`, in
/// request order. Kept only until the check has run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Taken {
    query: Vec<(String, String)>,
    subprotocol: Vec<(String, String)>,
}

/// Removes every parameter that a `query:` source names from `path_and_query` (all of their
/// occurrences, the rest kept in order) into `taken`; the new path and query when any was removed.
pub(crate) fn take_query(
    path_and_query: &str,
    sources: &[TokenSource],
    taken: &mut Taken,
) -> Option<String> {
    let names: Vec<&str> = sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Query(name) => Some(name.as_str()),
            TokenSource::Header(_) | TokenSource::Subprotocol(_) => None,
        })
        .collect();
    let (path, query) = path_and_query.split_once('?')?;
    if names.is_empty() {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut removed = false;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(n) = names.iter().find(|n| **n == name) {
            taken.query.push(((*n).to_owned(), value.to_owned()));
            removed = true;
        } else {
            kept.push(pair);
        }
    }
    if !removed {
        return None;
    }
    let kept = kept.join("&");
    Some(if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    })
}

/// Removes every offered `Sec-WebSocket-Protocol` element that starts with a `subprotocol:`
/// prefix into `taken`; the other elements stay, in order, on one line (RFC 9110 §5.3: the lines
/// are one list). Empty elements are dropped as RFC 9110 §5.6.1 lets a recipient do.
pub(crate) fn take_subprotocols(
    headers: &mut HeaderMap,
    sources: &[TokenSource],
    taken: &mut Taken,
) {
    let prefixes: Vec<&str> = sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Subprotocol(p) => Some(p.as_str()),
            TokenSource::Header(_) | TokenSource::Query(_) => None,
        })
        .collect();
    if prefixes.is_empty() || !headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
        return;
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut removed = false;
    for line in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        for element in line.as_bytes().split(|b| *b == b',') {
            let element = trim(element);
            if element.is_empty() {
                continue;
            }
            let prefix = prefixes.iter().find(|p| element.starts_with(p.as_bytes()));
            match prefix {
                Some(p) => {
                    let value = String::from_utf8_lossy(&element[p.len()..]).into_owned();
                    taken.subprotocol.push(((*p).to_owned(), value));
                    removed = true;
                }
                None => kept.push(element.to_vec()),
            }
        }
    }
    if !removed {
        return;
    }
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    if !kept.is_empty() {
        // Elements of a valid header value, joined by ", ", are a valid value again.
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
}

/// The token of the first source in `sources` that is present: `header:NAME` (the first
/// non-empty line; `authorization` only with the `Bearer` scheme, RFC 6750 §2.1, another scheme
/// counting as absent), or what [`take_query`] / [`take_subprotocols`] removed. An empty value is
/// absent.
pub(crate) fn find<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    taken: &'a Taken,
) -> Option<&'a str> {
    sources.iter().find_map(|source| match source {
        TokenSource::Header(name) => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?.trim();
            let token = if *name == AUTHORIZATION {
                bearer(v)?
            } else {
                v
            };
            (!token.is_empty()).then_some(token)
        }),
        TokenSource::Query(want) => first(&taken.query, want),
        TokenSource::Subprotocol(want) => first(&taken.subprotocol, want),
    })
}

fn first<'a>(taken: &'a [(String, String)], want: &str) -> Option<&'a str> {
    taken
        .iter()
        .find(|(name, value)| name == want && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

/// RFC 6750 §2.1: `Bearer` (case-insensitive, RFC 9110 §11.1) then the token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn defaults() -> Vec<TokenSource> {
        vec![
            TokenSource::Header(AUTHORIZATION),
            TokenSource::Query("access_token".into()),
            TokenSource::Subprotocol("bearer.".into()),
        ]
    }

    #[test]
    fn query_rows() {
        // (path and query, new path and query, removed values)
        #[rustfmt::skip]
        let rows: &[(&str, Option<&str>, &[&str])] = &[
            ("/ws?room=5&access_token=T&x=y", Some("/ws?room=5&x=y"), &["T"]),
            ("/ws?access_token=T", Some("/ws"), &["T"]),
            ("/ws?access_token=A&access_token=B", Some("/ws"), &["A", "B"]),
            ("/ws?access_token", Some("/ws"), &[""]),
            ("/ws?my_access_token=T", None, &[]),
            ("/ws?x=access_token", None, &[]),
            ("/ws", None, &[]),
            ("/ws?", None, &[]),
        ];
        for (pq, want, values) in rows {
            let mut taken = Taken::default();
            assert_eq!(
                take_query(pq, &defaults(), &mut taken).as_deref(),
                *want,
                "{pq}"
            );
            let got: Vec<&str> = taken.query.iter().map(|(_, v)| v.as_str()).collect();
            assert_eq!(got, *values, "{pq}");
        }
        let mut taken = Taken::default();
        let header_only = [TokenSource::Header(AUTHORIZATION)];
        assert_eq!(
            take_query("/ws?access_token=T", &header_only, &mut taken),
            None
        );
    }

    #[test]
    fn subprotocol_rows() {
        // (offer lines, offer left, removed values)
        #[rustfmt::skip]
        let rows: &[(&[&str], Option<&str>, &[&str])] = &[
            (&["bearer.T, chat.v2"], Some("chat.v2"), &["T"]),
            (&["chat.v2", "bearer.T"], Some("chat.v2"), &["T"]),
            (&["bearer.T"], None, &["T"]),
            (&["mqtt, bearer.T ,, chat.v2"], Some("mqtt, chat.v2"), &["T"]),
            (&["chat.v2, mqtt"], Some("chat.v2, mqtt"), &[]),
            (&["Bearer.T"], Some("Bearer.T"), &[]),
            (&["bearer."], None, &[""]),
        ];
        for (lines, left, values) in rows {
            let mut h = HeaderMap::new();
            for l in *lines {
                h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(l).unwrap());
            }
            let mut taken = Taken::default();
            take_subprotocols(&mut h, &defaults(), &mut taken);
            let offer: Vec<&str> = h
                .get_all(SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let want: Vec<&str> = if values.is_empty() {
                lines.to_vec()
            } else {
                left.iter().copied().collect()
            };
            assert_eq!(offer, want, "{lines:?}");
            let got: Vec<&str> = taken.subprotocol.iter().map(|(_, v)| v.as_str()).collect();
            assert_eq!(got, *values, "{lines:?}");
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn first_present_source_wins() {
        let x_token = HeaderName::from_static("x-token");
        // (Authorization lines, X-Token, query token, subprotocol token, sources, found)
        #[rustfmt::skip]
        let rows: &[(&[&str], Option<&str>, Option<&str>, Option<&str>, Vec<TokenSource>, Option<&str>)] = &[
            (&["Bearer H"], None, Some("Q"), Some("S"), defaults(), Some("H")),
            (&["bearer  H "], None, None, None, defaults(), Some("H")),
            (&["Basic dXNlcjpwYXNz"], None, Some("Q"), None, defaults(), Some("Q")),
            (&["Bearer"], None, None, Some("S"), defaults(), Some("S")),
            (&["Bearer "], None, Some(""), Some("S"), defaults(), Some("S")),
            (&[], None, None, None, defaults(), None),
            (&["Basic x", "Bearer H2"], None, None, None, defaults(), Some("H2")),
            (&["Bearer H"], Some("X"), None, None, vec![TokenSource::Header(x_token.clone())], Some("X")),
            (&["Bearer H"], None, None, None, vec![TokenSource::Header(x_token.clone())], None),
            (&[], Some("Bearer X"), None, None, vec![TokenSource::Header(x_token.clone())], Some("Bearer X")),
            (&["Bearer H"], None, Some("Q"), None, vec![TokenSource::Query("access_token".into()), TokenSource::Header(AUTHORIZATION)], Some("Q")),
        ];
        for (auth, xtok, query, sub, sources, want) in rows {
            let mut h = HeaderMap::new();
            for a in *auth {
                h.append(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
            }
            if let Some(x) = xtok {
                h.insert(x_token.clone(), HeaderValue::from_str(x).unwrap());
            }
            let mut taken = Taken::default();
            if let Some(q) = query {
                taken.query.push(("access_token".into(), (*q).into()));
            }
            if let Some(s) = sub {
                taken.subprotocol.push(("bearer.".into(), (*s).into()));
            }
            assert_eq!(
                find(sources, &h, &taken),
                *want,
                "{auth:?} {xtok:?} {query:?} {sub:?}"
            );
        }
    }
}
