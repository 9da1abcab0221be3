//! For the auth tests (SPEC §10): a forward-auth service that records every request head and
//! answers per test, and JWT signing keys of each default algorithm with their JWKS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::heads::{RequestHead, parse_request_head};
use super::{find, lock};

/// How the service answers one request: the raw response bytes, or `None` to never answer.
pub type Decide = Arc<dyn Fn(&RequestHead) -> Option<Vec<u8>> + Send + Sync>;

/// An HTTP/1.1 auth service on 127.0.0.1:0 (keep-alive), recording every request head.
pub struct AuthService {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RequestHead>>>,
    task: JoinHandle<()>,
}

impl AuthService {
    pub async fn start(
        decide: impl Fn(&RequestHead) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> AuthService {
        let decide: Decide = Arc::new(decide);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind auth service");
        let addr = listener.local_addr().expect("local_addr");
        let requests: Arc<Mutex<Vec<RequestHead>>> = Arc::default();
        let rec = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (decide, rec) = (decide.clone(), rec.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = find(&buf, b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let Ok(head) = parse_request_head(&buf[..end]) else {
                            return;
                        };
                        buf.drain(..end);
                        lock(&rec).push(head.clone());
                        match decide(&head) {
                            Some(answer) => {
                                if stream.write_all(&answer).await.is_err() {
                                    return;
                                }
                            }
                            None => {
                                // Never answer; hold the connection until the gateway drops it.
                                let mut sink = [0u8; 1024];
                                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                                return;
                            }
                        }
                    }
                });
            }
        });
        AuthService {
            addr,
            requests,
            task,
        }
    }

    /// `http://ADDR/check?app=chat`.
    pub fn url(&self) -> String {
        format!("http://{}/check?app=chat", self.addr)
    }

    /// Every request head received, in order.
    pub fn requests(&self) -> Vec<RequestHead> {
        lock(&self.requests).clone()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 answer with these headers and body (and its Content-Length).
pub fn auth_answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Status\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The bearer token of an auth request's `Authorization`, or "".
pub fn bearer_of(head: &RequestHead) -> String {
    head.headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// Signing keys: RS256 (`rsa-1`, the committed test key), ES256 (`ec-1`) and EdDSA (`ed-1`),
/// the last two generated per run.
pub struct JwtKeys {
    rsa_der: Vec<u8>,
    rsa_jwk: Value,
    ec_pkcs8: Vec<u8>,
    ec_jwk: Value,
    ed_pkcs8: Vec<u8>,
    ed_jwk: Value,
}

impl JwtKeys {
    pub fn new() -> JwtKeys {
        let rng = SystemRandom::new();
        let pem = include_str!("keys/jwt-rsa.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let rsa_der = STANDARD.decode(b64).expect("PEM body");
        let rsa = RsaKeyPair::from_der(&rsa_der).expect("PKCS#1 RSA key");
        let parts = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&parts.n), "e": URL_SAFE_NO_PAD.encode(&parts.e)});
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .expect("P-256 key")
            .as_ref()
            .to_vec();
        let ec = EcdsaKeyPair::from_pkcs8(alg, &ec_pkcs8, &rng).expect("P-256 key");
        // Uncompressed point: 0x04 || x || y (SEC 1 §2.3.3).
        let point = ec.public_key().as_ref();
        let ec_jwk = json!({"kty": "EC", "kid": "ec-1", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("Ed25519 key")
            .as_ref()
            .to_vec();
        let ed = Ed25519KeyPair::from_pkcs8(&ed_pkcs8).expect("Ed25519 key");
        let ed_jwk = json!({"kty": "OKP", "kid": "ed-1", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())});
        JwtKeys {
            rsa_der,
            rsa_jwk,
            ec_pkcs8,
            ec_jwk,
            ed_pkcs8,
            ed_jwk,
        }
    }

    /// The JWKS with the keys of `algs` (by name: "RS256", "ES256", "EdDSA").
    pub fn jwks(&self, algs: &[&str]) -> String {
        let keys: Vec<&Value> = algs
            .iter()
            .map(|a| match *a {
                "RS256" => &self.rsa_jwk,
                "ES256" => &self.ec_jwk,
                _ => &self.ed_jwk,
            })
            .collect();
        json!({"keys": keys}).to_string()
    }

    /// A token signed with `alg`'s key under its kid, with these claims.
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let (key, kid) = match alg {
            Algorithm::RS256 => (EncodingKey::from_rsa_der(&self.rsa_der), "rsa-1"),
            Algorithm::ES256 => (EncodingKey::from_ec_der(&self.ec_pkcs8), "ec-1"),
            _ => (EncodingKey::from_ed_der(&self.ed_pkcs8), "ed-1"),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// Like [`JwtKeys::sign`], with no `kid` in the header.
    pub fn sign_without_kid(&self, alg: Algorithm, claims: &Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&self.rsa_der),
            Algorithm::ES256 => EncodingKey::from_ec_der(&self.ec_pkcs8),
            _ => EncodingKey::from_ed_der(&self.ed_pkcs8),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign")
    }

    /// An HS256 token whose "secret" is the RSA key's public JWK text (algorithm confusion).
    pub fn hs256_confusion(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let secret = self.rsa_jwk.to_string();
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }
}

impl Default for JwtKeys {
    fn default() -> Self {
        JwtKeys::new()
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit")
}

/// Claims valid for ten minutes for issuer `https://id.test` and audience `chat`, with `extra`.
pub fn claims(extra: Value) -> Value {
    let mut c =
        json!({"iss": "https://id.test", "aud": "chat", "sub": "alice", "exp": now() + 600});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}
