//! The keep-alive client of one fixed HTTP service the gateway itself asks (the forward-auth
//! service, SPEC §10): hyper-util's connection pool over the same [`Dialer`] as upstream
//! traffic (TCP, TLS against the Mozilla roots for `https://`), one server, no balancing, no
//! down-marking: every request tries the service afresh, and the caller bounds it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::dial::{Connect, Dialer};
use super::pool::PoolError;
use crate::config::{ServerAddr, UpstreamTls};
use crate::io::UpstreamStream;

/// How long an idle keep-alive connection to the service is kept for reuse.
const SERVICE_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A keep-alive client for bodiless requests (`GET`) to one service.
pub(crate) type ServiceClient = Client<ServiceConnector, Empty<Bytes>>;

/// The client of the service at `server` (`name` labels errors); `tls` for `https://`. A new
/// connection must connect within `connect_timeout`.
pub(crate) fn service_client(
    name: &str,
    server: ServerAddr,
    tls: bool,
    connect_timeout: Duration,
) -> Result<ServiceClient, PoolError> {
    let dialer = Dialer::for_service(tls.then(UpstreamTls::default))
        .map_err(|e| PoolError::new(name.to_owned(), e))?;
    let connector = ServiceConnector {
        dialer: Arc::new(dialer),
        server: Arc::new(server),
        timeout: connect_timeout,
    };
    Ok(Client::builder(TokioExecutor::new())
        // The caller sets Host: the URL's authority.
        .set_host(false)
        .pool_idle_timeout(SERVICE_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// Dials the one server of a service, whatever the request URI says.
#[derive(Debug, Clone)]
pub(crate) struct ServiceConnector {
    dialer: Arc<Dialer>,
    server: Arc<ServerAddr>,
    timeout: Duration,
}

/// A service connection is plain HTTP/1.1 with nothing to report to the pool: reused until idle.
impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Why a connection to the service could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl tower_service::Service<Uri> for ServiceConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ServiceConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ServiceConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ServiceConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(this.timeout, this.dialer.connect(&this.server, None)).await
            {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => Err(ServiceConnectError::Io(e)),
                Err(_) => Err(ServiceConnectError::Timeout),
            }
        })
    }
}
