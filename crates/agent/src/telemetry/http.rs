//! `weftd --metrics-listen ADDR`: a minimal HTTP/1.1 server for Prometheus
//! (off by default). `GET /metrics` only (404 for other paths, 405 for other
//! methods); what it serves comes from the supervisor through the same
//! channel as the local API (`LocalRequest::Metrics`), so a scrape reads the
//! same state `weft metrics` does.
//!
//! # Where it may listen
//!
//! Metrics describe this node's peers and traffic, so by default they are not
//! offered to the networks the host sits on:
//! - a loopback address: bound at start (a bind error stops weftd);
//! - one of this node's overlay addresses, as the last network map gave them
//!   (cached in the state directory): accepted at start, and bound as soon as
//!   the address exists on its `weft*` interface (retried every second; the
//!   interface comes up with the map). Peers reach it through the tunnel,
//!   under the access policy like any other port. On a node that has never
//!   received a map, use loopback first (the overlay address is not known yet);
//! - anything else (a LAN address, `0.0.0.0`, `::`) is refused at start with an
//!   error, unless `--metrics-listen-public` forces it.
//!
//! # Bounds
//!
//! At most [`MAX_CONNECTIONS`] connections at once (more are closed at once),
//! request headers within [`HEADER_TIMEOUT`](crate::http1::HEADER_TIMEOUT) and 16 KiB, a connection lives at
//! most [`CONNECTION_LIFETIME`](crate::http1::CONNECTION_LIFETIME), and a scrape waits at most [`ANSWER_TIMEOUT`]
//! for the supervisor.
//!
//! # Format
//!
//! Content negotiation as Prometheus servers do it: a scraper whose `Accept`
//! names `application/openmetrics-text` gets OpenMetrics text (ending in
//! `# EOF`); everyone else gets the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), the one `curl` users and older scrapers read.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use weft_proto::local::{LocalRequest, LocalResponse};
use weft_proto::netmap::NetworkMap;

use crate::api::ApiCall;
use crate::state::StateDir;

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 4;
/// How long a scrape waits for the supervisor's answer.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a listener on an overlay address retries until the address exists.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// `weftd --metrics-listen ADDR [--metrics-listen-public]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen {
    /// Where to serve `GET /metrics`.
    pub addr: SocketAddr,
    /// Serve on any address, not only loopback or this node's overlay
    /// addresses (`--metrics-listen-public`).
    pub public: bool,
}

/// The running listener; dropping it stops it.
#[derive(Debug, Default)]
pub(crate) struct Listener(Option<JoinHandle<()>>);

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Where the listener may go, decided at start.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Bind now; failing to is an error.
    Now,
    /// One of this node's overlay addresses: bind once it exists.
    Overlay,
}

/// Decides whether `want` may be served (see the module docs); `overlay` are
/// this node's overlay addresses from the cached map.
fn placement(want: &MetricsListen, overlay: &[IpAddr]) -> anyhow::Result<Placement> {
    let ip = want.addr.ip();
    if want.public || ip.is_loopback() {
        return Ok(Placement::Now);
    }
    if overlay.contains(&ip) {
        return Ok(Placement::Overlay);
    }
    let known = if overlay.is_empty() {
        "this node has no network map yet, so its overlay addresses are unknown".to_owned()
    } else {
        let list: Vec<String> = overlay.iter().map(ToString::to_string).collect();
        format!("this node's overlay addresses are {}", list.join(", "))
    };
    bail!(
        "--metrics-listen {}: metrics are served only on loopback or on one of this node's \
         overlay addresses ({known}); use 127.0.0.1:{port}, an overlay address, or add \
         --metrics-listen-public to serve them on {ip} anyway",
        want.addr,
        port = want.addr.port(),
    )
}

/// This node's addresses in every network of `map`.
fn overlay_addresses(map: &NetworkMap) -> Vec<IpAddr> {
    map.networks
        .iter()
        .flat_map(|n| [Some(IpAddr::V4(n.ipv4)), n.ipv6.map(IpAddr::V6)])
        .flatten()
        .collect()
}

/// Starts the listener `want` asks for (nothing for `None`). Refuses an
/// address that is neither loopback nor one of this node's overlay addresses
/// (unless forced), and fails when a loopback or forced address cannot be bound.
pub(crate) async fn start(
    want: Option<&MetricsListen>,
    state: &StateDir,
    calls: mpsc::Sender<ApiCall>,
) -> anyhow::Result<Listener> {
    let Some(want) = want else {
        return Ok(Listener(None));
    };
    let overlay = match state.load_map() {
        Ok(Some(map)) => overlay_addresses(&map),
        Ok(None) | Err(_) => Vec::new(),
    };
    let addr = want.addr;
    match placement(want, &overlay)? {
        Placement::Now => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
            tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
            Ok(Listener(Some(tokio::spawn(serve(listener, calls)))))
        }
        Placement::Overlay => Ok(Listener(Some(tokio::spawn(async move {
            let listener = bind_when_present(addr).await;
            serve(listener, calls).await;
        })))),
    }
}

/// Binds `addr` once it exists on this host (the overlay interface is up).
async fn bind_when_present(addr: SocketAddr) -> TcpListener {
    let mut logged = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
                return l;
            }
            Err(e) => {
                if !logged {
                    tracing::info!(%addr, error = %e, "metrics listener waits for the overlay address to exist");
                    logged = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

/// Accepts connections until the task is aborted.
async fn serve(listener: TcpListener, calls: mpsc::Sender<ApiCall>) {
    crate::http1::accept_bounded(listener, MAX_CONNECTIONS, "metrics listener", |stream| {
        let calls = calls.clone();
        let svc = service_fn(move |req| answer(req, calls.clone()));
        crate::http1::serve(stream, svc, "metrics")
    })
    .await;
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the client asks for OpenMetrics (Prometheus does).
fn wants_openmetrics<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn answer(
    req: Request<Incoming>,
    calls: mpsc::Sender<ApiCall>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: this server has only /metrics\n",
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics is served\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let openmetrics = wants_openmetrics(&req);
    Ok(match ask(&calls, openmetrics).await {
        Ok((content_type, text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Err(message) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{message}\n")),
    })
}

/// Asks the supervisor for the exposition: `(content type, text)`.
async fn ask(calls: &mpsc::Sender<ApiCall>, openmetrics: bool) -> Result<(String, String), String> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        calls
            .send((LocalRequest::Metrics { openmetrics }, tx))
            .await
            .map_err(|_| "the agent is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the agent is shutting down".to_owned())
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Err(_) => Err("the agent did not answer in time".to_owned()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(LocalResponse::Metrics { content_type, text })) => Ok((content_type, text)),
        Ok(Ok(LocalResponse::Error { message, .. })) => Err(message),
        Ok(Ok(_)) => Err("the agent answered a different question".to_owned()),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
