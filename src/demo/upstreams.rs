//! The demo's in-process upstreams, each on its own `127.0.0.1:0` port, each answering in a way
//! that shows which one answered:
//!
//! - `echo.v1`: every text message comes back as `echo.v1 upstream: <message>` to its sender;
//! - `chat.v1`: every text message goes to every connected chat client as
//!   `[chat.v1] guest-N: <message>`, and a join is announced as `[chat.v1] guest-N joined`;
//! - web: `GET /` answers the demo page; anything else 404.
//!
//! These stand in for application servers, so they speak plain HTTP/1.1 and WebSocket version 13
//! to the gateway (SPEC §4: the gateway always talks HTTP/1.1 upgrades upstream). They accept the
//! single subprotocol the gateway forwards and answer it back, as RFC 6455 §4.2.2 asks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, SEC_WEBSOCKET_PROTOCOL};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest message the demo upstreams accept: a demo needs chat lines, not uploads.
const MAX_MESSAGE: usize = 64 * 1024;

/// How many chat lines a slow chat client may fall behind before it misses some.
const CHAT_BACKLOG: usize = 256;

/// Binds a loopback port for one upstream.
async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Accepts forever, handing each connection to `serve` on its own task.
fn spawn_accept_loop<F, Fut>(listener: TcpListener, name: &'static str, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve(tcp));
                }
                Err(e) => {
                    // EMFILE and friends: the listener is fine, back off instead of spinning.
                    tracing::warn!(upstream = name, error = %e, "demo upstream accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// RFC 6455 §4.2.2 step 5.4/`/subprotocol/`: answer the subprotocol the gateway forwarded (it
/// forwards only the one it selected, SPEC §4), so the gateway's check of our 101 passes.
#[allow(clippy::result_large_err)] // the signature tungstenite's `Callback` requires
fn answer_subprotocol(req: &WsRequest, mut res: WsResponse) -> Result<WsResponse, ErrorResponse> {
    if let Some(p) = req.headers().get(SEC_WEBSOCKET_PROTOCOL) {
        res.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p.clone());
    }
    Ok(res)
}

async fn accept_ws(tcp: TcpStream) -> Option<WebSocketStream<TcpStream>> {
    let config = WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE),
        max_frame_size: Some(MAX_MESSAGE),
        ..WebSocketConfig::default()
    };
    tokio_tungstenite::accept_hdr_async_with_config(tcp, answer_subprotocol, Some(config))
        .await
        .ok()
}

/// Starts the `echo.v1` upstream; returns its address.
pub(super) async fn spawn_echo() -> std::io::Result<SocketAddr> {
    let (listener, addr) = bind_loopback().await?;
    spawn_accept_loop(listener, "echo.v1", echo_connection);
    Ok(addr)
}

async fn echo_connection(tcp: TcpStream) {
    let Some(mut ws) = accept_ws(tcp).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(format!("echo.v1 upstream: {t}")),
            Message::Binary(b) => Message::Binary(b),
            // tungstenite answers pings and echoes the close itself.
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// Starts the `chat.v1` upstream; returns its address.
pub(super) async fn spawn_chat() -> std::io::Result<SocketAddr> {
    let (listener, addr) = bind_loopback().await?;
    let room = Arc::new(Room {
        lines: broadcast::channel(CHAT_BACKLOG).0,
        next_guest: AtomicU64::new(1),
    });
    spawn_accept_loop(listener, "chat.v1", move |tcp| {
        chat_connection(tcp, Arc::clone(&room))
    });
    Ok(addr)
}

/// Every chat client of the process shares one room.
struct Room {
    lines: broadcast::Sender<String>,
    next_guest: AtomicU64,
}

async fn chat_connection(tcp: TcpStream, room: Arc<Room>) {
    let Some(ws) = accept_ws(tcp).await else {
        return;
    };
    let guest = room.next_guest.fetch_add(1, Ordering::Relaxed);
    let mut lines = room.lines.subscribe();
    let (mut tx, mut rx) = ws.split();
    // No receivers is not an error for a broadcast; this client itself has subscribed anyway.
    let _ = room.lines.send(format!("[chat.v1] guest-{guest} joined"));
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Ok(line) => {
                    if tx.send(Message::Text(line)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let _ = room.lines.send(format!("[chat.v1] guest-{guest}: {t}"));
                }
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
        }
    }
    let _ = tx.close().await;
}

/// Starts the web upstream serving the page; returns its address.
pub(super) async fn spawn_web() -> std::io::Result<SocketAddr> {
    let (listener, addr) = bind_loopback().await?;
    spawn_accept_loop(listener, "web", |tcp| async move {
        let service =
            service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(page(&req)) });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await
        {
            tracing::debug!(error = %e, "demo web upstream connection ended with an error");
        }
    });
    Ok(addr)
}

/// `GET /` (and `HEAD /`): the page; anything else: 404.
fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let is_page = matches!(req.uri().path(), "/" | "/index.html");
    let method_ok = req.method() == Method::GET || req.method() == Method::HEAD;
    let (status, content_type, body) = if is_page && method_ok {
        (StatusCode::OK, "text/html; charset=utf-8", super::PAGE)
    } else if is_page {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        )
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    }
    res
}
