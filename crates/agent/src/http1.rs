//! The bounded HTTP/1.1 server loop that the agent's own HTTP listeners
//! share (the metrics listener, `telemetry::http`, over TCP; the node API,
//! `node_api`, over a Unix socket): a fixed number of connections at once
//! (more are closed at once rather than queued), request headers within
//! [`HEADER_TIMEOUT`] and 16 KiB, and each connection closed after
//! [`CONNECTION_LIFETIME`] (keep-alive included).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// How long a client has to send its request headers.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (keep-alive included).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// A listener: TCP or Unix.
pub(crate) trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections until the task is aborted, at most `max` at once;
/// `handle` serves each one (usually through [`serve`]). `what` names the
/// listener in the log.
pub(crate) async fn accept_bounded<L, F, Fut>(
    listener: L,
    max: usize,
    what: &'static str,
    handle: F,
) where
    L: Accept,
    F: Fn(L::Io) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let io = match listener.accept_io().await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Busy: close at once rather than queue without bound.
            continue;
        };
        let served = handle(io);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}

/// Serves one connection with `svc`, within the bounds of the module docs.
pub(crate) async fn serve<I, S>(io: I, svc: S, what: &'static str)
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
    S: HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        tracing::debug!(error = %e, "{what} connection failed");
    }
}
