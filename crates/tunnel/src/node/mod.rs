//! The data-plane state machine: one per overlay network.

mod config;
mod discovery;
mod inbound;
mod outbound;
mod outcome;
mod policy;
mod timers;

pub use config::{NetIndex, NetworkConfig, NodeConfig, PeerConfig};
use discovery::Stun;
pub use outcome::{Dest, Event, NetOutcome, PeerStatus, Transmit, TunOutcome};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_proto::NodeKey;

use crate::counters::{DropCounters, DropReason};
use crate::disco::DiscoKey;
use crate::path::{CandidateStats, PathKind, PathState, Route};
use weft_policy::{DROP_LOG_INTERVAL, Engine, IpNet, LogLimiter};

/// A gateway heard only through the relay counts as alive this long
/// (persistent keepalives come every 25 s).
const GATEWAY_RELAY_WINDOW: Duration = Duration::from_secs(30);
/// WireGuard's recommended timer granularity.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Keepalive interval that keeps NAT mappings open (WireGuard's customary 25 s).
const PERSISTENT_KEEPALIVE_SECS: u16 = 25;
/// Handshakes admitted per second before cookies are demanded (boringtun's default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// WireGuard adds 32 bytes to each packet; handshakes are up to 148 bytes.
pub const WG_OVERHEAD: usize = 32;
/// The smallest output buffer the node accepts.
pub const MIN_OUT_BUF: usize = 148;

struct Peer {
    name: String,
    tunn: Tunn,
    index: u32,
    x25519: [u8; 32],
    addresses: BTreeSet<(NetIndex, IpAddr)>,
    routes: Vec<(NetIndex, IpNet, u32)>,
    path: PathState,
    disco: DiscoKey,
    up: bool,
    drops: DropCounters,
}

/// The sans-IO data plane of one overlay network. See the crate docs for the drive
/// contract.
pub struct Node {
    key: NodeKey,
    secret: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    peers: BTreeMap<NodeKey, Peer>,
    by_index: BTreeMap<u32, NodeKey>,
    by_ip: BTreeMap<(NetIndex, IpAddr), NodeKey>,
    by_x25519: BTreeMap<[u8; 32], NodeKey>,
    local: BTreeMap<IpAddr, NetIndex>,
    /// Routed subnets: (network, prefix, rank, gateway), longest prefix first,
    /// then by rank.
    routes: Vec<(NetIndex, IpNet, u32, NodeKey)>,
    /// Subnets this node serves, per network.
    served: Vec<(NetIndex, IpNet)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    drops: DropCounters,
    rng: u64,
    next_tick: Instant,
    next_rate_reset: Instant,
    relay_up: bool,
    policy: Option<Engine>,
    policy_log: LogLimiter<NodeKey>,
    stun: Stun,
    scratch: Vec<u8>,
}

impl Node {
    /// Creates a node for identity `key` with its X25519 secret (see
    /// `weft_identity::Identity::x25519_secret`). `seed` drives session-index
    /// allocation so simulations replay exactly.
    pub fn new(key: NodeKey, x25519_secret: [u8; 32], seed: [u8; 32], now: Instant) -> Self {
        let secret = StaticSecret::from(x25519_secret);
        let public = PublicKey::from(&secret);
        let mut rng = 0u64;
        for chunk in seed.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            rng ^= u64::from_le_bytes(b);
        }
        Self {
            key,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            peers: BTreeMap::new(),
            by_index: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            by_x25519: BTreeMap::new(),
            local: BTreeMap::new(),
            routes: Vec::new(),
            served: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            rng,
            next_tick: now,
            next_rate_reset: now,
            relay_up: false,
            policy: None,
            policy_log: LogLimiter::new(DROP_LOG_INTERVAL, 4096),
            stun: Stun::default(),
            scratch: vec![0u8; 65_536 + WG_OVERHEAD],
        }
    }

    /// This node's identity.
    pub fn key(&self) -> NodeKey {
        self.key
    }

    /// The next control datagram to send (handshakes, cookies, keepalives, and
    /// packets released by a completed handshake).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Drop counters for packets not attributable to a peer plus all peers'.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Status of every peer at `now`, ordered by key.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(key, p)| {
                let (since, tx, rx, _, _) = p.tunn.stats();
                let path = p.path.kind(now, self.relay_up);
                PeerStatus {
                    key: *key,
                    name: p.name.clone(),
                    addresses: p.addresses.iter().copied().collect(),
                    path,
                    path_age: p.path.since().map(|s| now.saturating_duration_since(s)),
                    endpoint: match path {
                        PathKind::Direct(a) => Some(a),
                        _ => None,
                    },
                    candidates: p.path.stats(),
                    since_handshake: since,
                    last_heard: p
                        .path
                        .last_heard()
                        .map(|h| now.saturating_duration_since(h)),
                    tx_bytes: tx as u64,
                    rx_bytes: rx as u64,
                    drops: p.drops.clone(),
                }
            })
            .collect()
    }

    fn drop_tun<'a>(&mut self, r: DropReason) -> TunOutcome<'a> {
        self.drops.add(r);
        TunOutcome::Dropped(r)
    }

    fn drop_net<'a>(&mut self, key: Option<NodeKey>, r: DropReason) -> NetOutcome<'a> {
        self.drops.add(r);
        if let Some(peer) = key.and_then(|k| self.peers.get_mut(&k)) {
            peer.drops.add(r);
        }
        tracing::trace!(reason = %r, "dropped datagram");
        NetOutcome::Dropped(r)
    }

    /// A fresh 24-bit session index (boringtun shifts it left by 8).
    fn fresh_index(&mut self) -> u32 {
        loop {
            let idx = (splitmix(&mut self.rng) as u32) & 0x00ff_ffff;
            if !self.by_index.contains_key(&idx) {
                return idx;
            }
        }
    }
}

/// WireGuard message type 4 is transport data (including keepalives).
fn is_data(msg: &[u8]) -> bool {
    msg.first() == Some(&4)
}

/// Sends a handshake message: to the direct path when it is trusted, else through
/// the relay (when up) and to every candidate, so whichever path works first
/// carries the handshake.
fn send_handshake(
    transmits: &mut VecDeque<Transmit>,
    key: NodeKey,
    peer: &Peer,
    msg: &[u8],
    now: Instant,
    relay_up: bool,
) {
    if let Route::Direct(a) = peer.path.route(now, false)
        && peer.path.direct_fresh(now)
    {
        transmits.push_back(Transmit {
            dst: Dest::Udp(a),
            payload: msg.to_vec(),
        });
        return;
    }
    if relay_up {
        transmits.push_back(Transmit {
            dst: Dest::Relay(key),
            payload: msg.to_vec(),
        });
    }
    // A stale direct address first (it may still work), then every candidate.
    let stale = match peer.path.route(now, false) {
        Route::Direct(a) => Some(a),
        Route::Relay | Route::Candidates => None,
    };
    let mut sent = BTreeSet::new();
    for dst in stale.into_iter().chain(peer.path.candidates()) {
        if sent.insert(dst) {
            transmits.push_back(Transmit {
                dst: Dest::Udp(dst),
                payload: msg.to_vec(),
            });
        }
    }
}

/// Authenticated WireGuard traffic from `peer` arrived over `from` (None: relay).
fn heard(
    events: &mut VecDeque<Event>,
    key: NodeKey,
    peer: &mut Peer,
    from: Option<SocketAddr>,
    now: Instant,
) {
    match from {
        Some(f) => peer.path.heard_direct(f, now),
        None => peer.path.heard_relay(now),
    }
    if !peer.up {
        peer.up = true;
        events.push_back(Event::PeerUp { key });
    }
}

/// SplitMix64 step over the seeded state.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A discovery nonce: unique per message (a 96-bit value from the seeded stream;
/// the pair key never sees the same nonce twice in practice).
fn next_nonce(state: &mut u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&splitmix(state).to_le_bytes());
    n[8..].copy_from_slice(&(splitmix(state) as u32).to_le_bytes());
    n
}
