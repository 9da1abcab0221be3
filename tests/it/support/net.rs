//! Addresses with a known misbehaviour: one that refuses connects, one where a connect hangs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// An address nothing listens on: bound to learn a free port, then released, so a connect is
/// refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// An address where a TCP connect hangs: a listener with backlog 0 whose accept queue is already
/// full, so Linux drops further SYNs. Keep the guard alive as long as the address is used.
pub fn stalled_addr() -> (StalledAddr, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into()).expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        // In progress or refused: either way the queue fills up.
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    (
        StalledAddr {
            _sockets: std::iter::once(listener).chain(fillers).collect(),
        },
        addr,
    )
}

/// Keeps a [`stalled_addr`] stalled.
pub struct StalledAddr {
    _sockets: Vec<socket2::Socket>,
}

/// Waits up to `within` until connects to `addr` are refused (a closed upstream's listener is
/// really gone), so that a test does not race the close.
pub async fn wait_refused(addr: SocketAddr, within: Duration) {
    let wait = async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    if tokio::time::timeout(within, wait).await.is_err() {
        panic!("{addr} still accepts connections after {within:?}");
    }
}
