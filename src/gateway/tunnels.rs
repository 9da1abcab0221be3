//! Opens the tunnel of a switched handshake: waits for the client side, runs
//! [`crate::tunnel::run`] in its own task, tracked by shutdown, and logs it when it closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::Instrument;

use super::Conn;
use crate::access::AccessRecord;
use crate::tunnel::{self, TunnelConfig};
use crate::upstream::ServerLease;

impl Conn {
    /// Runs the tunnel once hyper hands over the client side (after our 101/200 is written).
    pub(super) fn open_tunnel(
        &self,
        client_upgrade: OnUpgrade,
        upstream_io: Upgraded,
        lease: ServerLease,
        rec: &AccessRecord,
    ) {
        let mut rec = rec.clone();
        let gateway = Arc::clone(&self.gateway);
        let permit = Arc::clone(&self.permit);
        let tracked = gateway.shutdown.track();
        let active = gateway
            .metrics
            .tunnel_opened(rec.route_label(), rec.subprotocol.as_deref().unwrap_or(""));
        let cfg = TunnelConfig {
            idle_timeout: self.runtime.config.limits.idle_timeout,
            // Live, process-wide: /metrics shows the bytes of open tunnels too.
            counters: Some(gateway.metrics.tunnel_counters()),
        };
        let h2 = self.carrier.extended_connect();
        rec.status = if h2 { 200 } else { 101 };
        rec.handshake = rec.started.elapsed();
        let task = async move {
            // Held while the tunnel runs. `tracked` outlives the access event, so a drain never
            // exits before the tunnel is logged; the rest is released before it, so the event
            // says the connection slot and metrics are already updated.
            let _tracked = tracked;
            let held = (permit, active, lease);
            let client_io = match client_upgrade.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "client went away before the tunnel opened");
                    return;
                }
            };
            let (upstream_io, expired) = (TokioIo::new(upstream_io), gateway.shutdown.expired());
            // hyper has already delivered both sides' early bytes through `Upgraded` itself.
            let outcome = if h2 {
                let client_io = H2ClientStream(TokioIo::new(client_io));
                tunnel::run(
                    client_io,
                    Bytes::new(),
                    upstream_io,
                    Bytes::new(),
                    &cfg,
                    expired,
                )
                .await
            } else {
                let client_io = TokioIo::new(client_io);
                tunnel::run(
                    client_io,
                    Bytes::new(),
                    upstream_io,
                    Bytes::new(),
                    &cfg,
                    expired,
                )
                .await
            };
            gateway.metrics.tunnel_closed(outcome.duration);
            drop(held);
            rec.log_tunnel(&outcome);
        };
        tokio::spawn(task.in_current_span());
    }
}

/// The client side of an h2 tunnel: one stream. hyper reports the client resetting it
/// (RST_STREAM, RFC 9113 §6.4) or losing its connection as `ErrorKind::Other`; for the tunnel
/// that is the client going away, so it is passed on as `ConnectionReset` (`closed_by=client`).
struct H2ClientStream(TokioIo<Upgraded>);

fn stream_gone(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::Other {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        e
    }
}

impl AsyncRead for H2ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(stream_gone)
    }
}

impl AsyncWrite for H2ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write(cx, data)
            .map_err(stream_gone)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(stream_gone)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx).map_err(stream_gone)
    }
}
