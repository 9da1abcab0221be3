//! TCP options for both hops of every connection: the accepted client socket and the socket the
//! gateway dials to an upstream. One place, so that both sides of a tunnel behave the same.
//!
//! On Linux an accepted socket inherits `TCP_NODELAY` and the keepalive settings from its
//! listening socket (the kernel clones the listener's socket state), so the client side is
//! tuned once per listener ([`tune_listener`]) and not with five `setsockopt` calls per
//! connection; a dialed socket has nothing to inherit from and is tuned each time ([`tune`]).

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

/// First keepalive probe after this long without traffic: 60 s. Short enough that a peer that
/// vanished without a FIN or RST (power loss, a NAT or firewall that forgot the flow) is noticed
/// in minutes rather than the kernel default of two hours, and well under the 5 min default
/// `idle_timeout`, so a NAT on the path keeps the mapping of an open tunnel.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Between unanswered keepalive probes: 10 s.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes before the kernel resets the connection: 6, so a dead peer is detected
/// about 2 minutes (60 s + 6 x 10 s) after its last sign of life. The tunnel then sees the error
/// and closes the other side (SPEC §5).
pub(crate) const KEEPALIVE_RETRIES: u32 = 6;

/// Applies the gateway's TCP options to a connected socket:
/// - `TCP_NODELAY`: a tunnel forwards WebSocket frames as they come; Nagle's algorithm would hold
///   back small frames waiting for an ACK (RFC 896) and add latency to every interactive message;
/// - `SO_KEEPALIVE` with [`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_RETRIES`]
///   (RFC 1122 §4.2.3.6), so dead peers do not hold tunnels, file descriptors and connection
///   slots forever when `idle_timeout = "0s"`.
pub(crate) fn tune(tcp: &TcpStream) -> io::Result<()> {
    apply(SockRef::from(tcp))
}

/// The same options on a listening socket, for every connection it accepts to inherit.
pub(crate) fn tune_listener(listener: &TcpListener) -> io::Result<()> {
    apply(SockRef::from(listener))
}

fn apply(sock: SockRef<'_>) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_tuned(tcp: &TcpStream) {
        let sock = SockRef::from(tcp);
        assert!(tcp.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }

    #[tokio::test]
    async fn sets_nodelay_and_keepalive_on_a_dialed_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let dialed = dialed.unwrap();
        let (accepted, _) = accepted.unwrap();
        assert!(
            !accepted.nodelay().unwrap(),
            "an untuned listener passes nothing on"
        );
        tune(&dialed).unwrap();
        assert_tuned(&dialed);
    }

    /// The claim the accept path relies on: an accepted socket inherits the listener's options.
    #[tokio::test]
    async fn an_accepted_socket_inherits_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tune_listener(&listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let _dialed = dialed.unwrap();
        let (accepted, _) = accepted.unwrap();
        assert_tuned(&accepted);
    }
}
