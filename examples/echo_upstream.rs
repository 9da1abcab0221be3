//! A minimal WebSocket echo server to put behind switchyard while trying it out:
//! `cargo run --release --example echo_upstream -- 127.0.0.1:9001 [name]`.
//!
//! It accepts whatever single subprotocol the gateway forwards (switchyard sends only the one it
//! selected) and answers every text message with `name: message`, so you can see which upstream
//! a route reached.

#![allow(clippy::result_large_err)] // tungstenite's callback signature, not ours

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use futures_util::{SinkExt, StreamExt};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let name = args.next().unwrap_or_else(|| "echo".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("echo upstream {name:?} on ws://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let pick = |req: &Request, mut res: Response| {
                if let Some(p) = req.headers().get("sec-websocket-protocol") {
                    res.headers_mut()
                        .insert("sec-websocket-protocol", p.clone());
                }
                Ok(res)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, pick).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let reply = match msg {
                    Message::Text(t) => Message::text(format!("{name}: {t}")),
                    Message::Binary(b) => Message::Binary(b),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
    }
}
