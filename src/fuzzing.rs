//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`, off by default; not
//! part of the product's API). Each wrapper runs the real crate-private code on fuzzer input and
//! returns a plain, public value that the target checks: the parsers stay `pub(crate)`, and a
//! normal build does not even compile this module.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{
    HostPattern, ProxyVersion, RouteConfig, Select, SubprotocolRoute, UpgradeRoute, WebSocketConfig,
};
use crate::error::{Carrier, Reject};
use crate::handshake::{self, ForwardInfo, Upgrade};
use crate::head::{self, HeadError, MAX_HEADERS};
use crate::proxy_protocol::{self, Parse, ProxiedAddrs, ProxyError};
use crate::route::RouteTable;

/// A refusal as the client would see it: the status and the typed reason's `Debug` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

impl Rejection {
    /// Also builds the full answer, so `Reject::response` runs on every refusal the fuzzer finds.
    fn of(r: &Reject, carrier: Carrier) -> Self {
        let res = r.response(carrier);
        assert_eq!(res.status(), r.status(), "response status differs: {r:?}");
        Rejection {
            status: r.status().as_u16(),
            reason: format!("{r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// head.rs

/// What [`read_head_chunked`] got back from `head::read_head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadOutcome {
    /// Everything read: a complete head, possibly followed by early bytes.
    Complete(Vec<u8>),
    Rejected(Rejection),
    /// The input ended first.
    Closed,
}

/// The result of [`read_head_chunked`]: the outcome and how many input bytes the reader was
/// handed, so a target can check that none were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRead {
    pub outcome: HeadOutcome,
    pub consumed: usize,
}

/// A reader that hands out `chunks` one per read (a chunk larger than the read buffer is split),
/// then EOF: the arrival pattern of a TCP stream, fixed by the fuzzer, without a real socket.
struct Chunked<'a> {
    chunks: std::collections::VecDeque<&'a [u8]>,
    consumed: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while let Some(chunk) = self.chunks.pop_front() {
            if chunk.is_empty() {
                continue;
            }
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(&chunk[n..]);
            }
            self.consumed += n;
            break;
        }
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// One runtime per thread: `read_head` needs tokio's timer for its deadline.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Runs `head::read_head` with a `max_bytes` limit over `chunks`, delivered one per read.
pub fn read_head_chunked(chunks: &[&[u8]], max_bytes: usize) -> HeadRead {
    let mut io = Chunked {
        chunks: chunks.iter().copied().collect(),
        consumed: 0,
    };
    let outcome = RUNTIME.with(|rt| {
        rt.block_on(async {
            // The reader is always ready, so the deadline never fires.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
            head::read_head(&mut io, max_bytes, deadline).await
        })
    });
    let outcome = match outcome {
        Ok(head) => HeadOutcome::Complete(head.bytes.to_vec()),
        Err(HeadError::Reject(r)) => HeadOutcome::Rejected(Rejection::of(&r, Carrier::H1)),
        Err(HeadError::Closed) => HeadOutcome::Closed,
    };
    HeadRead {
        outcome,
        consumed: io.consumed,
    }
}

/// Header lines the head reader (and hyper) accept in one head.
pub const HEAD_MAX_HEADERS: usize = MAX_HEADERS;

// ---------------------------------------------------------------------------------------------
// handshake

/// How far a request got through the handshake steps 1–5 (no I/O: the upstream is not dialed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// An ordinary request for the route's `http` upstream.
    Plain {
        upstream: String,
    },
    /// An upgrade that passed every client-side row; `upstream_headers` is the count of header
    /// lines of the request built for the upstream.
    Upgrade {
        upstream: String,
        subprotocol: Option<String>,
        upstream_headers: usize,
    },
    Rejected(Rejection),
}

/// `[websocket]` of the fixed configuration: the harness's (13, 8, 7; 426).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        versions: vec![13, 8, 7],
        version_mismatch_status: StatusCode::UPGRADE_REQUIRED,
    }
}

fn route(host: HostPattern, path: &str, select: Select) -> RouteConfig {
    RouteConfig {
        host,
        path: path.to_string(),
        origins: None,
        select,
        fallback: None,
        http: None,
        upgrades: vec![],
        subprotocols: [("chat.v2", "chat"), ("mqtt", "mqtt")]
            .iter()
            .map(|(n, u)| SubprotocolRoute {
                name: n.to_string(),
                upstream: u.to_string(),
            })
            .collect(),
        inspect: None,
        max_lifetime: None,
        max_lifetime_jitter: std::time::Duration::ZERO,
        auth: None,
    }
}

/// The fixed route configuration: every route option appears on some route (both selection
/// orders, fallback, origins, an `http` upstream, another `Upgrade` token, each host class).
fn routes() -> Vec<RouteConfig> {
    vec![
        route(HostPattern::Any, "/ws", Select::Client),
        route(HostPattern::Any, "/srv", Select::Server),
        RouteConfig {
            fallback: Some("fb".into()),
            origins: Some(vec!["https://app.example.com".into()]),
            ..route(HostPattern::Any, "/strict", Select::Client)
        },
        RouteConfig {
            fallback: Some("fb".into()),
            http: Some("web".into()),
            ..route(HostPattern::Any, "/web", Select::Client)
        },
        RouteConfig {
            fallback: Some("fb".into()),
            upgrades: vec![UpgradeRoute {
                token: "tcp".into(),
                upstream: "raw".into(),
            }],
            ..route(HostPattern::Any, "/raw", Select::Client)
        },
        route(
            HostPattern::Exact("only.example".into()),
            "/",
            Select::Client,
        ),
        RouteConfig {
            http: Some("web".into()),
            ..route(
                HostPattern::Suffix("example.com".into()),
                "/chat/",
                Select::Server,
            )
        },
    ]
}

/// Parses `head` with httparse, builds the `http` parts hyper would hand the gateway, and runs
/// the handshake steps the gateway's dispatch runs before dialing: the target checks
/// (`check_method_form`, `request_host`, `check_path`, `check_sni` as on a TLS connection for
/// `chat.example.com` when `h2`), the route table, `classify`, `Upgrade::check` and the upstream request. `h2` carries the request as an
/// RFC 8441 extended CONNECT instead, its `:protocol` taken from the first `Upgrade` line.
/// `None`: not a complete head, or one hyper would refuse before the gateway sees it.
pub fn handshake(head: &[u8], h2: bool) -> Option<HandshakeOutcome> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let carrier = if h2 { Carrier::H2 } else { Carrier::H1 };
    let mut b = http::Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(req.path?).ok()?)
        .version(match (h2, req.version?) {
            (true, _) => Version::HTTP_2,
            (false, 0) => Version::HTTP_10,
            (false, _) => Version::HTTP_11,
        });
    let mut protocol = None;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if h2 && protocol.is_none() && name == http::header::UPGRADE {
            protocol = Some(value.to_str().ok()?.to_owned());
        }
        b = b.header(name, value);
    }
    let (parts, ()) = b.body(()).ok()?.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let table = RouteTable::new(&routes());
    let ws = ws_config();
    let steps = || -> Result<HandshakeOutcome, Reject> {
        handshake::check_method_form(&parts, carrier)?;
        let host = handshake::request_host(&parts, carrier)?;
        handshake::check_path(path)?;
        handshake::check_sni(host, h2.then_some("chat.example.com"))?;
        let route = table.find(host, path).ok_or(Reject::NoRoute)?;
        let kind = handshake::classify(&parts, route, carrier, protocol.as_deref())?;
        let Some(upgrade) = Upgrade::check(&parts, route, &ws, carrier, kind, [7; 16]) else {
            let upstream = route.http.clone().ok_or(Reject::UpgradeRequired)?;
            return Ok(HandshakeOutcome::Plain { upstream });
        };
        let upgrade = upgrade?;
        let fwd = ForwardInfo {
            client: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 40000)),
            tls: h2,
            host,
        };
        let request = upgrade.upstream_request(&parts, &fwd);
        Ok(HandshakeOutcome::Upgrade {
            upstream: upgrade.upstream().to_owned(),
            subprotocol: upgrade.subprotocol().map(str::to_owned),
            upstream_headers: request.headers().len(),
        })
    };
    Some(steps().unwrap_or_else(|r| HandshakeOutcome::Rejected(Rejection::of(&r, carrier))))
}

// ---------------------------------------------------------------------------------------------
// handshake/tokens.rs and the subprotocol list of handshake/client.rs

/// What the token-list helpers make of a header's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenList {
    /// `tokens::elements`, in order.
    pub elements: Vec<Vec<u8>>,
    /// `tokens::protocol_name` of each element.
    pub protocol_names: Vec<Option<Vec<u8>>>,
    /// `tokens::is_token` of each element.
    pub is_token: Vec<bool>,
    /// `tokens::lists_token(.., probe)` and `tokens::protocol_matches` against each element.
    pub lists_probe: bool,
    pub protocol_matches_probe: Vec<bool>,
    /// Whether `HopByHop::of` (lines read as `Connection`) removes a header named `probe`.
    pub hop_by_hop_probe: Option<bool>,
}

fn header_map(name: HeaderName, lines: &[&[u8]]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(name.clone(), HeaderValue::from_bytes(line).ok()?);
    }
    Some(h)
}

/// Runs the token-list helpers over `lines` (as one header's lines) with `probe` as the token
/// looked for. `None`: a line is not a valid field value (hyper would not deliver it).
pub fn token_list(lines: &[&[u8]], probe: &str) -> Option<TokenList> {
    use handshake::tokens;
    let h = header_map(http::header::CONNECTION, lines)?;
    let elements: Vec<Vec<u8>> = tokens::elements(&h, http::header::CONNECTION)
        .map(<[u8]>::to_vec)
        .collect();
    let hop = tokens::HopByHop::of(&h);
    Some(TokenList {
        protocol_names: elements
            .iter()
            .map(|e| tokens::protocol_name(e).map(<[u8]>::to_vec))
            .collect(),
        is_token: elements.iter().map(|e| tokens::is_token(e)).collect(),
        lists_probe: tokens::lists_token(&h, http::header::CONNECTION, probe),
        protocol_matches_probe: elements
            .iter()
            .map(|e| tokens::protocol_matches(e, probe))
            .collect(),
        hop_by_hop_probe: HeaderName::from_bytes(probe.as_bytes())
            .ok()
            .map(|n| hop.contains(&n)),
        elements,
    })
}

/// The subprotocol names the fixed routes map (route `/ws`, selection by client order, and
/// `/srv`, by server order: both `["chat.v2", "mqtt"]`).
pub const MAPPED_SUBPROTOCOLS: [&str; 2] = ["chat.v2", "mqtt"];

/// What `negotiate` made of a `Sec-WebSocket-Protocol` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubprotocolOutcome {
    Selected(String),
    /// `Reject::BadSubprotocolList`: an element is not a token or is repeated.
    BadList(String),
    /// `Reject::NoSubprotocolMatch`: no mapped name offered and no fallback.
    NoMatch,
    /// Any other refusal: a valid handshake with these lines should not get one.
    Other(Rejection),
}

/// Runs `negotiate` on an otherwise valid version-13 handshake whose `Sec-WebSocket-Protocol`
/// lines are `lines`, on the client-order route (`server_order` false) or the server-order one.
/// `None`: a line is not a valid field value.
pub fn subprotocols(lines: &[&[u8]], server_order: bool) -> Option<SubprotocolOutcome> {
    let mut h = header_map(SEC_WEBSOCKET_PROTOCOL, lines)?;
    for (n, v) in [
        ("host", "gw.test"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    let mut req = http::Request::builder().uri("/ws").body(()).ok()?;
    *req.headers_mut() = h;
    let (parts, ()) = req.into_parts();
    let select = if server_order {
        Select::Server
    } else {
        Select::Client
    };
    let route = route(HostPattern::Any, "/ws", select);
    Some(
        match handshake::negotiate(&parts, &route, &ws_config(), Carrier::H1) {
            Ok(n) => match n.subprotocol {
                Some(s) => SubprotocolOutcome::Selected(s),
                None => SubprotocolOutcome::Other(Rejection {
                    status: 200,
                    reason: format!("no subprotocol without a fallback: {n:?}"),
                }),
            },
            Err(Reject::BadSubprotocolList(why)) => SubprotocolOutcome::BadList(why),
            Err(Reject::NoSubprotocolMatch { .. }) => SubprotocolOutcome::NoMatch,
            Err(r) => SubprotocolOutcome::Other(Rejection::of(&r, Carrier::H1)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// proxy_protocol.rs

/// What `proxy_protocol::parse` found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyParse {
    /// A header of `len` bytes; `addrs` are (source, destination) when it names the client.
    Complete {
        len: usize,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
    Incomplete {
        at_least: usize,
    },
    Invalid,
}

/// `proxy_protocol::parse(buf)`.
pub fn proxy_parse(buf: &[u8]) -> ProxyParse {
    match proxy_protocol::parse(buf) {
        Ok(Parse::Complete(h)) => ProxyParse::Complete {
            len: h.len,
            addrs: h.addrs.map(|a| (a.source, a.destination)),
        },
        Ok(Parse::Incomplete { at_least }) => ProxyParse::Incomplete { at_least },
        Err(ProxyError::Invalid(_)) => ProxyParse::Invalid,
        Err(e @ (ProxyError::TimedOut | ProxyError::Io(_))) => {
            unreachable!("parse does no I/O: {e}")
        }
    }
}

/// `proxy_protocol::encode`: the header an upstream with `send_proxy_protocol` gets.
pub fn proxy_encode(v2: bool, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let version = if v2 {
        ProxyVersion::V2
    } else {
        ProxyVersion::V1
    };
    proxy_protocol::encode(
        version,
        ProxiedAddrs {
            source,
            destination,
        },
    )
    .expect("encoding a TCP address pair cannot fail")
}

// ---------------------------------------------------------------------------------------------
// config

/// One problem `config::load` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub problem: String,
}

/// Writes `text` to a file in a directory of its own (so relative certificate paths name
/// nothing) and runs `config::load` on it, the same path `run` and `check` take.
pub fn config_load(text: &str) -> Result<(), Vec<ConfigProblem>> {
    thread_local! {
        static FILE: std::path::PathBuf = {
            let dir = std::env::temp_dir().join(format!(
                "switchyard-fuzz-config-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).expect("a private temp dir");
            dir.join("switchyard.toml")
        };
    }
    let path = FILE.with(Clone::clone);
    std::fs::write(&path, text).expect("the config file can be written");
    match crate::config::load(&path) {
        Ok(_) => Ok(()),
        Err(errors) => {
            // `Display` is what `check` prints; it must hold for every error.
            let _shown = errors.to_string();
            Err(errors
                .errors
                .into_iter()
                .map(|e| ConfigProblem {
                    line: e.line,
                    key: e.key,
                    problem: e.problem,
                })
                .collect())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// handshake/target.rs

/// Whether `authority` passes `check_authority` and `path` passes `check_path`.
pub fn target(authority: &str, path: &str) -> (bool, bool) {
    (
        handshake::target::check_authority(authority).is_ok(),
        handshake::check_path(path).is_ok(),
    )
}

// ---------------------------------------------------------------------------------------------
// h1_gate.rs

/// What the keep-alive gate hands hyper from a request stream arriving in `chunks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRead {
    /// Every byte hyper got, in order.
    pub delivered: Vec<u8>,
    /// The status of the refused head, if one was refused.
    pub refused: Option<u16>,
}

/// Reads through an `h1_gate::RequestGate` (limit `max_bytes`, no first head) until it ends or
/// refuses, in reads of at most 61 bytes.
pub fn keep_alive_stream(chunks: &[&[u8]], max_bytes: usize) -> GateRead {
    use tokio::io::AsyncReadExt;
    let io = Chunked {
        chunks: chunks.iter().copied().collect(),
        consumed: 0,
    };
    let refusals = std::sync::Arc::new(crate::h1_gate::Refusals::default());
    let mut gate = crate::h1_gate::RequestGate::new(
        io,
        bytes::BytesMut::new(),
        max_bytes,
        std::sync::Arc::clone(&refusals),
    );
    let mut delivered = Vec::new();
    let refused = RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut buf = [0u8; 61];
            loop {
                // A refused head leaves the gate pending: the refusal resolves instead.
                tokio::select! {
                    biased;
                    read = gate.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => delivered.extend_from_slice(&buf[..n]),
                    },
                    reject = refusals.refused() => return Some(reject.status().as_u16()),
                }
            }
        })
    });
    GateRead { delivered, refused }
}

// ---------------------------------------------------------------------------------------------
// ws/follower.rs

/// What the frame follower made of a stream of one direction (see [`ws_follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFollowed {
    /// Every byte it let through, in order.
    pub forwarded: Vec<u8>,
    /// Offsets into `forwarded` at which a frame boundary was.
    pub boundaries: Vec<usize>,
    /// The verdict that stopped it (`Debug` text), if any.
    pub verdict: Option<String>,
    pub frames: u64,
    pub messages: u64,
    /// The first close frame's code and reason.
    pub close: Option<(u16, Vec<u8>)>,
}

/// Follows `chunks` (the reads of one direction) as the inspecting engine does: frames from the
/// client when `client`, with permessage-deflate (and so some extension) when `deflate`, and
/// limits of 1000 bytes per frame and 4000 per message when `limits`.
pub fn ws_follow(chunks: &[&[u8]], client: bool, deflate: bool, limits: bool) -> WsFollowed {
    use crate::ws::{Extensions, Follower, Limits, Sender};
    let sender = if client {
        Sender::Client
    } else {
        Sender::Upstream
    };
    let extensions = Extensions {
        permessage_deflate: deflate,
        any: deflate,
    };
    let limits = if limits {
        Limits {
            max_frame_bytes: Some(1000),
            max_message_bytes: Some(4000),
        }
    } else {
        Limits::default()
    };
    let mut follower = Follower::new(sender, extensions, limits);
    let got = crate::ws::follow_chunks(&mut follower, chunks);
    WsFollowed {
        forwarded: got.forwarded,
        boundaries: got.boundaries,
        verdict: got.verdict.map(|v| format!("{v:?}")),
        frames: got.frames,
        messages: got.messages,
        close: got.close.map(|c| (c.code, c.reason.as_bytes().to_vec())),
    }
}
