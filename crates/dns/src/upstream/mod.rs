//! Asking the upstream resolvers (tokio): plain DNS over UDP from a fresh
//! random port with a random id (TCP when the answer is truncated), or DNS over
//! TLS ([`tls`]); in the configured order, skipping the ones [`health`] says are
//! down; the next one on a failure, SERVFAIL or REFUSED.

pub(crate) mod health;
pub(crate) mod spec;
pub(crate) mod tls;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::clock;
use crate::handler::{self, EDNS_PAYLOAD, Pending};
use health::{Health, UpstreamHealth};
use spec::Upstream;
use tls::TlsClient;

/// How long one upstream gets to answer over UDP. glibc waits 5 s for us, so two
/// upstreams fit.
pub(crate) const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP exchange (connect, send, receive) may take.
pub(crate) const TCP_TIMEOUT: Duration = Duration::from_secs(3);

/// The upstreams, their health and the TLS client of the DoT ones.
#[derive(Debug)]
pub(crate) struct Pool {
    upstreams: Vec<Upstream>,
    health: Mutex<Vec<Health>>,
    tls: Option<Arc<TlsClient>>,
}

/// Which upstream answered a forwarded query, and how long it took.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    pub(crate) message: Option<Message>,
    /// The upstream whose answer (or last SERVFAIL/REFUSED) it is.
    pub(crate) by: Option<Upstream>,
}

impl Pool {
    /// `tls`: the TLS client, needed when any upstream is DoT (else unused;
    /// a DoT upstream without it fails every exchange).
    pub(crate) fn new(upstreams: Vec<Upstream>, tls: Option<Arc<TlsClient>>) -> Self {
        Self {
            health: Mutex::new(vec![Health::default(); upstreams.len()]),
            upstreams,
            tls,
        }
    }

    pub(crate) fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every upstream's health now.
    pub(crate) fn report(&self, now: Instant) -> Vec<UpstreamHealth> {
        let health = self.health();
        self.upstreams
            .iter()
            .zip(health.iter())
            .map(|(u, h)| h.report(u.to_string(), now))
            .collect()
    }

    /// Asks the upstreams in [`health::order`]; the first usable answer, else
    /// the last SERVFAIL or REFUSED received, else none.
    pub(crate) async fn forward(&self, pending: &Pending) -> Answered {
        let order = health::order(&self.health());
        let mut last = Answered {
            message: None,
            by: None,
        };
        for i in order {
            let upstream = &self.upstreams[i];
            let Ok(answer) = self.ask(i, pending).await else {
                continue;
            };
            let refused = matches!(
                answer.metadata.response_code,
                ResponseCode::ServFail | ResponseCode::Refused
            );
            last = Answered {
                message: Some(answer),
                by: Some(upstream.clone()),
            };
            if !refused {
                break;
            }
        }
        last
    }

    /// One exchange with upstream `i`, its health updated.
    async fn ask(&self, i: usize, pending: &Pending) -> Result<Message, String> {
        let upstream = &self.upstreams[i];
        let started = clock::now();
        let result = self.exchange(upstream, pending).await;
        let now = clock::now();
        let mut health = self.health();
        if let Some(h) = health.get_mut(i) {
            match &result {
                Ok(_) => h.answered(now.saturating_duration_since(started)),
                Err(e) => {
                    tracing::debug!(%upstream, "upstream: {e}");
                    h.failed(e.clone(), now);
                }
            }
        }
        result
    }

    async fn exchange(&self, upstream: &Upstream, pending: &Pending) -> Result<Message, String> {
        let id = random_id();
        match upstream {
            Upstream::Udp(addr) => {
                let query = handler::upstream_query(pending, id)
                    .map_err(|()| "query not encodable".to_owned())?;
                let answer = udp_exchange(*addr, &query, id, pending).await?;
                if !answer.metadata.truncation {
                    return Ok(answer);
                }
                tcp_exchange(*addr, &query, id, pending).await
            }
            Upstream::Tls { addr, name } => {
                let tls = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| "no TLS client configured".to_owned())?;
                let query = handler::upstream_message(pending, id);
                let answer = tls.exchange(*addr, name.as_deref(), query).await?;
                // The connection matches answers to queries by id itself.
                if handler::answers_question(&answer, &pending.question) {
                    Ok(answer)
                } else {
                    Err("answer does not match the query".to_owned())
                }
            }
        }
    }

    /// The health check: probes every upstream whose backoff is over with a
    /// query for the root's NS records; an answer of any kind makes it healthy.
    pub(crate) async fn probe_due(&self) {
        let now = clock::now();
        let due: Vec<usize> = {
            let health = self.health();
            (0..self.upstreams.len())
                .filter(|&i| health[i].due_for_probe(now))
                .collect()
        };
        for i in due {
            let _ = self.ask(i, &probe()).await;
        }
    }
}

/// The health check's query: `. NS`, which every recursive resolver answers.
fn probe() -> Pending {
    let question = Query::query(Name::root(), RecordType::NS);
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.add_query(question.clone());
    Pending {
        query,
        question,
        transport: handler::Transport::Tcp,
    }
}

fn random_id() -> u16 {
    (OsRng.next_u32() & 0xffff) as u16
}

async fn udp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    pending: &Pending,
) -> Result<Message, String> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(upstream).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(EDNS_PAYLOAD).max(4096)];
    let wait = async {
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything that is not the answer to this query (a late answer to
            // an earlier one, a spoofing attempt) is ignored.
            if let Ok(m) = Message::from_vec(&buf[..n])
                && handler::answers(&m, id, &pending.question)
            {
                return Ok(m);
            }
        }
    };
    timeout(UDP_TIMEOUT, wait)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// One DNS message over TCP (RFC 1035 4.2.2: each message behind its
/// two-byte length): connects to `server`, sends `query`, reads one answer.
/// Whether it answers the query is the caller's to check; no timeout here.
pub async fn tcp_query(server: SocketAddr, query: &[u8]) -> Result<Message, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_owned())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let len = stream.read_u16().await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(len)];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| e.to_string())
}

async fn tcp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    pending: &Pending,
) -> Result<Message, String> {
    let exchange = async {
        let m = tcp_query(upstream, query).await?;
        if handler::answers(&m, id, &pending.question) {
            Ok(m)
        } else {
            Err("answer does not match the query".to_owned())
        }
    };
    timeout(TCP_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}
