//! Accept loops: admission (connection limits), TLS, the first request head, then hyper for
//! HTTP/1.1 or h2. Each connection runs in its own task inside a span naming the client.

use std::convert::Infallible;

use std::io;
use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::access::AccessRecord;
use crate::config::Limits;
use crate::error::{Carrier, Reject};
use crate::gateway::{Conn, Gateway, ProxyBody};
use crate::h1_gate::{Refusals, RequestGate};
use crate::h2_watch::{Idle, OpenStreams};
use crate::head::{self, HeadError};
use crate::io::WriteStall;
use crate::proxy_protocol::{self, ProxiedAddrs};

/// Binds `addr`; the error names the address and the OS error (exit code 1 in `main`). The
/// listener carries the TCP options its accepted connections inherit ([`crate::sockopt`]).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    if let Err(e) = crate::sockopt::tune_listener(&listener) {
        tracing::warn!(listener = %addr, error = %e, "cannot set TCP options on the listener");
    }
    Ok(listener)
}

/// Serves an inherited listening socket (systemd socket activation) as if `bind` had made it:
/// non-blocking, registered with the runtime, with the same TCP options.
pub(crate) fn adopt(socket: std::net::TcpListener) -> io::Result<TcpListener> {
    socket.set_nonblocking(true)?;
    let listener = TcpListener::from_std(socket)?;
    if let Err(e) = crate::sockopt::tune_listener(&listener) {
        tracing::warn!(error = %e, "cannot set TCP options on the inherited listener");
    }
    Ok(listener)
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub(crate) addr: SocketAddr,
    pub(crate) source: io::Error,
}

/// The next connection on `listener`. Accept errors (EMFILE and friends) are logged and retried
/// after a short pause instead of spinning: the listener itself is fine.
pub(crate) async fn accept(listener: &TcpListener, local: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = %local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a listener's accept loop applies to every connection it accepts.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    /// Every connection must start with a PROXY v1/v2 header (SPEC §7).
    pub(crate) proxy_protocol: bool,
    /// TLS: a request's host must be the SNI name (SPEC §3, 421).
    pub(crate) strict_sni: bool,
    /// The `Alt-Svc` value of a listener that also serves HTTP/3 (SPEC §12).
    pub(crate) alt_svc: Option<HeaderValue>,
}

/// Accepts connections until the gateway starts draining.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ConnSettings,
    gateway: Arc<Gateway>,
) {
    let bound = listener.local_addr().ok();
    let local = bound.map_or_else(|| "?".to_owned(), |a| a.to_string());
    // On a listener bound to one address every accepted socket's local end is that address, so
    // no `getsockname` per connection; a wildcard listener must ask each socket.
    let fixed_local = bound.filter(|a| !a.ip().is_unspecified());
    loop {
        let (tcp, client) = tokio::select! {
            accepted = accept(&listener, &local) => accepted,
            () = gateway.shutdown.draining() => return,
        };
        let span = tracing::info_span!("conn", client = %client, listener = %local);
        tokio::spawn(
            serve_connection(
                tcp,
                client,
                fixed_local,
                tls.clone(),
                settings.clone(),
                Arc::clone(&gateway),
            )
            .instrument(span),
        );
    }
}

/// `fixed_local`: the local address every connection of this listener has, when it is known
/// without asking the socket.
async fn serve_connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    fixed_local: Option<SocketAddr>,
    tls: Option<TlsAcceptor>,
    settings: ConnSettings,
    gateway: Arc<Gateway>,
) {
    let ConnSettings {
        proxy_protocol,
        strict_sni,
        alt_svc,
    } = settings;
    let _tracked = gateway.shutdown.track();
    let runtime = gateway.runtime();
    let limits = &runtime.config.limits;
    // SPEC §2: one budget from accept for the PROXY header, the TLS handshake and the first
    // request head (h2: its first HEADERS), so stages cannot each take a full timeout.
    let deadline = Instant::now() + limits.handshake_timeout;
    // The PROXY header comes before admission so that limits count the real client (SPEC §6, §7).
    let Some(ProxiedAddrs {
        source: client,
        destination: local,
    }) = connection_addrs(&mut tcp, peer, fixed_local, proxy_protocol, deadline).await
    else {
        return;
    };
    let admitted = gateway
        .limiter
        .admit(client.ip(), limits, std::time::Instant::now());
    let Some(acceptor) = tls else {
        let permit = match admitted {
            Ok(p) => p,
            Err(reject) => return answer_and_close(tcp, &reject, &gateway, client).await,
        };
        let conn = Conn {
            gateway,
            runtime,
            client,
            local,
            tls: false,
            sni: None,
            carrier: Carrier::H1,
            permit: Arc::new(permit),
            streams: None,
            alt_svc: None,
        };
        return serve_http1(tcp, Arc::new(conn), deadline).await;
    };
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let permit = match admitted {
        Ok(p) => p,
        // SPEC §6: on h2 the refusal is the first stream's answer, then GOAWAY.
        Err(reject) if h2 => {
            return refuse_h2(stream, reject, gateway, client, deadline).await;
        }
        Err(reject) => return answer_and_close(stream, &reject, &gateway, client).await,
    };
    let carrier = if h2 { Carrier::H2 } else { Carrier::H1 };
    let sni = strict_sni
        .then(|| stream.get_ref().1.server_name())
        .flatten()
        .map(crate::handshake::sni_name);
    let streams = h2.then(OpenStreams::default);
    let conn = Arc::new(Conn {
        gateway,
        runtime,
        client,
        local,
        tls: true,
        sni,
        carrier,
        permit: Arc::new(permit),
        streams: streams.clone(),
        alt_svc,
    });
    match streams {
        Some(streams) => serve_h2(stream, conn, streams, deadline).await,
        None => serve_http1(stream, conn, deadline).await,
    }
}

/// The client connection's two ends: the socket's, or on a `proxy_protocol` listener the ones its
/// PROXY header names (a header without addresses keeps the socket's). `None`: no valid header in
/// time; the connection is closed without an answer (SPEC §7).
async fn connection_addrs(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    fixed_local: Option<SocketAddr>,
    proxy_protocol: bool,
    deadline: Instant,
) -> Option<ProxiedAddrs> {
    let local = fixed_local.unwrap_or_else(|| tcp.local_addr().unwrap_or(peer));
    let socket = ProxiedAddrs {
        source: peer,
        destination: local,
    };
    if !proxy_protocol {
        return Some(socket);
    }
    match proxy_protocol::read_header(tcp, deadline).await {
        Ok(Some(addrs)) => {
            tracing::debug!(source = %addrs.source, "PROXY header");
            Some(addrs)
        }
        Ok(None) => Some(socket),
        Err(e) => {
            tracing::debug!(error = %e, "closing: no valid PROXY header");
            None
        }
    }
}

/// HTTP/1.1: our own read of the first head (exact 431, within the handshake `deadline`), then
/// hyper with upgrades behind a [`RequestGate`], which replays the bytes already read and checks
/// every later keep-alive head before hyper sees it; a refused one is answered by the gateway
/// once hyper has finished the response in flight. Later heads must start and finish within
/// `keepalive_timeout` (hyper's header timer runs from the end of the previous response).
async fn serve_http1<S>(io: S, conn: Arc<Conn>, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &conn.runtime.config.limits;
    let (max_header_bytes, keepalive_timeout) = (limits.max_header_bytes, limits.keepalive_timeout);
    let mut io = WriteStall::new(io, limits.idle_timeout);
    let shutdown = conn.gateway.shutdown.clone();
    let read = tokio::select! {
        read = head::read_head(&mut io, max_header_bytes, deadline) => read,
        () = drain_before_first_request(&shutdown, None) => return,
    };
    let head = match read {
        Ok(head) => head,
        Err(HeadError::Closed) => return,
        Err(HeadError::Reject(reject)) => {
            return answer_and_close(io, &reject, &conn.gateway, conn.client).await;
        }
    };
    let (gateway, client) = (Arc::clone(&conn.gateway), conn.client);
    // Set when hyper hands the first request to the service: from then on a graceful shutdown
    // answers it before closing; before, hyper would take the connection for idle.
    let (first_tx, first_rx) = tokio::sync::watch::channel(false);
    let service = service_fn(move |req| {
        first_tx.send_replace(true);
        Arc::clone(&conn).handle(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(keepalive_timeout)
        .max_buf_size((max_header_bytes + 4096).max(8192))
        .max_headers(head::MAX_HEADERS);
    let refusals = Arc::new(Refusals::default());
    let gate = RequestGate::after_head(io, head, max_header_bytes, Arc::clone(&refusals));
    let connection = builder
        .serve_connection(TokioIo::new(gate), service)
        .with_upgrades();
    tokio::pin!(connection);
    // A drain lets the request in flight finish and closes after its response; so does a
    // refused head, whose answer the gate writes as hyper closes.
    let refused = tokio::select! {
        result = connection.as_mut() => return log_connection_end(result),
        () = drain_before_first_request(&shutdown, Some(first_rx)) => None,
        reject = refusals.refused() => Some(reject),
    };
    if let Some(reject) = refused {
        let status = reject.status().as_u16();
        gateway.metrics.handshake(crate::metrics::NO_ROUTE, status);
        AccessRecord::new(client, "HTTP/1.1").log_handshake(status);
    }
    connection.as_mut().graceful_shutdown();
    log_connection_end(connection.await);
}

/// Completes when a drain should close a connection that has not had its first request answered:
/// at once on SIGTERM/SIGINT, but after a SIGUSR2 hand-over only once that request (h2: stream)
/// is in hyper's hands (`first`; `None`: its head is still being read, bounded by the handshake
/// deadline). The client of a hand-over connected to a socket that is still served and expects
/// its answer, which only this process can give (SPEC §11: nothing refused or reset).
async fn drain_before_first_request(
    shutdown: &crate::shutdown::Shutdown,
    first: Option<tokio::sync::watch::Receiver<bool>>,
) {
    shutdown.draining().await;
    if !shutdown.is_handed_over() {
        return;
    }
    match first {
        // A dropped sender (the service is gone) ends the wait too.
        Some(mut first) => drop(first.wait_for(|taken| *taken).await),
        None => std::future::pending().await,
    }
}

/// Initial per-stream receive window (RFC 9113 §6.9.2): what one tunnel's client may send ahead
/// of its upstream reading it. 256 KiB keeps a WebSocket stream fast on ordinary round-trip
/// times while bounding what a stalled upstream leaves buffered in the gateway.
const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// Initial connection receive window (RFC 9113 §6.9): a multiple of [`H2_STREAM_WINDOW`], so
/// that up to 16 streams whose upstreams stopped reading cannot stall the other streams of the
/// connection, and the most a connection can make the gateway buffer inbound (4 MiB).
const H2_CONNECTION_WINDOW: u32 = 16 * H2_STREAM_WINDOW;

/// Most bytes queued per stream towards a client that is not reading (its window closed): the
/// tunnel stops reading that stream's upstream once this is full, so a slow reader costs
/// bounded memory and pushes back on its own upstream only.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// Streams a client may reset before the server took them, at any moment (h2's own default,
/// named here because it is the rapid-reset defence).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the server may reset for the client's protocol errors on one connection (hyper's
/// default, RUSTSEC-2024-0003).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The h2 server settings every TLS listener offers. No keep-alive PINGs: each tunnel has its
/// own `idle_timeout`, and WebSocket endpoints ping end to end.
fn h2_builder(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
        .enable_connect_protocol()
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // Each stream can be a tunnel with its own upstream connection (RFC 9113 §6.5.2).
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        // Also what bounds CONTINUATION: h2 answers a header block over 4x this, or more than
        // 5 CONTINUATION frames at this size, with GOAWAY(ENHANCE_YOUR_CALM).
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // CVE-2023-44487: more streams than this reset by the client before they were served
        // is GOAWAY(ENHANCE_YOUR_CALM); slower loops meet `h2_flood`'s RST_STREAM count.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        // Streams the gateway had to reset for the client's errors, per connection.
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    builder
}

/// How long an idle h2 connection has, after its GOAWAY, to let a stream that raced it finish
/// opening before it is closed anyway; a stream open after that keeps it up until it ends.
const H2_GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// h2 (ALPN `h2` on a TLS listener), with RFC 8441 extended CONNECT. SPEC §6 "h2 limits": the
/// first request's HEADERS must arrive by the handshake `deadline` (else the connection is
/// dropped), a connection without open streams for `keepalive_timeout` is shut down (GOAWAY),
/// and control-frame floods end it ([`crate::h2_flood`]).
async fn serve_h2<S>(io: S, conn: Arc<Conn>, streams: OpenStreams, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = h2_builder(&conn.runtime.config.limits);
    let io = WriteStall::new(io, conn.runtime.config.limits.idle_timeout);
    let keepalive = conn.runtime.config.limits.keepalive_timeout;
    let shutdown = conn.gateway.shutdown.clone();
    let service_streams = streams.clone();
    // As for HTTP/1.1: a hand-over's drain waits for the first stream before its GOAWAY, since
    // hyper closes a connection still in its preface at once.
    let (first_tx, first_rx) = tokio::sync::watch::channel(false);
    let service = service_fn(move |req| {
        first_tx.send_replace(true);
        // Counted from the stream's HEADERS until its response body has gone out (a tunnel
        // holds its own guard, see `Conn::open_tunnel`).
        let open = service_streams.open();
        let response = Arc::clone(&conn).handle(req);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| {
                body.map_frame(move |frame| {
                    let _open = &open;
                    frame
                })
                .boxed()
            }))
        }
    });
    let io = crate::h2_flood::FloodGuard::new(io);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let why = tokio::select! {
        result = connection.as_mut() => return log_connection_end(result),
        () = drain_before_first_request(&shutdown, Some(first_rx)) => {
            connection.as_mut().graceful_shutdown();
            return log_connection_end(connection.await);
        }
        why = streams.idle(deadline, keepalive) => why,
    };
    if why == Idle::NoRequest {
        return tracing::debug!("closing h2 connection: no request within the handshake budget");
    }
    tracing::debug!("closing h2 connection: no open stream for keepalive_timeout");
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        _ = streams.idle(Instant::now(), H2_GOAWAY_GRACE) => {
            tracing::debug!("h2 connection not closed by the client after GOAWAY");
        }
    }
}

/// Refuses an h2 connection over a connection limit (SPEC §6): the first stream gets `reject`'s
/// answer, then the connection is shut down gracefully (GOAWAY, RFC 9113 §6.8). The whole
/// exchange is bounded by `deadline` (a client that sends no request is dropped after it).
async fn refuse_h2<S>(
    io: S,
    reject: Reject,
    gateway: Arc<Gateway>,
    client: SocketAddr,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2_builder(&gateway.runtime().config.limits);
    let answered = Arc::new(Notify::new());
    let signal = Arc::clone(&answered);
    let service = service_fn(move |_req| {
        let response = reject.response(Carrier::H2);
        let status = response.status().as_u16();
        gateway.metrics.handshake(crate::metrics::NO_ROUTE, status);
        AccessRecord::new(client, "HTTP/2").log_handshake(status);
        // Dropped with the body, i.e. once the whole answer has been handed to h2.
        let sent = AnswerSent(Arc::clone(&signal));
        let response: Response<ProxyBody> = response.map(move |body| {
            Full::new(body)
                .map_frame(move |frame| {
                    let _sent = &sent;
                    frame
                })
                .map_err(|e| match e {})
                .boxed()
        });
        std::future::ready(Ok::<_, Infallible>(response))
    });
    builder.max_concurrent_streams(1);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let refuse = async {
        tokio::select! {
            result = connection.as_mut() => return log_connection_end(result),
            () = answered.notified() => {}
        }
        connection.as_mut().graceful_shutdown();
        log_connection_end(connection.await);
    };
    if tokio::time::timeout_at(deadline, refuse).await.is_err() {
        tracing::debug!("refused h2 connection not answered and closed in time");
    }
}

/// Wakes [`refuse_h2`] when dropped together with the answer's body.
struct AnswerSent(Arc<Notify>);

impl Drop for AnswerSent {
    fn drop(&mut self) {
        self.0.notify_one();
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
    let response = reject.response(Carrier::H1);
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

/// An HTTP/1.1 response as bytes, for answers written outside hyper.
pub(crate) fn serialize(response: &http::Response<Bytes>) -> Bytes {
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

    /// What the accept path relies on instead of tuning each connection (see `sockopt`).
    #[tokio::test]
    async fn accepted_connections_come_with_the_tcp_options() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, (accepted, _)) =
            tokio::join!(TcpStream::connect(addr), accept(&listener, "t"));
        let _dialed = dialed.unwrap();
        assert!(accepted.nodelay().unwrap());
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.keepalive_time().unwrap(),
            crate::sockopt::KEEPALIVE_IDLE
        );
    }

    #[test]
    fn serialized_answer_is_a_complete_http1_response() {
        let bytes = serialize(&Reject::TooManyConnections.response(Carrier::H1));
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
