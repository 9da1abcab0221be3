//! Reaching one server: TCP, then the PROXY header where configured, then TLS where configured.
//!
//! [`Connect`] is the seam between "which server" (the pool, the balancer) and "how to reach it"
//! (this file): traffic, the keep-alive `http` client and the health checks all dial through
//! the pool's [`Dialer`], and tests substitute a dialer to exercise failover without sockets.
//! Nothing here retries, times out or marks a server: the caller decides that.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ProxyVersion, ServerAddr, UpstreamConfig, UpstreamTls};
use crate::io::UpstreamStream;
use crate::proxy_protocol::{self, ProxiedAddrs};
use crate::tls;

/// Turns a server's address into a connected stream, unbounded: callers add the connect timeout.
pub(crate) trait Connect: Sync {
    /// [`UpstreamStream`] in production; an in-memory stream in tests.
    type Stream: Send;

    /// Connects to `addr`. `client` names the client connection's two ends for a PROXY header;
    /// `None` for the gateway's own connections (health checks, the `http` pool).
    fn connect(
        &self,
        addr: &ServerAddr,
        client: Option<ProxiedAddrs>,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// How every server of one pool is reached: its `send_proxy_protocol` and `tls` settings.
#[derive(Debug)]
pub(crate) struct Dialer {
    tls: Option<(Arc<rustls::ClientConfig>, UpstreamTls)>,
    /// `send_proxy_protocol`: a PROXY header first on every connection to a server.
    send_proxy: Option<ProxyVersion>,
}

impl Dialer {
    /// The dialer of `config`'s pool; loads its TLS material once, here.
    pub(crate) fn new(config: &UpstreamConfig) -> Result<Self, tls::TlsError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => Some((tls::upstream_client_config(t)?, t.clone())),
        };
        Ok(Dialer {
            tls,
            send_proxy: config.send_proxy_protocol,
        })
    }
}

impl Dialer {
    /// The dialer of one of the gateway's own services (the forward-auth service of SPEC §10):
    /// no PROXY header, TLS as for a `tls = true` upstream when `tls` is set.
    pub(crate) fn for_service(tls: Option<UpstreamTls>) -> Result<Self, tls::TlsError> {
        let tls = match tls {
            None => None,
            Some(t) => Some((tls::upstream_client_config(&t)?, t)),
        };
        Ok(Dialer {
            tls,
            send_proxy: None,
        })
    }
}

impl Connect for Dialer {
    type Stream = UpstreamStream;

    /// With `send_proxy_protocol` a PROXY header goes first, naming `client`, or for connections
    /// of the gateway's own the socket's own two ends.
    async fn connect(
        &self,
        addr: &ServerAddr,
        client: Option<ProxiedAddrs>,
    ) -> io::Result<UpstreamStream> {
        let mut tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        crate::sockopt::tune(&tcp)?;
        if let Some(version) = self.send_proxy {
            // Before TLS and before the request: the upstream reads it first (proxy-protocol.txt §2).
            let addrs = match client {
                Some(addrs) => addrs,
                None => ProxiedAddrs {
                    source: tcp.local_addr()?,
                    destination: tcp.peer_addr()?,
                },
            };
            tcp.write_all(&proxy_protocol::encode(version, addrs)?)
                .await?;
        }
        match &self.tls {
            None => Ok(UpstreamStream::Tcp(tcp)),
            Some((client_config, settings)) => {
                let name = tls::server_name_for(settings, &addr.host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(Arc::clone(client_config))
                    .connect(name, tcp)
                    .await?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
        }
    }
}

/// `host:port`, with IPv6 literals in brackets.
pub(crate) fn format_addr(addr: &ServerAddr) -> String {
    if addr.host.contains(':') {
        format!("[{}]:{}", addr.host, addr.port)
    } else {
        format!("{}:{}", addr.host, addr.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_servers_are_bracketed() {
        assert_eq!(
            format_addr(&ServerAddr {
                host: "::1".into(),
                port: 80
            }),
            "[::1]:80"
        );
    }
}
