//! Byte-stream checks for tunnels: seeded random payloads and an echo checked byte for byte.

use std::sync::Arc;

use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::IO_TIMEOUT;

/// `n` pseudo-random bytes from `seed`, so that a failure can be replayed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Random write sizes for stream tests: 1..=64 KiB.
pub fn chunk_len(rng: &mut impl Rng, left: usize) -> usize {
    rng.gen_range(1..=65536).min(left)
}

/// Where two byte strings first differ (a length difference counts at the shorter length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Through an echo tunnel: writes `data` into `wr` in random-sized writes (`seed`) while reading
/// the echo from `rd`, checked byte for byte; then shuts `wr` down and expects the echo to end
/// with nothing more. Panics at the first lost, extra or different byte, or a stall.
pub async fn echo_integrity<R, W>(mut rd: R, mut wr: W, data: Arc<Vec<u8>>, seed: u64)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tx = Arc::clone(&data);
    let writer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sent = 0;
        while sent < tx.len() {
            let n = chunk_len(&mut rng, tx.len() - sent);
            wr.write_all(&tx[sent..sent + n])
                .await
                .expect("write into the tunnel");
            sent += n;
        }
        // A TLS writer may hold the last record until flushed (tokio-rustls buffers what the
        // socket would not take), and the echo of it is awaited before the shutdown below.
        wr.flush().await.expect("flush the tunnel");
        wr
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < data.len() {
        let n = tokio::time::timeout(IO_TIMEOUT, rd.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("echo stalled after {got} bytes"))
            .expect("read from the tunnel");
        assert!(
            n > 0,
            "tunnel closed after {got} of {} echoed bytes",
            data.len()
        );
        assert!(got + n <= data.len(), "more bytes echoed than sent");
        if let Some(at) = first_difference(&buf[..n], &data[got..got + n]) {
            panic!(
                "echoed stream differs from what was sent at byte {}",
                got + at
            );
        }
        got += n;
    }
    let mut wr = writer.await.expect("writer task");
    // Client EOF -> upstream EOF -> the echo upstream's EOF -> the client's EOF.
    wr.shutdown().await.expect("shutdown(Write)");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(IO_TIMEOUT, rd.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "tunnel did not end after both EOFs: {ended:?}"
    );
    assert!(rest.is_empty(), "{} extra bytes after the echo", rest.len());
}

/// A stream that records every byte read from and written to it, so that a test can compare what
/// a real client (tokio-tungstenite) put on the wire with what reached the other end.
pub struct Tap<S> {
    inner: S,
    read: Arc<std::sync::Mutex<Vec<u8>>>,
    written: Arc<std::sync::Mutex<Vec<u8>>>,
}

/// The records of a [`Tap`], kept by the test after the stream moved into a client.
#[derive(Clone, Default)]
pub struct TapLog {
    read: Arc<std::sync::Mutex<Vec<u8>>>,
    written: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TapLog {
    /// Every byte read so far.
    pub fn read(&self) -> Vec<u8> {
        super::lock(&self.read).clone()
    }

    /// Every byte written so far.
    pub fn written(&self) -> Vec<u8> {
        super::lock(&self.written).clone()
    }
}

impl<S> Tap<S> {
    /// Wraps `inner`; the returned log sees everything that passes.
    pub fn new(inner: S) -> (Tap<S>, TapLog) {
        let log = TapLog::default();
        let tap = Tap {
            inner,
            read: log.read.clone(),
            written: log.written.clone(),
        };
        (tap, log)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            super::lock(&self.read).extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            super::lock(&self.written).extend_from_slice(&data[..n]);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
