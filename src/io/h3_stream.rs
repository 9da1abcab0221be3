//! One HTTP/3 request stream as a byte stream (SPEC §12, RFC 9220 §3): after the 200, the
//! tunnel's bytes are the payloads of DATA frames both ways. The client's FIN is the read EOF
//! and our write shutdown is our FIN (half-close as in §5); a reset by the client (RESET_STREAM
//! or STOP_SENDING) is `ConnectionReset`, and dropping the stream before both directions ended
//! cleanly resets it, so an upstream reset reaches the client as a stream reset.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::Code;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The server side of an HTTP/3 request stream over quinn.
pub(crate) type H3RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Most bytes one `poll_write` puts into a DATA frame: each write copies its slice once, and
/// the frame should stay well inside the stream's flow-control window.
const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// An h3 request stream whose headers are done, read and written as plain bytes.
pub(crate) struct H3Stream {
    stream: H3RequestStream,
    /// The rest of the last DATA payload read, not yet handed to the reader.
    unread: Bytes,
    /// A DATA frame has been queued and is still being flushed into QUIC.
    flushing: bool,
    read_done: bool,
    write_done: bool,
}

impl H3Stream {
    pub(crate) fn new(stream: H3RequestStream) -> Self {
        H3Stream {
            stream,
            unread: Bytes::new(),
            flushing: false,
            read_done: false,
            write_done: false,
        }
    }

    /// Drives a queued DATA frame into the QUIC stream.
    fn poll_flushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.flushing {
            ready!(self.stream.poll_send_data(cx, &mut None)).map_err(gone)?;
            self.flushing = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// For the tunnel every stream or connection error means the client side went away
/// (`closed_by=client`), as for an h2 stream.
fn gone(e: h3::error::StreamError) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
}

impl AsyncRead for H3Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.stream.poll_recv_data(cx)).map_err(gone)? {
                Some(mut data) => this.unread = data.copy_to_bytes(data.remaining()),
                None => this.read_done = true,
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H3Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_flushed(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_FRAME_PAYLOAD);
        // The frame is taken only once QUIC can accept it; until then nothing is written and
        // the caller retries with the same bytes.
        let mut frame = Some(Bytes::copy_from_slice(&data[..n]));
        match this.stream.poll_send_data(cx, &mut frame) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(gone(e))),
            Poll::Pending if frame.is_none() => {
                this.flushing = true;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flushed(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flushed(cx))?;
        if !self.write_done {
            ready!(self.stream.poll_finish(cx)).map_err(gone)?;
            self.write_done = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H3Stream {
    /// A stream not ended both ways is reset (RFC 9114 §4.1.1): quinn would otherwise finish a
    /// dropped send side, and a FIN would tell the client the tunnel ended cleanly.
    fn drop(&mut self) {
        if !self.write_done {
            self.stream.stop_stream(Code::H3_REQUEST_CANCELLED);
        }
        if !self.read_done {
            self.stream.stop_sending(Code::H3_REQUEST_CANCELLED);
        }
    }
}
