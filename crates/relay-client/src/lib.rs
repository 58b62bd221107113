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
//! # async fn demo(identity: std::sync::Arc<weft_identity::Identity>, peer: weft_proto::NodeKey, fp: [u8; 32]) -> Result<(), weft_relay_client::RelayClientError> {
//! use std::sync::Arc;
//! use weft_api_client::Trust;
//! use weft_relay_client::{RelayClient, RelayClientConfig, RelayEvent};
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

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use weft_proto::NodeKey;
use weft_proto::relay_api::RelayUrl;
use weft_relay_core::frame::{ALPN, MAX_PAYLOAD};

mod reconnect;
mod session;
mod types;

pub use types::{
    RelayClientConfig, RelayClientError, RelayClientStats, RelayEvent, SendError, Signer,
};
pub use weft_relay_core::outage::{OUTAGE_REMIND, OutageLog, OutageNote};

use session::Session;

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) send_dropped: AtomicU64,
    pub(crate) recv_dropped: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) connected: AtomicU64,
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
        let task = tokio::spawn(reconnect::run(
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
