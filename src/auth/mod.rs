//! Authentication at the handshake (SPEC §10): the `[auth.NAME]` checks of one configuration
//! generation, as `gateway::dispatch` calls them, and their outcome.
//!
//! Dispatch calls, in this order:
//! 1. [`Check::take_tokens`] right after routing: a JWT check's `query:` parameters leave the
//!    query (also the logged path) and its `subprotocol:` elements leave the offer, before any
//!    §3 check or the subprotocol choice reads it;
//! 2. [`Check::run`] after every §3 check passed and before any upstream is chosen or dialed;
//! 3. [`Allowed::apply`] on the headers the upstream request is built from.
//!
//! The rooms:
//!
//! ```text
//! token    PURE: token sources (header, query, subprotocol) and taking them out
//! claims   PURE: claims -> upstream headers
//! jwt      verification with jsonwebtoken against the JWKS loaded with the configuration
//! forward  the forward-auth client (the upstream machinery's keep-alive client)
//! ```
//!
//! Tokens never reach a log, a metric or an error body: only the outcome word does.

mod claims;
mod forward;
mod jwt;
mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{AuthConfig, Config};
use crate::error::{Carrier, Reject};
use crate::upstream::PoolError;

pub(crate) use token::Taken;

/// A verified JWT's claims, for the upstream choice (`claim:` hash keys) and `claims_to_headers`.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// Every `[auth.NAME]` of one configuration generation.
#[derive(Debug, Default)]
pub(crate) struct AuthChecks {
    checks: BTreeMap<String, Check>,
}

impl AuthChecks {
    /// The checks of `config`; forward-auth clients connect within `connect_timeout`. No
    /// connection is made here.
    pub(crate) fn new(config: &Config, connect_timeout: Duration) -> Result<Self, PoolError> {
        let checks = config
            .auth
            .iter()
            .map(|(name, auth)| {
                let check = match auth {
                    AuthConfig::Forward(f) => {
                        Check::Forward(Box::new(forward::Forward::new(name, f, connect_timeout)?))
                    }
                    AuthConfig::Jwt(j) => Check::Jwt(jwt::Jwt::new(j)),
                };
                Ok((name.clone(), check))
            })
            .collect::<Result<_, PoolError>>()?;
        Ok(AuthChecks { checks })
    }

    /// The check `name` (a validated route only names existing ones).
    pub(crate) fn get(&self, name: &str) -> Option<&Check> {
        self.checks.get(name)
    }
}

/// One `[auth.NAME]`.
#[derive(Debug)]
pub(crate) enum Check {
    Forward(Box<forward::Forward>),
    Jwt(jwt::Jwt),
}

/// What a check sees of the request, whatever carrier brought it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asking<'a> {
    /// The client's headers (the token elements already out of the offer).
    pub(crate) headers: &'a HeaderMap,
    pub(crate) method: &'a Method,
    pub(crate) carrier: Carrier,
    /// The host as the client sent it (`Host`, or `:authority` on h2).
    pub(crate) host: &'a str,
    /// Path and query as forwarded (a `query:` token already out).
    pub(crate) path_and_query: &'a str,
    pub(crate) client: SocketAddr,
    pub(crate) tls: bool,
    /// The subprotocol that would be selected; `None` for a fallback or an ordinary request.
    pub(crate) subprotocol: Option<&'a str>,
}

/// A passed check: what it adds to the upstream request, and the verified claims.
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    /// Headers a client may never set itself (`copy_headers`, `claims_to_headers`).
    reserved: Vec<HeaderName>,
    /// Set on the upstream request, after the client's of those names are removed.
    set: Vec<(HeaderName, HeaderValue)>,
    claims: Option<Claims>,
}

impl Allowed {
    /// The claims of a verified JWT; `None` for forward auth. For the upstream choice
    /// (`claim:` hash keys).
    pub(crate) fn claims(&self) -> Option<&Claims> {
        self.claims.as_ref()
    }

    /// Removes the client's headers of the reserved names from `headers` (the request the
    /// upstream request is built from), then sets the check's own.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.reserved {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl Check {
    /// Takes a JWT check's token sources out of the request: `query:` parameters out of
    /// `path_and_query` (the new one is returned when it changed), `subprotocol:` elements out
    /// of the offer in `headers`. Forward auth takes nothing.
    pub(crate) fn take_tokens(
        &self,
        headers: &mut HeaderMap,
        path_and_query: &str,
        taken: &mut Taken,
    ) -> Option<String> {
        match self {
            Check::Forward(_) => None,
            Check::Jwt(j) => {
                token::take_subprotocols(headers, &j.config.from, taken);
                token::take_query(path_and_query, &j.config.from, taken)
            }
        }
    }

    /// Runs the check on `asking` (with the token parts `taken` out of it).
    pub(crate) async fn run(&self, asking: &Asking<'_>, taken: &Taken) -> Result<Allowed, Reject> {
        match self {
            Check::Forward(f) => Ok(Allowed {
                reserved: f.config.copy_headers.clone(),
                set: f.check(asking).await?,
                claims: None,
            }),
            Check::Jwt(j) => {
                let token = token::find(&j.config.from, asking.headers, taken)
                    .ok_or(Reject::AuthMissingToken)?;
                let claims = j.verify(token).map_err(|why| {
                    tracing::debug!(jwks = %j.config.jwks.display(), reason = ?why, "token refused");
                    Reject::AuthInvalidToken
                })?;
                Ok(Allowed {
                    reserved: j
                        .config
                        .claims_to_headers
                        .iter()
                        .map(|(_, h)| h.clone())
                        .collect(),
                    set: claims::to_headers(&j.config.claims_to_headers, &claims),
                    claims: Some(claims),
                })
            }
        }
    }
}

/// The `result` label and access-log `auth` word of a check's outcome (SPEC §10): `allowed`,
/// `denied` (the client's credentials were refused), `error` (the check could not be made).
pub(crate) fn outcome_word(outcome: &Result<Allowed, Reject>) -> &'static str {
    match outcome {
        Ok(_) => "allowed",
        Err(Reject::AuthServiceFailed | Reject::AuthServiceTimeout) => "error",
        Err(_) => "denied",
    }
}
