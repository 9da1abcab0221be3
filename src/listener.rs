//! Accept loops: admission (connection limits), TLS, the first request head, then hyper for
//! HTTP/1.1 or h2. Each connection runs in its own task inside a span naming the client.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::access::AccessRecord;
use crate::error::{Carrier, Reject};
use crate::gateway::{Conn, Gateway};
use crate::head::{self, HeadError};
use crate::io::Rewind;

/// Binds `addr`; the error names the address and the OS error (exit code 1 in `main`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Accepts connections until the gateway starts draining.
pub async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, gateway: Arc<Gateway>) {
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = gateway.shutdown.draining() => return,
        };
        let (tcp, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener itself is fine.
                tracing::warn!(listener = %local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = crate::sockopt::tune(&tcp) {
            tracing::debug!(client = %client, error = %e, "cannot set TCP options");
        }
        let span = tracing::info_span!("conn", client = %client, listener = %local);
        tokio::spawn(
            serve_connection(tcp, client, tls.clone(), Arc::clone(&gateway)).instrument(span),
        );
    }
}

async fn serve_connection(
    tcp: TcpStream,
    client: SocketAddr,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
) {
    let _tracked = gateway.shutdown.track();
    let runtime = gateway.runtime();
    let limits = &runtime.config.limits;
    let admitted = gateway.limiter.admit(
        client.ip(),
        limits.max_connections,
        limits.max_connections_per_ip,
    );
    let handshake_timeout = limits.handshake_timeout;
    let Some(acceptor) = tls else {
        let permit = match admitted {
            Ok(p) => p,
            Err(reject) => return answer_and_close(tcp, &reject, &gateway, client).await,
        };
        let conn = Conn {
            gateway,
            runtime,
            client,
            tls: false,
            carrier: Carrier::Http1,
            permit: Arc::new(permit),
        };
        return serve_http1(tcp, Arc::new(conn)).await;
    };
    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let permit = match admitted {
        Ok(p) => p,
        // h2 answers a refused connection as its first stream's answer; the h2 issue adds that path.
        Err(reject) => return answer_and_close(stream, &reject, &gateway, client).await,
    };
    let carrier = if h2 { Carrier::Http2 } else { Carrier::Http1 };
    let conn = Arc::new(Conn {
        gateway,
        runtime,
        client,
        tls: true,
        carrier,
        permit: Arc::new(permit),
    });
    if h2 {
        serve_h2(stream, conn).await
    } else {
        serve_http1(stream, conn).await
    }
}

/// HTTP/1.1: our own read of the first head (exact 431 and handshake timeout), then hyper with
/// upgrades, replaying the bytes already read.
async fn serve_http1<S>(mut io: S, conn: Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &conn.runtime.config.limits;
    let (max_header_bytes, handshake_timeout) = (limits.max_header_bytes, limits.handshake_timeout);
    let shutdown = conn.gateway.shutdown.clone();
    let read = tokio::select! {
        read = head::read_head(&mut io, max_header_bytes, handshake_timeout) => read,
        () = shutdown.draining() => return,
    };
    let head = match read {
        Ok(head) => head.freeze(),
        Err(HeadError::Closed) => return,
        Err(HeadError::Reject(reject)) => {
            return answer_and_close(io, &reject, &conn.gateway, conn.client).await;
        }
    };
    let service = service_fn(move |req| Arc::clone(&conn).handle(req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size((max_header_bytes + 4096).max(8192))
        .max_headers(head::MAX_HEADERS);
    let connection = builder
        .serve_connection(TokioIo::new(Rewind::new(head, io)), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        () = shutdown.draining() => {
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
}

/// h2 (ALPN `h2` on a TLS listener), with RFC 8441 extended CONNECT.
async fn serve_h2<S>(io: S, conn: Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_header_bytes = conn.runtime.config.limits.max_header_bytes;
    let shutdown = conn.gateway.shutdown.clone();
    let service = service_fn(move |req| Arc::clone(&conn).handle(req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        () = shutdown.draining() => {
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Answers a failure the gateway detects before hyper runs (limits, oversized or malformed head),
/// then closes without a reset: write, half-close, and read what the client still sends for a
/// short while (RFC 9112 §9.6) so the answer is not destroyed in flight.
async fn answer_and_close<S>(mut io: S, reject: &Reject, gateway: &Gateway, client: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let response = reject.response(Carrier::Http1);
    let status = response.status().as_u16();
    gateway.metrics.handshake(crate::metrics::NO_ROUTE, status);
    AccessRecord::new(client, "HTTP/1.1").log_handshake(status);
    if io.write_all(&serialize(&response)).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0usize;
        while let Ok(n @ 1..) = io.read(&mut sink).await {
            total += n;
            if total > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

/// An HTTP/1.1 response as bytes, for answers written before hyper owns the connection.
fn serialize(response: &http::Response<Bytes>) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + response.body().len());
    let status = response.status();
    out.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in response.headers() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("content-length: {}\r\n\r\n", response.body().len()).as_bytes());
    out.put_slice(response.body());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_answer_is_a_complete_http1_response() {
        let bytes = serialize(&Reject::TooManyConnections.response(Carrier::Http1));
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 1\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
