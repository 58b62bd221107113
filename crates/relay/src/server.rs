//! The relay's tokio shell around [`RelayCore`].
//!
//! [`run`] serves on an already-bound TCP listener (and optionally a UDP socket
//! for STUN) until `shutdown` resolves, so tests bind port 0. Per connection:
//! a TLS 1.3 handshake (bounded in time), the exporter value that binds the
//! login to this TLS session, then one reader task (decode frames, feed the
//! core) and one writer task (drain the connection's queue in the core, write,
//! flush). The core's queues are bounded, so a slow reader only ever loses its
//! own packets: nobody waits for it. The core sits behind one mutex held for a
//! few microseconds per batch of frames, never across an `.await`.
//!
//! On shutdown the listener closes, every client gets `Restarting` (with a
//! reconnect hint) and the writers flush for up to the grace period; then a
//! counter summary is logged. A summary is also logged every
//! [`ServerConfig::summary_interval`] when counters changed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};
use weft_proto::stun;
use weft_relay_core::frame::{Frame, FrameDecoder, FrameError, TLS_EXPORTER_LABEL};

use crate::clock;
use crate::metrics::{self, RelayMetrics, Snapshot};
use weft_relay_core::{
    Action, ConnId, CoreConfig, Counters, Event, MembershipUpdate, Outbound, RelayCore,
};

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// TLS (1.3 only, ALPN `weft-relay/1`; see [`crate::tls`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Core settings.
    pub core: CoreConfig,
    /// Longest TLS handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Longest write of one batch to a client before it is dropped (default 10 s).
    pub write_timeout: Duration,
    /// Reconnect hint sent in `Restarting` (default 250 ms).
    pub restart_hint: Duration,
    /// How long shutdown waits for writers to flush (default 2 s).
    pub shutdown_grace: Duration,
    /// Interval of the counter summary in the log (default 5 min).
    pub summary_interval: Duration,
}

impl ServerConfig {
    /// Defaults around a TLS configuration.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tls,
            core: CoreConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            restart_hint: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(2),
            summary_interval: Duration::from_secs(300),
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the relay did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The core's counters.
    pub counters: Counters,
    /// STUN Binding requests answered.
    pub stun_answered: u64,
    /// UDP datagrams that were not a valid Binding request.
    pub stun_malformed: u64,
}

impl Summary {
    /// One log line of `key=value` pairs.
    pub fn line(&self) -> String {
        format!(
            "{} stun_answered={} stun_malformed={}",
            self.counters.summary(),
            self.stun_answered,
            self.stun_malformed
        )
    }
}

struct ConnHandle {
    wake: Arc<Notify>,
    close: Arc<watch::Sender<bool>>,
}

struct Shared {
    core: Mutex<RelayCore>,
    // Lookup by id only; never iterated in an order that matters.
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_id: AtomicU64,
    stun_answered: AtomicU64,
    stun_malformed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections do not leave the core half-updated on a panic in a way
    // that makes it unsafe to keep serving other clients.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Runs `f` on the core, then carries out its actions and logs its events
    /// (after releasing the lock).
    fn with_core<R>(&self, f: impl FnOnce(&mut RelayCore, Instant) -> R) -> R {
        let mut actions = Vec::new();
        let mut events = Vec::new();
        let r = {
            let mut core = lock(&self.core);
            let r = f(&mut core, clock::now());
            while let Some(a) = core.poll_action() {
                actions.push(a);
            }
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            r
        };
        if !actions.is_empty() {
            let conns = lock(&self.conns);
            for a in actions {
                match a {
                    Action::Wake(id) => {
                        if let Some(h) = conns.get(&id) {
                            h.wake.notify_one();
                        }
                    }
                    Action::Close(id) => {
                        if let Some(h) = conns.get(&id) {
                            h.close.send_replace(true);
                            h.wake.notify_one();
                        }
                    }
                }
            }
        }
        for e in events {
            log_event(&e);
        }
        r
    }

    /// What a metrics scrape reads, under one lock of the core.
    fn snapshot(&self, queue_capacity_frames: usize) -> Snapshot {
        let core = lock(&self.core);
        Snapshot {
            counters: core.counters().clone(),
            connections: core.connection_count(),
            sessions: core.session_count(),
            queues: core.queue_depths(),
            queue_capacity_frames,
            membership: Some(core.membership_state()),
            stun_answered: self.stun_answered.load(Ordering::Relaxed),
            stun_malformed: self.stun_malformed.load(Ordering::Relaxed),
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            counters: lock(&self.core).counters().clone(),
            stun_answered: self.stun_answered.load(Ordering::Relaxed),
            stun_malformed: self.stun_malformed.load(Ordering::Relaxed),
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::LoggedIn {
            conn,
            key,
            replaced,
        } => info!(conn, node = %key, replaced, "session up"),
        Event::LoginRefused { conn, key, reason } => match key {
            Some(key) => info!(conn, node = %key, %reason, "login refused"),
            None => debug!(conn, %reason, "login refused"),
        },
        Event::SessionClosed { conn, key, reason } => {
            info!(conn, node = %key, %reason, "session closed by the relay");
        }
        Event::Disconnected { conn, key } => match key {
            Some(key) => info!(conn, node = %key, "session down"),
            None => debug!(conn, "connection closed"),
        },
        Event::BadFrame { conn, error } => debug!(conn, %error, "bad frame"),
        Event::MembershipKnown { members } => info!(members, "member set received"),
        Event::MembershipStale => {
            warn!("lost the controller link; serving the last member set during the grace period");
        }
        Event::MembershipUnknown => {
            warn!(
                "member set expired (controller unreachable): refusing every node until it is back"
            );
        }
    }
}

/// Serves until `shutdown` resolves; returns the final counters.
///
/// `members` carries the member set from the controller link (see
/// [`crate::controller::follow`]); until its first snapshot every login is
/// refused. If it closes, the relay behaves as if the link went down.
/// `metrics`, if given, serves `GET /metrics` ([`crate::metrics`]).
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    stun: Vec<UdpSocket>,
    mut members: mpsc::Receiver<MembershipUpdate>,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ServeError> {
    let shared = Arc::new(Shared {
        core: Mutex::new(RelayCore::new(config.core.clone())),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        stun_answered: AtomicU64::new(0),
        stun_malformed: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Member updates.
    let member_task = {
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    u = members.recv() => match u {
                        Some(u) => shared.with_core(|c, now| c.handle_membership(now, u)),
                        None => {
                            shared.with_core(|c, now| c.handle_membership(now, MembershipUpdate::LinkDown));
                            return;
                        }
                    }
                }
            }
        })
    };

    // Deadlines (coarse: every deadline is in seconds) and the periodic summary.
    let tick_task = {
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let every = config.summary_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_summary = clock::now();
            let mut last_line = String::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {}
                }
                shared.with_core(|c, now| c.handle_timeout(now));
                if clock::now().saturating_duration_since(last_summary) >= every {
                    last_summary = clock::now();
                    let line = shared.summary().line();
                    if line != last_line {
                        info!(summary = %line, "relay summary");
                        last_line = line;
                    }
                }
            }
        })
    };

    let metrics_task = metrics.map(|l| {
        let shared = shared.clone();
        let cap = config.core.queue_frames;
        let registry = RelayMetrics::new(move || shared.snapshot(cap));
        tokio::spawn(metrics::serve(l, registry, stop_rx.clone()))
    });

    // With two STUN sockets, each names the other in OTHER-ADDRESS (RFC 5780),
    // so a client can tell whether its NAT maps per destination.
    let stun_addrs: Vec<Option<SocketAddr>> = stun.iter().map(|s| s.local_addr().ok()).collect();
    let stun_tasks: Vec<_> = stun
        .into_iter()
        .enumerate()
        .map(|(i, sock)| {
            let other = if stun_addrs.len() > 1 {
                stun_addrs[(i + 1) % stun_addrs.len()]
            } else {
                None
            };
            let shared = shared.clone();
            let stop = stop_rx.clone();
            tokio::spawn(stun_loop(sock, other, shared, stop))
        })
        .collect();

    let acceptor = TlsAcceptor::from(config.tls.clone());
    let slots = Arc::new(Semaphore::new(config.core.max_connections));
    let config = Arc::new(config);
    let mut accept_log = weft_relay_core::outage::OutageLog::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, and say so
                // once (then every 5 min), not every 50 ms.
                if accept_log.failed(clock::now()).is_some() {
                    warn!(error = %e, "accept failing (too many open files?); retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(weft_relay_core::outage::OutageNote::Back { after, failures }) =
            accept_log.recovered(clock::now())
        {
            tracing::info!(failed_accepts = failures, "accepting again after {after:?}");
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("connection limit reached; dropping a connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let config = config.clone();
        tokio::spawn(async move {
            connection(shared, config, acceptor, tcp, peer).await;
            drop(permit);
        });
    }

    info!("shutting down: telling every client the relay is restarting");
    drop(listener);
    shared.with_core(|c, now| c.shutdown(now, config.restart_hint));
    let deadline = clock::now() + config.shutdown_grace;
    while !lock(&shared.conns).is_empty() && clock::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = member_task.await;
    let _ = tick_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    for t in stun_tasks {
        let _ = t.await;
    }
    let summary = shared.summary();
    info!(summary = %summary.line(), "relay summary");
    info!("stopped");
    Ok(summary)
}

async fn stun_loop(
    sock: UdpSocket,
    other: Option<SocketAddr>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(128);
    loop {
        let (n, from) = tokio::select! {
            _ = stop.changed() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors for earlier replies surface here on Linux.
                    debug!(error = %e, "STUN receive failed");
                    continue;
                }
            },
        };
        match stun::parse_binding_request(&buf[..n]) {
            Ok(req) => {
                out.clear();
                stun::encode_binding_response_with_other(&req, from, other, &mut out);
                if let Err(e) = sock.send_to(&out, from).await {
                    debug!(error = %e, "STUN send failed");
                }
                shared.stun_answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stun_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(error = %e, len = n, "not a STUN Binding request");
            }
        }
    }
}

enum ReadEnd {
    /// The client closed or the connection broke.
    Gone,
    /// The core (or the writer) closed the connection: let the writer flush.
    Closed,
}

async fn connection(
    shared: Arc<Shared>,
    config: Arc<ServerConfig>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut binding = [0u8; 32];
    if let Err(e) = tls
        .get_ref()
        .1
        .export_keying_material(&mut binding, TLS_EXPORTER_LABEL, None)
    {
        debug!(%peer, error = %e, "TLS exporter unavailable");
        return;
    }
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let wake = Arc::new(Notify::new());
    let (close_tx, close_rx) = watch::channel(false);
    let close_tx = Arc::new(close_tx);
    lock(&shared.conns).insert(
        id,
        ConnHandle {
            wake: wake.clone(),
            close: close_tx.clone(),
        },
    );
    debug!(conn = id, %peer, "connection");
    shared.with_core(|c, now| c.handle_connect(now, id, nonce, binding));
    let (rd, wr) = tokio::io::split(tls);
    let mut writer = tokio::spawn(write_loop(
        shared.clone(),
        id,
        wr,
        wake.clone(),
        config.write_timeout,
        close_tx,
    ));
    if let ReadEnd::Closed = read_loop(&shared, id, rd, close_rx).await {
        // The final notice (LoginRefused, Closed, Restarting) is queued last:
        // give the writer time to send it and close the stream.
        let _ = tokio::time::timeout(config.write_timeout, &mut writer).await;
    }
    shared.with_core(|c, now| c.handle_disconnect(now, id));
    writer.abort();
    lock(&shared.conns).remove(&id);
}

async fn read_loop(
    shared: &Shared,
    id: ConnId,
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    mut close: watch::Receiver<bool>,
) -> ReadEnd {
    let mut buf = vec![0u8; 16 * 1024];
    let mut decoder = FrameDecoder::new();
    let mut batch: Vec<Result<Frame, FrameError>> = Vec::new();
    loop {
        if *close.borrow() {
            return ReadEnd::Closed;
        }
        let n = tokio::select! {
            _ = close.changed() => return ReadEnd::Closed,
            r = rd.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    debug!(conn = id, error = %e, "read failed");
                    return ReadEnd::Gone;
                }
            },
        };
        if n == 0 {
            let left = decoder.buffered();
            if left > 0 {
                let e = FrameError::Truncated {
                    have: left,
                    need: left + 1,
                };
                shared.with_core(|c, now| c.handle_frame_error(now, id, &e));
            }
            return ReadEnd::Gone;
        }
        decoder.feed(&buf[..n]);
        let mut fatal = false;
        while let Some(r) = decoder.next_frame() {
            fatal = matches!(&r, Err(e) if e.is_fatal());
            batch.push(r);
            if fatal {
                break;
            }
        }
        if !batch.is_empty() {
            shared.with_core(|c, now| {
                for r in batch.drain(..) {
                    match r {
                        Ok(f) => c.handle_frame(now, id, f),
                        Err(e) => c.handle_frame_error(now, id, &e),
                    }
                }
            });
        }
        if fatal {
            // The core closed the connection; its writer flushes the notice.
            return ReadEnd::Closed;
        }
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    id: ConnId,
    mut wr: WriteHalf<TlsStream<TcpStream>>,
    wake: Arc<Notify>,
    write_timeout: Duration,
    close: Arc<watch::Sender<bool>>,
) {
    let mut frames = Vec::with_capacity(64);
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        frames.clear();
        let status = lock(&shared.core).take_outbound(id, 64, &mut frames);
        if !frames.is_empty() {
            buf.clear();
            for f in &frames {
                f.encode(&mut buf);
            }
            let wrote = tokio::time::timeout(write_timeout, async {
                wr.write_all(&buf).await?;
                wr.flush().await
            })
            .await;
            if !matches!(wrote, Ok(Ok(()))) {
                debug!(
                    conn = id,
                    "write failed or timed out; dropping the connection"
                );
                close.send_replace(true);
                return;
            }
        }
        match status {
            Outbound::Open if frames.is_empty() => wake.notified().await,
            Outbound::Open => {}
            Outbound::Closing => {
                let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
                close.send_replace(true);
                return;
            }
            Outbound::Gone => return,
        }
    }
}
