//! The client's settings, errors, events and counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weft_api_client::Trust;
use weft_proto::NodeKey;
use weft_relay_core::frame::{MAX_PAYLOAD, PeerGoneReason, Reason};

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

/// Why [`RelayClient::send`](crate::RelayClient::send) dropped a packet.
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
