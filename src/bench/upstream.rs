//! The echo upstream every target is measured against: it answers each WebSocket upgrade with
//! a correct 101 and then echoes the raw bytes (frames come back as sent), so the proxy in front
//! of it is the only thing that differs between runs. With `frames`, each frame comes back as
//! a server must send it (same header without the mask, payload unmasked), for inspected routes.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::handshake::accept_key;

/// Serves on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, frames: bool) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = echo(tcp, frames).await;
        });
    }
}

async fn echo(mut tcp: TcpStream, frames: bool) -> io::Result<()> {
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
    let (mut r, mut w) = tcp.split();
    if !frames {
        w.write_all(&buf[end..filled]).await?;
        tokio::io::copy(&mut r, &mut w).await?;
        return Ok(());
    }
    let mut reframe = Reframe::default();
    let mut out = Vec::with_capacity(buf.len() + 16);
    reframe.feed(&buf[end..filled], &mut out);
    w.write_all(&out).await?;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        out.clear();
        reframe.feed(&buf[..n], &mut out);
        w.write_all(&out).await?;
    }
}

/// Turns client frames into server frames as bytes arrive: headers are collected whole (at
/// most 14 bytes) and re-emitted without the mask bit and key, payloads unmasked.
#[derive(Debug, Default)]
struct Reframe {
    header: Vec<u8>,
    remaining: u64,
    key: [u8; 4],
    offset: usize,
}

impl Reframe {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.remaining == 0 {
                self.header.push(input[0]);
                input = &input[1..];
                self.try_header(out);
                continue;
            }
            let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
            let (now, rest) = input.split_at(take);
            out.extend(
                now.iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.key[(self.offset + i) % 4]),
            );
            self.offset += take;
            self.remaining -= take as u64;
            input = rest;
        }
    }

    /// Emits the collected header once it is complete.
    fn try_header(&mut self, out: &mut Vec<u8>) {
        let h = &self.header;
        if h.len() < 2 {
            return;
        }
        let ext = match h[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = h[1] & 0x80 != 0;
        if h.len() < 2 + ext + if masked { 4 } else { 0 } {
            return;
        }
        self.remaining = match ext {
            0 => u64::from(h[1] & 0x7f),
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            _ => u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
        };
        self.key = if masked {
            h[2 + ext..6 + ext].try_into().unwrap_or_default()
        } else {
            [0; 4]
        };
        self.offset = 0;
        out.push(h[0]);
        out.push(h[1] & 0x7f);
        out.extend_from_slice(&h[2..2 + ext]);
        self.header.clear();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::masked_frame;

    /// Client frames of every length form, fed in pieces of every size, come back as the same
    /// frames unmasked.
    #[test]
    fn reframe_unmasks_every_length_form_at_any_split() {
        let mut input = Vec::new();
        let mut want = Vec::new();
        for len in [0, 5, 125, 126, 1000, 70_000] {
            let frame = masked_frame(len);
            let ext = frame.len() - len - 6;
            want.push(0x82);
            want.push(frame[1] & 0x7f);
            want.extend_from_slice(&frame[2..2 + ext]);
            want.extend((0..len).map(|i| i as u8));
            input.extend_from_slice(&frame);
        }
        for piece in [1, 3, 13, 4096, input.len()] {
            let mut reframe = Reframe::default();
            let mut out = Vec::new();
            for chunk in input.chunks(piece) {
                reframe.feed(chunk, &mut out);
            }
            assert!(out == want, "pieces of {piece}");
        }
    }
}
