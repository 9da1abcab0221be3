//! The hot path: moves bytes between an upgraded client and its upstream (SPEC §5).
//!
//! This module owns one thing: after the handshake succeeded, copy bytes verbatim both ways,
//! count them, propagate half-closes, and decide when the tunnel is over (both EOFs, a reset,
//! the idle deadline, or the drain deadline). It knows no HTTP, no TLS and no WebSocket framing;
//! the caller hands it two [`Leg`]s, each a connected stream plus the bytes already read past its
//! handshake head.
//!
//! Layout:
//!
//! - this file is the policy: [`run`] (early bytes first, idle deadline, drain, closing both
//!   legs, the [`TunnelOutcome`]) and the one place an engine is picked for a pair of legs;
//! - `leg.rs`: [`Leg`], plain TCP (for engines that need the raw socket) or any byte stream;
//! - `meter.rs`: byte counts and the last-activity time every engine reports to;
//! - `pool.rs`: the per-thread pool of copy buffers;
//! - `duplex.rs`: what the engines share: the two-direction driver, pump state, failures;
//! - one file per engine, each returning a `CopyEnd`: `splice.rs` (Linux) for a pair of plain
//!   TCP legs, `buffered.rs` for any legs, `inspect.rs` for any legs of a route with
//!   `inspect = true` (it follows WebSocket frames with `crate::ws`, SPEC §9).

mod buffered;
mod duplex;
mod inspect;
mod leg;
mod meter;
mod pool;
#[cfg(target_os = "linux")]
mod splice;
#[cfg(test)]
mod testing;

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::either::Either;

/// Defined with the frame follower; part of the tunnel's configuration and report.
pub(crate) use crate::ws::{CloseReason, Extensions};
pub(crate) use leg::Leg;
use leg::LegIo;
use meter::{Meter, Side};

/// How a tunnel behaves; built once by the caller from the validated config.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelConfig {
    /// End the tunnel after this long with no byte moving in either direction.
    /// `None` (config `"0s"`) means never; a zero duration is treated the same way.
    pub(crate) idle_timeout: Option<Duration>,
    /// Live counters bumped as bytes are delivered, for metrics read while tunnels run.
    /// One `ByteCounters` may be shared by many tunnels to get process-wide totals.
    pub(crate) counters: Option<ByteCounters>,
    /// Follow WebSocket frames as they pass (a route with `inspect = true`, SPEC §9);
    /// `None` keeps the opaque tunnel of §5.
    pub(crate) inspect: Option<InspectConfig>,
    /// This tunnel's age cap with its random share of `max_lifetime_jitter` already taken off
    /// (SPEC §5); `None` means no cap.
    pub(crate) max_lifetime: Option<Duration>,
}

/// What an inspected tunnel enforces (SPEC §9); built per tunnel from its route and its 101.
#[derive(Debug, Clone)]
pub(crate) struct InspectConfig {
    /// `max_message_bytes`: payload bytes of one data message as they travel; `None` = no limit.
    pub(crate) max_message_bytes: Option<u64>,
    /// `max_frame_bytes`: payload bytes of one data frame; `None` = no limit.
    pub(crate) max_frame_bytes: Option<u64>,
    /// `ping_interval`: ping a side silent this long; `None` = no keepalive pings.
    pub(crate) ping_interval: Option<Duration>,
    /// `ping_timeout`: how long a pinged side may stay silent before the tunnel ends.
    pub(crate) ping_timeout: Duration,
    /// `close_code`: the code of the close frames the gateway sends when it ends a tunnel.
    pub(crate) close_code: u16,
    /// The extensions the upstream accepted in its 101, which decide which RSV bits are legal.
    pub(crate) extensions: Extensions,
}

/// Why the gateway ends an inspected tunnel politely (close frames at frame boundaries, SPEC
/// §9); an opaque tunnel ignores these and lives until it ends or the drain deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoliteEnd {
    /// SIGTERM/SIGINT drain.
    Drain,
    /// A reload removed the tunnel's route or remapped its subprotocol to another upstream.
    Reload,
    /// The drain of the old process after a SIGUSR2 hand-over to a new one (SPEC §11).
    Restart,
}

impl PoliteEnd {
    /// The reason text of the gateway's close frames.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PoliteEnd::Drain | PoliteEnd::Reload => "going away",
            PoliteEnd::Restart => "restart",
        }
    }
}

/// What an inspected tunnel saw of the WebSocket conversation (SPEC §9 log fields and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WsReport {
    /// Data messages client -> upstream (a fragmented message counts once).
    pub(crate) messages_up: u64,
    /// Data messages upstream -> client.
    pub(crate) messages_down: u64,
    /// Frames client -> upstream, control frames included.
    pub(crate) frames_up: u64,
    /// Frames upstream -> client, control frames included.
    pub(crate) frames_down: u64,
    /// The tunnel's first close frame; `None` when it ended without one.
    pub(crate) close: Option<CloseSeen>,
}

/// The first close frame of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseSeen {
    /// Its status code; 1005 when the frame had none.
    pub(crate) code: u16,
    /// Its reason, raw (at most 123 bytes; not necessarily valid UTF-8).
    pub(crate) reason: CloseReason,
    /// Who sent it.
    pub(crate) initiator: Initiator,
}

/// Which side sent a tunnel's first close frame (`close_initiator`, SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Initiator {
    /// The client.
    Client,
    /// The upstream.
    Upstream,
    /// The gateway's own close frame came first (a limit, a violation, a polite ending).
    Gateway,
}

impl Initiator {
    /// The lowercase word used in logs and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Upstream => "upstream",
            Initiator::Gateway => "gateway",
        }
    }
}

/// Byte counters the metrics layer can read while tunnels run, and how many tunnels each engine
/// carried; cheap to clone (shared atomics).
#[derive(Debug, Clone, Default)]
pub(crate) struct ByteCounters {
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    splice_tunnels: Arc<AtomicU64>,
    buffered_tunnels: Arc<AtomicU64>,
    inspect_tunnels: Arc<AtomicU64>,
}

impl ByteCounters {
    /// Fresh counters at zero.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bytes delivered client -> upstream so far (`direction="client_to_upstream"`, SPEC §7).
    pub(crate) fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Bytes delivered upstream -> client so far (`direction="upstream_to_client"`, SPEC §7).
    pub(crate) fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// Tunnels started so far on `engine`.
    pub(crate) fn tunnels(&self, engine: Engine) -> u64 {
        self.engine_count(engine).load(Ordering::Relaxed)
    }

    fn engine_count(&self, engine: Engine) -> &AtomicU64 {
        match engine {
            Engine::Splice => &self.splice_tunnels,
            Engine::Buffered => &self.buffered_tunnels,
            Engine::Inspect => &self.inspect_tunnels,
        }
    }
}

/// Which copy engine carried a tunnel; the `engine` field of its access event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Engine {
    /// `splice(2)` through pipes, for two plain TCP legs (Linux).
    Splice,
    /// Through user-space buffers, for any legs.
    Buffered,
    /// Through user-space buffers, following WebSocket frames (SPEC §9), for any legs.
    Inspect,
}

impl Engine {
    /// Every engine, in the order metrics list them.
    pub(crate) const ALL: [Engine; 3] = [Engine::Splice, Engine::Buffered, Engine::Inspect];

    /// The lowercase word used in logs and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Engine::Splice => "splice",
            Engine::Buffered => "buffered",
            Engine::Inspect => "inspect",
        }
    }
}

/// Who ended a tunnel; the `closed_by` field of the access log (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClosedBy {
    /// The client sent EOF first and both directions then finished, or the client's connection
    /// failed (reset, broken pipe, EOF inside a TLS record).
    Client,
    /// Same as `Client`, for the upstream side.
    Upstream,
    /// No byte moved in either direction for `idle_timeout`.
    Idle,
    /// The graceful-shutdown deadline passed while the tunnel was open.
    Drain,
    /// An I/O failure that says nothing about which peer went away (e.g. a TLS protocol error).
    Error,
    /// The route's `max_lifetime` was reached.
    Lifetime,
    /// A frame or message over `max_frame_bytes` / `max_message_bytes` (SPEC §9).
    Limit,
    /// A protocol violation visible in a frame header (SPEC §9).
    Protocol,
    /// A pinged side stayed silent for `ping_timeout` (SPEC §9).
    PingTimeout,
}

impl ClosedBy {
    /// The lowercase word used in logs and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Idle => "idle",
            ClosedBy::Drain => "drain",
            ClosedBy::Error => "error",
            ClosedBy::Lifetime => "lifetime",
            ClosedBy::Limit => "limit",
            ClosedBy::Protocol => "protocol",
            ClosedBy::PingTimeout => "ping_timeout",
        }
    }
}

impl fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished tunnel reports to its caller for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TunnelOutcome {
    /// Bytes delivered client -> upstream, early bytes included.
    pub(crate) bytes_up: u64,
    /// Bytes delivered upstream -> client, early bytes included.
    pub(crate) bytes_down: u64,
    /// Why it ended.
    pub(crate) closed_by: ClosedBy,
    /// From the call to [`run`] until both streams were closed.
    pub(crate) duration: Duration,
    /// The engine that copied the bytes.
    pub(crate) engine: Engine,
    /// What an inspected tunnel saw; `None` for an opaque one.
    pub(crate) ws: Option<WsReport>,
}

/// Runs a tunnel to its end, then closes both legs (dropping them) and reports.
///
/// Each leg's early bytes go to the other side before anything read from its stream: the
/// client's are what it sent right after its request head, the upstream's what it sent right
/// after its 101 head (never drop them).
///
/// The tunnel ends when:
/// - both directions reached EOF and each EOF was passed on as a write shutdown (half-close);
///   `closed_by` is the side whose EOF came first;
/// - a read, write or shutdown on either side fails; the other side is closed at once so its
///   peer sees it; `closed_by` is the failing side, or `Error` if the failure is not a sign of
///   that peer going away;
/// - no byte moved either way for `cfg.idle_timeout` (`Idle`);
/// - the tunnel reached `cfg.max_lifetime` (`Lifetime`; for an opaque tunnel a plain close of
///   both legs, SPEC §5);
/// - `drain` completes (`Drain`): the drain deadline passed.
///
/// `polite` completes when the gateway wants the tunnel ended politely (SPEC §9); only an
/// inspected tunnel acts on it. `cfg.max_lifetime` ends an opaque tunnel at once (`Lifetime`)
/// and an inspected one politely. An inspected tunnel may also end on a limit, a protocol
/// violation or a ping timeout (see `inspect.rs`).
///
/// The returned future is `Send` when `P` and `D` are.
pub(crate) async fn run<P, D>(
    client: Leg,
    upstream: Leg,
    cfg: &TunnelConfig,
    polite: P,
    drain: D,
) -> TunnelOutcome
where
    P: Future<Output = PoliteEnd>,
    D: Future<Output = ()>,
{
    let meter = Meter::new(cfg.counters.as_ref());
    // Boxed and only for an inspected tunnel: an opaque one carries no report.
    let mut report = cfg.inspect.as_ref().map(|_| Box::<WsReport>::default());
    let inspect = cfg.inspect.as_ref().zip(report.as_deref_mut());
    // In a block so the legs are stored once in this future (inside the copy), not twice.
    let (engine, copy) = {
        let pair = Pair::pick(client, upstream, inspect);
        (pair.engine(), pair.copy(&meter, cfg.max_lifetime, polite))
    };
    // An inspected tunnel ends at its lifetime politely, inside its engine.
    let opaque_lifetime = cfg.max_lifetime.filter(|_| engine != Engine::Inspect);
    if let Some(counters) = &cfg.counters {
        counters
            .engine_count(engine)
            .fetch_add(1, Ordering::Relaxed);
    }
    // The engine owns both legs: when this `select!` ends, dropping it closes both sockets,
    // which is what tells each peer the tunnel is over.
    let closed_by = tokio::select! {
        biased;
        () = drain => ClosedBy::Drain,
        end = copy => end.closed_by(),
        why = deadline(cfg.idle_timeout, opaque_lifetime, &meter) => why,
    };
    TunnelOutcome {
        bytes_up: meter.bytes_up(),
        bytes_down: meter.bytes_down(),
        closed_by,
        duration: meter.started().elapsed(),
        engine,
        ws: report.map(|r| *r),
    }
}

/// Both legs of a tunnel, as the engine picked for them takes them; an inspected pair also
/// carries what its engine enforces and the report it fills.
enum Pair<'a> {
    #[cfg(target_os = "linux")]
    Splice {
        client: tokio::net::TcpStream,
        client_early: Bytes,
        upstream: tokio::net::TcpStream,
        upstream_early: Bytes,
    },
    Buffered {
        client: LegIo,
        client_early: Bytes,
        upstream: LegIo,
        upstream_early: Bytes,
    },
    Inspect {
        client: LegIo,
        client_early: Bytes,
        upstream: LegIo,
        upstream_early: Bytes,
        cfg: &'a InspectConfig,
        report: &'a mut WsReport,
    },
}

impl<'a> Pair<'a> {
    /// The one place an engine is chosen: two plain TCP legs splice, unless no pipe can be had
    /// (descriptors exhausted), which falls back to buffers rather than failing the tunnel; TLS
    /// and h2 legs are buffered. A tunnel to `inspect` takes the inspecting engine, whatever
    /// its legs.
    fn pick(
        client: Leg,
        upstream: Leg,
        inspect: Option<(&'a InspectConfig, &'a mut WsReport)>,
    ) -> Pair<'a> {
        if let Some((cfg, report)) = inspect {
            let (client, client_early) = client.into_io();
            let (upstream, upstream_early) = upstream.into_io();
            return Pair::Inspect {
                client,
                client_early,
                upstream,
                upstream_early,
                cfg,
                report,
            };
        }
        match (client, upstream) {
            #[cfg(target_os = "linux")]
            (
                Leg::Tcp {
                    stream: client,
                    early: client_early,
                },
                Leg::Tcp {
                    stream: upstream,
                    early: upstream_early,
                },
            ) => match splice::pipes_available() {
                Ok(()) => Pair::Splice {
                    client,
                    client_early,
                    upstream,
                    upstream_early,
                },
                Err(e) => {
                    tracing::debug!(cause = %e, "no pipe for splice; tunnel copies through buffers");
                    Pair::Buffered {
                        client: Either::Left(client),
                        client_early,
                        upstream: Either::Left(upstream),
                        upstream_early,
                    }
                }
            },
            (client, upstream) => {
                let (client, client_early) = client.into_io();
                let (upstream, upstream_early) = upstream.into_io();
                Pair::Buffered {
                    client,
                    client_early,
                    upstream,
                    upstream_early,
                }
            }
        }
    }

    fn engine(&self) -> Engine {
        match self {
            #[cfg(target_os = "linux")]
            Pair::Splice { .. } => Engine::Splice,
            Pair::Buffered { .. } => Engine::Buffered,
            Pair::Inspect { .. } => Engine::Inspect,
        }
    }

    /// Runs the picked engine to its end; only the inspecting one uses `max_lifetime` (an
    /// opaque tunnel's cap is `run`'s timer) and `polite`.
    async fn copy<P>(self, meter: &Meter<'_>, max_lifetime: Option<Duration>, polite: P) -> CopyEnd
    where
        P: Future<Output = PoliteEnd>,
    {
        match self {
            #[cfg(target_os = "linux")]
            Pair::Splice {
                client,
                client_early,
                upstream,
                upstream_early,
            } => splice::copy(client, client_early, upstream, upstream_early, meter).await,
            Pair::Buffered {
                client,
                client_early,
                upstream,
                upstream_early,
            } => buffered::copy(client, client_early, upstream, upstream_early, meter).await,
            Pair::Inspect {
                client,
                client_early,
                upstream,
                upstream_early,
                cfg,
                report,
            } => {
                let setup = inspect::Setup {
                    cfg,
                    max_lifetime,
                    polite,
                };
                // Boxed: the inspecting engine's state is several times an opaque engine's, and
                // inline it would size every tunnel's task, opaque ones included.
                Box::pin(inspect::copy(
                    client,
                    client_early,
                    upstream,
                    upstream_early,
                    setup,
                    meter,
                    report,
                ))
                .await
            }
        }
    }
}

/// The tunnel's two clocks on one timer (one timer entry per idle tunnel, not two): completes
/// with `Idle` once no byte has moved for `idle`, or with `Lifetime` once the tunnel is
/// `lifetime` old, whichever comes first; `None` or zero turns a clock off. The timer is re-armed
/// only when it fires early: the copy loop just stores a timestamp per chunk.
async fn deadline(
    idle: Option<Duration>,
    lifetime: Option<Duration>,
    meter: &Meter<'_>,
) -> ClosedBy {
    let idle = idle.filter(|t| !t.is_zero());
    let cap = lifetime
        .filter(|c| !c.is_zero())
        .and_then(|c| meter.started().checked_add(c));
    let next = || {
        let idle_at = idle.and_then(|t| meter.last_activity().checked_add(t));
        match (idle_at, cap) {
            (Some(i), Some(c)) if c < i => Some((c, ClosedBy::Lifetime)),
            (Some(i), _) => Some((i, ClosedBy::Idle)),
            (None, Some(c)) => Some((c, ClosedBy::Lifetime)),
            (None, None) => None,
        }
    };
    let Some((first, _)) = next() else {
        return std::future::pending().await;
    };
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let Some((at, why)) = next() else {
            return std::future::pending().await;
        };
        if at <= Instant::now() {
            return why;
        }
        sleep.as_mut().reset(at);
    }
}

/// How a copy engine finished; every engine returns this.
#[derive(Debug)]
enum CopyEnd {
    /// Both directions saw EOF and passed it on; `first` sent its EOF first.
    BothEof { first: Side },
    /// I/O on `side` failed; the engine stopped at once.
    Failed { side: Side, error: io::Error },
    /// The engine itself ended the tunnel, for this reason (an inspected tunnel, SPEC §9).
    Ended(ClosedBy),
}

impl CopyEnd {
    fn closed_by(self) -> ClosedBy {
        let side_word = |side| match side {
            Side::Client => ClosedBy::Client,
            Side::Upstream => ClosedBy::Upstream,
        };
        match self {
            CopyEnd::BothEof { first } => side_word(first),
            CopyEnd::Failed { side, error } => {
                tracing::debug!(side = ?side, cause = %error, "tunnel I/O failed");
                if peer_went_away(&error) {
                    side_word(side)
                } else {
                    ClosedBy::Error
                }
            }
            CopyEnd::Ended(closed_by) => closed_by,
        }
    }
}

/// Errors that mean the peer on that side closed, reset, or vanished.
fn peer_went_away(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero
            | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::time::timeout;

    use super::testing::{
        LIMIT, OPAQUE, PAUSED_LIMIT, duplex_rig, leg, no_drain, random_bytes, read_all, rig,
        tcp_pair, write_in_pieces,
    };
    use super::*;

    /// 16 MiB each way at once over real sockets: every byte arrives, once, in order, on the
    /// engine the legs ask for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_mib_both_ways_concurrently_verbatim() {
        timeout(Duration::from_secs(120), async {
            const LEN: usize = 16 << 20;
            for (seed, engine) in (1..).step_by(4).zip(OPAQUE) {
                let up_data = random_bytes(LEN, seed);
                let down_data = random_bytes(LEN, seed + 1);
                let counters = ByteCounters::new();
                let cfg = TunnelConfig {
                    idle_timeout: Some(Duration::from_secs(60)),
                    counters: Some(counters.clone()),
                    ..TunnelConfig::default()
                };
                let rig = rig(engine, b"", b"", cfg, no_drain()).await;
                let (c_read, c_write) = rig.client_app.into_split();
                let (u_read, u_write) = rig.upstream_app.into_split();
                let (_, _, got_up, got_down) = tokio::join!(
                    write_in_pieces(c_write, up_data.clone(), seed + 2),
                    write_in_pieces(u_write, down_data.clone(), seed + 3),
                    read_all(u_read),
                    read_all(c_read),
                );
                assert!(
                    got_up == up_data,
                    "{engine:?}: client -> upstream bytes differ"
                );
                assert!(
                    got_down == down_data,
                    "{engine:?}: upstream -> client bytes differ"
                );
                let out = rig.tunnel.await.unwrap();
                assert_eq!(out.engine, engine);
                assert_eq!((out.bytes_up, out.bytes_down), (LEN as u64, LEN as u64));
                assert_eq!((counters.up(), counters.down()), (LEN as u64, LEN as u64));
                for counted in Engine::ALL {
                    assert_eq!(counters.tunnels(counted), u64::from(counted == engine));
                }
                assert!(matches!(
                    out.closed_by,
                    ClosedBy::Client | ClosedBy::Upstream
                ));
            }
        })
        .await
        .unwrap();
    }

    /// Early bytes go first even when later bytes are already waiting in the socket.
    #[tokio::test]
    async fn early_bytes_are_delivered_before_later_bytes_both_ways() {
        timeout(LIMIT, async {
            for engine in OPAQUE {
                let (mut client_app, client_gw) = tcp_pair().await;
                let (mut upstream_app, upstream_gw) = tcp_pair().await;
                // Queue the later bytes before the tunnel starts reading.
                client_app.write_all(b"later-from-client").await.unwrap();
                client_app.shutdown().await.unwrap();
                upstream_app
                    .write_all(b"later-from-upstream")
                    .await
                    .unwrap();
                upstream_app.shutdown().await.unwrap();
                let out = run(
                    leg(engine, client_gw, b"EARLY-C\x00\xff"),
                    leg(engine, upstream_gw, b"EARLY-U\x81\x05"),
                    &TunnelConfig::default(),
                    std::future::pending(),
                    std::future::pending(),
                )
                .await;
                assert_eq!(out.engine, engine);
                assert_eq!(
                    read_all(&mut upstream_app).await,
                    b"EARLY-C\x00\xfflater-from-client",
                    "{engine:?}"
                );
                assert_eq!(
                    read_all(&mut client_app).await,
                    b"EARLY-U\x81\x05later-from-upstream",
                    "{engine:?}"
                );
                assert_eq!(
                    (out.bytes_up, out.bytes_down),
                    (9 + 17, 9 + 19),
                    "{engine:?}"
                );
            }
        })
        .await
        .unwrap();
    }

    /// Client half-closes; the upstream still talks and the client still hears it.
    #[tokio::test]
    async fn client_half_close_keeps_the_other_direction_open() {
        timeout(LIMIT, async {
            for engine in OPAQUE {
                let mut rig = rig(engine, b"", b"", TunnelConfig::default(), no_drain()).await;
                rig.client_app.write_all(b"hello").await.unwrap();
                rig.client_app.shutdown().await.unwrap();
                // The upstream sees the bytes, then EOF.
                assert_eq!(
                    read_all(&mut rig.upstream_app).await,
                    b"hello",
                    "{engine:?}"
                );
                rig.upstream_app.write_all(b"reply").await.unwrap();
                let mut reply = [0u8; 5];
                rig.client_app.read_exact(&mut reply).await.unwrap();
                assert_eq!(&reply, b"reply", "{engine:?}");
                assert!(
                    !rig.tunnel.is_finished(),
                    "{engine:?}: tunnel ended after one EOF"
                );
                rig.upstream_app.shutdown().await.unwrap();
                assert_eq!(read_all(&mut rig.client_app).await, b"", "{engine:?}");
                let out = rig.tunnel.await.unwrap();
                assert_eq!(out.closed_by, ClosedBy::Client, "{engine:?}");
                assert_eq!((out.bytes_up, out.bytes_down), (5, 5), "{engine:?}");
            }
        })
        .await
        .unwrap();
    }

    /// Upstream half-closes first (its EOF right behind its early bytes); the client can still
    /// send, and bytes queued before the EOF are all delivered before it.
    #[tokio::test]
    async fn upstream_half_close_keeps_the_other_direction_open() {
        timeout(LIMIT, async {
            for engine in OPAQUE {
                let mut rig = rig(engine, b"", b"bye", TunnelConfig::default(), no_drain()).await;
                let tail = random_bytes(300_000, 21);
                rig.upstream_app.write_all(&tail).await.unwrap();
                rig.upstream_app.shutdown().await.unwrap();
                let got = read_all(&mut rig.client_app).await;
                assert!(
                    got.starts_with(b"bye") && got[3..] == tail[..],
                    "{engine:?}"
                );
                rig.client_app
                    .write_all(b"client-still-sending")
                    .await
                    .unwrap();
                let mut got = [0u8; 20];
                rig.upstream_app.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"client-still-sending", "{engine:?}");
                assert!(
                    !rig.tunnel.is_finished(),
                    "{engine:?}: tunnel ended after one EOF"
                );
                rig.client_app.shutdown().await.unwrap();
                assert_eq!(read_all(&mut rig.upstream_app).await, b"", "{engine:?}");
                let out = rig.tunnel.await.unwrap();
                assert_eq!(out.closed_by, ClosedBy::Upstream, "{engine:?}");
            }
        })
        .await
        .unwrap();
    }

    /// A reset from one side closes the other promptly and names the side that reset.
    async fn reset_closes_other_side(engine: Engine, reset_client: bool) {
        let mut rig = rig(engine, b"", b"", TunnelConfig::default(), no_drain()).await;
        // Prove the tunnel is up before resetting.
        rig.client_app.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        rig.upstream_app.read_exact(&mut got).await.unwrap();
        let (resetter, mut survivor) = if reset_client {
            (rig.client_app, rig.upstream_app)
        } else {
            (rig.upstream_app, rig.client_app)
        };
        resetter.set_zero_linger().unwrap();
        drop(resetter);
        let out = timeout(Duration::from_secs(2), rig.tunnel)
            .await
            .expect("tunnel still running 2s after a reset")
            .unwrap();
        let expected = if reset_client {
            ClosedBy::Client
        } else {
            ClosedBy::Upstream
        };
        assert_eq!((out.closed_by, out.engine), (expected, engine));
        let mut rest = Vec::new();
        let seen = timeout(Duration::from_secs(2), survivor.read_to_end(&mut rest))
            .await
            .expect("other side not closed within 2s");
        assert!(seen.is_err() || rest.is_empty());
    }

    #[tokio::test]
    async fn client_reset_closes_upstream_promptly() {
        for engine in OPAQUE {
            timeout(LIMIT, reset_closes_other_side(engine, true))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn upstream_reset_closes_client_promptly() {
        for engine in OPAQUE {
            timeout(LIMIT, reset_closes_other_side(engine, false))
                .await
                .unwrap();
        }
    }

    /// Two plain TCP legs splice (on Linux); a pair with any other leg is buffered; the shared
    /// counters count each tunnel under its engine.
    #[tokio::test]
    async fn engine_is_picked_by_the_kind_of_legs() {
        timeout(LIMIT, async {
            let counters = ByteCounters::new();
            let cfg = TunnelConfig {
                idle_timeout: None,
                counters: Some(counters.clone()),
                ..TunnelConfig::default()
            };
            let splice = if cfg!(target_os = "linux") {
                Engine::Splice
            } else {
                Engine::Buffered
            };
            for (client_tcp, upstream_tcp, expected) in [
                (true, true, splice),
                (true, false, Engine::Buffered),
                (false, true, Engine::Buffered),
            ] {
                let (mut client_app, client_gw) = tcp_pair().await;
                let (mut upstream_app, upstream_gw) = tcp_pair().await;
                let leg = |tcp, stream| {
                    if tcp {
                        Leg::tcp(stream, Bytes::new())
                    } else {
                        Leg::stream(stream, Bytes::new())
                    }
                };
                client_app.shutdown().await.unwrap();
                upstream_app.shutdown().await.unwrap();
                let out = run(
                    leg(client_tcp, client_gw),
                    leg(upstream_tcp, upstream_gw),
                    &cfg,
                    std::future::pending(),
                    std::future::pending(),
                )
                .await;
                assert_eq!(out.engine, expected, "{client_tcp} {upstream_tcp}");
                assert_eq!(read_all(&mut client_app).await, b"");
            }
            assert_eq!(
                counters.tunnels(Engine::Splice),
                u64::from(splice == Engine::Splice)
            );
            assert_eq!(
                counters.tunnels(Engine::Buffered),
                if splice == Engine::Splice { 2 } else { 3 }
            );
        })
        .await
        .unwrap();
    }

    #[test]
    fn engine_words_match_the_access_log() {
        let words: Vec<&str> = Engine::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(words, ["splice", "buffered", "inspect"]);
    }

    /// On tokio's paused clock: the idle deadline fires exactly `idle_timeout` after the start of
    /// a tunnel in which nothing moved, and both legs are closed.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_silent_tunnel_and_closes_both_sides() {
        timeout(PAUSED_LIMIT, async {
            let idle = Duration::from_secs(200);
            let cfg = TunnelConfig {
                idle_timeout: Some(idle),
                counters: None,
                ..TunnelConfig::default()
            };
            let mut rig = duplex_rig(cfg, std::future::pending());
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Idle);
            assert!(
                out.duration >= idle && out.duration < idle + Duration::from_millis(10),
                "fired after {:?}",
                out.duration
            );
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
        })
        .await
        .unwrap();
    }

    /// Traffic in one direction only keeps the whole tunnel alive; silence then ends it exactly
    /// `idle_timeout` after the last byte (paused clock: the sleeps advance virtual time).
    async fn slow_traffic_keeps_tunnel_open(client_talks: bool) {
        let idle = Duration::from_secs(300);
        let cfg = TunnelConfig {
            idle_timeout: Some(idle),
            counters: None,
            ..TunnelConfig::default()
        };
        let started = Instant::now();
        let rig = duplex_rig(cfg, std::future::pending());
        let (mut talker, mut listener) = if client_talks {
            (rig.client_app, rig.upstream_app)
        } else {
            (rig.upstream_app, rig.client_app)
        };
        // Twelve bytes, 250 s apart: 3000 s in all, ten idle timeouts, never 300 s of silence.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(250)).await;
            talker.write_all(b"k").await.unwrap();
            let mut k = [0u8; 1];
            listener.read_exact(&mut k).await.unwrap();
        }
        let busy_for = started.elapsed();
        assert!(
            !rig.tunnel.is_finished(),
            "idle fired with traffic every 250s"
        );
        let out = rig.tunnel.await.unwrap();
        assert_eq!(out.closed_by, ClosedBy::Idle);
        let expected = busy_for + idle;
        assert!(
            out.duration >= expected && out.duration < expected + Duration::from_millis(10),
            "ended after {:?}, expected {expected:?}",
            out.duration
        );
        assert_eq!(out.bytes_up + out.bytes_down, 12);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_does_not_fire_while_client_sends_slowly() {
        timeout(PAUSED_LIMIT, slow_traffic_keeps_tunnel_open(true))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_does_not_fire_while_upstream_sends_slowly() {
        timeout(PAUSED_LIMIT, slow_traffic_keeps_tunnel_open(false))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_idle_timeout_means_never() {
        timeout(PAUSED_LIMIT, async {
            let cfg = TunnelConfig {
                idle_timeout: Some(Duration::ZERO),
                counters: None,
                ..TunnelConfig::default()
            };
            let (drain_tx, drain_rx) = oneshot::channel();
            let rig = duplex_rig(cfg, testing::drain_on(drain_rx));
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            assert!(!rig.tunnel.is_finished());
            drain_tx.send(()).unwrap();
            assert_eq!(rig.tunnel.await.unwrap().closed_by, ClosedBy::Drain);
        })
        .await
        .unwrap();
    }

    /// A drain deadline ends a busy tunnel at its time, whatever the idle timeout says.
    #[tokio::test(start_paused = true)]
    async fn drain_deadline_ends_a_busy_tunnel_on_time() {
        timeout(PAUSED_LIMIT, async {
            let cfg = TunnelConfig {
                idle_timeout: Some(Duration::from_secs(60)),
                counters: None,
                ..TunnelConfig::default()
            };
            let grace = Duration::from_secs(30);
            let mut rig = duplex_rig(cfg, tokio::time::sleep(grace));
            let mut sent = 0u64;
            while !rig.tunnel.is_finished() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if rig.client_app.write_all(b"x").await.is_err() {
                    break;
                }
                sent += 1;
            }
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            assert!(
                out.duration >= grace && out.duration < grace + Duration::from_millis(10),
                "drained after {:?}",
                out.duration
            );
            assert!(sent >= 29, "only {sent} bytes sent before the drain");
            assert_eq!(
                read_all(&mut rig.upstream_app).await.len() as u64,
                out.bytes_up
            );
        })
        .await
        .unwrap();
    }

    /// On tokio's paused clock: `max_lifetime` ends a busy opaque tunnel at its age cap (traffic
    /// does not extend it), closing both legs plainly with nothing added.
    #[tokio::test(start_paused = true)]
    async fn max_lifetime_closes_a_busy_opaque_tunnel_at_its_cap() {
        timeout(PAUSED_LIMIT, async {
            let cap = Duration::from_secs(90);
            let cfg = TunnelConfig {
                idle_timeout: Some(Duration::from_secs(10)),
                max_lifetime: Some(cap),
                ..TunnelConfig::default()
            };
            let mut rig = duplex_rig(cfg, std::future::pending());
            let mut echoed = 0u64;
            while !rig.tunnel.is_finished() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if rig.client_app.write_all(b"x").await.is_err() {
                    break;
                }
                let mut x = [0u8; 1];
                if rig.upstream_app.read_exact(&mut x).await.is_err() {
                    break;
                }
                echoed += 1;
            }
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Lifetime);
            assert!(
                out.duration >= cap && out.duration < cap + Duration::from_millis(10),
                "ended after {:?}",
                out.duration
            );
            assert!(echoed >= 89, "only {echoed} bytes before the cap");
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
        })
        .await
        .unwrap();
    }

    /// No cap, or a zero one, never ends a tunnel.
    #[tokio::test(start_paused = true)]
    async fn no_or_zero_max_lifetime_means_no_cap() {
        timeout(PAUSED_LIMIT, async {
            for cap in [None, Some(Duration::ZERO)] {
                let cfg = TunnelConfig {
                    max_lifetime: cap,
                    ..TunnelConfig::default()
                };
                let (drain_tx, drain_rx) = oneshot::channel();
                let rig = duplex_rig(cfg, testing::drain_on(drain_rx));
                tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
                assert!(!rig.tunnel.is_finished(), "{cap:?}");
                drain_tx.send(()).unwrap();
                assert_eq!(rig.tunnel.await.unwrap().closed_by, ClosedBy::Drain);
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn drain_ends_the_tunnel_and_closes_both_sides() {
        timeout(LIMIT, async {
            let (drain_tx, drain_rx) = oneshot::channel();
            let mut rig = rig(Engine::Splice, b"", b"", TunnelConfig::default(), drain_rx).await;
            rig.upstream_app.write_all(b"up").await.unwrap();
            let mut got = [0u8; 2];
            rig.client_app.read_exact(&mut got).await.unwrap();
            drain_tx.send(()).unwrap();
            let out = rig.tunnel.await.unwrap();
            assert_eq!(out.closed_by, ClosedBy::Drain);
            assert_eq!((out.bytes_up, out.bytes_down), (0, 2));
            assert_eq!(read_all(&mut rig.client_app).await, b"");
            assert_eq!(read_all(&mut rig.upstream_app).await, b"");
        })
        .await
        .unwrap();
    }

    #[test]
    fn closed_by_words_match_the_access_log() {
        let words: Vec<String> = [
            ClosedBy::Client,
            ClosedBy::Upstream,
            ClosedBy::Idle,
            ClosedBy::Drain,
            ClosedBy::Error,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(words, ["client", "upstream", "idle", "drain", "error"]);
    }

    #[test]
    fn only_peer_failures_are_attributed_to_a_side() {
        let reset = CopyEnd::Failed {
            side: Side::Upstream,
            error: io::ErrorKind::ConnectionReset.into(),
        };
        assert_eq!(reset.closed_by(), ClosedBy::Upstream);
        let tls = CopyEnd::Failed {
            side: Side::Client,
            error: io::ErrorKind::InvalidData.into(),
        };
        assert_eq!(tls.closed_by(), ClosedBy::Error);
    }

    #[test]
    fn tunnel_future_is_send_for_both_kinds_of_leg() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = TunnelConfig::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = tcp_pair().await;
            let fut = run(
                Leg::tcp(a, Bytes::new()),
                Leg::stream(b, Bytes::new()),
                &cfg,
                std::future::pending(),
                async {},
            );
            assert_send(&fut);
            let (a, b) = tcp_pair().await;
            let fut = run(
                Leg::tcp(a, Bytes::new()),
                Leg::tcp(b, Bytes::new()),
                &cfg,
                std::future::pending(),
                async {},
            );
            assert_send(&fut);
        });
    }
}
