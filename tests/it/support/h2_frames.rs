//! Raw h2 frames over TLS (ALPN `h2`), for the tests where the `h2` crate would not send what a
//! hostile client sends: floods of PING or SETTINGS, endless CONTINUATION, silence after TLS.
//! A frame is RFC 9113 §4.1's 9-byte header plus payload; header blocks are literal HPACK
//! (RFC 7541 §6.2.2, no Huffman), so no encoder state is needed.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::IO_TIMEOUT;
use super::h2_client::{SERVER_NAME, tls_config};

/// RFC 9113 §3.4.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;

/// RFC 9113 §7.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// RFC 9113 §6.5.2.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame as bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("frame length")
        .to_be_bytes();
    assert_eq!(len[0], 0, "payload over 2^24");
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// RFC 7541 §5.1: `value` with an N-bit prefix, the first byte's other bits set to `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// RFC 7541 §6.2.2: a literal header field without indexing, new name, no Huffman.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of `GET https://localhost:<port><path>`: static-table method, scheme and
/// path name, literal authority and path.
pub fn get_block(port: u16, path: &str) -> Vec<u8> {
    // :method GET (static index 2), :scheme https (7).
    let mut block = vec![0x82, 0x87];
    for (index, value) in [(1u8, format!("{SERVER_NAME}:{port}")), (4, path.to_owned())] {
        // Literal without indexing, indexed name (RFC 7541 §6.2.2, 4-bit prefix).
        hpack_int(&mut block, 0x00, 4, usize::from(index));
        hpack_int(&mut block, 0, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A frame as read: header fields and payload.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's error code.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes(self.payload[4..8].try_into().expect("4 bytes")))
    }

    /// A SETTINGS frame's parameter `id`.
    pub fn setting(&self, id: u16) -> Option<u32> {
        (self.kind == SETTINGS)
            .then(|| {
                self.payload.chunks_exact(6).find_map(|p| {
                    (u16::from_be_bytes([p[0], p[1]]) == id)
                        .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                })
            })
            .flatten()
    }
}

/// How a raw connection's read side ended.
#[derive(Debug)]
pub enum Ended {
    /// A GOAWAY arrived, with this error code.
    GoAway(u32),
    /// End of stream or a reset, without a GOAWAY.
    Closed,
    /// Still open after the wait.
    Open(Vec<Frame>),
}

/// A TLS connection to the gateway speaking raw h2 frames.
pub struct RawH2 {
    pub tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawH2 {
    /// TCP + TLS with ALPN `h2`; nothing h2 is sent yet.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let setup = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from(SERVER_NAME).expect("server name");
            let tls = TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
            RawH2 {
                tls,
                buf: Vec::new(),
            }
        };
        tokio::time::timeout(IO_TIMEOUT, setup)
            .await
            .expect("TLS set-up timed out")
    }

    /// The client preface and an empty SETTINGS, then the server's first frame (its SETTINGS).
    pub async fn handshake(addr: SocketAddr) -> (RawH2, Frame) {
        let mut c = RawH2::connect(addr).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        c.send(&hello).await.expect("send preface");
        let first = c.next_frame(IO_TIMEOUT).await.expect("server SETTINGS");
        assert_eq!(first.kind, SETTINGS, "{first:?}");
        (c, first)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// The next frame; `None` at end of stream, on an error, or after `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        self.poll_frame(within).await.flatten()
    }

    /// The next frame (`Some(None)` at end of stream or on an error); `None` after `within`.
    async fn poll_frame(&mut self, within: Duration) -> Option<Option<Frame>> {
        let read = async {
            loop {
                if self.buf.len() >= 9 {
                    let len = usize::from(self.buf[0]) << 16
                        | usize::from(self.buf[1]) << 8
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let bytes: Vec<u8> = self.buf.drain(..9 + len).collect();
                        return Some(Frame {
                            kind: bytes[3],
                            flags: bytes[4],
                            payload: bytes[9..].to_vec(),
                        });
                    }
                }
                let mut chunk = [0u8; 16384];
                match self.tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok()
    }

    /// Reads frames until a GOAWAY, the end of the connection, or `within`.
    pub async fn until_end(&mut self, within: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ended::Open(seen);
            }
            match self.poll_frame(left).await {
                Some(Some(f)) => match f.goaway_code() {
                    Some(code) => return Ended::GoAway(code),
                    None => seen.push(f),
                },
                Some(None) => return Ended::Closed,
                None => return Ended::Open(seen),
            }
        }
    }

    /// Whether the connection reaches end of stream (after any GOAWAY) within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.poll_frame(left).await {
                Some(Some(_)) => {}
                Some(None) => return true,
                None => return false,
            }
        }
    }
}
