//! The load generator's h2 and h3 clients (`--http 2`, `--http 3` on a `wss://` target): one
//! TLS (h2, hyper) or QUIC (h3, quinn and the gateway's h3 layer) connection, and on it one
//! extended CONNECT stream per tunnel (RFC 8441, RFC 9220), whose DATA are the tunnel's bytes.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Method, Request};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::client::Target;

/// A client config trusting the CA certificates in `ca` (PEM), with ALPN `alpn`.
pub(crate) fn tls_config(ca: &Path, alpn: &[u8]) -> io::Result<Arc<rustls::ClientConfig>> {
    let roots = crate::tls::pem::load_ca_roots(ca).map_err(io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The host of `authority` without port or IPv6 brackets: the certificate name asked for.
fn host(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One client connection carrying tunnels as streams.
pub(crate) enum MuxConn {
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H3 {
        sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        /// Kept so the endpoint's driver lives as long as the connection.
        _endpoint: quinn::Endpoint,
    },
}

/// One tunnel stream, split so a writer and a reader can run at once.
pub(crate) enum MuxWriter {
    H2(WriteHalf<TokioIo<Upgraded>>),
    H3(Box<h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>>),
}

pub(crate) enum MuxReader {
    H2(ReadHalf<TokioIo<Upgraded>>),
    H3 {
        stream: Box<h3::client::RequestStream<h3_quinn::RecvStream, Bytes>>,
        unread: Bytes,
    },
}

impl MuxConn {
    /// TLS + h2 (`h3 = false`) or QUIC + h3 to `target`, verified against `tls`.
    pub(crate) async fn connect(
        target: &Target,
        tls: Arc<rustls::ClientConfig>,
        h3: bool,
    ) -> io::Result<MuxConn> {
        let name = host(&target.authority).to_owned();
        if h3 {
            let crypto =
                quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(io::Error::other)?;
            let local: SocketAddr = if target.addr.is_ipv4() {
                ([127, 0, 0, 1], 0).into()
            } else {
                (std::net::Ipv6Addr::LOCALHOST, 0).into()
            };
            let mut endpoint = quinn::Endpoint::client(local)?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let quic = endpoint
                .connect(target.addr, &name)
                .map_err(io::Error::other)?
                .await?;
            let mut builder = h3::client::builder();
            builder.enable_extended_connect(true);
            let (mut driver, sender) = builder
                .build::<_, _, Bytes>(h3_quinn::Connection::new(quic))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            return Ok(MuxConn::H3 {
                sender,
                _endpoint: endpoint,
            });
        }
        let tcp = tokio::net::TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let server = rustls::pki_types::ServerName::try_from(name).map_err(io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server, tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
        tokio::spawn(connection);
        Ok(MuxConn::H2(sender))
    }

    /// Opens one WebSocket tunnel stream: extended CONNECT to `target.path`, 200 expected.
    pub(crate) async fn open(&mut self, target: &Target) -> io::Result<(MuxWriter, MuxReader)> {
        let uri = format!("https://{}{}", target.authority, target.path);
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .header("sec-websocket-version", "13");
        match self {
            MuxConn::H2(sender) => {
                let request = request
                    .extension(hyper::ext::Protocol::from_static("websocket"))
                    .body(Empty::new())
                    .map_err(io::Error::other)?;
                sender.ready().await.map_err(io::Error::other)?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(io::Error::other)?;
                if response.status() != 200 {
                    return Err(io::Error::other(format!("h2: {}", response.status())));
                }
                let upgraded = hyper::upgrade::on(response)
                    .await
                    .map_err(io::Error::other)?;
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                Ok((MuxWriter::H2(w), MuxReader::H2(r)))
            }
            MuxConn::H3 { sender, .. } => {
                let request = request
                    .extension(h3::ext::Protocol::WEBSOCKET)
                    .body(())
                    .map_err(io::Error::other)?;
                let mut stream = sender
                    .send_request(request)
                    .await
                    .map_err(io::Error::other)?;
                let response = stream.recv_response().await.map_err(io::Error::other)?;
                if response.status() != 200 {
                    return Err(io::Error::other(format!("h3: {}", response.status())));
                }
                let (send, recv) = stream.split();
                Ok((
                    MuxWriter::H3(Box::new(send)),
                    MuxReader::H3 {
                        stream: Box::new(recv),
                        unread: Bytes::new(),
                    },
                ))
            }
        }
    }
}

impl MuxWriter {
    pub(crate) async fn write_all(&mut self, data: &Bytes) -> io::Result<()> {
        match self {
            MuxWriter::H2(w) => w.write_all(data).await,
            MuxWriter::H3(s) => s.send_data(data.clone()).await.map_err(io::Error::other),
        }
    }

    /// Ends the tunnel from this side (FIN).
    pub(crate) async fn finish(&mut self) -> io::Result<()> {
        match self {
            MuxWriter::H2(w) => w.shutdown().await,
            MuxWriter::H3(s) => s.finish().await.map_err(io::Error::other),
        }
    }
}

impl MuxReader {
    /// Up to `buf.len()` bytes; 0 at the end of the stream.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MuxReader::H2(r) => r.read(buf).await,
            MuxReader::H3 { stream, unread } => {
                while unread.is_empty() {
                    match stream.recv_data().await.map_err(io::Error::other)? {
                        Some(mut data) => *unread = data.copy_to_bytes(data.remaining()),
                        None => return Ok(0),
                    }
                }
                let n = unread.len().min(buf.len());
                buf[..n].copy_from_slice(&unread.split_to(n));
                Ok(n)
            }
        }
    }

    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => filled += n,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_certificate_name_is_the_bare_host() {
        assert_eq!(super::host("localhost:8443"), "localhost");
        assert_eq!(super::host("[::1]:8443"), "::1");
        assert_eq!(super::host("127.0.0.1"), "127.0.0.1");
    }
}
