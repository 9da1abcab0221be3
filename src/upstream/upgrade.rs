//! The HTTP/1.1 upgrade client: one upgrade request head out on a fresh connection, one answer
//! head in (SPEC §4). Checking a 101's headers is the pure [`crate::handshake`]'s job; this file
//! only tells a 101 (the connection is now the tunnel's) from anything else (relayed).
//!
//! The exchange is written by hand rather than through hyper's client: it is one head out and
//! one head in, and `httparse` reads the answer exactly, inline in the handshake's task, with no
//! client connection task, no upgrade channel and no second buffer to recover afterwards. What
//! the upstream sent behind its 101 head stays in our buffer and becomes the leg's early bytes;
//! nothing the client sends is forwarded before that 101 has been read (the smuggling guard).
//! A refused answer's body is relayed by [`RelayBody`], framed as RFC 9112 §6.3 says.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::pool::ServerLease;
use crate::error::{Reject, UpstreamFault};
use crate::head::MAX_HEADERS;
use crate::io::UpstreamStream;

/// The largest answer head read (status line and headers); a longer one is no valid answer.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// How much is read at a time, for the head and for a relayed body.
const READ_CHUNK: usize = 8 * 1024;

/// What an upstream answered to the upgrade request.
pub(crate) enum Answer<S = UpstreamStream> {
    /// 101: the head, the connection, and the bytes the upstream sent right after its head.
    Switched {
        head: http::response::Parts,
        io: S,
        early: Bytes,
        lease: ServerLease,
    },
    /// Anything else, relayed to the client and never tunnelled.
    Refused(Response<RelayBody<S>>),
}

/// Sends `request` on `io`, a fresh connection to the lease's server of the pool `upstream`, and
/// waits at most `timeout` for the answer head. Nothing is retried: the request may have reached
/// the upstream.
pub(crate) async fn send<S>(
    mut io: S,
    lease: ServerLease,
    request: Request<()>,
    timeout: Duration,
    upstream: &str,
) -> Result<Answer<S>, Reject>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        io.write_all(&request_head(&request)).await?;
        io.flush().await?;
        read_answer(&mut io).await
    };
    let (head, rest) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(Reject::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(upstream, server = %lease.server().label, error = %e, "upstream handshake failed");
            return Err(Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse));
        }
        Ok(Ok(answer)) => answer,
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        // An empty slice would still pin the whole read buffer for the tunnel's life.
        let early = if rest.is_empty() {
            Bytes::new()
        } else {
            rest.freeze()
        };
        return Ok(Answer::Switched {
            head,
            io,
            early,
            lease,
        });
    }
    let framing = Framing::of(&request, &head).ok_or_else(|| {
        tracing::debug!(upstream, server = %lease.server().label, "upstream answer with an invalid Content-Length");
        Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse)
    })?;
    let body = RelayBody {
        io,
        buf: rest,
        framing,
    };
    Ok(Answer::Refused(Response::from_parts(head, body)))
}

/// The request head as HTTP/1.1 puts it on the wire (RFC 9112 §3): origin-form target, the
/// header fields in the map's order. The request never has a body.
fn request_head(request: &Request<()>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256 + request.headers().len() * 48);
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads the final answer head (interim 1xx answers other than 101 are skipped, RFC 9110
/// §15.2); returns it and the bytes read past it.
async fn read_answer<S>(io: &mut S) -> io::Result<(http::response::Parts, BytesMut)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if let Some((len, head)) = parse_answer(&buf)? {
            buf.advance(len);
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok((head, buf));
        }
        if buf.len() >= MAX_ANSWER_HEAD {
            return Err(invalid("answer head too large"));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(READ_CHUNK);
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One parse of `buf`: `None` until the head is complete.
fn parse_answer(buf: &[u8]) -> io::Result<Option<(usize, http::response::Parts)>> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(e)),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(invalid)?;
        let value = HeaderValue::from_bytes(h.value).map_err(invalid)?;
        headers.append(name, value);
    }
    let mut head = Response::new(()).into_parts().0;
    head.status = status;
    head.version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    head.headers = headers;
    Ok(Some((len, head)))
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How a relayed answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a HEAD request's answer, 1xx, 204 or 304.
    Empty,
    /// `Content-Length`: this many bytes remain.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`, at this step.
    Chunked(Chunk),
    /// Neither: the body runs until the upstream closes.
    UntilClose,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes remain.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) until the empty line.
    Trailers,
}

impl Framing {
    /// `None`: a `Content-Length` that is not one number (RFC 9112 §6.3 item 5: unrecoverable).
    fn of(request: &Request<()>, head: &http::response::Parts) -> Option<Framing> {
        let status = head.status;
        if request.method() == http::Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Some(Framing::Empty);
        }
        if let Some(te) = head.headers.get_all(TRANSFER_ENCODING).iter().next_back() {
            let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
            return Some(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            });
        }
        // Several fields or a list are fine when every element is the same number.
        let mut length = None;
        for value in head.headers.get_all(CONTENT_LENGTH) {
            for part in value.as_bytes().split(|&b| b == b',') {
                let digits = part.trim_ascii();
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        }
        Some(length.map_or(Framing::UntilClose, Framing::Length))
    }
}

/// The body of a refused answer, read from the upstream connection as the client takes it; the
/// connection closes when the body is done or dropped.
pub(crate) struct RelayBody<S = UpstreamStream> {
    io: S,
    /// Bytes read from `io` and not yet passed on.
    buf: BytesMut,
    framing: Framing,
}

impl<S: AsyncRead + Unpin> RelayBody<S> {
    /// Reads more into `buf`; `Ok(false)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let mut read = ReadBuf::new(&mut self.buf[start..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.buf.truncate(start + n);
        ready!(polled)?;
        Poll::Ready(Ok(n > 0))
    }

    /// Takes up to `max` buffered bytes as one data chunk.
    fn take(&mut self, max: u64) -> Bytes {
        let n = usize::try_from(max).map_or(self.buf.len(), |m| m.min(self.buf.len()));
        self.buf.split_to(n).freeze()
    }

    /// The next data chunk, `None` at the body's end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match self.framing {
                Framing::Empty | Framing::Length(0) => return Poll::Ready(Ok(None)),
                Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) if !self.buf.is_empty() => {
                    let data = self.take(n);
                    let left = n - data.len() as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
                        _ => Framing::Chunked(Chunk::Data(left)),
                    };
                    return Poll::Ready(Ok(Some(data)));
                }
                Framing::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Ok(Some(self.take(u64::MAX))));
                }
                Framing::UntilClose => {
                    if !ready!(self.poll_fill(cx))? {
                        self.framing = Framing::Empty;
                    }
                    continue;
                }
                Framing::Chunked(step) => {
                    if let Some(next) = self.chunk_step(step)? {
                        self.framing = next;
                        continue;
                    }
                }
                Framing::Length(_) => {}
            }
            // The framing needs more bytes than are buffered; the upstream must send them.
            if !ready!(self.poll_fill(cx))? {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Moves a chunked body on from `step` over what is buffered; `None`: more bytes needed.
    fn chunk_step(&mut self, step: Chunk) -> io::Result<Option<Framing>> {
        Ok(match step {
            Chunk::Size => match httparse::parse_chunk_size(&self.buf)
                .map_err(|_| invalid("bad chunk size"))?
            {
                httparse::Status::Partial => None,
                httparse::Status::Complete((len, 0)) => {
                    self.buf.advance(len);
                    Some(Framing::Chunked(Chunk::Trailers))
                }
                httparse::Status::Complete((len, size)) => {
                    self.buf.advance(len);
                    Some(Framing::Chunked(Chunk::Data(size)))
                }
            },
            Chunk::Data(_) => None,
            Chunk::DataEnd if self.buf.len() < 2 => None,
            Chunk::DataEnd if self.buf.starts_with(b"\r\n") => {
                self.buf.advance(2);
                Some(Framing::Chunked(Chunk::Size))
            }
            Chunk::DataEnd => return Err(invalid("chunk data not followed by CRLF")),
            Chunk::Trailers => {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                self.buf.advance(eol + 2);
                Some(if eol == 0 {
                    Framing::Empty
                } else {
                    Framing::Chunked(Chunk::Trailers)
                })
            }
        })
    }
}

impl<S: AsyncRead + Unpin> Body for RelayBody<S> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match ready!(this.poll_data(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::config::Balance;
    use crate::upstream::pool::tests::pool;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn lease() -> ServerLease {
        ServerLease::new(Arc::clone(&pool(Balance::RoundRobin, 1).servers()[0]))
    }

    fn request() -> Request<()> {
        Request::get("/ws?x=1")
            .header("host", "gw.test")
            .header("upgrade", "tcp")
            .header("connection", "Upgrade")
            .body(())
            .unwrap()
    }

    /// The upstream end of an in-memory connection: reads the request head, hands it back,
    /// then writes `answer` and, unless `close`, stays open.
    fn upstream(
        answer: &'static [u8],
        close: bool,
    ) -> (DuplexStream, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if theirs.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = head_tx.send(head);
            let _ = theirs.write_all(answer).await;
            if close {
                drop(theirs);
            } else {
                std::future::pending::<()>().await;
            }
        });
        (ours, head_rx)
    }

    async fn answer(answer: &'static [u8], close: bool) -> Result<Answer<DuplexStream>, Reject> {
        send(upstream(answer, close).0, lease(), request(), TIMEOUT, "p").await
    }

    /// The relayed body of `answer` (which must be refused), or the error that ended it.
    async fn relayed(answer_bytes: &'static [u8]) -> Result<Vec<u8>, io::Error> {
        let Ok(Answer::Refused(res)) = answer(answer_bytes, true).await else {
            panic!("not refused: {:?}", String::from_utf8_lossy(answer_bytes));
        };
        Ok(res.into_body().collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn the_request_head_goes_out_as_http_1_1() {
        let (io, head) = upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", true);
        let got = send(io, lease(), request(), TIMEOUT, "p").await;
        assert!(matches!(got, Ok(Answer::Refused(_))));
        assert_eq!(
            String::from_utf8(head.await.unwrap()).unwrap(),
            "GET /ws?x=1 HTTP/1.1\r\nhost: gw.test\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_101_switches_and_keeps_the_bytes_after_its_head() {
        let got = answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\nearly",
            false,
        )
        .await;
        let Ok(Answer::Switched { head, early, .. }) = got else {
            panic!("not switched");
        };
        assert_eq!(head.headers["upgrade"], "tcp");
        assert_eq!(&early[..], b"early");
    }

    #[tokio::test]
    async fn interim_answers_before_the_101_are_skipped() {
        let got = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\n\r\n",
            false,
        )
        .await;
        assert!(matches!(got, Ok(Answer::Switched { .. })));
    }

    #[tokio::test]
    async fn other_statuses_are_refused_for_relaying() {
        let got = answer(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let Ok(Answer::Refused(res)) = got else {
            panic!("not refused");
        };
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(res.body().is_end_stream());
    }

    /// Each framing of RFC 9112 §6.3 relays exactly the body, and nothing behind it.
    #[tokio::test]
    async fn refused_bodies_are_relayed_as_framed() {
        #[rustfmt::skip]
        let rows: &[(&[u8], &[u8])] = &[
            (b"HTTP/1.1 403 F\r\nContent-Length: 5\r\n\r\nhello+extra", b"hello"),
            (b"HTTP/1.1 403 F\r\nContent-Length: 5, 5\r\n\r\nhello", b"hello"),
            (b"HTTP/1.1 403 F\r\nContent-Length: 0\r\n\r\nextra", b""),
            (b"HTTP/1.1 204 N\r\n\r\nextra", b""),
            (b"HTTP/1.1 403 F\r\n\r\nuntil the end", b"until the end"),
            (b"HTTP/1.1 403 F\r\nTransfer-Encoding: gzip\r\n\r\nraw", b"raw"),
            (b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\nextra", b"hello world"),
            (b"HTTP/1.1 403 F\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
        ];
        for (answer, body) in rows {
            let got = relayed(answer).await;
            assert_eq!(
                got.ok().as_deref(),
                Some(*body),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// A body cut short or malformed ends the relay with an error (hyper then closes the client
    /// connection), never with a body that looks complete.
    #[tokio::test]
    async fn broken_bodies_end_in_an_error() {
        #[rustfmt::skip]
        let rows: &[&[u8]] = &[
            b"HTTP/1.1 403 F\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        ];
        for answer in rows {
            assert!(
                relayed(answer).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn transport_faults_are_typed() {
        let bad = Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse);
        // (answer, close after it)
        #[rustfmt::skip]
        let rows: &[(&[u8], bool)] = &[
            (b"not http at all\r\n\r\n", false),
            (b"", true),
            (b"HTTP/1.1 101 Switching", true),
            (b"HTTP/1.1 403 F\r\nContent-Length: 5, 6\r\n\r\n", false),
            (b"HTTP/1.1 403 F\r\nContent-Length: -1\r\n\r\n", false),
        ];
        for (bytes, close) in rows {
            let bytes: &'static [u8] = bytes;
            let got = answer(bytes, *close).await;
            assert_eq!(
                got.err().as_ref(),
                Some(&bad),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_is_a_timeout() {
        let got = answer(b"", false).await;
        assert_eq!(got.err(), Some(Reject::UpstreamTimeout));
    }
}
