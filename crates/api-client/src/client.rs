//! The HTTP client: URL policy, connections (pooled), JSON calls, and the
//! choice among a controller's URLs and addresses (`failover`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_proto::api::ErrorBody;

use crate::ClientError;
use crate::failover::{self, AddrChoice};
use crate::retry;
use crate::tls::{SeenCert, client_config, tls_failure_hint};

/// Largest response body read (a full map of tens of thousands of peers).
const MAX_RESPONSE: usize = 32 << 20;
/// Idle pooled connections kept (per controller URL).
const POOL_SIZE: usize = 8;
/// Controller URLs one client takes at most.
pub const MAX_URLS: usize = 16;

/// Whom to trust for `https://`.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The operating system's CA certificates.
    SystemRoots,
    /// CA certificates from a PEM file (for example the controller's own
    /// self-signed `tls/cert.pem`).
    CaFile(PathBuf),
    /// CA certificates as PEM bytes.
    CaPem(Vec<u8>),
    /// Exactly the certificate with this SHA-256 (as printed by the controller).
    Fingerprint([u8; 32]),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` for loopback), optionally with a path prefix.
    pub base_url: String,
    /// More URLs of the same controller (its replicas; at most [`MAX_URLS`]
    /// in all). A call whose connection to the URL in use fails (nothing was
    /// sent yet), or that is answered 503 and is safe to send again, is
    /// tried on the next one, which then stays in use;
    /// [`Client::fail_over`] moves on explicitly (a stream that broke).
    pub more_urls: Vec<String>,
    /// Where a fleet starts: URL `seed % n` first, and of a host name's
    /// addresses the `seed % m`-th (agents pass a number from their key, so
    /// they spread over replicas and over a name's records). 0: the first.
    pub spread_seed: u64,
    /// Whom to trust.
    pub trust: Trust,
    /// Allow cleartext `http://` to non-loopback hosts (never do this in production).
    pub allow_insecure_http: bool,
    /// Timeout of a whole call (not of a map stream).
    pub timeout: Duration,
    /// Timeout of connecting plus the TLS handshake.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Defaults: system roots, 30 s calls, 10 s connect.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            more_urls: Vec::new(),
            spread_seed: 0,
            trust: Trust::SystemRoots,
            allow_insecure_http: false,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// One controller URL.
struct Transport {
    url: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The certificate the server last presented, and how we trust it (for
    /// the hint on a refused certificate).
    seen: SeenCert,
    pool: Mutex<Vec<Sender>>,
    /// Which of the host's addresses to try first.
    choice: Mutex<AddrChoice>,
}

/// What the clones of a client share.
struct Shared {
    transports: Vec<Transport>,
    /// Index of the URL in use.
    current: AtomicUsize,
    /// Times the URL or address in use changed.
    moves: AtomicU64,
    trust: Trust,
    timeout: Duration,
    connect_timeout: Duration,
    seed: u64,
}

/// A controller client. Cheap to clone; clones share the connection pools
/// and the controller URL in use.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    bearer: Option<Arc<HeaderValue>>,
}

/// Where a client is connected or will connect next ([`Client::current`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentController {
    /// The URL in use.
    pub url: String,
    /// Its position in [`Client::urls`].
    pub index: usize,
    /// The address of that URL's host that answered last.
    pub address: Option<SocketAddr>,
    /// Times the URL or address in use changed since the client was made.
    pub moves: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.transport();
        f.debug_struct("Client")
            .field("host", &t.host)
            .field("port", &t.port)
            .field("urls", &self.shared.transports.len())
            .field("tls", &t.tls.is_some())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks one URL against the client's policy and prepares its transport.
fn transport(url: &str, cfg: &ClientConfig) -> Result<Transport, ClientError> {
    let bad = |why: &str| ClientError::InvalidUrl(format!("{url:.100}: {why}"));
    if url.len() > 2048 {
        return Err(ClientError::InvalidUrl("too long".into()));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be https:// or http://")),
    };
    if uri.query().is_some() {
        return Err(bad("must not contain a query string"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.as_str().contains('@') {
        return Err(bad("must not contain credentials"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !https && !cfg.allow_insecure_http && !is_loopback(&host) {
        return Err(ClientError::InsecureHttp(host));
    }
    // The TLS server name is the URL's host name whichever of its addresses
    // the connection goes to.
    let (tls, seen) = if https {
        let name = ServerName::try_from(host.clone())
            .map_err(|_| bad("host is not a valid TLS server name"))?;
        let (config, seen) = client_config(&cfg.trust)?;
        (Some((TlsConnector::from(config), name)), seen)
    } else {
        (None, SeenCert::default())
    };
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let authority = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
    Ok(Transport {
        url: url.to_owned(),
        host,
        port,
        authority,
        base_path,
        tls,
        seen,
        pool: Mutex::new(Vec::new()),
        choice: Mutex::new(AddrChoice::default()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Client {
    /// Validates the URLs and trust settings; does not connect yet.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let mut urls: Vec<&str> = vec![cfg.base_url.as_str()];
        for u in &cfg.more_urls {
            if !urls.contains(&u.as_str()) {
                urls.push(u);
            }
        }
        if urls.len() > MAX_URLS {
            return Err(ClientError::InvalidUrl(format!(
                "{} controller URLs given; at most {MAX_URLS}",
                urls.len()
            )));
        }
        let transports = urls
            .iter()
            .map(|u| transport(u, &cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let start = (cfg.spread_seed % transports.len() as u64) as usize;
        Ok(Client {
            shared: Arc::new(Shared {
                transports,
                current: AtomicUsize::new(start),
                moves: AtomicU64::new(0),
                trust: cfg.trust.clone(),
                timeout: cfg.timeout,
                connect_timeout: cfg.connect_timeout,
                seed: cfg.spread_seed,
            }),
            bearer: None,
        })
    }

    /// Every controller URL, in the order given.
    pub fn urls(&self) -> Vec<String> {
        self.shared
            .transports
            .iter()
            .map(|t| t.url.clone())
            .collect()
    }

    /// The URL in use and the address that answered last.
    pub fn current(&self) -> CurrentController {
        let index = self.index();
        let t = &self.shared.transports[index];
        CurrentController {
            url: t.url.clone(),
            index,
            address: lock(&t.choice).last,
            moves: self.shared.moves.load(Ordering::Relaxed),
        }
    }

    /// Leaves the URL and address in use (it failed, or asked us to go):
    /// the next URL in the list becomes the one in use, and the address that
    /// answered last is tried last on the next connection to this URL (for
    /// one URL whose name has several addresses: the next address). Idle
    /// pooled connections to it are dropped. Returns the URL now in use.
    pub fn fail_over(&self) -> String {
        let n = self.shared.transports.len();
        let i = self.index();
        let t = &self.shared.transports[i];
        lock(&t.pool).clear();
        lock(&t.choice).leave();
        let next = (i + 1) % n;
        if next != i {
            self.shared.current.store(next, Ordering::Relaxed);
            self.shared.moves.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.transports[next].url.clone()
    }

    /// URL `index` answered 503: the next one becomes the one in use,
    /// unless another call moved already. Its connections stay pooled (they
    /// work; the replica behind them does not, for now).
    fn leave_unavailable(&self, index: usize) {
        let n = self.shared.transports.len();
        let next = (index + 1) % n;
        if self
            .shared
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.shared.moves.fetch_add(1, Ordering::Relaxed);
        }
        let (from, to) = (
            &self.shared.transports[index].url,
            &self.shared.transports[next].url,
        );
        tracing::info!(%from, %to, "the controller URL in use answered 503 (unavailable); trying the next");
    }

    fn index(&self) -> usize {
        self.shared.current.load(Ordering::Relaxed) % self.shared.transports.len()
    }

    fn transport(&self) -> &Transport {
        &self.shared.transports[self.index()]
    }

    /// A client that sends `Authorization: Bearer <credential>` (shares the pool).
    pub fn with_bearer(&self, credential: &str) -> Result<Client, ClientError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
            ClientError::Trust("credential has characters not allowed in a header".into())
        })?;
        v.set_sensitive(true);
        Ok(Client {
            shared: self.shared.clone(),
            bearer: Some(Arc::new(v)),
        })
    }

    /// A TCP connection to one of `t`'s host's addresses: each is tried in
    /// the order [`AddrChoice::order`] gives, sharing the connect timeout.
    async fn tcp(&self, t: &Transport) -> Result<TcpStream, ClientError> {
        let addr = format!("{}:{}", t.host, t.port);
        let fail = |why: String| ClientError::Connect {
            addr: addr.clone(),
            why,
            refused_cert: None,
        };
        let deadline = tokio::time::Instant::now() + self.shared.connect_timeout;
        let resolved: Vec<SocketAddr> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host((t.host.as_str(), t.port)))
                .await
                .map_err(|_| ClientError::Timeout("connect"))?
                .map_err(|e| fail(format!("resolving {}: {e}", t.host)))?
                .take(failover::MAX_ADDRS)
                .collect();
        let order = lock(&t.choice).order(&resolved, self.shared.seed);
        if order.is_empty() {
            return Err(fail(format!("{} has no address", t.host)));
        }
        let mut errors = Vec::new();
        for (k, a) in order.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // The time left, shared by the addresses not tried yet.
            let budget = left / u32::try_from(order.len() - k).unwrap_or(1);
            match tokio::time::timeout(budget, TcpStream::connect(*a)).await {
                Ok(Ok(tcp)) => {
                    let moved = lock(&t.choice).connected(*a);
                    if moved {
                        self.shared.moves.fetch_add(1, Ordering::Relaxed);
                    }
                    if !errors.is_empty() {
                        tracing::info!(host = %t.host, address = %a, failed = %errors.join("; "), "connected to another address of the controller's name");
                    }
                    return Ok(tcp);
                }
                Ok(Err(e)) => errors.push(format!("{a}: {e}")),
                Err(_) => errors.push(format!("{a}: no answer within {budget:?}")),
            }
        }
        if errors.is_empty() {
            return Err(ClientError::Timeout("connect"));
        }
        Err(fail(errors.join("; ")))
    }

    async fn connect(&self, t: &Transport) -> Result<Sender, ClientError> {
        let addr = format!("{}:{}", t.host, t.port);
        let tcp = self.tcp(t).await?;
        let connect = async {
            let _ = tcp.set_nodelay(true);
            let conn_err = |e: hyper::Error| ClientError::Connect {
                addr: addr.clone(),
                why: e.to_string(),
                refused_cert: None,
            };
            match &t.tls {
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                        let seen = t.seen.get();
                        let (why, refused_cert) =
                            match tls_failure_hint(&e, seen, &self.shared.trust) {
                                Some(hint) => (format!("TLS: {e}: {hint}"), seen),
                                None => (format!("TLS: {e}"), None),
                            };
                        ClientError::Connect {
                            addr: addr.clone(),
                            why,
                            refused_cert,
                        }
                    })?;
                    let (sender, conn) = http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(conn_err)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(sender)
                }
                None => {
                    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                        .await
                        .map_err(conn_err)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(sender)
                }
            }
        };
        // The TLS and HTTP handshakes get a connect timeout of their own.
        tokio::time::timeout(self.shared.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
    }

    async fn sender(&self, t: &Transport, pooled: bool) -> Result<Sender, ClientError> {
        if pooled {
            loop {
                let candidate = lock(&t.pool).pop();
                let Some(mut s) = candidate else { break };
                if !s.is_closed() && s.ready().await.is_ok() {
                    return Ok(s);
                }
            }
        }
        self.connect(t).await
    }

    fn give_back(&self, index: usize, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut pool = lock(&self.shared.transports[index].pool);
        if pool.len() < POOL_SIZE {
            pool.push(s);
        }
    }

    fn build(
        t: &Transport,
        bearer: Option<&HeaderValue>,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: &[(&str, String)],
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", t.base_path))
            .header(header::HOST, t.authority.clone())
            .header(
                header::USER_AGENT,
                concat!("weft-api-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(b) = bearer {
            req = req.header(header::AUTHORIZATION, b.clone());
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(b)
            }
            None => Full::new(Bytes::new()),
        };
        req.body(body)
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))
    }

    /// Sends a request and returns the raw response (body not yet read),
    /// the connection and the index of the URL it went to. When the
    /// connection to the URL in use fails (nothing was sent), the next URLs
    /// are tried in turn and the first that connects stays in use.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, String)],
        pooled: bool,
    ) -> Result<(http::Response<Incoming>, Sender, usize), ClientError> {
        let body = body.map(Bytes::from);
        let n = self.shared.transports.len();
        let start = self.index();
        let mut first_error = None;
        for k in 0..n {
            let i = (start + k) % n;
            let t = &self.shared.transports[i];
            let mut s = match self.sender(t, pooled).await {
                Ok(s) => s,
                Err(e) if n > 1 && failover::unreachable(&e) => {
                    tracing::debug!(url = %t.url, error = %e, "controller URL unreachable; trying the next");
                    first_error.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if k > 0
                && self
                    .shared
                    .current
                    .compare_exchange(start, i, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.shared.moves.fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %t.url, "the controller URL in use did not answer; moved to the next");
            }
            let req = Self::build(
                t,
                self.bearer.as_deref(),
                method.clone(),
                path,
                body.clone(),
                extra,
            )?;
            let resp = s
                .send_request(req)
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            return Ok((resp, s, i));
        }
        Err(first_error.unwrap_or(ClientError::Timeout("connect")))
    }

    /// One JSON call: returns the status and body bytes of a 2xx response, or
    /// the controller's `{code, message}` as [`ClientError::Api`]. With
    /// several URLs, a call that is safe to send again
    /// ([`retry::safe_after_503`]) and is answered 503 (that replica cannot
    /// reach the database, or is stopping) goes to the next URL, which then
    /// stays in use; each URL is tried once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let n = self.shared.transports.len();
        let again = n > 1 && retry::safe_after_503(&method, path);
        let work = async {
            let mut tried = 0;
            loop {
                let (resp, sender, index) = self
                    .send(method.clone(), path, body.clone(), &[], true)
                    .await?;
                tried += 1;
                let status = resp.status();
                let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| ClientError::Http(format!("reading response: {e}")))?
                    .to_bytes();
                self.give_back(index, sender);
                if status == StatusCode::SERVICE_UNAVAILABLE && again && tried < n {
                    self.leave_unavailable(index);
                    continue;
                }
                if !status.is_success() {
                    return Err(api_error(status, &bytes));
                }
                return Ok((status, bytes));
            }
        };
        tokio::time::timeout(self.shared.timeout, work)
            .await
            .map_err(|_| ClientError::Timeout("request"))?
    }

    /// A JSON call with a JSON response.
    pub async fn request<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string())))
            .transpose()?;
        let (_, bytes) = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Opens a Server-Sent Events stream at `path` on a connection of its own
    /// (not pooled): the response body and that connection, or the
    /// controller's error. `what` names the stream in a timeout error.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        extra: &[(&str, String)],
        what: &'static str,
    ) -> Result<(Incoming, Sender), ClientError> {
        let (resp, sender, _) = tokio::time::timeout(
            self.shared.timeout,
            self.send(Method::GET, path, None, extra, false),
        )
        .await
        .map_err(|_| ClientError::Timeout(what))??;
        let status = resp.status();
        if !status.is_success() {
            let bytes = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok((resp.into_body(), sender))
    }

    /// A JSON call whose response body is ignored (204 and the like).
    pub async fn request_no_content<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string())))
            .transpose()?;
        self.call(method, path, body).await.map(|_| ())
    }
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        code: format!("http_{}", status.as_u16()),
        message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    });
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_cleartext_to_non_loopback() {
        let plain = |url: &str, allow| {
            Client::new(ClientConfig {
                allow_insecure_http: allow,
                ..ClientConfig::new(url)
            })
        };
        assert!(matches!(
            plain("http://controller.example:8080", false),
            Err(ClientError::InsecureHttp(_))
        ));
        assert!(matches!(
            plain("http://10.0.0.1", false),
            Err(ClientError::InsecureHttp(_))
        ));
        assert!(plain("http://10.0.0.1", true).is_ok());
        assert!(plain("http://127.0.0.1:1", false).is_ok());
        assert!(plain("http://localhost:1", false).is_ok());
        assert!(plain("http://[::1]:1", false).is_ok());
        assert!(matches!(
            plain("ftp://x", false),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            plain("https://u:p@x", false),
            Err(ClientError::InvalidUrl(_))
        ));
    }

    #[test]
    fn escapes_path_segments() {
        assert_eq!(escape("a/b c"), "a%2Fb%20c");
        assert_eq!(escape("lab-1"), "lab-1");
    }
}
