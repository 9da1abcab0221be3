//! The load generator's client side: a WebSocket handshake written and checked by hand (one
//! request head out, one 101 in) on a plain TCP socket, then raw bytes.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::handshake::key_from_bytes;

/// Where tunnels are opened: the proxy (or the upstream itself, for the `direct` baseline).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// `host:port` as given, sent as `Host`.
    pub(crate) authority: String,
    pub(crate) path: String,
    /// `wss://` with `--http 2` or `3`: the client config and whether it is h3.
    pub(crate) mux: Option<(std::sync::Arc<rustls::ClientConfig>, bool)>,
}

/// Opens one tunnel from `source` (an address on 127.0.0.0/8; `None` lets the kernel choose):
/// connect, upgrade, and the socket once the 101 head is read (nothing past it is consumed).
pub(crate) async fn open(target: &Target, source: Option<SocketAddr>) -> io::Result<TcpStream> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(source)?;
    }
    let mut tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let key = key_from_bytes(rand::random());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        target.path, target.authority
    );
    tcp.write_all(request.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        return Err(io::Error::other(format!(
            "no 101: {}",
            String::from_utf8_lossy(line)
        )));
    }
    Ok(tcp)
}

/// Reads up to the end of a response head, one byte at a time so no tunnel byte is taken.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// A masked binary frame (RFC 6455 §5.2) carrying `len` bytes: what a browser sends.
pub(crate) fn masked_frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0x82];
    match len {
        0..=125 => frame.push(0x80 | len as u8),
        126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    frame.extend_from_slice(&mask);
    frame.extend((0..len).map(|i| (i as u8) ^ mask[i % 4]));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_in_the_right_form() {
        assert_eq!(masked_frame(64).len(), 2 + 4 + 64);
        assert_eq!(masked_frame(64)[1], 0x80 | 64);
        assert_eq!(masked_frame(1000)[1], 0x80 | 126);
        assert_eq!(masked_frame(70_000)[1], 0x80 | 127);
        assert_eq!(masked_frame(70_000).len(), 2 + 8 + 4 + 70_000);
    }
}
