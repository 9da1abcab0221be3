//! HTTP/3 on a TLS listener with `http3 = true` (SPEC §12): the UDP socket at the listener's
//! address, the QUIC endpoint on it, and per QUIC connection what `listener` does per TCP one:
//! admission, the TLS handshake within the handshake budget, the SNI name for `strict_sni`, then
//! the HTTP/3 connection whose request streams go to `gateway::h3_front`.
//!
//! Connection life (SPEC §12 "QUIC limits"): QUIC keep-alive PINGs run on every connection and
//! its `max_idle_timeout` is `keepalive_timeout`, so only a peer that stopped answering is
//! dropped by QUIC itself; a connection without open streams is closed here after
//! `keepalive_timeout` (GOAWAY, then CONNECTION_CLOSE), while open tunnels keep it up and end by
//! their own `idle_timeout`. A drain sends GOAWAY and closes each connection once its last
//! stream (tunnels included) has ended.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access::AccessRecord;
use crate::config::Limits;
use crate::error::{Carrier, Reject};
use crate::gateway::{Conn, Gateway};
use crate::h2_watch::OpenStreams;
use crate::tls::{ServerTls, TlsError};

/// RFC 9114 §8.1: H3_NO_ERROR, the code of a graceful CONNECTION_CLOSE.
const H3_NO_ERROR: u32 = 0x100;

/// Unidirectional streams a client may open: its control stream, the two QPACK streams
/// (RFC 9204 §4.2), and room for grease or extension streams the gateway ignores.
const MAX_UNI_STREAMS: u32 = 16;

/// The longest gap between QUIC keep-alive PINGs: below the 30 s idle timeout browsers offer,
/// so a connection with an open but silent tunnel survives the client's idle timer too.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(10);

/// Receive window per request stream: what one tunnel's client may send ahead of its upstream
/// reading it (as h2's stream window, see `listener`).
const STREAM_WINDOW: u32 = 256 * 1024;

/// Receive window per connection: 16 stream windows, so up to 16 stalled upstreams cannot stall
/// the other streams, and the most one connection makes the gateway buffer inbound (4 MiB).
/// quinn's default would be unbounded.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// Unacknowledged bytes the gateway keeps in flight towards one client, across its streams: a
/// client that stops reading pushes back on its tunnels' upstreams once this is full.
const SEND_WINDOW: u64 = 4 * 1024 * 1024;

/// How long an idle connection has after its GOAWAY before it is closed anyway, so a request
/// that raced the GOAWAY can still be answered.
const GOAWAY_GRACE: Duration = Duration::from_millis(200);

/// How long an h3 connection of the old process lives on after a hand-over (SPEC §12): long
/// enough for an inspected tunnel's close handshake, short enough that clients reconnect to
/// the new process at once.
const HAND_OVER_GRACE: Duration = Duration::from_secs(1);

/// `h3=":PORT"`: the `Alt-Svc` value (RFC 7838 §3) announcing HTTP/3 on the same host, at
/// `port` (the listener's real port, also when configured as `:0`).
pub(crate) fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\""))
        .expect("digits and quotes are a valid header value")
}

/// Binds the UDP socket of an `http3` listener at `addr`.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(addr)
}

/// The QUIC server settings of a listener: its certificates (`tls`, TLS 1.3, ALPN h3) and the
/// transport limits from `[limits]`.
pub(crate) fn server_config(tls: &ServerTls, limits: &Limits) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::with_crypto(Arc::new(tls.quic()?));
    let mut transport = TransportConfig::default();
    transport
        // SPEC §12: at most `h2_max_concurrent_streams` bidirectional (request) streams.
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.h2_max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .max_idle_timeout(idle_timeout(limits.keepalive_timeout))
        .keep_alive_interval(Some(ping_interval(limits.keepalive_timeout)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// `keepalive_timeout` as QUIC's `max_idle_timeout` (RFC 9000 §10.1); none when it is zero or
/// beyond what QUIC can carry.
fn idle_timeout(keepalive: Duration) -> Option<IdleTimeout> {
    if keepalive.is_zero() {
        return None;
    }
    IdleTimeout::try_from(keepalive).ok()
}

/// A third of the idle timeout, so two PINGs may be lost before either side gives up.
fn ping_interval(keepalive: Duration) -> Duration {
    (keepalive / 3).clamp(Duration::from_millis(50), MAX_PING_INTERVAL)
}

/// The QUIC endpoint serving `socket` with `config`.
pub(crate) fn endpoint(socket: std::net::UdpSocket, config: ServerConfig) -> io::Result<Endpoint> {
    socket.set_nonblocking(true)?;
    Endpoint::new(
        EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Accepts QUIC connections on `endpoint` until the gateway starts draining.
pub(crate) async fn accept_loop(endpoint: Endpoint, strict_sni: bool, gateway: Arc<Gateway>) {
    let local = endpoint.local_addr().ok();
    let listener = local.map_or_else(|| "?".to_owned(), |a| a.to_string());
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = gateway.shutdown.draining() => return,
        };
        let Some(incoming) = incoming else {
            return tracing::debug!(listener = %listener, "QUIC endpoint closed");
        };
        let client = incoming.remote_address();
        let span = tracing::info_span!("conn", client = %client, listener = %listener, http = "3");
        let gateway = Arc::clone(&gateway);
        tokio::spawn(serve_connection(incoming, local, strict_sni, gateway).instrument(span));
    }
}

/// One QUIC connection, from its Initial packet to its close.
async fn serve_connection(
    incoming: quinn::Incoming,
    local: Option<SocketAddr>,
    strict_sni: bool,
    gateway: Arc<Gateway>,
) {
    let _tracked = gateway.shutdown.track();
    let runtime = gateway.runtime();
    let limits = &runtime.config.limits;
    let deadline = Instant::now() + limits.handshake_timeout;
    let client = incoming.remote_address();
    let local = match (incoming.local_ip(), local) {
        (Some(ip), Some(l)) => SocketAddr::new(ip, l.port()),
        (None, Some(l)) => l,
        (_, None) => client,
    };
    // SPEC §12: the §3 connection limits per QUIC connection, as for a TCP one.
    let admitted = gateway
        .limiter
        .admit(client.ip(), limits, std::time::Instant::now());
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => return tracing::debug!(error = %e, "QUIC connection not accepted"),
    };
    let quic = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return tracing::debug!(error = %e, "QUIC handshake failed"),
        Err(_) => return tracing::debug!("QUIC handshake timed out"),
    };
    let mut builder = h3::server::builder();
    builder
        // RFC 9220 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
        .enable_extended_connect(true)
        .max_field_section_size(u64::try_from(limits.max_header_bytes).unwrap_or(u64::MAX));
    let built = builder.build(h3_quinn::Connection::new(quic.clone()));
    let mut h3 = match tokio::time::timeout_at(deadline, built).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/3 connection setup failed"),
        Err(_) => return tracing::debug!("HTTP/3 connection setup timed out"),
    };
    let permit = match admitted {
        Ok(p) => p,
        Err(reject) => return refuse(h3, quic, reject, &gateway, client, deadline).await,
    };
    let sni = strict_sni
        .then(|| server_name(&quic))
        .flatten()
        .map(|name| crate::handshake::sni_name(&name));
    let streams = OpenStreams::default();
    let header_timeout = limits.handshake_timeout;
    let keepalive = limits.keepalive_timeout;
    let shutdown = gateway.shutdown.clone();
    let conn = Arc::new(Conn {
        gateway,
        runtime: Arc::clone(&runtime),
        client,
        local,
        tls: true,
        sni,
        carrier: Carrier::H3,
        permit: Arc::new(permit),
        streams: Some(streams.clone()),
        alt_svc: None,
    });
    // SPEC §12: a connection without streams is closed after keepalive_timeout, the first
    // request included (it may not take longer than the handshake budget either).
    let first_by = deadline.min(Instant::now() + keepalive);
    let mut going_away = false;
    // SPEC §12 with §11: QUIC connections cannot move to the new process, and the UDP socket is
    // now read by both, so after a hand-over they are closed: GOAWAY, a grace for the close
    // frames of inspected tunnels (sent at the drain's start) and their replies, then the close.
    let mut handed_over_by: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let open = streams.open();
                    let conn = Arc::clone(&conn);
                    tokio::spawn(async move {
                        let _open = open;
                        match tokio::time::timeout(header_timeout, resolver.resolve_request()).await {
                            Ok(Ok((req, stream))) => conn.handle_h3(req, stream).await,
                            // The h3 layer has answered (431) or reset the stream itself.
                            Ok(Err(e)) => tracing::debug!(error = %e, "h3 request not decoded"),
                            Err(_) => tracing::debug!("h3 request headers timed out"),
                        }
                    }.in_current_span());
                }
                Ok(None) => break tracing::debug!("h3 connection ended by the client's GOAWAY"),
                Err(e) => break tracing::debug!(error = %e, "h3 connection ended"),
            },
            () = shutdown.draining(), if !going_away => {
                going_away = true;
                if let Err(e) = h3.shutdown(0).await {
                    break tracing::debug!(error = %e, "GOAWAY not sent");
                }
                if shutdown.is_handed_over() {
                    handed_over_by = Some(Instant::now() + HAND_OVER_GRACE);
                }
            }
            () = tokio::time::sleep_until(handed_over_by.unwrap_or(first_by)), if handed_over_by.is_some() => {
                break tracing::debug!("closing h3 connection: handed over to a new process");
            }
            _ = streams.idle(first_by, keepalive), if !going_away => {
                tracing::debug!("closing h3 connection: no open stream for keepalive_timeout");
                let _ = h3.shutdown(0).await;
                going_away = true;
            }
            _ = streams.idle(Instant::now(), GOAWAY_GRACE), if going_away => {
                break tracing::debug!("closing h3 connection: GOAWAY sent and no stream left");
            }
        }
    }
    close(&quic).await;
}

/// Closes `quic` with H3_NO_ERROR once what was last sent (an answer, the GOAWAY) has had a few
/// round trips to be acknowledged, or at once when the client closes first: CONNECTION_CLOSE
/// discards any stream data still in flight (RFC 9000 §10.2). The h3 connection must outlive
/// this, since its control stream ending would be a connection error for the client.
async fn close(quic: &quinn::Connection) {
    let linger = (quic.rtt() * 3).max(GOAWAY_GRACE);
    let _ = tokio::time::timeout(linger, quic.closed()).await;
    quic.close(VarInt::from_u32(H3_NO_ERROR), b"");
}

/// The SNI name the client sent in the QUIC handshake.
fn server_name(quic: &quinn::Connection) -> Option<String> {
    quic.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .server_name
}

/// A QUIC connection over a connection limit (SPEC §12 as §6 for h2): its first request gets
/// `reject`'s answer, then GOAWAY and the close. Bounded by the handshake `deadline`.
async fn refuse(
    mut h3: h3::server::Connection<h3_quinn::Connection, bytes::Bytes>,
    quic: quinn::Connection,
    reject: Reject,
    gateway: &Gateway,
    client: SocketAddr,
    deadline: Instant,
) {
    let first = async {
        let resolver = h3.accept().await.ok()??;
        resolver.resolve_request().await.ok()
    };
    if let Ok(Some((_req, mut stream))) = tokio::time::timeout_at(deadline, first).await {
        let status = crate::gateway::reject_h3(&reject, &mut stream).await;
        gateway.metrics.handshake(crate::metrics::NO_ROUTE, status);
        AccessRecord::new(client, "HTTP/3").log_handshake(status);
    }
    let _ = tokio::time::timeout_at(deadline, h3.shutdown(0)).await;
    close(&quic).await;
}

/// A running `http3` listener: the endpoint (whose server settings a reload replaces) and its
/// accept loop.
#[derive(Debug)]
pub(crate) struct H3Listener {
    endpoint: Endpoint,
    /// A duplicate of the endpoint's UDP socket, kept where the TCP listeners keep theirs, so
    /// that a hand-over (SPEC §11) can pass it on.
    pub(crate) socket: std::net::UdpSocket,
    accept: JoinHandle<()>,
}

impl H3Listener {
    /// Serves QUIC on `socket` with `tls` and the current limits; logs `listening` with
    /// `kind = "h3"`.
    pub(crate) fn start(
        socket: std::net::UdpSocket,
        tls: &ServerTls,
        strict_sni: bool,
        gateway: &Arc<Gateway>,
    ) -> Result<H3Listener, H3Error> {
        let config = server_config(tls, &gateway.runtime().config.limits)?;
        let kept = socket.try_clone()?;
        let endpoint = endpoint(socket, config)?;
        let local = endpoint.local_addr()?;
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            strict_sni,
            Arc::clone(gateway),
        ));
        tracing::info!(event = "listening", addr = %local, kind = "h3", "listening (HTTP/3, UDP)");
        Ok(H3Listener {
            endpoint,
            socket: kept,
            accept,
        })
    }

    /// New QUIC connections get `tls`'s certificates, `strict_sni` and the current limits;
    /// open ones keep theirs.
    pub(crate) fn update(
        &mut self,
        tls: &ServerTls,
        strict_sni: bool,
        gateway: &Arc<Gateway>,
    ) -> Result<(), H3Error> {
        let config = server_config(tls, &gateway.runtime().config.limits)?;
        self.endpoint.set_server_config(Some(config));
        let accept = tokio::spawn(accept_loop(
            self.endpoint.clone(),
            strict_sni,
            Arc::clone(gateway),
        ));
        std::mem::replace(&mut self.accept, accept).abort();
        Ok(())
    }

    /// Stops taking new QUIC connections; open ones are not affected (a drain sends them
    /// GOAWAY itself).
    pub(crate) fn close(self) {
        self.accept.abort();
        self.endpoint.set_server_config(None);
        if let Ok(addr) = self.socket.local_addr() {
            tracing::info!(event = "listener_closed", addr = %addr, kind = "h3", "listener closed");
        }
    }
}

/// An `http3` listener that cannot be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H3Error {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("UDP socket: {0}")]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_port_only() {
        assert_eq!(alt_svc(8443), "h3=\":8443\"");
    }

    #[test]
    fn pings_come_three_times_per_idle_timeout_but_at_least_every_10s() {
        assert_eq!(
            ping_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(ping_interval(Duration::from_secs(600)), MAX_PING_INTERVAL);
        assert_eq!(ping_interval(Duration::ZERO), Duration::from_millis(50));
        assert!(idle_timeout(Duration::ZERO).is_none());
        assert!(idle_timeout(Duration::from_secs(60)).is_some());
    }
}
