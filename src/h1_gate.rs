//! The byte gate between an HTTP/1.1 client connection and hyper: hyper only ever sees request
//! heads the gateway has checked itself (SPEC §3: a malformed or oversized head on a later
//! keep-alive request gets the gateway's own 400/431, exactly like the first one).
//!
//! The gate follows the message framing of the request stream: a head (read and checked by
//! [`crate::head::check_buffered`]), then its body (`Content-Length` bytes, or chunks up to the
//! last chunk and trailers), then the next head. hyper is handed one message at a time and never
//! reads past the current one, so it has no head to parse that the gate has not passed. When a
//! head fails, hyper is told nothing more ([`Poll::Pending`] on read), the front is woken to shut
//! hyper down gracefully, and the gate writes the gateway's answer when hyper closes the
//! connection ([`AsyncWrite::poll_shutdown`]), after any response still in flight.
//!
//! After a head that asks for an upgrade the gate steps aside: what follows is tunnel bytes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::error::Reject;
use crate::head::{self, Framing};

/// Wakes the front when the gate refused a head, and says why.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    notify: Notify,
    reject: Mutex<Option<Reject>>,
}

impl Refusals {
    /// Resolves once a head has been refused, with the reason.
    pub(crate) async fn refused(&self) -> Reject {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self
                .reject
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return r;
            }
            notified.await;
        }
    }
}

/// The client stream as hyper reads it; see the module docs.
#[derive(Debug)]
pub(crate) struct RequestGate<S> {
    inner: S,
    /// Read from `inner`, not yet handed to hyper.
    buf: BytesMut,
    state: State,
    max_header_bytes: usize,
    /// In [`State::Head`], how much of `buf` has been looked at: a head is parsed again only when
    /// new bytes bring a line end, so one sent a byte at a time costs a parse per line.
    scanned: usize,
    refusals: Arc<Refusals>,
    /// The answer to a refused head, written on shutdown.
    answer: Bytes,
}

#[derive(Debug)]
enum State {
    /// `head` bytes of a checked head are still to be handed over, then `body`.
    Message { head: usize, body: Body },
    /// Waiting for (and checking) the next request head.
    Head,
    /// Everything passes: after an upgrade head, or a body the gate cannot follow (hyper will
    /// refuse it and close).
    Open,
    /// A head was refused: hyper gets nothing more.
    Refused,
}

impl State {
    /// A checked head of `len` bytes and the body its `framing` announces.
    fn message(len: usize, framing: Framing) -> State {
        let body = match framing {
            Framing::Upgrade => Body::Upgrade,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Chunked::START),
        };
        State::Message { head: len, body }
    }
}

#[derive(Debug, Clone, Copy)]
enum Body {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// The head asked for an upgrade: what follows is not HTTP.
    Upgrade,
}

/// Where a chunked body (RFC 9112 §7.1) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a chunk-size line; `size` so far and whether an extension started.
    Size { size: u64, digits: u8, ext: bool },
    /// `left` data bytes of the current chunk, then CRLF.
    Data { left: u64 },
    /// The CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines; `line` is whether the current line has content.
    Trailers { line: bool },
}

/// What one byte of a chunked body did.
enum Step {
    More(Chunked),
    /// The body ended with this byte.
    End,
    /// Not chunked framing: the gate opens and lets hyper refuse it.
    Invalid,
}

impl Chunked {
    const START: Chunked = Chunked::Size {
        size: 0,
        digits: 0,
        ext: false,
    };

    fn step(self, b: u8) -> Step {
        use Chunked::*;
        match self {
            Size { size, digits, ext } => match b {
                b'\n' if digits == 0 => Step::Invalid,
                b'\n' if size == 0 => Step::More(Trailers { line: false }),
                b'\n' => Step::More(Data { left: size }),
                b'\r' => Step::More(self),
                _ if ext => Step::More(self),
                b';' | b' ' | b'\t' => Step::More(Size {
                    size,
                    digits,
                    ext: true,
                }),
                _ => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => Step::More(Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                        ext,
                    }),
                    _ => Step::Invalid,
                },
            },
            Data { left: 1 } => Step::More(DataEnd),
            Data { left } => Step::More(Data { left: left - 1 }),
            DataEnd => match b {
                b'\r' => Step::More(DataEnd),
                b'\n' => Step::More(Chunked::START),
                _ => Step::Invalid,
            },
            Trailers { line } => match b {
                b'\n' if !line => Step::End,
                b'\n' => Step::More(Trailers { line: false }),
                b'\r' => Step::More(self),
                _ => Step::More(Trailers { line: true }),
            },
        }
    }
}

impl<S> RequestGate<S> {
    /// A gate whose first message is `first`, the head [`head::read_head`] already read and
    /// checked (with any bytes after it), so it is not parsed again.
    pub(crate) fn after_head(
        inner: S,
        first: head::Head,
        max_header_bytes: usize,
        refusals: Arc<Refusals>,
    ) -> Self {
        RequestGate {
            inner,
            buf: first.bytes,
            state: State::message(first.len, first.framing),
            max_header_bytes,
            scanned: 0,
            refusals,
            answer: Bytes::new(),
        }
    }

    /// A gate that starts by reading (and checking) a head, after the bytes in `buffered`: for
    /// tests and the fuzz target, which feed it raw streams (the listener always has a head).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn new(
        inner: S,
        buffered: BytesMut,
        max_header_bytes: usize,
        refusals: Arc<Refusals>,
    ) -> Self {
        let mut gate = RequestGate {
            inner,
            buf: buffered,
            state: State::Head,
            max_header_bytes,
            scanned: 0,
            refusals,
            answer: Bytes::new(),
        };
        gate.check_head();
        gate
    }

    /// The stream and the bytes read from it that hyper has not been handed, in that order on
    /// the wire: for a tunnel, the client's early bytes.
    pub(crate) fn into_parts(self) -> (Bytes, S) {
        (self.buf.freeze(), self.inner)
    }

    /// In [`State::Head`]: moves on when `buf` holds a complete head, refusing a bad one.
    fn check_head(&mut self) {
        let seen = std::mem::replace(&mut self.scanned, self.buf.len()).min(self.buf.len());
        let fresh_line = self.buf[seen..].contains(&b'\n');
        if seen > 0 && !fresh_line && self.buf.len() <= self.max_header_bytes {
            return;
        }
        match head::check_buffered(&self.buf, self.max_header_bytes) {
            Ok(None) => {}
            Ok(Some((len, framing))) => {
                self.state = State::message(len, framing);
                self.scanned = 0;
            }
            Err(reject) => self.refuse(reject),
        }
    }

    fn refuse(&mut self, reject: Reject) {
        self.answer = crate::listener::serialize(&reject.response(crate::error::Carrier::H1));
        self.state = State::Refused;
        self.buf.clear();
        *self
            .refusals
            .reject
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reject);
        self.refusals.notify.notify_one();
    }

    /// How many bytes at the start of `buf` (at most `max`) hyper gets now, advancing the
    /// framing state over them: the caller hands over exactly that many.
    fn allowed(&mut self, max: usize) -> usize {
        let avail = self.buf.len().min(max);
        match &mut self.state {
            State::Open => avail,
            State::Head | State::Refused => 0,
            State::Message { head, body } => {
                if *head > 0 {
                    return (*head).min(avail);
                }
                match body {
                    Body::Upgrade => {
                        self.state = State::Open;
                        avail
                    }
                    Body::Length(0) => {
                        self.state = State::Head;
                        0
                    }
                    Body::Length(left) => usize::try_from(*left).map_or(avail, |l| l.min(avail)),
                    Body::Chunked(chunked) => {
                        let mut c = *chunked;
                        for (i, b) in self.buf[..avail].iter().enumerate() {
                            match c.step(*b) {
                                Step::More(next) => c = next,
                                Step::End => {
                                    // The last byte of the body: the next head follows it.
                                    *body = Body::Length(0);
                                    return i + 1;
                                }
                                Step::Invalid => {
                                    self.state = State::Open;
                                    return avail;
                                }
                            }
                        }
                        *chunked = c;
                        avail
                    }
                }
            }
        }
    }

    /// Records that `n` bytes were handed to hyper.
    fn handed(&mut self, n: usize) {
        self.buf.advance(n);
        if let State::Message { head, body } = &mut self.state {
            if *head > 0 {
                *head -= n;
            } else if let Body::Length(left) = body {
                *left = left.saturating_sub(n as u64);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RequestGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.state {
                // Nothing more for hyper; the front shuts it down (see `Refusals`).
                State::Refused => return Poll::Pending,
                State::Head => {
                    this.check_head();
                    // End of stream; a partial head is closed without a word.
                    if matches!(this.state, State::Head) && ready!(this.fill(cx))? == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                // Stepped aside: straight from the stream.
                State::Open if this.buf.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                State::Open | State::Message { .. } => {}
            }
            let n = this.allowed(out.remaining());
            if n > 0 {
                out.put_slice(&this.buf[..n]);
                this.handed(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Message { .. }) && ready!(this.fill(cx))? == 0 {
                // The body is cut short; hyper sees the end and refuses it.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + Unpin> RequestGate<S> {
    /// Reads more of the stream into `buf`; 0 at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RequestGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper closing the connection: first the answer to a refused head, if any.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.answer.is_empty() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.answer.advance(n);
        }
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Feeds `wire` through a gate (first head already checked, as the listener does) and
    /// returns what hyper would read until the gate stops, plus the refusal if any.
    async fn through(wire: &[u8]) -> (Vec<u8>, Option<Reject>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(wire).await.unwrap();
        drop(client);
        let refusals = Arc::new(Refusals::default());
        let mut gate = RequestGate::new(server, BytesMut::new(), 1024, Arc::clone(&refusals));
        let mut got = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        let reject = refusals.reject.lock().unwrap().clone();
        (got, reject)
    }

    #[tokio::test]
    async fn keep_alive_requests_pass_whole_and_a_bad_one_stops_the_stream() {
        let good = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                    POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
                    GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        let bad = "GET /d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let (got, reject) = through(format!("{good}{bad}GET /e HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert_eq!(String::from_utf8(got).unwrap(), good);
        assert_eq!(reject, Some(Reject::MalformedHead));
        // A body that looks like a head is body, not a request.
        let smuggle = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n\
                       GET /x HTTP/1.1\r\nHost: b\r\n\r\n";
        let (got, reject) = through(smuggle.as_bytes()).await;
        assert_eq!(String::from_utf8(got).unwrap(), smuggle);
        assert_eq!(reject, None);
    }

    #[tokio::test]
    async fn later_head_over_the_limit_is_431_and_upgrade_opens_the_gate() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(2000)
        );
        let (got, reject) = through(big.as_bytes()).await;
        assert_eq!(got, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reject, Some(Reject::HeadTooLarge { limit: 1024 }));
        let up = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
                  \x01\x05hello GARBAGE \x00\r\n\r\n";
        let (got, reject) = through(up.as_bytes()).await;
        assert_eq!(got, up.as_bytes());
        assert_eq!(reject, None);
    }

    #[tokio::test]
    async fn refused_answer_is_written_on_shutdown() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
            .await
            .unwrap();
        let refusals = Arc::new(Refusals::default());
        let mut gate = RequestGate::new(server, BytesMut::new(), 1024, Arc::clone(&refusals));
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut byte)).await;
        assert!(read.is_err(), "hyper got bytes of a refused head");
        assert_eq!(refusals.refused().await, Reject::MalformedHead);
        gate.shutdown().await.unwrap();
        let mut answer = String::new();
        rd.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }

    #[test]
    fn chunked_framing_table() {
        let end_of = |body: &[u8]| {
            let mut c = Chunked::START;
            for (i, b) in body.iter().enumerate() {
                match c.step(*b) {
                    Step::More(n) => c = n,
                    Step::End => return Some(i + 1),
                    Step::Invalid => return None,
                }
            }
            Some(usize::MAX)
        };
        assert_eq!(end_of(b"0\r\n\r\nNEXT"), Some(5));
        assert_eq!(end_of(b"A\r\n0123456789\r\n0\r\n\r\n"), Some(20));
        assert_eq!(end_of(b"1;ext\r\nx\r\n0\r\nTrailer: v\r\n\r\nX"), Some(27));
        assert_eq!(end_of(b"2\r\nab"), Some(usize::MAX), "incomplete");
        assert_eq!(end_of(b"zz\r\n"), None);
        assert_eq!(end_of(b"\r\n"), None);
        assert_eq!(end_of(b"11111111111111111\r\n"), None, "over 16 hex digits");
    }
}
