//! `[auth.NAME]` tables (SPEC §10) -> [`AuthConfig`], with the SPEC §2 `check` rules: exactly one
//! of `forward` and `jwt`, a JWKS file that can be read and holds a usable key, a URL the
//! gateway can call, durations, header names, and algorithms that are never `none` or HMAC.
//!
//! The JWKS is read here, when the configuration is built, so a SIGHUP reload (which builds a
//! new configuration) re-reads it, and `check` catches a bad file before anything binds.

use std::collections::BTreeMap;
use std::path::Path;

use http::{HeaderName, Uri};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};

use super::defaults;
use super::locate::KeyPath;
use super::model::{AuthConfig, ForwardAuth, JwtAuth, ServerAddr, TokenSource};
use super::raw::{RawAuth, RawForwardAuth, RawJwtAuth};
use super::syntax::is_token;
use super::validate::Validator;

impl Validator<'_> {
    /// Every `[auth.NAME]` of the file. A table with a problem is left out (the caller returns
    /// `Err` anyway).
    pub(super) fn auths(
        &mut self,
        at: &KeyPath,
        raw: &BTreeMap<String, RawAuth>,
    ) -> BTreeMap<String, AuthConfig> {
        let mut out = BTreeMap::new();
        for (name, table) in raw {
            let at = at.key(name);
            let before = self.problems.len();
            let config = match (&table.forward, &table.jwt) {
                (Some(f), None) => Some(AuthConfig::Forward(self.forward(&at.key("forward"), f))),
                (None, Some(j)) => Some(AuthConfig::Jwt(self.jwt(&at.key("jwt"), j))),
                (Some(_), Some(_)) => {
                    self.bad(
                        &at,
                        format!("[auth.{name}] has both forward and jwt: keep exactly one"),
                    );
                    None
                }
                (None, None) => {
                    self.bad(
                        &at,
                        format!("[auth.{name}] has neither forward nor jwt: set exactly one"),
                    );
                    None
                }
            };
            if let (Some(config), true) = (config, self.problems.len() == before) {
                out.insert(name.clone(), config);
            }
        }
        out
    }

    /// A list of header names, lower-cased; `None` is `default`.
    fn header_names(
        &mut self,
        at: &KeyPath,
        raw: Option<&[String]>,
        default: &[&str],
    ) -> Vec<HeaderName> {
        let names: Vec<&str> = match raw {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => default.to_vec(),
        };
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match self.header_name(&at.index(i), name) {
                Some(h) if out.contains(&h) => {
                    self.bad(&at.index(i), format!("header {name:?} is listed twice"));
                }
                Some(h) => out.push(h),
                None => {}
            }
        }
        out
    }

    fn header_name(&mut self, at: &KeyPath, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.bad(at, format!("{name:?} is not a valid header name"));
                None
            }
        }
    }

    fn forward(&mut self, at: &KeyPath, raw: &RawForwardAuth) -> ForwardAuth {
        let (url, server, tls) = self.url(&at.key("url"), &raw.url);
        let timeout_at = at.key("timeout");
        let timeout = self.duration(
            &timeout_at,
            raw.timeout.as_ref(),
            defaults::FORWARD_AUTH_TIMEOUT,
        );
        if timeout.is_zero() {
            self.bad(&timeout_at, "must be greater than 0s");
        }
        let forward_headers = self.header_names(
            &at.key("forward_headers"),
            raw.forward_headers.as_deref(),
            defaults::FORWARD_AUTH_HEADERS,
        );
        let copy_headers =
            self.header_names(&at.key("copy_headers"), raw.copy_headers.as_deref(), &[]);
        ForwardAuth {
            url,
            server,
            tls,
            timeout,
            forward_headers,
            copy_headers,
        }
    }

    /// `http://host[:port]/path?query` or `https://...`; no userinfo.
    fn url(&mut self, at: &KeyPath, text: &str) -> (Uri, ServerAddr, bool) {
        let stand_in = || {
            let server = ServerAddr {
                host: "127.0.0.1".into(),
                port: 80,
            };
            (Uri::from_static("http://127.0.0.1/"), server, false)
        };
        let expected =
            "expected an absolute http:// or https:// URL such as \"http://127.0.0.1:4180/check\"";
        let Ok(uri) = text.parse::<Uri>() else {
            self.bad(at, format!("malformed url {text:?}: {expected}"));
            return stand_in();
        };
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.bad(at, format!("url {text:?} is not http or https: {expected}"));
                return stand_in();
            }
        };
        let Some(authority) = uri.authority() else {
            self.bad(at, format!("url {text:?} has no host: {expected}"));
            return stand_in();
        };
        if authority.as_str().contains('@') {
            self.bad(
                at,
                format!("url {text:?} must not carry credentials (user@)"),
            );
            return stand_in();
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            self.bad(at, format!("url {text:?} has no host: {expected}"));
            return stand_in();
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if port == 0 {
            self.bad(at, format!("url {text:?} has port 0"));
            return stand_in();
        }
        let server = ServerAddr {
            host: host.to_owned(),
            port,
        };
        (uri, server, tls)
    }

    fn jwt(&mut self, at: &KeyPath, raw: &RawJwtAuth) -> JwtAuth {
        let jwks = self.resolve(&raw.jwks);
        let keys = match load_jwks(&jwks) {
            Ok(keys) => keys,
            Err(problem) => {
                self.bad(&at.key("jwks"), problem);
                Vec::new()
            }
        };
        let algorithms = self.algorithms(&at.key("algorithms"), raw.algorithms.as_deref());
        let leeway = self.duration(&at.key("leeway"), raw.leeway.as_ref(), defaults::JWT_LEEWAY);
        let from = self.sources(&at.key("from"), raw.from.as_deref());
        let mut claims_to_headers = Vec::new();
        for (claim, header) in raw.claims_to_headers.iter().flatten() {
            let at = at.key("claims_to_headers").key(claim);
            if claim.is_empty() {
                self.bad(&at, "empty claim name");
            }
            if let Some(h) = self.header_name(&at, header) {
                claims_to_headers.push((claim.clone(), h));
            }
        }
        for (key, value) in [("issuer", &raw.issuer), ("audience", &raw.audience)] {
            if value.as_deref().is_some_and(str::is_empty) {
                self.bad(
                    &at.key(key),
                    format!("empty {key}: remove it to accept any"),
                );
            }
        }
        JwtAuth {
            jwks,
            keys,
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            algorithms,
            leeway,
            from,
            claims_to_headers,
        }
    }

    fn algorithms(&mut self, at: &KeyPath, raw: Option<&[String]>) -> Vec<Algorithm> {
        let Some(list) = raw else {
            return defaults::JWT_ALGORITHMS.to_vec();
        };
        if list.is_empty() {
            self.bad(
                at,
                "empty algorithms list: accept at least one, such as \"RS256\"",
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, name) in list.iter().enumerate() {
            match signature_algorithm(name) {
                Ok(alg) if !out.contains(&alg) => out.push(alg),
                Ok(_) => self.bad(&at.index(i), format!("algorithm {name:?} is listed twice")),
                Err(problem) => self.bad(&at.index(i), problem),
            }
        }
        out
    }

    fn sources(&mut self, at: &KeyPath, raw: Option<&[String]>) -> Vec<TokenSource> {
        let list: Vec<&str> = match raw {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => defaults::JWT_FROM.to_vec(),
        };
        if list.is_empty() {
            self.bad(at, "empty from list: name at least one token source");
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            match token_source(text) {
                Ok(source) => out.push(source),
                Err(problem) => self.bad(&at.index(i), problem),
            }
        }
        out
    }
}

/// An asymmetric JWS algorithm name (RFC 7518 §3.1, RFC 8037 §3.1). `none` and HMAC are refused
/// by name: HMAC would verify with a shared secret, and with a public key taken as that secret
/// anyone could sign (algorithm confusion).
fn signature_algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        n if n.eq_ignore_ascii_case("none") || n.to_ascii_uppercase().starts_with("HS") => {
            return Err(format!(
                "algorithm {n:?} is never accepted: tokens must be signed with a public-key algorithm (RS*, PS*, ES256, ES384, EdDSA)"
            ));
        }
        n => {
            return Err(format!(
                "unknown algorithm {n:?}: expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
            ));
        }
    })
}

/// `header:NAME`, `query:NAME` or `subprotocol:PREFIX`.
fn token_source(text: &str) -> Result<TokenSource, String> {
    let expected = "expected \"header:NAME\", \"query:NAME\" or \"subprotocol:PREFIX\"";
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("malformed token source {text:?}: {expected}"));
    };
    if name.is_empty() {
        return Err(format!("token source {text:?} names nothing: {expected}"));
    }
    match kind {
        "header" => HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(TokenSource::Header)
            .map_err(|_| format!("{name:?} in {text:?} is not a valid header name")),
        "query" if !name.contains(['&', '=', '#', ' ']) => Ok(TokenSource::Query(name.to_owned())),
        "query" => Err(format!(
            "{name:?} in {text:?} is not a query parameter name"
        )),
        // RFC 6455 §4.1: subprotocol elements are tokens, so a prefix of one is too.
        "subprotocol" if is_token(name) => Ok(TokenSource::Subprotocol(name.to_owned())),
        "subprotocol" => Err(format!("{name:?} in {text:?} is not an RFC 7230 token")),
        _ => Err(format!("unknown token source {text:?}: {expected}")),
    }
}

/// The usable public keys of the JWKS file at `path` (RFC 7517 §5): RSA, EC P-256/P-384 and
/// Ed25519 keys not marked for encryption. Others (HMAC `oct` keys, encryption keys, kinds
/// jsonwebtoken does not know) are skipped; a file with none left is a problem.
pub(super) fn load_jwks(path: &Path) -> Result<Vec<Jwk>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read JWKS file \"{shown}\": {e}"))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("JWKS file \"{shown}\" is not JSON: {e}"))?;
    let Some(entries) = value.get("keys").and_then(serde_json::Value::as_array) else {
        return Err(format!(
            "JWKS file \"{shown}\" is not a JWK set: expected {{\"keys\": [...]}}"
        ));
    };
    let keys: Vec<Jwk> = entries
        .iter()
        .filter_map(|e| serde_json::from_value::<Jwk>(e.clone()).ok())
        .filter(usable)
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "JWKS file \"{shown}\" holds no usable key: need an RSA, EC (P-256, P-384) or Ed25519 public signing key (HMAC \"oct\" keys are never used)"
        ));
    }
    Ok(keys)
}

fn usable(key: &Jwk) -> bool {
    if matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    let kind = match &key.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::EllipticCurve(ec) => {
            matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384)
        }
        AlgorithmParameters::OctetKeyPair(okp) => matches!(okp.curve, EllipticCurve::Ed25519),
        AlgorithmParameters::OctetKey(_) => false,
    };
    kind && jsonwebtoken::DecodingKey::from_jwk(key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_rows() {
        let rows: &[(&str, Result<Algorithm, &str>)] = &[
            ("RS256", Ok(Algorithm::RS256)),
            ("ES256", Ok(Algorithm::ES256)),
            ("EdDSA", Ok(Algorithm::EdDSA)),
            ("PS512", Ok(Algorithm::PS512)),
            ("none", Err("never accepted")),
            ("HS256", Err("never accepted")),
            ("hs512", Err("never accepted")),
            ("rs256", Err("unknown algorithm")),
            ("ES512", Err("unknown algorithm")),
        ];
        for (name, want) in rows {
            match (signature_algorithm(name), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{name}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{name}: {got}"),
                (got, want) => panic!("{name}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn token_source_rows() {
        let rows: &[(&str, Option<TokenSource>)] = &[
            (
                "header:Authorization",
                Some(TokenSource::Header(http::header::AUTHORIZATION)),
            ),
            (
                "query:access_token",
                Some(TokenSource::Query("access_token".into())),
            ),
            (
                "subprotocol:bearer.",
                Some(TokenSource::Subprotocol("bearer.".into())),
            ),
            ("header:", None),
            ("query:a&b", None),
            ("subprotocol:a b", None),
            ("cookie:sid", None),
            ("authorization", None),
        ];
        for (text, want) in rows {
            assert_eq!(token_source(text).ok(), *want, "{text}");
        }
    }
}
