//! A WebSocket upstream the test drives frame by frame, for inspected tunnels (SPEC §9): it
//! answers the upgrade correctly, then sends exactly the bytes the test hands it, records every
//! byte it receives and every byte it sends, and, as configured, answers pings (so that it is a
//! live peer for keepalive) and close frames (echoing the close, then closing TCP first, as
//! RFC 6455 §7.1.1 has a server do).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::frames::{Frame, op, parse_frames, server_frame};
use super::raw_upstream::{ConnLog, RawUpstream, script};
use super::{IO_TIMEOUT, lock};

/// What a [`FrameUpstream`] does on its own.
#[derive(Debug, Clone, Copy)]
pub struct PeerBehaviour {
    /// Answer every ping with a pong carrying its payload.
    pub answer_pings: bool,
    /// Answer a close frame with the same close frame, then close TCP.
    pub answer_close: bool,
}

impl PeerBehaviour {
    /// Answers pings and closes: a well-behaved, live upstream.
    pub const LIVE: PeerBehaviour = PeerBehaviour {
        answer_pings: true,
        answer_close: true,
    };
}

enum Cmd {
    Send(Vec<u8>),
    Close,
}

/// One upgraded upstream connection, shared between its script and the test.
struct PeerState {
    cmds: mpsc::UnboundedSender<Cmd>,
    log: Arc<ConnLog>,
    sent: Arc<Mutex<Vec<u8>>>,
}

/// A raw upstream whose connections the test drives; see the module doc.
pub struct FrameUpstream {
    raw: RawUpstream,
    peers: Arc<Mutex<Vec<Arc<PeerState>>>>,
    added: Arc<Notify>,
}

impl FrameUpstream {
    /// Listens on 127.0.0.1:0.
    pub async fn start(behaviour: PeerBehaviour) -> FrameUpstream {
        let peers: Arc<Mutex<Vec<Arc<PeerState>>>> = Arc::default();
        let added = Arc::new(Notify::new());
        let (p2, a2) = (peers.clone(), added.clone());
        let raw = RawUpstream::start(script(move |mut c| {
            let (peers, added) = (p2.clone(), a2.clone());
            async move {
                if !c.accept_upgrade().await {
                    return;
                }
                let (tx, mut rx) = mpsc::unbounded_channel();
                let state = Arc::new(PeerState {
                    cmds: tx,
                    log: c.log(),
                    sent: Arc::default(),
                });
                lock(&peers).push(state.clone());
                added.notify_waiters();
                let mut pending = Vec::new();
                loop {
                    tokio::select! {
                        cmd = rx.recv() => match cmd {
                            Some(Cmd::Send(bytes)) => {
                                lock(&state.sent).extend_from_slice(&bytes);
                                if c.send(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Some(Cmd::Close) | None => return,
                        },
                        got = c.recv() => {
                            let Some(got) = got else { return };
                            pending.extend_from_slice(&got);
                            let (frames, used) = parse_frames(&pending);
                            pending.drain(..used);
                            for f in frames {
                                let answer = match f.opcode {
                                    op::PING if behaviour.answer_pings => op::PONG,
                                    op::CLOSE if behaviour.answer_close => op::CLOSE,
                                    _ => continue,
                                };
                                let reply = server_frame(true, answer, &f.payload);
                                lock(&state.sent).extend_from_slice(&reply);
                                if c.send(&reply).await.is_err() {
                                    return;
                                }
                                if answer == op::CLOSE {
                                    // RFC 6455 §7.1.1: the server closes TCP first, then
                                    // waits for the client's FIN (recorded as EOF).
                                    c.shutdown_write().await;
                                    let _ = tokio::time::timeout(IO_TIMEOUT, c.read_to_eof()).await;
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }))
        .await;
        FrameUpstream { raw, peers, added }
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.raw.addr()
    }

    /// Waits up to [`IO_TIMEOUT`] for upgraded connection number `index` (0-based).
    pub async fn peer(&self, index: usize) -> Peer {
        let wait = async {
            loop {
                let woken = self.added.notified();
                if let Some(p) = lock(&self.peers).get(index) {
                    return p.clone();
                }
                woken.await;
            }
        };
        match tokio::time::timeout(IO_TIMEOUT, wait).await {
            Ok(state) => Peer { state },
            Err(_) => panic!("upstream: no upgraded connection #{index} within {IO_TIMEOUT:?}"),
        }
    }
}

/// The test's handle on one upgraded upstream connection.
pub struct Peer {
    state: Arc<PeerState>,
}

impl Peer {
    /// Sends `bytes` as they are (in order with the script's own answers).
    pub fn send(&self, bytes: &[u8]) {
        // The script ends only when the connection does; a send after that is moot.
        let _ = self.state.cmds.send(Cmd::Send(bytes.to_vec()));
    }

    /// Closes the connection (a FIN) once everything sent before has been written.
    pub fn close(&self) {
        let _ = self.state.cmds.send(Cmd::Close);
    }

    /// Every byte received after the request head.
    pub fn received(&self) -> Vec<u8> {
        self.state.log.after_head()
    }

    /// Every byte this side sent after its 101, the script's own answers included.
    pub fn sent(&self) -> Vec<u8> {
        lock(&self.state.sent).clone()
    }

    /// The complete frames received so far.
    pub fn frames(&self) -> Vec<Frame> {
        parse_frames(&self.received()).0
    }

    /// Waits up to `within` for a received frame matching `pred`; panics naming `what` with the
    /// frames that did arrive.
    pub async fn wait_frame(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Frame {
        let found = self
            .state
            .log
            .wait_for(within, |bytes| parse_frames(bytes).0.iter().any(&pred))
            .await;
        let frames = self.frames();
        match frames.iter().find(|f| pred(f)) {
            Some(f) if found => f.clone(),
            _ => panic!(
                "upstream got no {what} within {within:?}; frames: {}",
                describe_frames(&frames)
            ),
        }
    }

    /// Waits up to `within` for the gateway to close this connection; returns whether it did.
    pub async fn wait_eof(&self, within: Duration) -> bool {
        self.state.log.wait_eof(within).await
    }
}

/// A short description of frames for failure messages.
pub fn describe_frames(frames: &[Frame]) -> String {
    let parts: Vec<String> = frames
        .iter()
        .map(|f| {
            let kind = match f.opcode {
                op::CONTINUATION => "cont",
                op::TEXT => "text",
                op::BINARY => "binary",
                op::CLOSE => "close",
                op::PING => "ping",
                op::PONG => "pong",
                _ => "reserved",
            };
            let code = f.close_code().map_or(String::new(), |c| format!(" {c}"));
            format!(
                "{kind}{code}({} bytes{}{})",
                f.payload.len(),
                if f.fin { "" } else { ", no fin" },
                if f.mask.is_some() { ", masked" } else { "" }
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
