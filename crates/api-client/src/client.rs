//! The HTTP client: URL policy, connections (pooled), JSON calls.

use std::net::IpAddr;
use std::path::PathBuf;
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
use crate::tls::{SeenCert, client_config, tls_failure_hint};

/// Largest response body read (a full map of tens of thousands of peers).
const MAX_RESPONSE: usize = 32 << 20;
/// Idle pooled connections kept.
const POOL_SIZE: usize = 8;

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
            trust: Trust::SystemRoots,
            allow_insecure_http: false,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) type Sender = SendRequest<Full<Bytes>>;

struct Transport {
    host: String,
    port: u16,
    authority: HeaderValue,
    base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The certificate the server last presented, and how we trust it (for
    /// the hint on a refused certificate).
    seen: SeenCert,
    trust: Trust,
    pool: Mutex<Vec<Sender>>,
    timeout: Duration,
    connect_timeout: Duration,
}

/// A controller client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    bearer: Option<Arc<HeaderValue>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.transport.host)
            .field("port", &self.transport.port)
            .field("tls", &self.transport.tls.is_some())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// Validates the URL and trust settings; does not connect yet.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl(why.to_owned());
        if cfg.base_url.len() > 2048 {
            return Err(bad("too long"));
        }
        let uri: http::Uri = cfg.base_url.parse().map_err(|_| bad("not a URL"))?;
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
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| bad("host is not a valid TLS server name"))?;
            let (config, seen) = client_config(&cfg.trust)?;
            Some((TlsConnector::from(config), name, seen))
        } else {
            None
        };
        let (tls, seen) = match tls {
            Some((c, n, seen)) => (Some((c, n)), seen),
            None => (None, SeenCert::default()),
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let authority = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        Ok(Client {
            transport: Arc::new(Transport {
                host,
                port,
                authority,
                base_path,
                tls,
                seen,
                trust: cfg.trust.clone(),
                pool: Mutex::new(Vec::new()),
                timeout: cfg.timeout,
                connect_timeout: cfg.connect_timeout,
            }),
            bearer: None,
        })
    }

    /// A client that sends `Authorization: Bearer <credential>` (shares the pool).
    pub fn with_bearer(&self, credential: &str) -> Result<Client, ClientError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
            ClientError::Trust("credential has characters not allowed in a header".into())
        })?;
        v.set_sensitive(true);
        Ok(Client {
            transport: self.transport.clone(),
            bearer: Some(Arc::new(v)),
        })
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let t = &self.transport;
        let addr = format!("{}:{}", t.host, t.port);
        let connect = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| ClientError::Connect {
                    addr: addr.clone(),
                    why: e.to_string(),
                    refused_cert: None,
                })?;
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
                        let (why, refused_cert) = match tls_failure_hint(&e, seen, &t.trust) {
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
        tokio::time::timeout(t.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
    }

    async fn sender(&self, pooled: bool) -> Result<Sender, ClientError> {
        if pooled {
            loop {
                let candidate = {
                    let mut pool = self
                        .transport
                        .pool
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    pool.pop()
                };
                let Some(mut s) = candidate else { break };
                if !s.is_closed() && s.ready().await.is_ok() {
                    return Ok(s);
                }
            }
        }
        self.connect().await
    }

    fn give_back(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut pool = self
            .transport
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push(s);
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, String)],
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let t = &self.transport;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", t.base_path))
            .header(header::HOST, t.authority.clone())
            .header(
                header::USER_AGENT,
                concat!("weft-api-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(b) = &self.bearer {
            req = req.header(header::AUTHORIZATION, (**b).clone());
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        req.body(body)
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))
    }

    /// Sends a request and returns the raw response (body not yet read).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, String)],
        pooled: bool,
    ) -> Result<(http::Response<Incoming>, Sender), ClientError> {
        let req = self.build(method, path, body, extra)?;
        let mut s = self.sender(pooled).await?;
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok((resp, s))
    }

    /// One JSON call: returns the status and body bytes of a 2xx response, or
    /// the controller's `{code, message}` as [`ClientError::Api`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let work = async {
            let (resp, sender) = self.send(method, path, body, &[], true).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::Http(format!("reading response: {e}")))?
                .to_bytes();
            self.give_back(sender);
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            Ok((status, bytes))
        };
        tokio::time::timeout(self.transport.timeout, work)
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
        let (resp, sender) = tokio::time::timeout(
            self.transport.timeout,
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
