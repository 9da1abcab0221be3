//! Reads the first HTTP/1 request head of a connection ourselves, before hyper sees it, so that
//! SPEC §3's first row is exact: a head over `max_header_bytes` gets a full 431 answer (hyper's own
//! would have no body), and a client that does not finish its head within `handshake_timeout` is
//! cut off. Nothing is consumed: the bytes read are handed back to be replayed to hyper.
//!
//! The buffer is parsed again only when a read brings a line end (and after the first read,
//! so that garbage is refused at once): a head sent a byte at a time costs one parse per line,
//! at most [`MAX_HEADERS`] of them, instead of one per byte.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::error::Reject;

/// Most header lines accepted in one head; hyper is configured with the same number.
pub(crate) const MAX_HEADERS: usize = 256;

/// Why no head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Answer this and close.
    Reject(Reject),
    /// The client went away, sent nothing in time, or the socket failed: close without a word.
    Closed,
}

/// A complete, checked request head at the start of `bytes` (which may hold early bytes after
/// it), with what the check learnt, so that nobody parses it again to find its end.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) bytes: BytesMut,
    pub(crate) len: usize,
    pub(crate) framing: Framing,
}

/// Reads until one complete request head is buffered (it may be followed by early bytes) and
/// returns everything read; a head not complete by `deadline` closes the connection.
pub(crate) async fn read_head<S>(
    io: &mut S,
    max_bytes: usize,
    deadline: Instant,
) -> Result<Head, HeadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096.min(max_bytes + 1));
    let read_all = async {
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let start = buf.len();
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(HeadError::Closed),
                Ok(_) => {}
            }
            if start > 0 && buf.len() <= max_bytes && !buf[start..].contains(&b'\n') {
                continue;
            }
            match check_buffered(&buf, max_bytes) {
                Ok(Some(checked)) => return Ok(checked),
                Ok(None) => continue,
                Err(reject) => return Err(HeadError::Reject(reject)),
            }
        }
    };
    match tokio::time::timeout_at(deadline, read_all).await {
        Ok(Ok((len, framing))) => Ok(Head {
            bytes: buf,
            len,
            framing,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HeadError::Closed),
    }
}

/// How the body of a checked request is delimited (RFC 9112 §6.3), for the keep-alive gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` (0 without a body).
    Length(u64),
    Chunked,
    /// The request asks for an upgrade (or is a CONNECT): what follows may be another protocol.
    Upgrade,
}

/// The complete head at the start of `buf`, checked: its length and body framing, `None` while
/// it is incomplete and within `max_bytes`, or the refusal (431 over the limit or 256 lines,
/// 400 malformed or ambiguous framing).
pub(crate) fn check_buffered(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<(usize, Framing)>, Reject> {
    let too_large = Reject::HeadTooLarge { limit: max_bytes };
    // Uninitialised header slots: a zeroed array of 256 would be written on every parse.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => {
            Ok(Some((len, check_framing(&req)?)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= max_bytes => Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(too_large),
        Err(_) => Err(Reject::MalformedHead),
    }
}

/// What hyper would refuse in a head httparse accepts, refused here so that the answer is the
/// gateway's own 400 (text body, `Connection: close`, metric and log; SPEC §3): a target that
/// is not a URI, `Transfer-Encoding` on HTTP/1.0 or without `chunked` last (RFC 9112 §6.3), and
/// a `Content-Length` that is not a number or differs between lines (RFC 9112 §6.3 item 5), and
/// both at once.
/// These are also the ambiguities request smuggling is built from.
fn check_framing(req: &httparse::Request<'_, '_>) -> Result<Framing, Reject> {
    let path = req.path.unwrap_or_default();
    if http::Uri::try_from(path).is_err() {
        return Err(Reject::MalformedHead);
    }
    let http10 = req.version == Some(0);
    let mut upgrade = req.method == Some("CONNECT");
    let mut length: Option<u64> = None;
    let mut chunked_last = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if http10 {
                return Err(Reject::MalformedHead);
            }
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // A line may repeat one value as a list ("5, 5"), as hyper accepts.
            for v in h.value.split(|b| *b == b',') {
                let v = v.trim_ascii();
                let n = (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten()
                    .ok_or(Reject::MalformedHead)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Reject::MalformedHead);
                }
                length = Some(n);
            }
        }
    }
    // RFC 9112 §6.1: both framings at once "ought to be handled as an error" by a proxy; it is
    // the classic CL.TE desync.
    if chunked_last == Some(false) || (chunked_last.is_some() && length.is_some()) {
        return Err(Reject::MalformedHead);
    }
    Ok(if upgrade {
        Framing::Upgrade
    } else if chunked_last.is_some() {
        Framing::Chunked
    } else {
        Framing::Length(length.unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// httparse alone, as the reference the properties compare with.
    fn head_len(buf: &[u8]) -> Result<Option<usize>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        Ok(match req.parse(buf)? {
            httparse::Status::Complete(n) => Some(n),
            httparse::Status::Partial => None,
        })
    }

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    async fn feed(chunks: &[&[u8]], max: usize) -> Result<BytesMut, HeadError> {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        drop(client);
        read_head(&mut server, max, in_ms(5000))
            .await
            .map(|h| h.bytes)
    }

    #[tokio::test]
    async fn complete_head_is_returned_with_early_bytes() {
        let got = feed(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\nEARLY"], 1024)
            .await
            .unwrap();
        assert_eq!(&got[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\nEARLY");
    }

    #[tokio::test]
    async fn table_of_failures() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
        let many: String = (0..300).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let rows: [(&str, &[u8], usize, Option<u16>); 5] = [
            ("over the limit, complete", big.as_bytes(), 1024, Some(431)),
            (
                "over the limit, incomplete",
                &big.as_bytes()[..3000],
                1024,
                Some(431),
            ),
            ("too many header lines", many.as_bytes(), 1 << 20, Some(431)),
            ("garbage", b"\x16\x03\x01\x00\xff\r\n\r\n", 1024, Some(400)),
            ("eof before the end", b"GET / HTTP/1.1\r\n", 1024, None),
        ];
        for (name, input, max, want) in rows {
            match (feed(&[input], max).await, want) {
                (Err(HeadError::Reject(r)), Some(s)) => assert_eq!(r.status(), s, "{name}"),
                (Err(HeadError::Closed), None) => {}
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn framing_hyper_would_refuse_is_ours_to_answer() {
        let ok: &[&str] = &[
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for head in ok {
            assert!(feed(&[head.as_bytes()], 4096).await.is_ok(), "{head}");
        }
        let bad: &[&str] = &[
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET http:// HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for head in bad {
            match feed(&[head.as_bytes()], 4096).await {
                Err(HeadError::Reject(Reject::MalformedHead)) => {}
                other => panic!("{head}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = read_head(&mut server, 1024, in_ms(20)).await;
        assert!(matches!(r, Err(HeadError::Closed)));
    }

    /// A head dripped a byte at a time is found at its last byte, with nothing lost, and
    /// garbage in the very first read is refused before any line end arrives.
    #[tokio::test]
    async fn byte_at_a_time_and_early_garbage() {
        let head = b"GET /x HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        let (mut client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in head {
                client.write_all(&[*b]).await.unwrap();
            }
            client
        });
        let got = read_head(&mut server, 1024, in_ms(5000)).await.unwrap();
        assert_eq!(&got.bytes[..], head);
        assert_eq!((got.len, got.framing), (head.len(), Framing::Length(0)));
        drop(writer.await.unwrap());
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"\x16\x03\x01\x02\x00\x01").await.unwrap();
        let r = read_head(&mut server, 1024, in_ms(5000)).await;
        assert!(
            matches!(r, Err(HeadError::Reject(Reject::MalformedHead))),
            "{r:?}"
        );
    }

    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out one chunk per read (split if the read buffer is smaller), then EOF: read
    /// boundaries chosen by the test, which a duplex would coalesce.
    struct Chunked(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// `input` cut at `cuts` (sorted, deduplicated, inside it), read with a `max` limit.
    fn read_chunked(input: &[u8], cuts: &[usize], max: usize) -> Result<BytesMut, HeadError> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut chunks = std::collections::VecDeque::new();
        let mut start = 0;
        for end in at.into_iter().chain([input.len()]) {
            if end > start {
                chunks.push_back(input[start..end].to_vec());
                start = end;
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(read_head(&mut Chunked(chunks), max, in_ms(60_000)))
            .map(|h| h.bytes)
    }

    proptest! {
        /// A valid head with early bytes, however the reads cut it: found, nothing lost, and the
        /// returned bytes are the stream's prefix from the head's start.
        #[test]
        fn head_is_found_whatever_the_reads(
            lines in proptest::collection::vec(("[A-Za-z-]{1,10}", "[ -~]{0,30}"), 0..12),
            early in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let mut head = b"GET /ws HTTP/1.1\r\n".to_vec();
            for (n, v) in &lines {
                head.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            let mut input = head.clone();
            input.extend_from_slice(&early);
            let got = read_chunked(&input, &cuts, 8192).unwrap();
            prop_assert!(got.len() >= head.len());
            prop_assert_eq!(&got[..], &input[..got.len()]);
            prop_assert_eq!(head_len(&got), Ok(Some(head.len())));
        }

        /// Any bytes, any reads, any limit: a typed answer consistent with httparse on the
        /// whole input — never a head that is not one, never EOF past a complete head.
        #[test]
        fn arbitrary_bytes_give_typed_answers(
            input in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
            max in 16usize..400,
        ) {
            match read_chunked(&input, &cuts, max) {
                Ok(buf) => {
                    prop_assert_eq!(&buf[..], &input[..buf.len()]);
                    prop_assert!(matches!(head_len(&buf), Ok(Some(n)) if n <= max));
                }
                Err(HeadError::Reject(r)) => {
                    prop_assert!(matches!(r.status().as_u16(), 400 | 431), "{r:?}");
                }
                Err(HeadError::Closed) => {
                    prop_assert!(input.len() <= max);
                    prop_assert!(!matches!(head_len(&input), Ok(Some(_))));
                }
            }
        }
    }
}
