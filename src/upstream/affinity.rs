//! PURE: a request's affinity key for a `balance = "hash"` upstream (SPEC §10), from the
//! request parts, the client's address and the route's verified JWT claims.
//!
//! The key is the [`stable_hash`] of the value's bytes, so the same value gives the same key
//! in every gateway process. A value that is absent or empty gives no key (the request is then
//! balanced round robin); where a request carries a value twice, the first one counts.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::COOKIE;
use http::request::Parts;

use super::balance::stable_hash;
use crate::auth::Claims;
use crate::config::HashKey;

/// The affinity key of one request, or `None` when it has no value for `hash_key`. `client`
/// is the client's address (the PROXY header's source when there is one); `claims` are the
/// route's verified JWT claims, `None` where the route has no JWT auth.
pub(crate) fn key(
    hash_key: &HashKey,
    parts: &Parts,
    client: IpAddr,
    claims: Option<&Claims>,
) -> Option<u64> {
    value(hash_key, parts, client, claims)
        .filter(|v| !v.is_empty())
        .map(|v| stable_hash(&v))
}

/// The raw value `hash_key` names in this request.
fn value<'a>(
    hash_key: &HashKey,
    parts: &'a Parts,
    client: IpAddr,
    claims: Option<&'a Claims>,
) -> Option<Cow<'a, [u8]>> {
    match hash_key {
        HashKey::Header(name) => parts.headers.get(name).map(|v| v.as_bytes().into()),
        HashKey::Cookie(name) => parts
            .headers
            .get_all(COOKIE)
            .iter()
            .find_map(|line| cookie(line.as_bytes(), name.as_bytes()))
            .map(Cow::Borrowed),
        HashKey::Query(name) => parts
            .uri
            .query()
            .and_then(|q| query_param(q, name.as_bytes()))
            .map(Cow::Owned),
        HashKey::Claim(name) => match claims?.get(name)? {
            serde_json::Value::String(s) => Some(s.as_bytes().into()),
            serde_json::Value::Number(n) => Some(n.to_string().into_bytes().into()),
            _ => None,
        },
        HashKey::ClientIp => Some(match client.to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec().into(),
            IpAddr::V6(v6) => v6.octets().to_vec().into(),
        }),
    }
}

/// The value of cookie `name` in one `Cookie` field (RFC 6265 §4.2: `a=1; b=2`), without the
/// optional double quotes. h2 clients may split cookies over several fields (RFC 9113
/// §8.2.3), so the caller looks through all of them.
fn cookie<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    line.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        (n == name).then(|| {
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// The value of parameter `name` in a query string, both decoded as
/// `application/x-www-form-urlencoded` (`%XX`, `+` for a space), so `a%20b` and `a+b` are one
/// key whichever way a client encodes them.
fn query_param(query: &str, name: &[u8]) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(n) == name).then(|| form_decode(v))
    })
}

/// `%XX` escapes and `+` decoded; a `%` not followed by two hex digits stays as it is.
fn form_decode(text: &str) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i + 1..i + 3) {
            Some(&[h, l]) if bytes[i] == b'%' => hex(h).zip(hex(l)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            // Two hex digits are at most 0xff.
            (Some((h, l)), _) => {
                out.extend(u8::try_from(h * 16 + l).ok());
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    out
}

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().uri(uri);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn header(name: &'static str) -> HashKey {
        HashKey::Header(http::HeaderName::from_static(name))
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn values_rows() {
        let cookie = |n: &str| HashKey::Cookie(n.into());
        let query = |n: &str| HashKey::Query(n.into());
        // (name, hash_key, uri, headers, value)
        #[rustfmt::skip]
        let rows: &[(&str, HashKey, &str, &[(&str, &str)], Option<&str>)] = &[
            ("header", header("x-room"), "/", &[("X-Room", "lobby")], Some("lobby")),
            ("header_first_of_two", header("x-room"), "/", &[("x-room", "a"), ("x-room", "b")], Some("a")),
            ("header_absent", header("x-room"), "/", &[("x-other", "a")], None),
            ("header_empty", header("x-room"), "/", &[("x-room", "")], Some("")),
            ("cookie_alone", cookie("room"), "/", &[("cookie", "room=lobby")], Some("lobby")),
            ("cookie_among_others", cookie("room"), "/", &[("cookie", "a=1; room=lobby; b=2")], Some("lobby")),
            ("cookie_no_space", cookie("room"), "/", &[("cookie", "a=1;room=lobby")], Some("lobby")),
            ("cookie_quoted", cookie("room"), "/", &[("cookie", "room=\"lobby\"")], Some("lobby")),
            ("cookie_value_with_eq", cookie("room"), "/", &[("cookie", "room=a=b")], Some("a=b")),
            ("cookie_h2_split", cookie("room"), "/", &[("cookie", "a=1"), ("cookie", "room=lobby")], Some("lobby")),
            ("cookie_first_wins", cookie("room"), "/", &[("cookie", "room=x; room=y")], Some("x")),
            ("cookie_name_case_sensitive", cookie("room"), "/", &[("cookie", "Room=lobby")], None),
            ("cookie_prefix_is_not_it", cookie("room"), "/", &[("cookie", "rooms=1; xroom=2")], None),
            ("cookie_without_eq", cookie("room"), "/", &[("cookie", "room")], None),
            ("cookie_none", cookie("room"), "/", &[], None),
            ("query", query("room"), "/ws?room=lobby", &[], Some("lobby")),
            ("query_among_others", query("room"), "/ws?a=1&room=lobby&b=2", &[], Some("lobby")),
            ("query_first_wins", query("room"), "/ws?room=x&room=y", &[], Some("x")),
            ("query_percent", query("room"), "/ws?room=a%20b", &[], Some("a b")),
            ("query_plus", query("room"), "/ws?room=a+b", &[], Some("a b")),
            ("query_encoded_name", query("room"), "/ws?r%6Fom=lobby", &[], Some("lobby")),
            ("query_bad_escape_kept", query("room"), "/ws?room=100%&x=%zz", &[], Some("100%")),
            ("query_no_value", query("room"), "/ws?room", &[], Some("")),
            ("query_prefix_is_not_it", query("room"), "/ws?rooms=1&xroom=2", &[], None),
            ("query_none", query("room"), "/ws", &[], None),
            ("query_not_the_path", query("room"), "/room=lobby", &[], None),
        ];
        for (name, hash_key, uri, headers, want) in rows {
            let p = parts(uri, headers);
            let got = value(hash_key, &p, CLIENT, None);
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{name}");
        }
    }

    #[test]
    fn empty_or_absent_values_give_no_key() {
        let p = parts("/ws?room=", &[("x-room", "")]);
        assert_eq!(key(&header("x-room"), &p, CLIENT, None), None);
        assert_eq!(key(&HashKey::Query("room".into()), &p, CLIENT, None), None);
        assert_eq!(key(&header("x-other"), &p, CLIENT, None), None);
    }

    #[test]
    fn the_key_is_the_values_hash_whatever_its_source() {
        let want = Some(stable_hash(b"lobby"));
        let p = parts(
            "/ws?room=lobby",
            &[("x-room", "lobby"), ("cookie", "room=lobby")],
        );
        for hash_key in [
            header("x-room"),
            HashKey::Cookie("room".into()),
            HashKey::Query("room".into()),
        ] {
            assert_eq!(key(&hash_key, &p, CLIENT, None), want, "{hash_key:?}");
        }
    }

    #[test]
    fn client_ip_keys() {
        let p = parts("/", &[]);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let k = |ip| key(&HashKey::ClientIp, &p, ip, None);
        assert_eq!(k(v4), Some(stable_hash(&[192, 0, 2, 7])));
        assert_eq!(
            k(mapped),
            k(v4),
            "an IPv4-mapped address is its IPv4 address"
        );
        assert_ne!(k(other), k(v4));
        assert!(k(v6).is_some() && k(v6) != k(v4));
    }

    #[test]
    fn claim_keys() {
        let claims: Claims = serde_json::from_str(
            r#"{"sub": "alice", "tenant": 42, "ratio": 1.5, "admin": true, "groups": ["a"], "none": null}"#,
        )
        .unwrap();
        let p = parts("/", &[]);
        let k = |name: &str| key(&HashKey::Claim(name.into()), &p, CLIENT, Some(&claims));
        // (claim, value)
        let rows: &[(&str, Option<&[u8]>)] = &[
            ("sub", Some(b"alice")),
            ("tenant", Some(b"42")),
            ("ratio", Some(b"1.5")),
            ("admin", None),
            ("groups", None),
            ("none", None),
            ("missing", None),
        ];
        for (name, want) in rows {
            assert_eq!(k(name), want.map(stable_hash), "{name}");
        }
        // No verified claims (a route without JWT auth): no key.
        assert_eq!(key(&HashKey::Claim("sub".into()), &p, CLIENT, None), None);
    }
}
