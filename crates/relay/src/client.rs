//! The relay client agents use: one background task per relay that logs in,
//! keeps the session alive, and reconnects with backoff.
//!
//! - [`RelayClient::connect`] validates the settings and starts the task; it
//!   returns the client (send side) and [`RelayEvents`] (receive side).
//! - [`RelayClient::send`] never blocks: it queues a packet for the current
//!   session, or drops it (counted, [`SendError`]) when the queue is full or no
//!   session is up — WireGuard retransmits, so dropping beats stalling.
//! - [`RelayEvents::recv`] yields packets and notices. Packets that the caller
//!   does not read fast enough are dropped (counted); notices are never dropped.
//! - Reconnects: exponential backoff from 250 ms to 5 s (±20 % jitter, so a
//!   restarted relay is not hit by every client at once, and a relay that was
//!   down for long is back in use within about 6 s); after a refusal that
//!   only the controller can lift (`NotMember`: the relay may not have heard of
//!   a just-registered node yet, or the node was removed) from 1 s to 30 s;
//!   after `Restarting` the relay's hint is used instead, so a restarted relay
//!   is back within about a second.
//! - Keepalive: a `Ping` every [`RelayClientConfig::keepalive`]; a session that
//!   receives nothing for three keepalive intervals is considered dead. Any
//!   ping (a keepalive, or the one sent with data after 2 s without hearing
//!   from the relay) must be answered by some frame within 3 s, or the session
//!   is dead: a connection killed silently by an underlay change (roaming, a
//!   NAT that lost its mapping) is replaced in seconds.
//! - The login signature is bound to the TLS session (see `weft_relay_core::frame`).
//!
//! Dropping the [`RelayClient`] stops the task.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(identity: std::sync::Arc<weft_identity::Identity>, peer: weft_proto::NodeKey, fp: [u8; 32]) -> Result<(), weft_relay::client::RelayClientError> {
//! use std::sync::Arc;
//! use weft_api_client::Trust;
//! use weft_relay::client::{RelayClient, RelayClientConfig, RelayEvent};
//!
//! let cfg = RelayClientConfig::new(
//!     "https://relay.example.net:443",
//!     Trust::Fingerprint(fp), // the relay's tls_fingerprint from the network map
//!     identity.node_key(),
//! );
//! let id = identity.clone();
//! let (relay, mut events) = RelayClient::connect(cfg, Arc::new(move |ctx, msg| id.sign(ctx, msg)))?;
//! relay.send(peer, b"wireguard ciphertext").ok(); // dropped if no session yet
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         RelayEvent::Packet { src, payload } => { /* hand to the tunnel core */ }
//!         RelayEvent::PeerGone { key, .. } => { /* stop relaying to `key` for now */ }
//!         RelayEvent::Connected | RelayEvent::Disconnected { .. } => { /* path state */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use weft_api_client::Trust;
use weft_proto::NodeKey;
use weft_proto::relay_api::RelayUrl;
use weft_relay_core::frame::{
    ALPN, Frame, FrameDecoder, LOGIN_SIGNATURE_CONTEXT, MAX_PAYLOAD, PROTOCOL_VERSION,
    PeerGoneReason, Reason, TLS_EXPORTER_LABEL, encode_send, login_signed_message,
};
pub use weft_relay_core::outage::{OUTAGE_REMIND, OutageLog, OutageNote};

/// Signs `(context, message)` with the node's identity: pass
/// `Arc::new(move |c, m| identity.sign(c, m))`. The private key stays with the
/// caller.
pub type Signer = Arc<dyn Fn(&str, &[u8]) -> [u8; 64] + Send + Sync>;

/// Client settings.
#[derive(Debug, Clone)]
pub struct RelayClientConfig {
    /// `https://host[:port]` of the relay (the map's `Relay::url`).
    pub url: String,
    /// Whom to trust: the relay's pinned fingerprint from the map when it has
    /// one, else a CA.
    pub trust: Trust,
    /// This node's key.
    pub node_key: NodeKey,
    /// Interval of keepalive pings (default 25 s).
    pub keepalive: Duration,
    /// Timeout of connect + TLS + login (default 10 s).
    pub connect_timeout: Duration,
    /// Packets queued for sending at most (default 1024).
    pub send_queue: usize,
    /// Events queued for the caller at most (default 1024).
    pub event_queue: usize,
}

impl RelayClientConfig {
    /// Defaults for a relay URL, trust and node key.
    pub fn new(url: impl Into<String>, trust: Trust, node_key: NodeKey) -> Self {
        Self {
            url: url.into(),
            trust,
            node_key,
            keepalive: Duration::from_secs(25),
            connect_timeout: Duration::from_secs(10),
            send_queue: 1024,
            event_queue: 1024,
        }
    }
}

/// Why the client could not start or a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// The relay URL is not `https://host[:port]`.
    #[error("invalid relay URL: {0}")]
    InvalidUrl(String),
    /// The trust settings are unusable (CA file, fingerprint).
    #[error("TLS trust configuration: {0}")]
    Trust(String),
    /// TCP connect failed.
    #[error("connecting to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// What failed.
        why: String,
    },
    /// The TLS handshake failed (wrong certificate pin, no TLS 1.3, ...).
    #[error("TLS: {0}")]
    Tls(String),
    /// Reading or writing the stream failed, or the relay closed it.
    #[error("relay connection: {0}")]
    Io(String),
    /// The relay sent something that breaks the protocol.
    #[error("relay protocol: {0}")]
    Protocol(String),
    /// Connect, login or keepalive did not complete in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The relay refused the login.
    #[error("login refused: {0}")]
    Refused(Reason),
    /// The relay ended the session.
    #[error("session closed by the relay: {0}")]
    Closed(Reason),
}

/// Why [`RelayClient::send`] dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue is full (the relay or the network is slower than the
    /// sender).
    #[error("relay send queue full; packet dropped")]
    QueueFull,
    /// No session is up right now.
    #[error("not connected to the relay; packet dropped")]
    NotConnected,
    /// The payload is over the relay's limit.
    #[error("packet larger than {MAX_PAYLOAD} bytes")]
    TooLarge,
    /// The client task has stopped.
    #[error("relay client stopped")]
    Stopped,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Logged in: packets flow.
    Connected,
    /// The session ended or could not be set up; the client retries after
    /// `retry_in`.
    Disconnected {
        /// Why.
        error: RelayClientError,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// A packet from `src`.
    Packet {
        /// The sending node (authenticated by the relay).
        src: NodeKey,
        /// The packet (WireGuard ciphertext).
        payload: Bytes,
    },
    /// Packets to `key` are not being delivered (it has no session here).
    PeerGone {
        /// The destination.
        key: NodeKey,
        /// Why.
        reason: PeerGoneReason,
    },
    /// The relay is restarting; the client reconnects after `retry_after`.
    Restarting {
        /// The relay's hint.
        retry_after: Duration,
    },
}

/// Client counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayClientStats {
    /// Packets written to the relay.
    pub sent: u64,
    /// Packets received from the relay.
    pub received: u64,
    /// Packets dropped on send (queue full, not connected, too large).
    pub send_dropped: u64,
    /// Received packets dropped because the caller did not read events.
    pub recv_dropped: u64,
    /// Sessions established.
    pub sessions: u64,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    send_dropped: AtomicU64,
    recv_dropped: AtomicU64,
    sessions: AtomicU64,
    connected: AtomicU64,
}

/// The sending side of a relay client. Dropping it stops the client.
pub struct RelayClient {
    tx: mpsc::Sender<(NodeKey, Bytes)>,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

/// The receiving side of a relay client.
pub struct RelayEvents {
    rx: mpsc::Receiver<RelayEvent>,
}

impl RelayEvents {
    /// The next event; `None` once the client stopped.
    pub async fn recv(&mut self) -> Option<RelayEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<RelayEvent> {
        self.rx.try_recv().ok()
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A session that has heard nothing from the relay for this long pings it
/// before sending more: an underlay change (roaming, a NAT that lost its
/// mapping) kills a TCP connection silently, and the sender should notice in
/// seconds, not after three keepalive intervals.
const PROBE_AFTER_SILENCE: Duration = Duration::from_secs(2);
/// How long a probing ping may go unanswered (by any frame) before the session
/// is considered dead and reconnected.
const PONG_TIMEOUT: Duration = Duration::from_secs(3);

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REFUSED_MIN: Duration = Duration::from_secs(1);
const REFUSED_MAX: Duration = Duration::from_secs(30);

impl RelayClient {
    /// Validates `cfg` and starts the background task (call inside a tokio
    /// runtime). The first connection attempt starts at once.
    pub fn connect(
        cfg: RelayClientConfig,
        signer: Signer,
    ) -> Result<(RelayClient, RelayEvents), RelayClientError> {
        let url =
            RelayUrl::parse(&cfg.url).map_err(|e| RelayClientError::InvalidUrl(e.to_string()))?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| RelayClientError::InvalidUrl("host is not a valid TLS name".into()))?;
        let (tls, seen) = weft_api_client::tls_client_config_seen(&cfg.trust, &[ALPN])
            .map_err(|e| RelayClientError::Trust(e.to_string()))?;
        let (tx, rx) = mpsc::channel(cfg.send_queue.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(cfg.event_queue.max(1));
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(
            Session {
                cfg,
                url,
                name,
                connector: TlsConnector::from(tls),
                seen,
                signer,
                stats: stats.clone(),
                events: ev_tx,
            },
            rx,
        ));
        Ok((RelayClient { tx, stats, task }, RelayEvents { rx: ev_rx }))
    }

    /// Queues a packet for `dst`. Never blocks; see [`SendError`] for drops.
    pub fn send(&self, dst: NodeKey, payload: &[u8]) -> Result<(), SendError> {
        let r = if payload.len() > MAX_PAYLOAD {
            Err(SendError::TooLarge)
        } else if self.stats.connected.load(Ordering::Relaxed) == 0 {
            Err(SendError::NotConnected)
        } else {
            self.tx
                .try_send((dst, Bytes::copy_from_slice(payload)))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
                })
        };
        if r.is_err() {
            self.stats.send_dropped.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Whether a session is up right now.
    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed) != 0
    }

    /// Counters.
    pub fn stats(&self) -> RelayClientStats {
        let s = &self.stats;
        RelayClientStats {
            sent: s.sent.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            send_dropped: s.send_dropped.load(Ordering::Relaxed),
            recv_dropped: s.recv_dropped.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
        }
    }
}

struct Session {
    cfg: RelayClientConfig,
    url: RelayUrl,
    name: ServerName<'static>,
    connector: TlsConnector,
    /// The certificate the relay last presented (for a refusal's hint).
    seen: weft_api_client::SeenCert,
    signer: Signer,
    stats: Arc<Stats>,
    events: mpsc::Sender<RelayEvent>,
}

/// How a session ended.
enum End {
    /// The client was dropped or the caller stopped reading events for good.
    Stop,
    /// The relay is restarting: reconnect after its hint.
    Restarting(Duration),
    /// Failed; `established` says whether it had logged in.
    Failed {
        error: RelayClientError,
        established: bool,
    },
}

async fn run(s: Session, mut out: mpsc::Receiver<(NodeKey, Bytes)>) {
    let mut backoff = BACKOFF_MIN;
    let mut refused = REFUSED_MIN;
    loop {
        let end = s.session(&mut out).await;
        s.stats.connected.store(0, Ordering::Relaxed);
        let delay = match end {
            End::Stop => return,
            End::Restarting(hint) => {
                backoff = BACKOFF_MIN;
                refused = REFUSED_MIN;
                let hint = hint.clamp(Duration::from_millis(50), BACKOFF_MAX);
                if s.events
                    .send(RelayEvent::Restarting { retry_after: hint })
                    .await
                    .is_err()
                {
                    return;
                }
                jitter(hint)
            }
            End::Failed { error, established } => {
                if established {
                    backoff = BACKOFF_MIN;
                    refused = REFUSED_MIN;
                }
                let permanent = matches!(
                    &error,
                    RelayClientError::Refused(r) | RelayClientError::Closed(r) if r.is_permanent()
                );
                let delay = jitter(if permanent {
                    let d = refused;
                    refused = (refused * 2).min(REFUSED_MAX);
                    d
                } else {
                    let d = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    d
                });
                tracing::debug!(relay = %s.url, error = %error, retry_in = ?delay, "relay session ended");
                if s.events
                    .send(RelayEvent::Disconnected {
                        error,
                        retry_in: delay,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                delay
            }
        };
        // Wait, dropping what the caller sends meanwhile (it was told).
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                p = out.recv() => match p {
                    Some(_) => { s.stats.send_dropped.fetch_add(1, Ordering::Relaxed); }
                    None => return,
                },
            }
        }
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    use rand_core::RngCore as _;
    let permille = 800 + u64::from(rand_core::OsRng.next_u32() % 401);
    d * u32::try_from(permille).unwrap_or(1000) / 1000
}

fn io(e: std::io::Error) -> RelayClientError {
    RelayClientError::Io(e.to_string())
}

impl Session {
    async fn session(&self, out: &mut mpsc::Receiver<(NodeKey, Bytes)>) -> End {
        let setup = tokio::time::timeout(self.cfg.connect_timeout, self.login()).await;
        let (mut rd, mut wr, mut decoder) = match setup {
            Ok(Ok(x)) => x,
            Ok(Err(error)) => {
                return End::Failed {
                    error,
                    established: false,
                };
            }
            Err(_) => {
                return End::Failed {
                    error: RelayClientError::Timeout("connecting and logging in to the relay"),
                    established: false,
                };
            }
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(1, Ordering::Relaxed);
        if self.events.send(RelayEvent::Connected).await.is_err() {
            return End::Stop;
        }
        let fail = |error| End::Failed {
            error,
            established: true,
        };
        let mut keepalive = tokio::time::interval(self.cfg.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut silent_ticks = 0u32;
        let mut last_rx = tokio::time::Instant::now();
        // Set while a ping is outstanding on a session that was silent.
        let mut probe_deadline: Option<tokio::time::Instant> = None;
        let mut buf = vec![0u8; 16 * 1024];
        let mut wbuf = Vec::with_capacity(64 * 1024);
        let mut ping = 0u64;
        // Frames decoded during login but not yet handled.
        let mut pending = Vec::new();
        while let Some(r) = decoder.next_frame() {
            pending.push(r);
        }
        loop {
            for r in pending.drain(..) {
                let frame = match r {
                    Ok(f) => f,
                    Err(e) if e.is_fatal() => {
                        return fail(RelayClientError::Protocol(e.to_string()));
                    }
                    Err(_) => continue,
                };
                match frame {
                    Frame::Recv { src, payload } => {
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                        let ev = RelayEvent::Packet {
                            src,
                            payload: payload.into_bytes(),
                        };
                        match self.events.try_send(ev) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                self.stats.recv_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return End::Stop,
                        }
                    }
                    Frame::PeerGone { key, reason } => {
                        if self
                            .events
                            .send(RelayEvent::PeerGone { key, reason })
                            .await
                            .is_err()
                        {
                            return End::Stop;
                        }
                    }
                    Frame::Restarting { retry_after_ms } => {
                        return End::Restarting(Duration::from_millis(u64::from(retry_after_ms)));
                    }
                    Frame::Closed { reason } | Frame::LoginRefused { reason } => {
                        return fail(RelayClientError::Closed(reason));
                    }
                    Frame::Ping { data } => {
                        wbuf.clear();
                        Frame::Pong { data }.encode(&mut wbuf);
                        if let Err(e) = write(&mut wr, &wbuf).await {
                            return fail(e);
                        }
                    }
                    Frame::Pong { .. } | Frame::LoginOk => {}
                    other => {
                        return fail(RelayClientError::Protocol(format!(
                            "unexpected {} frame",
                            other.name()
                        )));
                    }
                }
            }
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return fail(RelayClientError::Io("the relay closed the connection".into())),
                    Ok(n) => {
                        silent_ticks = 0;
                        last_rx = tokio::time::Instant::now();
                        probe_deadline = None;
                        decoder.feed(&buf[..n]);
                        while let Some(r) = decoder.next_frame() {
                            pending.push(r);
                        }
                    }
                    Err(e) => return fail(io(e)),
                },
                p = out.recv() => {
                    let Some((dst, payload)) = p else { return End::Stop };
                    wbuf.clear();
                    let mut n = 0u64;
                    if encode_send(&dst, &payload, &mut wbuf).is_ok() {
                        n += 1;
                    }
                    // Batch whatever else is queued into one write.
                    while wbuf.len() < 64 * 1024 {
                        let Ok((dst, payload)) = out.try_recv() else { break };
                        if encode_send(&dst, &payload, &mut wbuf).is_ok() {
                            n += 1;
                        }
                    }
                    let now = tokio::time::Instant::now();
                    if probe_deadline.is_none() && now.duration_since(last_rx) >= PROBE_AFTER_SILENCE {
                        ping += 1;
                        Frame::Ping { data: ping.to_be_bytes() }.encode(&mut wbuf);
                        probe_deadline = Some(now + PONG_TIMEOUT);
                    }
                    if let Err(e) = write(&mut wr, &wbuf).await {
                        return fail(e);
                    }
                    self.stats.sent.fetch_add(n, Ordering::Relaxed);
                }
                () = sleep_until_or_never(probe_deadline), if probe_deadline.is_some() => {
                    return fail(RelayClientError::Timeout("the relay did not answer a ping within 3 s"));
                }
                _ = keepalive.tick() => {
                    silent_ticks += 1;
                    if silent_ticks >= 3 {
                        return fail(RelayClientError::Timeout("relay silent for three keepalive intervals"));
                    }
                    ping += 1;
                    wbuf.clear();
                    Frame::Ping { data: ping.to_be_bytes() }.encode(&mut wbuf);
                    if let Err(e) = write(&mut wr, &wbuf).await {
                        return fail(e);
                    }
                    if probe_deadline.is_none() {
                        probe_deadline = Some(tokio::time::Instant::now() + PONG_TIMEOUT);
                    }
                }
            }
        }
    }

    /// Connects, verifies TLS, and logs in. Returns the stream halves and the
    /// decoder (which may hold frames that arrived right after `LoginOk`).
    async fn login(&self) -> Result<(RdHalf, WrHalf, FrameDecoder), RelayClientError> {
        let addr = format!("{}:{}", self.url.host, self.url.port);
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| RelayClientError::Connect {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| {
                RelayClientError::Tls(
                    match weft_api_client::tls_failure_hint(&e, self.seen.get(), &self.cfg.trust) {
                        Some(hint) => format!("{e}: {hint}"),
                        None => e.to_string(),
                    },
                )
            })?;
        let mut binding = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut binding, TLS_EXPORTER_LABEL, None)
            .map_err(|e| RelayClientError::Tls(format!("exporter: {e}")))?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let nonce = match next_frame(&mut rd, &mut decoder, &mut buf).await? {
            Frame::ServerChallenge { nonce } => nonce,
            Frame::LoginRefused { reason } => return Err(RelayClientError::Refused(reason)),
            other => {
                return Err(RelayClientError::Protocol(format!(
                    "expected a challenge, got {}",
                    other.name()
                )));
            }
        };
        let signature = (self.signer)(
            LOGIN_SIGNATURE_CONTEXT,
            &login_signed_message(&nonce, &binding),
        );
        let login = Frame::ClientLogin {
            node_key: self.cfg.node_key,
            signature,
            version: PROTOCOL_VERSION,
        };
        write(&mut wr, &login.to_vec()).await?;
        match next_frame(&mut rd, &mut decoder, &mut buf).await? {
            Frame::LoginOk => Ok((rd, wr, decoder)),
            Frame::LoginRefused { reason } => Err(RelayClientError::Refused(reason)),
            Frame::Restarting { .. } => Err(RelayClientError::Closed(Reason::Overloaded)),
            other => Err(RelayClientError::Protocol(format!(
                "expected the login answer, got {}",
                other.name()
            ))),
        }
    }
}

type RdHalf = tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>;
type WrHalf = tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>;

async fn write(wr: &mut WrHalf, bytes: &[u8]) -> Result<(), RelayClientError> {
    wr.write_all(bytes).await.map_err(io)?;
    wr.flush().await.map_err(io)
}

/// Reads until one valid frame (bad non-fatal frames are skipped).
async fn next_frame(
    rd: &mut RdHalf,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Frame, RelayClientError> {
    loop {
        while let Some(r) = decoder.next_frame() {
            match r {
                Ok(f) => return Ok(f),
                Err(e) if e.is_fatal() => return Err(RelayClientError::Protocol(e.to_string())),
                Err(_) => {}
            }
        }
        let n = rd.read(buf).await.map_err(io)?;
        if n == 0 {
            return Err(RelayClientError::Io(
                "the relay closed the connection during login".into(),
            ));
        }
        decoder.feed(&buf[..n]);
    }
}

/// Sleeps until `deadline`, or forever without one (for a `select!` branch
/// guarded by `deadline.is_some()`).
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
