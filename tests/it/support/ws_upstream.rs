//! A real WebSocket echo upstream (tokio-tungstenite), plain or behind TLS, that records the
//! request heads it accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use super::heads::{Headers, RequestHead};
use super::{IO_TIMEOUT, lock};

#[derive(Default)]
struct WsState {
    requests: Mutex<Vec<RequestHead>>,
    accepted: AtomicUsize,
}

/// A WebSocket echo upstream (tokio-tungstenite): picks the first offered subprotocol, echoes
/// every data message and records every request head it accepted.
pub struct WsUpstream {
    addr: SocketAddr,
    state: Arc<WsState>,
    task: JoinHandle<()>,
}

impl WsUpstream {
    /// Listens on 127.0.0.1:0.
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(WsState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(ws_echo(stream, st.clone()));
            }
        });
        WsUpstream { addr, state, task }
    }

    /// Listens on 127.0.0.1:0 and speaks TLS with `config` (e.g. [`tls_server_config`]) before
    /// the WebSocket handshake: an upstream for `tls = true`. A failed TLS handshake is dropped
    /// and records no request.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls ws upstream");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(WsState::default());
        let st = state.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let accepted = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await;
                    if let Ok(Ok(tls)) = accepted {
                        ws_echo(tls, st).await;
                    }
                });
            }
        });
        WsUpstream { addr, state, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far (a failed handshake must leave this at 0).
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Request heads of completed handshakes, in order.
    pub fn requests(&self) -> Vec<RequestHead> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_echo<S>(stream: S, state: Arc<WsState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The error type is tungstenite's `Callback` signature, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let headers = Headers(
            req.headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        );
        // The gateway forwards only the selected subprotocol: echo it back.
        if let Some(chosen) = headers.list("sec-websocket-protocol").first() {
            if let Ok(value) = chosen.parse() {
                resp.headers_mut().insert("sec-websocket-protocol", value);
            }
        }
        lock(&state.requests).push(RequestHead {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            headers,
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
