//! One end of a tunnel as the engines see it: a connected stream plus its early bytes.
//!
//! Early bytes are what was already read past a handshake head (hyper's read buffer, the
//! listener's replayed head buffer); they belong to the tunnel and must reach the other side
//! before anything read from the stream. A [`Leg`] owns both, so they cannot be separated.
//!
//! The two variants exist for the engines: a plain [`TcpStream`] is kept as its concrete type so
//! that a `splice(2)` engine can reach the raw sockets of a TCP-TCP pair, while everything else
//! (TLS, an h2 stream, anything a test builds) is one boxed [`ByteStream`].
//!
//! Why a box and not an enum of the concrete stream types: the concrete types are hyper's,
//! rustls' and the gateway's (`Upgraded`, `TlsStream`, the h2 stream adapter), and an enum of
//! them would make this module know HTTP and TLS. The box costs one allocation per leg, only for
//! non-TCP legs (a boxed upstream TLS stream is reused as is), and a vtable call per read or
//! write of up to a whole copy buffer, which is noise next to the TLS or h2 work behind it.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Any connected byte stream a tunnel can drive with a generic engine.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// One end of a tunnel: a connected stream and the bytes already read past its handshake head.
pub(crate) enum Leg {
    /// A plain TCP socket: engines that work on file descriptors can take it.
    Tcp { stream: TcpStream, early: Bytes },
    /// Any other stream (TLS, an h2 stream, ...), driven through its async I/O traits.
    Stream {
        stream: Box<dyn ByteStream>,
        early: Bytes,
    },
}

impl Leg {
    /// A plain TCP leg.
    pub(crate) fn tcp(stream: TcpStream, early: Bytes) -> Self {
        Leg::Tcp { stream, early }
    }

    /// A leg over any stream; boxes it (use [`Leg::tcp`] for a plain `TcpStream`).
    pub(crate) fn stream<S: ByteStream + 'static>(stream: S, early: Bytes) -> Self {
        Leg::Stream {
            stream: Box::new(stream),
            early,
        }
    }

    /// Splits the leg for an engine that works on any stream.
    pub(super) fn into_io(self) -> (LegIo, Bytes) {
        match self {
            Leg::Tcp { stream, early } => (Either::Left(stream), early),
            Leg::Stream { stream, early } => (Either::Right(stream), early),
        }
    }
}

impl std::fmt::Debug for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, early) = match self {
            Leg::Tcp { early, .. } => ("tcp", early),
            Leg::Stream { early, .. } => ("stream", early),
        };
        f.debug_struct("Leg")
            .field("kind", &kind)
            .field("early_bytes", &early.len())
            .finish()
    }
}

/// A leg's stream without its early bytes, as one type, so a generic engine is compiled once
/// for every pair of legs; a TCP leg costs a branch per call instead of a box.
pub(super) type LegIo = Either<TcpStream, Box<dyn ByteStream>>;
