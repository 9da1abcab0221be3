//! `switchyard certs` (SPEC §1): a development CA and a server certificate signed by it, so that
//! `wss://localhost` works after trusting one file. Development only: the CA key sits next to the
//! certificate in plain PEM.
//!
//! Owns writing the four files; knows nothing of listeners. Keys are ECDSA P-256 (PKCS#8), the
//! certificates X.509 v3 (RFC 5280). `server.pem` holds only the leaf: clients are expected to
//! trust `ca.pem` itself (RFC 8446 §4.4.2 lets a server omit the trust anchor).
//!
//! When `ca.pem` and `ca-key.pem` already exist in the output directory the CA is reused and only
//! the server pair is replaced, so clients that already trust `ca.pem` keep working and several
//! server certificates can share one CA.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Names a server certificate is made for when `--name` is not given (SPEC §1).
pub(crate) const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Validity of what `certs` writes: two years, short enough for clients (Apple platforms) that
/// refuse TLS server certificates valid for more than 825 days.
pub(crate) const DEFAULT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);

/// How far `notBefore` is back-dated, so that a client whose clock runs a little behind still
/// accepts a certificate made a moment ago.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// Subject common name of the dev CA; a reused CA is re-derived from its key and this name.
const CA_COMMON_NAME: &str = "switchyard development CA";
const CA_ORGANIZATION: &str = "switchyard (development only, never for production)";

/// Why the dev certificates could not be written; names the file or name at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: cannot create directory: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: exists but {missing} does not; remove it or add the other half of the CA")]
    HalfCa { path: PathBuf, missing: PathBuf },
    #[error("{path}: not a usable CA private key: {source}")]
    BadCaKey { path: PathBuf, source: rcgen::Error },
    #[error(
        "{path}: cannot reuse this CA (not made by `switchyard certs`, expired, or not matching its key): {reason}"
    )]
    ForeignCa { path: PathBuf, reason: String },
    #[error("{name:?}: not an IP address or DNS name usable in a certificate")]
    BadName { name: String },
    #[error("cannot make certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` into `out` (created if
/// missing) for `names`, or [`DEFAULT_NAMES`] when `names` is empty. IP literals become IP SANs,
/// everything else DNS SANs (a leading `*.` is a wildcard). Key files get mode 0600.
pub fn write_dev_certs(out: &Path, names: &[String]) -> Result<(), CertsError> {
    write_dev_certs_valid_for(out, names, DEFAULT_VALIDITY)
}

/// [`write_dev_certs`] with a chosen validity (the committed `certs/` files use ten years).
pub(crate) fn write_dev_certs_valid_for(
    out: &Path,
    names: &[String],
    validity: Duration,
) -> Result<(), CertsError> {
    let names: Vec<String> = if names.is_empty() {
        DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect()
    } else {
        names.to_vec()
    };
    let sans = names
        .iter()
        .map(|n| san_for(n))
        .collect::<Result<Vec<_>, _>>()?;
    fs::create_dir_all(out).map_err(|source| CertsError::CreateDir {
        path: out.to_owned(),
        source,
    })?;

    let ca_path = out.join("ca.pem");
    let ca_key_path = out.join("ca-key.pem");
    let now = SystemTime::now();
    let (ca, ca_key, ca_der) = match (ca_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            let pem = read(&ca_key_path)?;
            let key = KeyPair::from_pem(&pem).map_err(|source| CertsError::BadCaKey {
                path: ca_key_path.clone(),
                source,
            })?;
            let ca = ca_params(now, validity).self_signed(&key)?;
            let der = crate::tls::pem::load_certs(&ca_path)
                .map_err(|e| CertsError::ForeignCa {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?
                .swap_remove(0);
            (ca, key, der)
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let ca = ca_params(now, validity).self_signed(&key)?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&ca_path, ca.pem().as_bytes(), false)?;
            let der = ca.der().clone();
            (ca, key, der)
        }
        (true, false) => {
            return Err(CertsError::HalfCa {
                path: ca_path,
                missing: ca_key_path,
            });
        }
        (false, true) => {
            return Err(CertsError::HalfCa {
                path: ca_key_path,
                missing: ca_path,
            });
        }
    };

    let key = KeyPair::generate()?;
    let leaf = leaf_params(&names, sans, now, validity).signed_by(&key, &ca, &ca_key)?;
    // A reused CA is only re-derived (same name, same key); prove the new leaf chains to the
    // ca.pem on disk before replacing anything a client may be using.
    verify_issued(&leaf, ca_der, &names[0]).map_err(|reason| CertsError::ForeignCa {
        path: ca_path.clone(),
        reason,
    })?;
    write_file(
        &out.join("server-key.pem"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&out.join("server.pem"), leaf.pem().as_bytes(), false)?;
    Ok(())
}

/// RFC 5280 §4.2.1.6: an IP literal must be an iPAddress SAN (clients never match IPs against
/// dNSName entries); anything else must be a valid DNS name, optionally `*.`-prefixed.
fn san_for(name: &str) -> Result<SanType, CertsError> {
    let bad = || CertsError::BadName {
        name: name.to_owned(),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    match ServerName::try_from(host) {
        Ok(ServerName::DnsName(_)) => {}
        _ => return Err(bad()),
    }
    Ok(SanType::DnsName(name.try_into().map_err(|_| bad())?))
}

fn ca_params(now: SystemTime, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    // pathLenConstraint 0: this CA signs leaves only (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, validity);
    params
}

fn leaf_params(
    names: &[String],
    sans: Vec<SanType>,
    now: SystemTime,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    // No basicConstraints at all: an end-entity by default (RFC 5280 §4.2.1.9). rcgen's
    // `ExplicitNoCa` encodes `cA FALSE` although it is the DEFAULT, which DER (X.690 §11.5)
    // forbids and strict parsers (Python `cryptography`) reject.
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, validity);
    params
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(validity).unwrap_or(now).into();
}

/// Verifies `leaf` as a TLS server certificate for `name` with `ca` as the only trust anchor.
fn verify_issued(
    leaf: &Certificate,
    ca: CertificateDer<'static>,
    name: &str,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    // A wildcard SAN is checked with a name it covers.
    let host = match name.strip_prefix("*.") {
        Some(rest) => format!("wildcard.{rest}"),
        None => name.to_owned(),
    };
    let server_name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf.der(), &[], &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a gateway re-reading certificates on SIGHUP
/// never sees half a file; private keys are created with mode 0600.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        // A leftover temporary file from an interrupted run may have looser permissions.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tls::pem::{load_certified_key, load_certs};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "switchyard-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn verify(dir: &Path, cert: &str, name: &str) -> Result<(), String> {
        let leaf = load_certs(&dir.join(cert)).expect("leaf").swap_remove(0);
        let ca = load_certs(&dir.join("ca.pem")).expect("ca").swap_remove(0);
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("ca as root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn default_names_verify_against_ca() {
        let tmp = TempDir::new("certs-default");
        let out = tmp.0.join("nested/out");
        write_dev_certs(&out, &[]).expect("write");
        load_certified_key(&out.join("server.pem"), &out.join("server-key.pem")).expect("server");
        load_certified_key(&out.join("ca.pem"), &out.join("ca-key.pem")).expect("ca");
        for name in DEFAULT_NAMES {
            verify(&out, "server.pem", name).expect(name);
        }
        assert!(verify(&out, "server.pem", "example.com").is_err());
        // The CA itself is no server certificate (no serverAuth EKU, CA:TRUE).
        assert!(verify(&out, "ca.pem", "localhost").is_err());
    }

    /// DER of the basicConstraints extension's OID, 2.5.29.19.
    const BASIC_CONSTRAINTS_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x13];

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn leaf_has_no_basic_constraints_and_ca_has_them() {
        let tmp = TempDir::new("certs-der");
        write_dev_certs(&tmp.0, &[]).expect("write");
        let leaf = load_certs(&tmp.0.join("server.pem"))
            .expect("leaf")
            .swap_remove(0);
        let ca = load_certs(&tmp.0.join("ca.pem"))
            .expect("ca")
            .swap_remove(0);
        assert!(!contains(&leaf, &BASIC_CONSTRAINTS_OID));
        // critical, cA TRUE, pathLenConstraint 0
        let ca_ext = [
            &BASIC_CONSTRAINTS_OID[..],
            &[
                0x01, 0x01, 0xff, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00,
            ],
        ]
        .concat();
        assert!(contains(&ca, &ca_ext));
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("certs-mode");
        write_dev_certs(&tmp.0, &[]).expect("write");
        for (file, mode) in [
            ("ca-key.pem", 0o600),
            ("server-key.pem", 0o600),
            ("ca.pem", 0o644),
            ("server.pem", 0o644),
        ] {
            let meta = fs::metadata(tmp.0.join(file)).expect(file);
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        let leftovers: Vec<_> = fs::read_dir(&tmp.0)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn given_names_replace_defaults_and_wildcards_work() {
        let tmp = TempDir::new("certs-names");
        let names = ["chat.example.com".to_owned(), "*.apps.test".to_owned()];
        write_dev_certs(&tmp.0, &names).expect("write");
        verify(&tmp.0, "server.pem", "chat.example.com").expect("exact");
        verify(&tmp.0, "server.pem", "x.apps.test").expect("wildcard");
        assert!(verify(&tmp.0, "server.pem", "localhost").is_err());
        assert!(verify(&tmp.0, "server.pem", "127.0.0.1").is_err());
    }

    #[test]
    fn existing_ca_is_reused_for_a_second_leaf() {
        let tmp = TempDir::new("certs-reuse");
        write_dev_certs(&tmp.0, &[]).expect("first");
        let ca_before = fs::read(tmp.0.join("ca.pem")).expect("ca");
        let leaf_before = fs::read(tmp.0.join("server.pem")).expect("leaf");
        write_dev_certs(&tmp.0, &["chat.example.com".to_owned()]).expect("second");
        assert_eq!(fs::read(tmp.0.join("ca.pem")).expect("ca"), ca_before);
        assert_ne!(
            fs::read(tmp.0.join("server.pem")).expect("leaf"),
            leaf_before
        );
        verify(&tmp.0, "server.pem", "chat.example.com").expect("chains to the kept CA");
    }

    #[test]
    fn a_foreign_ca_is_refused_and_nothing_is_replaced() {
        let tmp = TempDir::new("certs-foreign");
        let other = TempDir::new("certs-other");
        write_dev_certs(&tmp.0, &[]).expect("first");
        write_dev_certs(&other.0, &[]).expect("other");
        // ca.pem from one run, ca-key.pem from another: the key does not belong to the CA.
        fs::copy(other.0.join("ca-key.pem"), tmp.0.join("ca-key.pem")).expect("copy");
        let leaf_before = fs::read(tmp.0.join("server.pem")).expect("leaf");
        let err = write_dev_certs(&tmp.0, &[]).expect_err("mismatched CA");
        assert!(matches!(err, CertsError::ForeignCa { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(
            fs::read(tmp.0.join("server.pem")).expect("leaf"),
            leaf_before
        );
    }

    #[test]
    fn half_a_ca_is_an_error_naming_the_file() {
        let tmp = TempDir::new("certs-half");
        write_dev_certs(&tmp.0, &[]).expect("first");
        fs::remove_file(tmp.0.join("ca-key.pem")).expect("rm");
        let err = write_dev_certs(&tmp.0, &[]).expect_err("half CA");
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn bad_names_are_refused() {
        let tmp = TempDir::new("certs-bad");
        for name in ["", "has space", "[::1]", "*", "a..b"] {
            let err = write_dev_certs(&tmp.0, &[name.to_owned()]).expect_err(name);
            assert!(matches!(err, CertsError::BadName { .. }), "{name}: {err}");
        }
        assert!(!tmp.0.join("server.pem").exists());
    }

    #[test]
    fn unwritable_output_names_the_path() {
        let tmp = TempDir::new("certs-unwritable");
        let file = tmp.0.join("file");
        fs::write(&file, b"x").expect("write");
        let err = write_dev_certs(&file.join("out"), &[]).expect_err("parent is a file");
        assert!(err.to_string().contains("file/out"), "{err}");
    }

    /// Regenerates the committed `certs/` files (ten-year validity). Run on purpose only:
    /// `cargo test --lib certs::tests::regenerate_committed_dev_certs -- --ignored`.
    #[test]
    #[ignore = "rewrites the committed certs/ directory"]
    fn regenerate_committed_dev_certs() {
        const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let tmp = TempDir::new("certs-regen");
        let main = tmp.0.join("main");
        let chat = tmp.0.join("chat");
        write_dev_certs_valid_for(&main, &[], TEN_YEARS).expect("main");
        fs::create_dir_all(&chat).expect("chat dir");
        for f in ["ca.pem", "ca-key.pem"] {
            fs::copy(main.join(f), chat.join(f)).expect(f);
        }
        write_dev_certs_valid_for(&chat, &["chat.example.com".to_owned()], TEN_YEARS)
            .expect("chat");
        for (from, to) in [
            (main.join("ca.pem"), "ca.pem"),
            (main.join("ca-key.pem"), "ca-key.pem"),
            (main.join("server.pem"), "server.pem"),
            (main.join("server-key.pem"), "server-key.pem"),
            (chat.join("server.pem"), "chat.pem"),
            (chat.join("server-key.pem"), "chat-key.pem"),
        ] {
            let contents = fs::read(&from).expect("read");
            write_file(&repo.join(to), &contents, to.ends_with("-key.pem")).expect(to);
        }
        verify(&repo, "chat.pem", "chat.example.com").expect("chat chains to ca.pem");
        verify(&repo, "server.pem", "::1").expect("server chains to ca.pem");
    }
}
