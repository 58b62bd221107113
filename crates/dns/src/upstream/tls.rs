//! DNS-over-TLS upstreams (RFC 7858) with hickory-net's rustls client: one
//! multiplexed connection per upstream, opened on first use and opened again
//! after a failure. The server certificate is checked against the system's CA
//! certificates, or against the operator's CA file (`weftd --dns-upstream-ca`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_net::DnsHandle;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::xfer::{DnsExchange, FirstAnswer};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::error::DnsError;

/// How long opening a connection (TCP and TLS handshake) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one query on an open connection may take.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

type Exchange = DnsExchange<TokioRuntimeProvider>;

/// The TLS client side shared by every DoT upstream.
pub(crate) struct TlsClient {
    config: Arc<ClientConfig>,
    /// Owns the connections' background tasks (a tokio `JoinSet`): they end
    /// when the last clone of it is dropped, so it lives as long as the client.
    provider: TokioRuntimeProvider,
    connections: Mutex<BTreeMap<(SocketAddr, String), Exchange>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

/// The CA certificates DoT servers are checked against: those in `ca_file`
/// (PEM), or the system's.
pub(crate) fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, DnsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |reason: String| DnsError::Tls {
                what: format!("CA file {}", path.display()),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| DnsError::io(path, e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in it".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(DnsError::Tls {
                    what: "system CA certificates".into(),
                    reason: "none found; install ca-certificates or pass --dns-upstream-ca FILE"
                        .into(),
                });
            }
        }
    }
    Ok(roots)
}

impl TlsClient {
    pub(crate) fn new(roots: RootCertStore) -> Result<Self, DnsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DnsError::Tls {
                what: "TLS client".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            provider: TokioRuntimeProvider::new(),
            connections: Mutex::new(BTreeMap::new()),
        })
    }

    /// Asks `addr` (certificate valid for `name`, else for the address) with
    /// `query`. A connection that fails is dropped; when it was an open one
    /// (the server may close idle or long-used connections at any time) the
    /// query is asked once more on a new connection.
    pub(crate) async fn exchange(
        &self,
        addr: SocketAddr,
        name: Option<&str>,
        query: Message,
    ) -> Result<Message, String> {
        let server_name = match name {
            Some(n) => ServerName::try_from(n.to_owned()).map_err(|e| e.to_string())?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let key = (addr, name.unwrap_or_default().to_owned());
        let existing = self.lock().get(&key).cloned();
        if let Some(open) = existing {
            match self.ask(&key, &open, query.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::debug!(upstream = %addr, "DoT on an open connection: {e}; asking on a new one")
                }
            }
        }
        let fresh = tokio::time::timeout(
            CONNECT_TIMEOUT,
            hickory_net::tls::tls_exchange(
                addr,
                server_name,
                (*self.config).clone(),
                QUERY_TIMEOUT,
                None,
                self.provider.clone(),
            ),
        )
        .await
        .map_err(|_| "TLS connect timed out".to_owned())?
        .map_err(|e| format!("TLS connect: {e}"))?;
        self.lock().insert(key.clone(), fresh.clone());
        self.ask(&key, &fresh, query).await
    }

    /// One query on `exchange`; on failure the connection is forgotten.
    async fn ask(
        &self,
        key: &(SocketAddr, String),
        exchange: &Exchange,
        query: Message,
    ) -> Result<Message, String> {
        let mut options = DnsRequestOptions::default();
        options.use_edns = query.edns.is_some();
        let answer = tokio::time::timeout(
            QUERY_TIMEOUT,
            exchange
                .send(DnsRequest::new(query, options))
                .first_answer(),
        )
        .await;
        let error = match answer {
            Ok(Ok(response)) => return Ok(response.into_message()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.lock().remove(key);
        Err(error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(SocketAddr, String), Exchange>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
