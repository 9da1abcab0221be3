//! The echo upstream every target is measured against: it answers each WebSocket upgrade with
//! a correct 101 and then echoes the raw bytes (frames come back as sent), so the proxy in front
//! of it is the only thing that differs between runs.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::handshake::accept_key;

/// Serves on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = echo(tcp).await;
        });
    }
}

async fn echo(mut tcp: TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let end = loop {
        let n = tcp.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if filled == buf.len() {
            return Ok(());
        }
    };
    let key = key_of(&buf[..end]).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    tcp.write_all(answer.as_bytes()).await?;
    tcp.write_all(&buf[end..filled]).await?;
    let (mut r, mut w) = tcp.split();
    tokio::io::copy(&mut r, &mut w).await?;
    Ok(())
}

fn key_of(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    })
}
