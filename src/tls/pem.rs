//! PEM files -> rustls types: certificate chains, private keys, CA roots, always as a `Result`
//! naming the file (a bad file is a config error, never a panic).
//!
//! A leaf: it imports nothing of the crate, so `config` validation can read the same files the
//! listener will without depending on the rest of `tls` (which depends on `config`). Parsing is
//! `rustls-pki-types`' [`PemObject`]; sections of other kinds are skipped, as RFC 7468 §2 allows.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate, key or CA file that cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Broken PEM framing or base64; `problem` says which (same words as `rustls-pemfile` used).
    #[error("{path}: cannot read: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: unsupported private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key}: private key does not match certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: not a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
}

impl PemError {
    fn from_pem(path: &Path, err: pem::Error) -> PemError {
        let path = path.to_owned();
        let problem = match err {
            pem::Error::Io(source) => return PemError::Read { path, source },
            pem::Error::MissingSectionEnd { end_marker } => format!(
                "section end {:?} missing",
                String::from_utf8_lossy(&end_marker)
            ),
            pem::Error::IllegalSectionStart { line } => format!(
                "illegal section start: {:?}",
                String::from_utf8_lossy(&line)
            ),
            pem::Error::Base64Decode(problem) => problem,
            other => other.to_string(),
        };
        PemError::Malformed { path, problem }
    }
}

/// Reads every certificate of a PEM file, in file order (leaf first for a chain); at least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| PemError::from_pem(path, err))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        err => PemError::from_pem(path, err),
    })
}

/// Reads a certificate chain and its private key and checks that they belong together, so that a
/// mismatched pair is reported by `check` rather than by the first client.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PemError> {
    let chain = load_certs(cert)?;
    let der = load_private_key(key)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| {
        PemError::BadKey {
            path: key.to_owned(),
            source,
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| PemError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
    })?;
    Ok(Arc::new(certified))
}

/// Reads a CA bundle into trust anchors; every certificate in it must be a usable one.
pub(crate) fn load_ca_roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| PemError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::tests::TempDir;

    fn committed(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs")
            .join(file)
    }

    #[test]
    fn committed_files_load() {
        assert_eq!(
            load_certs(&committed("server.pem")).expect("chain").len(),
            1
        );
        load_private_key(&committed("server-key.pem")).expect("key");
        load_certified_key(&committed("server.pem"), &committed("server-key.pem")).expect("pair");
        assert_eq!(load_ca_roots(&committed("ca.pem")).expect("roots").len(), 1);
    }

    #[test]
    fn each_problem_names_the_file() {
        let tmp = TempDir::new("pem");
        let write = |name: &str, text: &str| {
            let path = tmp.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let missing = tmp.0.join("missing.pem");
        let err = load_certs(&missing).expect_err("missing");
        assert!(matches!(err, PemError::Read { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display()))
        );

        let err = load_certs(&committed("server-key.pem")).expect_err("a key");
        assert!(matches!(err, PemError::NoCertificate { .. }), "{err}");
        let err = load_private_key(&committed("server.pem")).expect_err("a cert");
        assert!(matches!(err, PemError::NoKey { .. }), "{err}");
        let empty = write("empty.pem", "");
        assert!(matches!(
            load_private_key(&empty),
            Err(PemError::NoKey { .. })
        ));

        let cut = write("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = load_certs(&cut).expect_err("no end line");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: cannot read: section end \"CERTIFICATE\" missing",
                cut.display()
            )
        );
        let start = write("start.pem", "-----BEGIN CERTIFICATE----\n");
        let err = load_private_key(&start).expect_err("bad start line");
        assert!(matches!(err, PemError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("illegal section start"), "{err}");

        let err = load_certified_key(&committed("server.pem"), &committed("chat-key.pem"))
            .expect_err("other key");
        assert!(matches!(err, PemError::Mismatch { .. }), "{err}");
        let junk = write(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let err = load_ca_roots(&junk).expect_err("not DER");
        assert!(matches!(err, PemError::BadCa { .. }), "{err}");
    }
}
