//! An h2 client for the RFC 8441 tests: TLS to the gateway with ALPN `h2`, trusting the committed
//! dev CA (`certs/ca.pem`), the `h2` crate on top, and small helpers to open extended CONNECT
//! streams and move bytes through them with h2 flow control (RFC 9113 §5.2) respected.
//!
//! Every wait is bounded by [`IO_TIMEOUT`]; a hang panics naming what was awaited.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Builder, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::IO_TIMEOUT;
use super::tls::{dev_cert, tls_client_config};

/// The name the dev server certificate is valid for; also the SNI sent.
pub const SERVER_NAME: &str = "localhost";

/// A client config trusting only `certs/ca.pem`, offering ALPN `h2` alone.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    tls_client_config(
        &dev_cert("ca.pem"),
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &["h2"],
    )
}

/// One h2 connection to the gateway; its frames are driven by a background task.
pub struct H2Conn {
    pub sender: SendRequest<Bytes>,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    authority: String,
    driver: JoinHandle<Result<(), h2::Error>>,
}

impl H2Conn {
    /// Connects with a large connection window (16 MiB) and the h2 default stream window, so
    /// that only stream-level flow control limits one stream.
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let mut builder = Builder::new();
        builder.initial_connection_window_size(16 << 20);
        H2Conn::connect_with(addr, builder).await
    }

    /// TLS + h2 handshake with `builder`, then one PING answered: the server writes its
    /// SETTINGS first, so after the PONG they are known (e.g. ENABLE_CONNECT_PROTOCOL).
    pub async fn connect_with(addr: SocketAddr, builder: Builder) -> H2Conn {
        let setup = async {
            let tcp = TcpStream::connect(addr)
                .await
                .expect("connect to the gateway");
            let name = ServerName::try_from(SERVER_NAME).expect("server name");
            let tls = TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the gateway");
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let (sender, mut connection) = builder
                .handshake::<_, Bytes>(tls)
                .await
                .expect("h2 handshake");
            let mut ping = connection.ping_pong().expect("first ping_pong");
            let driver = tokio::spawn(connection);
            ping.ping(h2::Ping::opaque()).await.expect("PING answered");
            H2Conn {
                sender,
                alpn,
                authority: format!("{SERVER_NAME}:{}", addr.port()),
                driver,
            }
        };
        tokio::time::timeout(IO_TIMEOUT, setup)
            .await
            .expect("h2 connection set-up timed out")
    }

    /// Whether the server's SETTINGS had SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3).
    pub fn extended_connect_enabled(&self) -> bool {
        self.sender.is_extended_connect_protocol_enabled()
    }

    /// An RFC 8441 §4 extended CONNECT for `path`: `:protocol = websocket`, version 13 unless
    /// `version` says otherwise (`None` omits it), and the subprotocol offer if any.
    pub fn websocket_request(
        &self,
        path: &str,
        protocols: Option<&str>,
        version: Option<&str>,
    ) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://{}{path}", self.authority))
            .body(())
            .expect("request");
        let headers = req.headers_mut();
        if let Some(v) = version {
            headers.insert("sec-websocket-version", v.parse().expect("value"));
        }
        if let Some(p) = protocols {
            headers.insert("sec-websocket-protocol", p.parse().expect("value"));
        }
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        req
    }

    /// An ordinary GET for `path` (END_STREAM on the headers).
    pub fn get_request(&self, path: &str) -> Request<()> {
        Request::builder()
            .method(Method::GET)
            .uri(format!("https://{}{path}", self.authority))
            .body(())
            .expect("request")
    }

    /// Sends `req` and waits for the response head; the stream stays open for data unless
    /// `end` (END_STREAM with the headers).
    pub async fn open(&mut self, req: Request<()>, end: bool) -> H2Stream {
        let exchange = async {
            let mut sender = self.sender.clone().ready().await.expect("stream slot");
            let (response, send) = sender.send_request(req, end).expect("send request");
            let response: Response<RecvStream> = response.await.expect("response head");
            let (head, recv) = response.into_parts();
            H2Stream { head, send, recv }
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .expect("no response head in time")
    }

    /// Opens a WebSocket stream and asserts the RFC 8441 §5 success: `200`, no
    /// `sec-websocket-version`, and `sec-websocket-protocol` exactly `selected`.
    pub async fn websocket(
        &mut self,
        path: &str,
        protocols: Option<&str>,
        selected: Option<&str>,
    ) -> H2Stream {
        let req = self.websocket_request(path, protocols, Some("13"));
        let stream = self.open(req, false).await;
        assert_eq!(
            stream.head.status, 200,
            "extended CONNECT: {:?}",
            stream.head
        );
        assert!(
            !stream.head.headers.contains_key("sec-websocket-version"),
            "200 carries sec-websocket-version: {:?}",
            stream.head
        );
        let got: Vec<&str> = stream
            .head
            .headers
            .get_all("sec-websocket-protocol")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        let want: Vec<&str> = selected.into_iter().collect();
        assert_eq!(got, want, "sec-websocket-protocol in the 200");
        stream
    }

    /// Waits until the connection's driver ends (GOAWAY and close, or an error) and returns
    /// how it ended; `None` if it is still running after `within`.
    pub async fn ended_within(&mut self, within: Duration) -> Option<Result<(), h2::Error>> {
        match tokio::time::timeout(within, &mut self.driver).await {
            Ok(joined) => Some(joined.expect("h2 driver task")),
            Err(_) => None,
        }
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One open h2 stream: the response head, and both directions of its body.
pub struct H2Stream {
    pub head: http::response::Parts,
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

impl H2Stream {
    /// Sends all of `data` as DATA frames, waiting for window as RFC 9113 §5.2 requires.
    pub async fn send_all(&mut self, data: &[u8]) {
        send_all(&mut self.send, data).await
    }

    /// The next DATA payload (capacity released); `None` at END_STREAM.
    pub async fn recv_chunk(&mut self) -> Result<Option<Bytes>, h2::Error> {
        recv_chunk(&mut self.recv).await
    }

    /// Exactly `n` bytes; panics if the stream ends, fails or stalls first.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(IO_TIMEOUT, self.recv_chunk()).await {
                Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
                Ok(Ok(None)) => panic!("stream ended after {} of {n} bytes", out.len()),
                Ok(Err(e)) => panic!("stream failed after {} of {n} bytes: {e}", out.len()),
                Err(_) => panic!("only {} of {n} bytes within {IO_TIMEOUT:?}", out.len()),
            }
        }
        assert_eq!(out.len(), n, "more bytes than expected");
        out
    }

    /// Everything until the stream's receive side ends: `Ok` at END_STREAM, `Err` on a reset
    /// (with what arrived before it in the first element).
    pub async fn recv_to_end(&mut self) -> (Vec<u8>, Result<(), h2::Error>) {
        let mut out = Vec::new();
        let end = async {
            loop {
                match self.recv_chunk().await {
                    Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        let end = tokio::time::timeout(IO_TIMEOUT, end)
            .await
            .expect("stream did not end in time");
        (out, end)
    }

    /// Waits for the server to reset this stream (RST_STREAM); `None` if it does not within
    /// `within`.
    pub async fn reset_within(&mut self, within: Duration) -> Option<Reason> {
        let reset = poll_fn(|cx| self.send.poll_reset(cx));
        match tokio::time::timeout(within, reset).await {
            Ok(Ok(reason)) => Some(reason),
            Ok(Err(e)) => e.reason(),
            Err(_) => None,
        }
    }

    /// A response header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

/// Sends `data` on `send` without ever exceeding the window the peer granted.
pub async fn send_all(send: &mut SendStream<Bytes>, mut data: &[u8]) {
    while !data.is_empty() {
        send.reserve_capacity(data.len().min(1 << 20));
        let granted = tokio::time::timeout(IO_TIMEOUT, poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .expect("no send window within IO_TIMEOUT");
        let n = match granted {
            Some(Ok(n)) => n.min(data.len()),
            Some(Err(e)) => panic!("stream failed while sending: {e}"),
            None => panic!("stream closed while sending"),
        };
        if n == 0 {
            continue;
        }
        send.send_data(Bytes::copy_from_slice(&data[..n]), false)
            .expect("send DATA");
        data = &data[n..];
    }
}

/// The next DATA payload of `recv`, releasing its flow-control capacity so the peer may send
/// more; `None` at END_STREAM.
pub async fn recv_chunk(recv: &mut RecvStream) -> Result<Option<Bytes>, h2::Error> {
    match recv.data().await {
        Some(Ok(chunk)) => {
            recv.flow_control()
                .release_capacity(chunk.len())
                .expect("release capacity");
            Ok(Some(chunk))
        }
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}
