//! Rigs shared by the tunnel's unit tests: loopback TCP pairs, in-memory duplex pairs, and a
//! tunnel running between two of them.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Engine, Leg, TunnelConfig, TunnelOutcome, run};

/// The engines of opaque tunnels, which the tests of plain byte streams run on.
pub(super) const OPAQUE: [Engine; 2] = [Engine::Splice, Engine::Buffered];

/// Bound on every wall-clock test.
pub(super) const LIMIT: Duration = Duration::from_secs(30);

/// A connected loopback pair: (the application's end, the gateway's end).
pub(super) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (app.unwrap(), accepted.unwrap().0)
}

/// A tunnel running in its own task, and the applications at both of its ends.
pub(super) struct Rig<S> {
    pub(super) client_app: S,
    pub(super) upstream_app: S,
    pub(super) tunnel: JoinHandle<TunnelOutcome>,
}

/// Starts a tunnel between two loopback pairs; `drain` fires when its sender sends. For
/// `Engine::Splice` the legs are plain TCP legs (the pick then splices, on Linux), for
/// `Engine::Buffered` the same sockets as boxed stream legs (always buffered).
pub(super) async fn rig(
    engine: Engine,
    client_early: &'static [u8],
    upstream_early: &'static [u8],
    cfg: TunnelConfig,
    drain: oneshot::Receiver<()>,
) -> Rig<TcpStream> {
    let (client_app, client_gw) = tcp_pair().await;
    let (upstream_app, upstream_gw) = tcp_pair().await;
    let client = leg(engine, client_gw, client_early);
    let upstream = leg(engine, upstream_gw, upstream_early);
    let tunnel = tokio::spawn(async move {
        run(
            client,
            upstream,
            &cfg,
            std::future::pending(),
            drain_on(drain),
        )
        .await
    });
    Rig {
        client_app,
        upstream_app,
        tunnel,
    }
}

/// A leg over `stream` that `engine` will run: a plain TCP leg (the pick then splices, on
/// Linux) or the same socket as a boxed stream leg (always buffered).
pub(super) fn leg(engine: Engine, stream: TcpStream, early: &'static [u8]) -> Leg {
    match engine {
        Engine::Splice => Leg::tcp(stream, Bytes::from_static(early)),
        Engine::Buffered | Engine::Inspect => Leg::stream(stream, Bytes::from_static(early)),
    }
}

/// Starts a tunnel between two in-memory pairs (stream legs, no early bytes), for tests on
/// tokio's paused clock; `drain` is the drain future itself.
pub(super) fn duplex_rig<D>(cfg: TunnelConfig, drain: D) -> Rig<DuplexStream>
where
    D: Future<Output = ()> + Send + 'static,
{
    let (client_app, client_gw) = tokio::io::duplex(1024);
    let (upstream_app, upstream_gw) = tokio::io::duplex(1024);
    let client = Leg::stream(client_gw, Bytes::new());
    let upstream = Leg::stream(upstream_gw, Bytes::new());
    let tunnel =
        tokio::spawn(
            async move { run(client, upstream, &cfg, std::future::pending(), drain).await },
        );
    Rig {
        client_app,
        upstream_app,
        tunnel,
    }
}

/// The drain future for `rx`: completes when its sender sends; a dropped sender means never.
pub(super) async fn drain_on(rx: oneshot::Receiver<()>) {
    if rx.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A drain signal that never fires.
pub(super) fn no_drain() -> oneshot::Receiver<()> {
    oneshot::channel().1
}

pub(super) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Writes `data` in random-sized pieces, then half-closes.
pub(super) async fn write_in_pieces<W: AsyncWrite + Unpin>(mut w: W, data: Vec<u8>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rest = &data[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=65_536).min(rest.len());
        w.write_all(&rest[..n]).await.unwrap();
        rest = &rest[n..];
    }
    w.shutdown().await.unwrap();
}

pub(super) async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.unwrap();
    v
}

/// Bound on every test on tokio's paused clock. Virtual time: a stuck test jumps straight to it.
pub(super) const PAUSED_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);
