//! SPEC §10 `jwt`: verifying a token locally against the JWKS keys loaded with the
//! configuration, with `jsonwebtoken` doing every signature and claim check (no signature code
//! of ours). What is ours: the key choice (`kid`, key type for `alg`) and the refusal of every
//! algorithm not configured, before any key is tried, so `none` and HMAC never reach a verifier.

use std::collections::HashSet;
use std::fmt;

use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::Claims;
use crate::config::JwtAuth;

/// One `[auth.NAME]` with `jwt`, its keys ready to verify with.
pub(crate) struct Jwt {
    pub(crate) config: JwtAuth,
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    family: Family,
    decoding: DecodingKey,
}

/// The key type an algorithm needs (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("jwks", &self.config.jwks)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, for the debug log (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not three base64url parts with a JSON header naming a known `alg`.
    Malformed,
    /// `alg` is not in `algorithms` (always so for `none` and HMAC).
    Algorithm,
    /// `kid` names no key of the JWKS, or no key has the type `alg` needs.
    NoKey,
    /// No candidate key verified the signature, or a claim check failed (`exp`, `nbf`, `iss`,
    /// `aud`).
    Rejected,
}

impl Jwt {
    /// The check of `config`; keys that jsonwebtoken cannot use were already refused by `check`.
    pub(crate) fn new(config: &JwtAuth) -> Self {
        let keys = config
            .keys
            .iter()
            .filter_map(|jwk| {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                    AlgorithmParameters::OctetKey(_) => return None,
                };
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    family,
                    decoding: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        Jwt {
            config: config.clone(),
            keys,
        }
    }

    /// The claims of `token` if it verifies: signature by a JWKS key (the one its `kid` names,
    /// else any key of the right type), `alg` in `algorithms`, `exp` present and not past and
    /// `nbf` not ahead (both with `leeway`), `iss` and `aud` as configured.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(Invalid::Algorithm);
        }
        let family = family(header.alg).ok_or(Invalid::Algorithm)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // No audience configured: any `aud` is fine (jsonwebtoken would refuse every one).
            None => validation.validate_aud = false,
        }
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.family == family)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(Invalid::NoKey);
        }
        for key in candidates {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                return Ok(data.claims);
            }
        }
        Err(Invalid::Rejected)
    }
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::TokenSource;

    struct Keys {
        ec: Vec<u8>,
        ed: Vec<u8>,
        jwks: Vec<jsonwebtoken::jwk::Jwk>,
    }

    fn keys() -> Keys {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let point = EcdsaKeyPair::from_pkcs8(alg, &ec, &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ed_pub = Ed25519KeyPair::from_pkcs8(&ed)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let jwks = [
            json!({"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            json!({"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(&ed_pub)}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        Keys { ec, ed, jwks }
    }

    fn check(keys: &Keys, audience: Option<&str>, algorithms: &[Algorithm]) -> Jwt {
        Jwt::new(&JwtAuth {
            jwks: "jwks.json".into(),
            keys: keys.jwks.clone(),
            issuer: Some("https://id.test".into()),
            audience: audience.map(str::to_owned),
            algorithms: algorithms.to_vec(),
            leeway: Duration::from_secs(60),
            from: vec![TokenSource::Header(http::header::AUTHORIZATION)],
            claims_to_headers: vec![],
        })
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c =
            json!({"iss": "https://id.test", "aud": "chat", "sub": "alice", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(keys: &Keys, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_der(&keys.ec),
            Algorithm::EdDSA => EncodingKey::from_ed_der(&keys.ed),
            _ => EncodingKey::from_secret(b"secret"),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn verification_rows() {
        let k = keys();
        let all = [Algorithm::ES256, Algorithm::EdDSA];
        let t = now();
        let es = |extra: Value| sign(&k, Algorithm::ES256, Some("ec-1"), &claims(extra));
        let mut tampered = es(json!({}));
        let cut = tampered.rfind('.').unwrap() + 1;
        tampered.replace_range(
            cut..cut + 4,
            if &tampered[cut..cut + 4] == "AAAA" {
                "BBBB"
            } else {
                "AAAA"
            },
        );
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        // (what, token, audience configured, algorithms, expected)
        #[rustfmt::skip]
        let rows: Vec<(&str, String, Option<&str>, &[Algorithm], Result<(), Invalid>)> = vec![
            ("ES256 by kid", es(json!({})), Some("chat"), &all, Ok(())),
            ("EdDSA by kid", sign(&k, Algorithm::EdDSA, Some("ed-1"), &claims(json!({}))), Some("chat"), &all, Ok(())),
            ("no kid: any key of the type", sign(&k, Algorithm::EdDSA, None, &claims(json!({}))), Some("chat"), &all, Ok(())),
            ("aud array holding it", es(json!({"aud": ["x", "chat"]})), Some("chat"), &all, Ok(())),
            ("any aud without audience", es(json!({"aud": "other"})), None, &all, Ok(())),
            ("exp within leeway", es(json!({"exp": t - 30})), Some("chat"), &all, Ok(())),
            ("nbf within leeway", es(json!({"nbf": t + 30})), Some("chat"), &all, Ok(())),
            ("expired", es(json!({"exp": t - 120})), Some("chat"), &all, Err(Invalid::Rejected)),
            ("nbf ahead", es(json!({"nbf": t + 120})), Some("chat"), &all, Err(Invalid::Rejected)),
            ("no exp", es(json!({"exp": null})), Some("chat"), &all, Err(Invalid::Rejected)),
            ("wrong iss", es(json!({"iss": "https://evil.test"})), Some("chat"), &all, Err(Invalid::Rejected)),
            ("wrong aud", es(json!({"aud": "other"})), Some("chat"), &all, Err(Invalid::Rejected)),
            ("bad signature", tampered.clone(), Some("chat"), &all, Err(Invalid::Rejected)),
            ("unknown kid", sign(&k, Algorithm::ES256, Some("nope"), &claims(json!({}))), Some("chat"), &all, Err(Invalid::NoKey)),
            ("kid of another key type", sign(&k, Algorithm::ES256, Some("ed-1"), &claims(json!({}))), Some("chat"), &all, Err(Invalid::NoKey)),
            ("alg not configured", es(json!({})), Some("chat"), &[Algorithm::EdDSA], Err(Invalid::Algorithm)),
            ("HS256", sign(&k, Algorithm::HS256, Some("ec-1"), &claims(json!({}))), Some("chat"), &all, Err(Invalid::Algorithm)),
            ("alg none", format!("{none_header}.{body}."), Some("chat"), &all, Err(Invalid::Malformed)),
            ("garbage", "a.b.c".into(), Some("chat"), &all, Err(Invalid::Malformed)),
        ];
        for (what, token, audience, algorithms, want) in rows {
            let got = check(&k, audience, algorithms).verify(&token).map(|_| ());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn the_claims_come_back() {
        let k = keys();
        let token = sign(
            &k,
            Algorithm::EdDSA,
            Some("ed-1"),
            &claims(json!({"tier": 3})),
        );
        let got = check(&k, Some("chat"), &[Algorithm::EdDSA])
            .verify(&token)
            .unwrap();
        assert_eq!(got["sub"], "alice");
        assert_eq!(got["tier"], 3);
    }
}
