//! PURE: verified JWT claims -> upstream request headers (SPEC §10 `claims_to_headers`).
//!
//! A string claim is sent as it is, a number in its JSON form; any other claim (object, array,
//! boolean, null) and a string that is not a valid header value are left out, so a token cannot
//! smuggle a line break or a structure into a header.

use http::{HeaderName, HeaderValue};

use super::Claims;

/// The headers `mapping` (`(claim, header)` pairs) makes of `claims`, in mapping order.
pub(crate) fn to_headers(
    mapping: &[(String, HeaderName)],
    claims: &Claims,
) -> Vec<(HeaderName, HeaderValue)> {
    mapping
        .iter()
        .filter_map(|(claim, header)| {
            let value = match claims.get(claim)? {
                serde_json::Value::String(s) => HeaderValue::from_str(s).ok()?,
                serde_json::Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok()?,
                serde_json::Value::Null
                | serde_json::Value::Bool(_)
                | serde_json::Value::Array(_)
                | serde_json::Value::Object(_) => return None,
            };
            Some((header.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_rows() {
        // (claim value, header value; None: no header)
        let rows = [
            (json!("alice"), Some("alice")),
            (json!(3), Some("3")),
            (json!(-2.5), Some("-2.5")),
            (json!(12345678901_u64), Some("12345678901")),
            (json!(""), Some("")),
            (json!(true), None),
            (json!(null), None),
            (json!(["a"]), None),
            (json!({"a": 1}), None),
            (json!("evil\r\nx-admin: 1"), None),
        ];
        let x = HeaderName::from_static("x-claim");
        for (value, want) in rows {
            let mut claims = Claims::new();
            claims.insert("c".into(), value.clone());
            let got = to_headers(&[("c".into(), x.clone())], &claims);
            let got: Vec<&str> = got.iter().map(|(_, v)| v.to_str().unwrap()).collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{value}");
        }
    }

    #[test]
    fn absent_claims_make_no_header_and_order_follows_the_mapping() {
        let mut claims = Claims::new();
        claims.insert("sub".into(), json!("bob"));
        claims.insert("tier".into(), json!(2));
        let mapping = [
            ("tier".into(), HeaderName::from_static("x-tier")),
            ("missing".into(), HeaderName::from_static("x-missing")),
            ("sub".into(), HeaderName::from_static("x-user")),
        ];
        let got: Vec<(String, String)> = to_headers(&mapping, &claims)
            .into_iter()
            .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-tier".into(), "2".into()),
                ("x-user".into(), "bob".into())
            ]
        );
    }
}
