//! The front for HTTP/3 request streams (SPEC §12): turns a request the h3 layer decoded into a
//! [`Conn::dispatch`] call and its [`Outcome`] into h3 frames on the same stream. A switched
//! extended CONNECT (RFC 9220) gets its 200 and the stream becomes the tunnel's client leg;
//! ordinary requests are forwarded to the route's `http` upstream with their bodies; every
//! failure is `Reject::response` for [`Carrier::H3`], after which the stream ends and the
//! connection lives on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::Code;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

use super::Conn;
use super::dispatch::Outcome;
use crate::access::AccessRecord;
use crate::error::{Carrier, Reject};
use crate::handshake;
use crate::io::{self, H3RequestStream};
use crate::upstream::ForwardBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Conn {
    /// Serves one request stream to its end (or, for a tunnel, until the tunnel task has it).
    /// Never fails: every problem is an answer on the stream or a stream reset.
    pub(crate) async fn handle_h3(self: Arc<Self>, req: Request<()>, mut stream: H3RequestStream) {
        let mut rec = AccessRecord::new(self.client, "HTTP/3");
        let (mut parts, ()) = req.into_parts();
        let protocol = parts
            .extensions
            .get::<h3::ext::Protocol>()
            .map(|p| p.as_str().to_owned());
        let status = match self
            .dispatch(&mut parts, protocol.as_deref(), &mut rec)
            .await
        {
            Ok(Outcome::Plain {
                upstream,
                host,
                key,
            }) => {
                return self
                    .proxy_plain_h3(&parts, stream, &upstream, key, &host)
                    .await;
            }
            Ok(Outcome::Refused(response)) => {
                let status = response.status().as_u16();
                send_answer(&mut stream, response).await;
                status
            }
            Ok(Outcome::Switched(switched)) => {
                let status = switched.response.status().as_u16();
                match stream.send_response(switched.response).await {
                    Ok(()) => {
                        let client = async move { Some(io::h3_client_leg(stream)) };
                        let (up, lease) = (switched.upstream, switched.lease);
                        let (permit, plan) = (switched.stream_permit, switched.plan);
                        self.open_tunnel(client, up, lease, permit, plan, &rec);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "client went away before the tunnel opened")
                    }
                }
                status
            }
            Err(reject) => reject_h3(&reject, &mut stream).await,
        };
        self.gateway.metrics.handshake(rec.route_label(), status);
        rec.log_handshake(status);
    }

    /// Reverse-proxies an ordinary request to the `http` upstream `name` (by `key` for a hash
    /// pool), as on h2: the request stream's DATA is the request body, the upstream's answer
    /// goes out as HEADERS and DATA.
    async fn proxy_plain_h3(
        &self,
        parts: &Parts,
        stream: H3RequestStream,
        name: &str,
        key: Option<u64>,
        host: &str,
    ) {
        let (mut send, recv) = stream.split();
        let body: ForwardBody = RequestBody(recv).boxed_unsync();
        let response = match self.plain_request(parts, body, host) {
            Err(reject) => Err(reject),
            Ok(request) => self.runtime.upstreams.forward(name, request, key).await,
        };
        match response {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                handshake::strip_hop_by_hop(&mut head.headers);
                send_answer(&mut send, Response::from_parts(head, body)).await;
            }
            Err(reject) => {
                let response = reject.response(Carrier::H3);
                let response =
                    response.map(|b| http_body_util::Full::new(b).map_err(|e| match e {}));
                send_answer(&mut send, response).await;
            }
        }
    }
}

/// The gateway's own answer for `reject` on an h3 stream (SPEC §12 as §6: the same status,
/// the stream ends after it, the connection stays up). Returns the status.
pub(crate) async fn reject_h3(reject: &Reject, stream: &mut H3RequestStream) -> u16 {
    let response = reject.response(Carrier::H3);
    let status = response.status().as_u16();
    let response = response.map(|b| http_body_util::Full::new(b).map_err(|e| match e {}));
    send_answer(stream, response).await;
    status
}

/// Writes `response` (head, body, FIN) on an h3 stream. A client that went away, or a body that
/// failed half-way, ends the stream with a reset instead, so a cut answer is never a clean one.
async fn send_answer<S, B>(stream: &mut h3::server::RequestStream<S, Bytes>, response: Response<B>)
where
    S: h3::quic::SendStream<Bytes>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (head, body) = response.into_parts();
    if let Err(e) = stream.send_response(Response::from_parts(head, ())).await {
        return tracing::debug!(error = %e, "h3 answer not sent");
    }
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not relayed (the gateway relays no trailers on h2 either).
                Err(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "answer body failed: resetting the h3 stream");
                return stream.stop_stream(Code::H3_INTERNAL_ERROR);
            }
        };
        if data.is_empty() {
            continue;
        }
        if let Err(e) = stream.send_data(data).await {
            return tracing::debug!(error = %e, "h3 answer body not sent");
        }
    }
    if let Err(e) = stream.finish().await {
        tracing::debug!(error = %e, "h3 stream not finished");
    }
}

/// The receiving half of a request stream as a request body for the `http` upstream.
struct RequestBody(h3::server::RequestStream<h3_quinn::RecvStream, Bytes>);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.0.poll_recv_data(cx)) {
            Ok(Some(mut data)) => {
                Poll::Ready(Some(Ok(Frame::data(data.copy_to_bytes(data.remaining())))))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }
}
