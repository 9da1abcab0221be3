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
