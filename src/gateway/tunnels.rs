//! Opens the tunnel of a switched handshake: waits for the client side, runs
//! [`crate::tunnel::run`] in its own task, tracked by shutdown, and logs it when it closes.
//! Carrier-neutral: each front hands over its client side as a future of a [`Leg`].

use std::future::Future;
use std::sync::Arc;

use super::Conn;
use crate::access::AccessRecord;
use crate::h2_watch::OpenStreams;
use crate::limits::ConnPermit;
use crate::tunnel::{self, Leg, TunnelConfig};
use crate::upstream::ServerLease;

impl Conn {
    /// Spawns the tunnel between `client` (resolving once the front has written our 101/200
    /// and handed over its stream; `None` when the client went away first) and `upstream`.
    /// `stream_permit`: an h2 tunnel stream's own connection slot.
    pub(super) fn open_tunnel<F>(
        &self,
        client: F,
        upstream: Leg,
        lease: ServerLease,
        stream_permit: Option<ConnPermit>,
        rec: &AccessRecord,
    ) where
        F: Future<Output = Option<Leg>> + Send + 'static,
    {
        let mut rec = rec.clone();
        let gateway = Arc::clone(&self.gateway);
        let permit = Arc::clone(&self.permit);
        // An open tunnel keeps its h2 connection from being closed as idle.
        let open = self.streams.as_ref().map(OpenStreams::open);
        let tracked = gateway.shutdown.track();
        let active = gateway
            .metrics
            .tunnel_opened(rec.route_label(), rec.subprotocol.as_deref().unwrap_or(""));
        let cfg = TunnelConfig {
            idle_timeout: self.runtime.config.limits.idle_timeout,
            // Live, process-wide: /metrics shows the bytes of open tunnels too.
            counters: Some(gateway.metrics.tunnel_counters()),
            inspect: None,
            max_lifetime: None,
        };
        rec.status = if self.carrier.extended_connect() {
            200
        } else {
            101
        };
        rec.handshake = rec.started.elapsed();
        let task = async move {
            // Held while the tunnel runs. `tracked` outlives the access event, so a drain never
            // exits before the tunnel is logged; the rest is released before it, so the event
            // says the connection slot and metrics are already updated.
            let _tracked = tracked;
            let held = (permit, stream_permit, open, active, lease);
            let Some(client) = client.await else {
                return;
            };
            let outcome = tunnel::run(
                client,
                upstream,
                &cfg,
                std::future::pending(),
                gateway.shutdown.expired(),
            )
            .await;
            gateway.metrics.tunnel_closed(outcome.duration);
            drop(held);
            rec.log_tunnel(&outcome);
        };
        // Not instrumented with the connection's span: the access event names the client
        // itself, and a span would stay allocated for the tunnel's whole life and be entered
        // on every wakeup.
        tokio::spawn(task);
    }
}
