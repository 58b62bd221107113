//! The resolver's sockets (tokio): one UDP socket and one TCP listener per
//! address, serving only this host, each query handled by [`crate::handler`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use hickory_proto::op::ResponseCode;

use crate::blocklist::{Blocklist, BlocklistSlot};
use crate::cache::{Cache, DEFAULT_CAPACITY, TtlBounds};
use crate::clock;
use crate::error::DnsError;
use crate::handler::{self, Outcome, Served, Source, TCP_MAX, Transport};
use crate::querylog::QueryLog;
use crate::stats::DnsStats;
use crate::upstream::Pool;
use crate::upstream::spec::Upstream;
use crate::upstream::tls::TlsClient;
use crate::zone::Zone;

/// Largest UDP query read; longer datagrams are cut and then fail to parse.
const MAX_UDP_QUERY: usize = 4096;
/// Queries waiting for an upstream at once; more are answered SERVFAIL at once.
const MAX_FORWARDS: usize = 256;
/// TCP connections served at once; more wait in the accept queue.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection with no new query for this long is closed (RFC 7766 asks
/// for seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Tries to find a port free for both UDP and TCP when asked for port 0.
const PORT_TRIES: usize = 16;

/// State every listener shares: the current zone, the cache, the upstreams,
/// the counters and the query log.
#[derive(Debug)]
pub(crate) struct Shared {
    zone: RwLock<Arc<Zone>>,
    /// The controller's blocklist (empty: blocks nothing), shared with the
    /// agent.
    blocklist: BlocklistSlot,
    cache: Mutex<Cache>,
    pool: RwLock<Arc<Pool>>,
    tls: Option<Arc<TlsClient>>,
    stats: DnsStats,
    log: Option<QueryLog>,
}

impl Shared {
    /// Starts with an empty zone (which still owns `weft.internal`).
    pub(crate) fn new(
        upstreams: Vec<Upstream>,
        stats: DnsStats,
        bounds: TtlBounds,
        tls: Option<Arc<TlsClient>>,
        log: Option<QueryLog>,
        blocklist: BlocklistSlot,
    ) -> Self {
        Self {
            zone: RwLock::new(Arc::new(Zone::from_records(Vec::new()))),
            blocklist,
            cache: Mutex::new(Cache::with_bounds(DEFAULT_CAPACITY, bounds)),
            pool: RwLock::new(Arc::new(Pool::new(upstreams, tls.clone()))),
            tls,
            stats,
            log,
        }
    }

    pub(crate) fn set_zone(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(zone);
    }

    pub(crate) fn zone(&self) -> Arc<Zone> {
        self.zone
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_blocklist(&self, blocklist: Blocklist) {
        self.blocklist.set(Arc::new(blocklist));
    }

    pub(crate) fn blocklist(&self) -> Arc<Blocklist> {
        self.blocklist.get()
    }

    pub(crate) fn set_upstreams(&self, upstreams: Vec<Upstream>) {
        *self.pool.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Pool::new(upstreams, self.tls.clone()));
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Empties the cache; returns how many answers it held.
    pub(crate) fn flush_cache(&self) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let n = cache.len();
        cache.clear();
        n
    }

    pub(crate) fn pool(&self) -> Arc<Pool> {
        self.pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn bounds(&self) -> TtlBounds {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bounds()
    }

    pub(crate) fn query_log(&self) -> Option<&QueryLog> {
        self.log.as_ref()
    }

    fn handle(&self, bytes: &[u8], transport: Transport) -> Outcome {
        let zone = self.zone();
        let blocked = self.blocklist();
        let (outcome, served) = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let hits = cache.hits();
            let handled =
                handler::handle_served(&zone, &blocked, &mut cache, clock::now(), bytes, transport);
            if cache.hits() != hits {
                self.stats.cache_hit();
            }
            handled
        };
        if !matches!(outcome, Outcome::Drop) {
            self.stats.query();
        }
        if let Some(served) = served {
            if served.source == Source::Blocked {
                self.stats.blocked();
            }
            self.served(&served, None, None);
        }
        outcome
    }

    async fn forward(&self, pending: &handler::Pending) -> Vec<u8> {
        let pool = self.pool();
        let started = clock::now();
        let answered = pool.forward(pending).await;
        let took = clock::now().saturating_duration_since(started);
        self.stats.upstream(took, answered.message.is_some());
        let rcode = answered
            .message
            .as_ref()
            .map_or(ResponseCode::ServFail, |m| m.metadata.response_code);
        let bytes = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            handler::finish(pending, answered.message, &mut cache, clock::now())
        };
        let served = Served::of(&pending.question, rcode, Source::Upstream);
        self.served(&served, answered.by.as_ref(), Some(took));
        bytes
    }

    /// Counts the name and writes the query log's line.
    fn served(&self, served: &Served, upstream: Option<&Upstream>, took: Option<Duration>) {
        self.stats.name(&served.name);
        if let Some(log) = &self.log {
            log.record(served, upstream, took);
        }
    }
}

/// How often the health check looks for upstreams due for a probe.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The upstreams' health check: probes each failed upstream as soon as its
/// backoff is over (see [`crate::upstream::health`]), until aborted.
pub(crate) fn spawn_health_check(shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEALTH_INTERVAL).await;
            shared.pool().probe_due().await;
        }
    })
}

/// [`bind`], retrying for a second while the port is still held (by the tasks of
/// a service that was just stopped, which the runtime drops asynchronously).
pub(crate) async fn bind_retrying(addr: SocketAddr, freebind: bool) -> Result<Bound, DnsError> {
    let mut tries = 0;
    loop {
        match bind(addr, freebind) {
            Err(DnsError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 10 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Bound sockets for one address (UDP and TCP on the same port).
#[derive(Debug)]
pub(crate) struct Bound {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    pub(crate) local: SocketAddr,
}

/// Binds UDP and TCP on `addr` (port 0: one free for both). `freebind` allows an
/// address not yet assigned to an interface (the overlay address, before the
/// interface is up).
pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> Result<Bound, DnsError> {
    let tries = if addr.port() == 0 { PORT_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = bind_socket(addr, Type::DGRAM, freebind).map_err(|source| DnsError::Bind {
            addr,
            proto: "udp",
            source,
        })?;
        let local = udp
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        match bind_socket(local, Type::STREAM, freebind) {
            Ok(tcp) => {
                return Ok(Bound {
                    udp: udp.into(),
                    tcp: tcp.into(),
                    local,
                });
            }
            Err(source) => last = Some(source),
        }
    }
    Err(DnsError::Bind {
        addr,
        proto: "tcp",
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

fn bind_socket(addr: SocketAddr, ty: Type, freebind: bool) -> std::io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    if ty == Type::STREAM {
        // A restarted agent rebinds at once despite connections in TIME_WAIT.
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if ty == Type::STREAM {
        socket.listen(128)?;
    }
    Ok(socket)
}

/// Serves `bound` until the returned task is aborted (which also ends every
/// query and connection it started).
pub(crate) fn spawn(shared: Arc<Shared>, bound: Bound) -> Result<JoinHandle<()>, DnsError> {
    let local = bound.local;
    let udp = UdpSocket::from_std(bound.udp).map_err(|source| DnsError::Bind {
        addr: local,
        proto: "udp",
        source,
    })?;
    let tcp = TcpListener::from_std(bound.tcp).map_err(|source| DnsError::Bind {
        addr: local,
        proto: "tcp",
        source,
    })?;
    Ok(tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(shared.clone(), Arc::new(udp), local));
        tasks.spawn(serve_tcp(shared, tcp, local));
        while tasks.join_next().await.is_some() {}
    }))
}

/// Only this host may ask: loopback sources, or the listen address itself (what
/// the kernel uses as source when the host queries its own overlay address).
/// Peers reaching the overlay address through the tunnel are ignored.
fn allowed(source: IpAddr, local: SocketAddr) -> bool {
    source.is_loopback() || source == local.ip()
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr) {
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut inflight = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        // Reap finished forwards so the set stays small.
        while inflight.try_join_next().is_some() {}
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("dns udp receive: {e}");
                continue;
            }
        };
        if !allowed(from.ip(), local) {
            continue;
        }
        match shared.handle(&buf[..n], Transport::Udp) {
            Outcome::Reply(bytes) => {
                let _ = socket.send_to(&bytes, from).await;
            }
            Outcome::Drop => {}
            Outcome::Forward(pending) => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    let bytes = handler::finish(&pending, None, &mut Cache::new(1), clock::now());
                    let _ = socket.send_to(&bytes, from).await;
                    continue;
                };
                let (shared, socket) = (shared.clone(), socket.clone());
                inflight.spawn(async move {
                    let bytes = shared.forward(&pending).await;
                    let _ = socket.send_to(&bytes, from).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener, local: SocketAddr) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("dns tcp accept: {e}");
                continue;
            }
        };
        if !allowed(from.ip(), local) {
            continue;
        }
        let shared = shared.clone();
        conns.spawn(async move {
            if let Err(e) = serve_connection(&shared, stream).await {
                tracing::trace!("dns tcp connection: {e}");
            }
            drop(permit);
        });
    }
}

/// Serves length-prefixed queries on one connection, in order, until the client
/// closes it or stays idle for [`TCP_IDLE`].
async fn serve_connection(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; TCP_MAX];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let bytes = match shared.handle(&buf[..len], Transport::Tcp) {
            Outcome::Reply(bytes) => bytes,
            Outcome::Forward(pending) => shared.forward(&pending).await,
            Outcome::Drop => return Ok(()),
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_host_may_query() {
        let local: SocketAddr = "100.64.0.1:53".parse().unwrap();
        assert!(allowed("127.0.0.1".parse().unwrap(), local));
        assert!(allowed("::1".parse().unwrap(), local));
        assert!(allowed("100.64.0.1".parse().unwrap(), local));
        assert!(!allowed("100.64.0.2".parse().unwrap(), local));
    }

    /// The `flush-dns` task action: every cached answer goes, and the count
    /// says how many there were.
    #[test]
    fn flushing_the_cache_empties_it_and_counts_the_answers() {
        use hickory_proto::op::{Message, OpCode, Query};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record, RecordType};

        let shared = Shared::new(
            Vec::new(),
            DnsStats::default(),
            TtlBounds::default(),
            None,
            None,
            BlocklistSlot::default(),
        );
        assert_eq!(shared.flush_cache(), 0);
        for name in ["a.example.", "b.example."] {
            let name = Name::from_ascii(name).unwrap();
            let query = Query::query(name.clone(), RecordType::A);
            let mut resp = Message::response(1, OpCode::Query);
            resp.add_query(query.clone());
            resp.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 1))));
            let key = crate::cache::CacheKey::of(&query);
            assert!(
                shared
                    .cache
                    .lock()
                    .unwrap()
                    .insert(key, &resp, clock::now())
            );
        }
        assert_eq!(shared.flush_cache(), 2);
        assert!(shared.cache.lock().unwrap().is_empty());
        assert_eq!(shared.flush_cache(), 0);
    }
}
