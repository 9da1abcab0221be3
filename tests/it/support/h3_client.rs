//! An HTTP/3 client for the RFC 9220 tests: quinn with TLS 1.3 and ALPN `h3`, trusting the
//! committed dev CA (`certs/ca.pem`), and the same h3 layer the gateway uses (`h3-forked`) on
//! top, with helpers to open extended CONNECT streams and move bytes through them.
//!
//! Every wait is bounded by [`IO_TIMEOUT`]; a hang panics naming what was awaited.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::client::{RequestStream, SendRequest};
use h3::error::Code;
use h3::ext::Protocol;
use http::{Method, Request, Response};
use tokio::task::JoinHandle;

use super::IO_TIMEOUT;
use super::tls::{dev_cert, tls_client_config};

/// The name the dev server certificate is valid for; also the SNI sent.
pub const SERVER_NAME: &str = "localhost";

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// One QUIC connection to the gateway with HTTP/3 on it; the connection's control streams are
/// driven by a background task.
pub struct H3Conn {
    pub sender: SendRequest<h3_quinn::OpenStreams, Bytes>,
    pub quic: quinn::Connection,
    authority: String,
    driver: JoinHandle<h3::error::ConnectionError>,
    _endpoint: quinn::Endpoint,
}

/// A client endpoint trusting `ca`, ALPN h3, with a 60 s idle timeout of its own so that the
/// server's limits are what end a connection.
fn endpoint(ca: &Path) -> quinn::Endpoint {
    let tls = tls_client_config(ca, &[&rustls::version::TLS13], &["h3"]);
    let tls = Arc::unwrap_or_clone(tls);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("idle")));
    config.transport_config(Arc::new(transport));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(config);
    endpoint
}

impl H3Conn {
    /// QUIC + HTTP/3 to `addr` with SNI `localhost`, verified against the dev CA.
    pub async fn connect(addr: SocketAddr) -> H3Conn {
        H3Conn::connect_as(addr, SERVER_NAME, &dev_cert("ca.pem"))
            .await
            .unwrap_or_else(|e| panic!("QUIC connection to {addr}: {e}"))
    }

    /// QUIC + HTTP/3 to `addr` with SNI `name`, verified against `ca`; the error says why the
    /// handshake failed.
    pub async fn connect_as(addr: SocketAddr, name: &str, ca: &Path) -> Result<H3Conn, String> {
        let endpoint = endpoint(ca);
        let setup = async {
            let connecting = endpoint.connect(addr, name).map_err(|e| e.to_string())?;
            let quic = connecting.await.map_err(|e| e.to_string())?;
            let mut builder = h3::client::builder();
            builder.enable_extended_connect(true);
            let (mut driver, sender) = builder
                .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|e| e.to_string())?;
            let driver =
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            Ok::<_, String>((quic, sender, driver))
        };
        let (quic, sender, driver) = tokio::time::timeout(IO_TIMEOUT, setup)
            .await
            .map_err(|_| format!("no QUIC handshake within {IO_TIMEOUT:?}"))??;
        Ok(H3Conn {
            sender,
            quic,
            authority: format!("{name}:{}", addr.port()),
            driver,
            _endpoint: endpoint,
        })
    }

    /// `:authority` as the client sends it by default (`localhost:PORT`).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends an extended CONNECT (`:protocol`) to `path` with `headers`, and waits for the
    /// response head.
    pub async fn connect_with(
        &mut self,
        authority: &str,
        path: &str,
        protocol: Protocol,
        headers: &[(&str, &str)],
    ) -> (Response<()>, H3Stream) {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://{authority}{path}"))
            .extension(protocol);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req.body(()).expect("request")).await
    }

    /// An RFC 9220 WebSocket CONNECT to `path` offering `protocols` (version 13).
    pub async fn connect_ws(
        &mut self,
        path: &str,
        protocols: Option<&str>,
    ) -> (Response<()>, H3Stream) {
        let mut headers = vec![("sec-websocket-version", "13")];
        if let Some(p) = protocols {
            headers.push(("sec-websocket-protocol", p));
        }
        let authority = self.authority.clone();
        self.connect_with(&authority, path, Protocol::WEBSOCKET, &headers)
            .await
    }

    /// Sends `req` (no body) and waits for the response head.
    pub async fn send(&mut self, req: Request<()>) -> (Response<()>, H3Stream) {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let mut stream = self
                .sender
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{what}: request not sent: {e}"));
            let response = stream
                .recv_response()
                .await
                .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
            (response, H3Stream { stream })
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{what}: no response within {IO_TIMEOUT:?}"))
    }

    /// An ordinary GET of `path`; the response head and the whole body.
    pub async fn get(&mut self, path: &str) -> (Response<()>, Vec<u8>) {
        let req = Request::get(format!("https://{}{path}", self.authority))
            .body(())
            .expect("request");
        let (response, mut stream) = self.send(req).await;
        let (body, end) = stream.read_to_end(IO_TIMEOUT).await;
        assert_eq!(
            end,
            End::Fin,
            "GET {path}: response body not ended with FIN"
        );
        (response, body)
    }

    /// Whether the QUIC connection is closed by `within`, and how.
    pub async fn closed_within(&self, within: Duration) -> Option<quinn::ConnectionError> {
        tokio::time::timeout(within, self.quic.closed()).await.ok()
    }

    /// Whether the h3 layer has seen the server's GOAWAY (or the connection ended) by `within`.
    pub async fn goaway_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // `send_request` fails once the peer's GOAWAY has been processed.
            let probe = Request::get(format!("https://{}/__goaway_probe", self.authority))
                .body(())
                .expect("request");
            if self.driver.is_finished() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(100), self.sender.send_request(probe))
                .await
            {
                Ok(Err(_)) => return true,
                Ok(Ok(mut s)) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How a stream's receiving side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// FIN: the server ended the stream cleanly.
    Fin,
    /// The stream (or the connection) ended with an error.
    Reset(String),
    /// Still open when the wait ended.
    Open,
}

/// One request stream after its response head: the tunnel's bytes, both ways.
pub struct H3Stream {
    pub stream: Stream,
}

impl H3Stream {
    /// Sends `data` as DATA frames.
    pub async fn send(&mut self, data: &[u8]) {
        for chunk in data.chunks(32 * 1024) {
            tokio::time::timeout(
                IO_TIMEOUT,
                self.stream.send_data(Bytes::copy_from_slice(chunk)),
            )
            .await
            .expect("send within IO_TIMEOUT")
            .expect("send DATA");
        }
    }

    /// FIN on our side (half-close).
    pub async fn finish(&mut self) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.finish())
            .await
            .expect("finish within IO_TIMEOUT")
            .expect("finish");
    }

    /// Resets both directions (RESET_STREAM + STOP_SENDING), as a client abandoning a tunnel.
    pub fn reset(&mut self) {
        self.stream.stop_stream(Code::H3_REQUEST_CANCELLED);
        self.stream.stop_sending(Code::H3_REQUEST_CANCELLED);
    }

    /// Reads exactly `n` bytes.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let read = async {
            while out.len() < n {
                match self.stream.recv_data().await {
                    Ok(Some(mut data)) => {
                        out.extend_from_slice(&data.copy_to_bytes(data.remaining()))
                    }
                    Ok(None) => panic!("FIN after {} of {n} bytes", out.len()),
                    Err(e) => panic!("stream error after {} of {n} bytes: {e}", out.len()),
                }
            }
        };
        tokio::time::timeout(IO_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| panic!("{n} bytes not received within {IO_TIMEOUT:?}"));
        out
    }

    /// Reads until the stream ends or `within` passes.
    pub async fn read_to_end(&mut self, within: Duration) -> (Vec<u8>, End) {
        let mut out = Vec::new();
        let read = async {
            loop {
                match self.stream.recv_data().await {
                    Ok(Some(mut data)) => {
                        out.extend_from_slice(&data.copy_to_bytes(data.remaining()))
                    }
                    Ok(None) => return End::Fin,
                    Err(e) => return End::Reset(e.to_string()),
                }
            }
        };
        let end = tokio::time::timeout(within, read)
            .await
            .unwrap_or(End::Open);
        (out, end)
    }
}
