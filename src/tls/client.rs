//! The upstream side: the rustls client config and the name an upstream's certificate is
//! checked against, for upstreams with `tls = true`.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::pem::load_ca_roots;
use super::{ALPN_HTTP11, TlsError, VERSIONS, provider};
use crate::config::UpstreamTls;

/// The client config for an upstream with `tls = true`: verifies against `ca` when set, else the
/// Mozilla roots of `webpki-roots`; offers ALPN `http/1.1` only, since the upstream hop is always
/// an HTTP/1.1 upgrade (SPEC §4).
pub(crate) fn upstream_client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &tls.ca {
        Some(path) => load_ca_roots(path)?,
        None => webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The name an upstream's certificate is checked against (and sent as SNI when it is a DNS
/// name): `server_name` when set, else the server's host. IP literals are matched against the
/// certificate's IP SANs (RFC 6125 §1.7.2 leaves them out of SNI).
pub(crate) fn server_name_for(
    tls: &UpstreamTls,
    host: &str,
) -> Result<ServerName<'static>, TlsError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let invalid = || TlsError::ServerName {
        name: name.to_owned(),
    };
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    match ServerName::try_from(name.to_owned()) {
        Ok(ServerName::DnsName(dns)) => Ok(ServerName::DnsName(dns)),
        _ => Err(invalid()),
    }
}
