//! The HTTP/1.1 upgrade client: one upgrade request head out on a fresh connection, one answer
//! head in (SPEC §4). Checking a 101's headers is the pure [`crate::handshake`]'s job; this file
//! only tells a 101 (the connection is now the tunnel's) from anything else (relayed).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pool::ServerLease;
use crate::error::Reject;
use crate::error::UpstreamFault;

/// What an upstream answered to the upgrade request.
pub(crate) enum Answer {
    /// 101: the head, and the connection (with any bytes the upstream sent after its head).
    Switched {
        head: http::response::Parts,
        io: Upgraded,
        lease: ServerLease,
    },
    /// Anything else, relayed to the client and never tunnelled.
    Refused(Response<Incoming>),
}

/// Sends `request` on `io`, a fresh connection to the lease's server of the pool `upstream`, and
/// waits at most `timeout` for the answer head. Nothing is retried: the request may have reached
/// the upstream.
pub(crate) async fn send<S>(
    io: S,
    lease: ServerLease,
    request: Request<()>,
    timeout: Duration,
    upstream: &str,
) -> Result<Answer, Reject>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|_| Reject::UpstreamUnreachable)?;
    tokio::spawn(conn.with_upgrades());
    let request = request.map(|()| Empty::new());
    let mut response = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Err(_) => return Err(Reject::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(upstream, server = %lease.server().label, error = %e, "upstream handshake failed");
            return Err(Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse));
        }
        Ok(Ok(r)) => r,
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Answer::Refused(response));
    }
    let upgrade = hyper::upgrade::on(&mut response);
    let (head, _) = response.into_parts();
    let io = upgrade
        .await
        .map_err(|_| Reject::UpstreamBadHandshake(UpstreamFault::LostAfter101))?;
    Ok(Answer::Switched { head, io, lease })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::config::Balance;
    use crate::upstream::pool::tests::pool;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn lease() -> ServerLease {
        ServerLease::new(Arc::clone(&pool(Balance::RoundRobin, 1).servers()[0]))
    }

    fn request() -> Request<()> {
        Request::get("/ws")
            .header("host", "gw.test")
            .header("upgrade", "tcp")
            .header("connection", "Upgrade")
            .body(())
            .unwrap()
    }

    /// The upstream end of an in-memory connection: reads the request head, then writes
    /// `answer` and, unless `close`, stays open.
    fn upstream(answer: &'static [u8], close: bool) -> DuplexStream {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if theirs.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = theirs.write_all(answer).await;
            if close {
                drop(theirs);
            } else {
                std::future::pending::<()>().await;
            }
        });
        ours
    }

    async fn answer(answer: &'static [u8], close: bool) -> Result<Answer, Reject> {
        send(upstream(answer, close), lease(), request(), TIMEOUT, "p").await
    }

    #[tokio::test]
    async fn a_101_switches_and_keeps_the_bytes_after_its_head() {
        let got = answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\nearly",
            false,
        )
        .await;
        let Ok(Answer::Switched { head, io, .. }) = got else {
            panic!("not switched");
        };
        assert_eq!(head.headers["upgrade"], "tcp");
        let mut io = TokioIo::new(io);
        let mut early = [0u8; 5];
        io.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
    }

    #[tokio::test]
    async fn other_statuses_are_refused_for_relaying() {
        let got = answer(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let Ok(Answer::Refused(res)) = got else {
            panic!("not refused");
        };
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn transport_faults_are_typed() {
        // (answer, close after it, reject)
        #[rustfmt::skip]
        let rows: &[(&[u8], bool, Reject)] = &[
            (b"not http at all\r\n\r\n", false, Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse)),
            (b"", true, Reject::UpstreamBadHandshake(UpstreamFault::NoValidResponse)),
        ];
        for (bytes, close, want) in rows {
            let bytes: &'static [u8] = bytes;
            let got = answer(bytes, *close).await;
            assert_eq!(
                got.err().as_ref(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_is_a_timeout() {
        let got = answer(b"", false).await;
        assert_eq!(got.err(), Some(Reject::UpstreamTimeout));
    }
}
