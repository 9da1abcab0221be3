//! Stream types shared by the listener, the upstream connector and the gateway, and the
//! adapters that turn hyper's upgraded connections into tunnel legs.
//!
//! [`UpstreamStream`] is plain TCP or TLS towards an upstream, as one concrete type, so that the
//! tunnel can get the plain socket back. (The client side's replay of bytes read before hyper
//! took over is `h1_gate::RequestGate`.)
//!
//! [`h1_client_leg`], [`h2_client_leg`] and [`upstream_leg`] recover what hyper's type-erased
//! `Upgraded` wraps (`Upgraded::downcast`): a plain `TcpStream` becomes [`Leg::Tcp`], anything
//! else a stream leg, and every byte hyper or the gate read past a head becomes the leg's early
//! bytes, in the order it arrived. They live here so that `tunnel` knows nothing of hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::upgrade::{Parts, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream as ServerTlsStream;

use crate::h1_gate::RequestGate;
use crate::tunnel::Leg;

mod h3_stream;
mod stall;
pub(crate) use h3_stream::H3RequestStream;
pub(crate) use stall::WriteStall;

/// A connection to an upstream server: plain TCP, or TLS when the upstream has `tls = true`.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamStream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            UpstreamStream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, data))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// The client side of an HTTP/1.1 tunnel as a leg.
///
/// The listener serves h1 over `TokioIo<Rewind<WriteStall<S>>>`, `S` a plain `TcpStream` or a
/// server TLS stream; both are recovered, without the send timeout (the tunnel has its own
/// `idle_timeout`). Any other type stays the `Upgraded` itself, which still replays
/// its own read buffer, so no early byte is lost either way.
pub(crate) fn h1_client_leg(upgraded: Upgraded) -> Leg {
    let upgraded = match upgraded.downcast::<TokioIo<RequestGate<WriteStall<TcpStream>>>>() {
        Ok(parts) => {
            let (stream, early) = rewound(parts);
            return Leg::tcp(stream, early);
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<RequestGate<WriteStall<ServerTlsStream<TcpStream>>>>>() {
        Ok(parts) => {
            let (stream, early) = rewound(parts);
            Leg::stream(stream, early)
        }
        Err(upgraded) => Leg::stream(TokioIo::new(upgraded), Bytes::new()),
    }
}

/// The client side of an h2 tunnel (one stream of the connection) as a leg. h2 streams cannot
/// be downcast (hyper's type is private) and carry no read buffer: hyper delivers every DATA
/// frame through the stream.
pub(crate) fn h2_client_leg(upgraded: Upgraded) -> Leg {
    Leg::stream(H2ClientStream(TokioIo::new(upgraded)), Bytes::new())
}

/// The client side of an h3 tunnel: one request stream after its 200 (SPEC §12). h3 hands over
/// DATA payloads only, so there are no early bytes.
pub(crate) fn h3_client_leg(stream: H3RequestStream) -> Leg {
    Leg::stream(h3_stream::H3Stream::new(stream), Bytes::new())
}

/// The upstream side of a tunnel as a leg: a plain TCP connection becomes a TCP leg (splice can
/// take it), a TLS one a stream leg. `early`: what the upstream sent right behind its 101 head.
pub(crate) fn upstream_leg(stream: UpstreamStream, early: Bytes) -> Leg {
    match stream {
        UpstreamStream::Tcp(stream) => Leg::tcp(stream, early),
        UpstreamStream::Tls(stream) => Leg::Stream { stream, early },
    }
}

/// A downcast h1 server connection: its stream, and the bytes read past the head. hyper filled
/// `read_buf` by reading from the `Rewind`, which replays its prefix first, so `read_buf` came
/// first on the wire and the prefix the `Rewind` has not replayed yet follows it.
fn rewound<S>(parts: Parts<TokioIo<RequestGate<WriteStall<S>>>>) -> (S, Bytes) {
    let (unread, stream) = parts.io.into_inner().into_parts();
    (stream.into_inner(), concat(parts.read_buf, unread))
}

/// `first` then `second`, copying only when both hold bytes.
fn concat(first: Bytes, second: Bytes) -> Bytes {
    if second.is_empty() {
        return first;
    }
    if first.is_empty() {
        return second;
    }
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(&first);
    joined.extend_from_slice(&second);
    joined.freeze()
}

/// The client side of an h2 tunnel: one stream. hyper reports the client resetting it
/// (RST_STREAM, RFC 9113 §6.4) or losing its connection as `ErrorKind::Other`; for the tunnel
/// that is the client going away, so it is passed on as `ConnectionReset` (`closed_by=client`).
struct H2ClientStream(TokioIo<Upgraded>);

fn stream_gone(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::Other {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        e
    }
}

impl AsyncRead for H2ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(stream_gone)
    }
}

impl AsyncWrite for H2ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write(cx, data)
            .map_err(stream_gone)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(stream_gone)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx).map_err(stream_gone)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    const REQUEST_HEAD: &[u8] =
        b"GET /t HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    const SWITCHED_HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";

    /// A connected loopback pair: (the peer's end, the gateway's end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (peer.unwrap(), accepted.unwrap().0)
    }

    /// Distinct bytes, so that a reordering or a loss shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Reads up to and including the blank line ending an HTTP head, one byte at a time so that
    /// nothing behind it is consumed.
    async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(r.read_u8().await.unwrap());
        }
        head
    }

    /// Serves one h1 connection the way the listener does (hyper over `TokioIo<Rewind<WriteStall<S>>>`,
    /// `prefix` replayed first), answers its upgrade with a 101, and returns the upgraded server
    /// side once hyper hands it over.
    async fn serve_upgrade<S>(io: S, prefix: Bytes) -> Upgraded
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let service = service_fn(move |mut req: Request<Incoming>| {
            let _ = tx.send(hyper::upgrade::on(&mut req));
            let response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "foo")
                .body(Empty::<Bytes>::new());
            std::future::ready(response)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(
                TokioIo::new(RequestGate::new(
                    WriteStall::new(io, Some(LIMIT)),
                    BytesMut::from(&prefix[..]),
                    16 * 1024,
                    Default::default(),
                )),
                service,
            )
            .with_upgrades();
        tokio::spawn(conn);
        rx.recv().await.unwrap().await.unwrap()
    }

    /// What the listener does on a plain port: the client sent its head and `early_len` bytes
    /// in one write, and the listener's head read took all of them (so they sit in the
    /// `Rewind`'s prefix), more than hyper reads at once. Returns the upgraded server side, the
    /// early bytes, and the client's socket (its 101 read).
    async fn plain_h1_upgrade(early_len: usize) -> (Upgraded, Vec<u8>, TcpStream) {
        let (mut client, mut gw) = tcp_pair().await;
        let early = pattern(early_len);
        let mut sent = REQUEST_HEAD.to_vec();
        sent.extend_from_slice(&early);
        client.write_all(&sent).await.unwrap();
        let mut prefix = vec![0u8; sent.len()];
        gw.read_exact(&mut prefix).await.unwrap();
        let (upgraded, head) = tokio::join!(
            serve_upgrade(gw, Bytes::from(prefix)),
            read_head(&mut client)
        );
        assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
        (upgraded, early, client)
    }

    /// The premise of the ordering test below: with 20 000 early bytes, hyper's read buffer holds
    /// the first of them and the `Rewind` still holds the rest when the upgrade completes.
    #[tokio::test]
    async fn early_bytes_are_split_between_hyper_and_the_rewind() {
        timeout(LIMIT, async {
            let (upgraded, early, _client) = plain_h1_upgrade(20_000).await;
            let parts = upgraded
                .downcast::<TokioIo<RequestGate<WriteStall<TcpStream>>>>()
                .expect("plain h1 downcasts");
            let (unread, _) = parts.io.into_inner().into_parts();
            assert!(!parts.read_buf.is_empty(), "hyper buffered no early byte");
            assert!(!unread.is_empty(), "hyper read the whole prefix");
            assert_eq!(parts.read_buf.len() + unread.len(), early.len());
        })
        .await
        .unwrap();
    }

    /// Client side: the leg is the raw socket, its early bytes are exactly what the client sent
    /// behind its head, in order (hyper's buffer first, then the `Rewind`'s rest), and what the
    /// client sends later comes from the socket.
    #[tokio::test]
    async fn h1_client_leg_is_tcp_with_every_early_byte_in_order() {
        timeout(LIMIT, async {
            for early_len in [0, 5, 20_000] {
                let (upgraded, early, mut client) = plain_h1_upgrade(early_len).await;
                let leg = h1_client_leg(upgraded);
                let Leg::Tcp {
                    mut stream,
                    early: got,
                } = leg
                else {
                    panic!("plain h1 client became {leg:?}");
                };
                assert_eq!(got[..], early[..], "{early_len} early bytes");
                client.write_all(b"later").await.unwrap();
                let mut later = [0u8; 5];
                stream.read_exact(&mut later).await.unwrap();
                assert_eq!(&later, b"later");
            }
        })
        .await
        .unwrap();
    }

    /// A type the adapters do not know stays the `Upgraded`, which still replays what hyper and
    /// the `Rewind` hold before the stream's own bytes.
    #[tokio::test]
    async fn unknown_client_stream_keeps_its_early_bytes_inside() {
        timeout(LIMIT, async {
            let (mut client, gw) = tokio::io::duplex(64 * 1024);
            let early = pattern(20_000);
            let mut prefix = REQUEST_HEAD.to_vec();
            prefix.extend_from_slice(&early);
            let (upgraded, _) = tokio::join!(
                serve_upgrade(gw, Bytes::from(prefix)),
                read_head(&mut client)
            );
            let leg = h1_client_leg(upgraded);
            let Leg::Stream {
                mut stream,
                early: outside,
            } = leg
            else {
                panic!("a duplex stream became {leg:?}");
            };
            assert!(outside.is_empty());
            client.write_all(b"later").await.unwrap();
            let mut got = vec![0u8; early.len() + 5];
            stream.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..early.len()], early[..]);
            assert_eq!(&got[early.len()..], b"later");
        })
        .await
        .unwrap();
    }

    const UPSTREAM_EARLY: &[u8] = b"UP-EARLY\x00\xff\x81\x05";

    /// An upstream upgrade as `Upstreams::upgrade` runs it, the upgrade client over an
    /// `UpstreamStream`: `upstream` answers 101 with [`UPSTREAM_EARLY`] behind the head in one
    /// write, then `later` once the leg is checked. Returns the leg and asserts that the later
    /// bytes come from its stream.
    async fn upstream_upgrade<S>(mut upstream: S, gw: UpstreamStream) -> Leg
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = tokio::spawn(async move {
            let head = read_head(&mut upstream).await;
            assert!(head.starts_with(b"GET /t HTTP/1.1\r\n"), "{head:?}");
            let mut answer = SWITCHED_HEAD.to_vec();
            answer.extend_from_slice(UPSTREAM_EARLY);
            upstream.write_all(&answer).await.unwrap();
            upstream.flush().await.unwrap();
            upstream
        });
        let request = Request::get("/t")
            .header("host", "gw")
            .header("connection", "upgrade")
            .header("upgrade", "foo")
            .body(())
            .unwrap();
        let (io, early) = crate::upstream::switch_for_tests(gw, request).await;
        let leg = upstream_leg(io, early);
        let mut upstream = server.await.unwrap();
        upstream.write_all(b"later").await.unwrap();
        upstream.flush().await.unwrap();
        let mut later = [0u8; 5];
        match leg {
            Leg::Tcp { mut stream, early } => {
                stream.read_exact(&mut later).await.unwrap();
                assert_eq!(&later, b"later");
                Leg::tcp(stream, early)
            }
            Leg::Stream { mut stream, early } => {
                stream.read_exact(&mut later).await.unwrap();
                assert_eq!(&later, b"later");
                Leg::Stream { stream, early }
            }
        }
    }

    /// Upstream side, plain: the leg is the raw socket and its early bytes are exactly what the
    /// upstream sent right behind its 101 head.
    #[tokio::test]
    async fn upstream_leg_is_tcp_with_the_bytes_behind_the_101() {
        timeout(LIMIT, async {
            let (upstream, gw) = tcp_pair().await;
            let leg = upstream_upgrade(upstream, UpstreamStream::Tcp(gw)).await;
            let Leg::Tcp { early, .. } = leg else {
                panic!("a plain upstream became {leg:?}");
            };
            assert_eq!(&early[..], UPSTREAM_EARLY);
        })
        .await
        .unwrap();
    }

    /// Upstream side over TLS: a stream leg that still carries the bytes behind the 101.
    #[tokio::test]
    async fn upstream_leg_over_tls_carries_the_bytes_behind_the_101() {
        timeout(LIMIT, async {
            let (gw, upstream) = tls_pair().await;
            let leg = upstream_upgrade(upstream, UpstreamStream::Tls(Box::new(gw))).await;
            let Leg::Stream { early, .. } = leg else {
                panic!("a TLS upstream became {leg:?}");
            };
            assert_eq!(&early[..], UPSTREAM_EARLY);
        })
        .await
        .unwrap();
    }

    /// Both ends of a TLS connection over loopback, with a fresh self-signed certificate:
    /// (the client's end, the server's end).
    async fn tls_pair() -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        ServerTlsStream<TcpStream>,
    ) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = issued.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pair.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client_tcp, server_tcp) = tcp_pair().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            connector.connect(name, client_tcp),
            acceptor.accept(server_tcp)
        );
        (client.unwrap(), server.unwrap())
    }

    /// TLS listener: the server TLS stream is recovered (not left inside hyper's `Upgraded`),
    /// so the early bytes are the leg's, in order, and later bytes come from the stream.
    #[tokio::test]
    async fn h1_client_leg_over_tls_carries_every_early_byte_in_order() {
        timeout(LIMIT, async {
            let (mut client, mut gw) = tls_pair().await;
            let early = pattern(20_000);
            let mut sent = REQUEST_HEAD.to_vec();
            sent.extend_from_slice(&early);
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut prefix = vec![0u8; sent.len()];
            gw.read_exact(&mut prefix).await.unwrap();
            let (upgraded, _) = tokio::join!(
                serve_upgrade(gw, Bytes::from(prefix)),
                read_head(&mut client)
            );
            let leg = h1_client_leg(upgraded);
            let Leg::Stream {
                mut stream,
                early: got,
            } = leg
            else {
                panic!("a TLS client became {leg:?}");
            };
            assert_eq!(got[..], early[..]);
            client.write_all(b"later").await.unwrap();
            client.flush().await.unwrap();
            let mut later = [0u8; 5];
            stream.read_exact(&mut later).await.unwrap();
            assert_eq!(&later, b"later");
        })
        .await
        .unwrap();
    }
}
