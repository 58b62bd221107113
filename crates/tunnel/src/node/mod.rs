//! The data-plane state machine: one per overlay network.

mod config;
mod discovery;
mod inbound;
mod outbound;
mod outcome;
mod policy;
mod refused;
mod roam;
mod services;
mod timers;
mod usage;
mod wireguard;

pub use config::{NetIndex, NetworkConfig, NodeConfig, PeerConfig};
use discovery::Stun;
pub use outcome::{Dest, Event, NetOutcome, PeerStatus, Transmit, TunOutcome};
pub use refused::{MAX_DISTINCT, MAX_REFUSAL_PEERS, Refusals, RefusedAttempts};
pub use services::{Backend, MAX_SERVICE_FLOWS, ServiceNat, ServiceStatus};
pub use usage::{MAX_USAGE_PEERS, NodeUsage, PeerUsage};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use weft_proto::NodeKey;

use crate::counters::{DropCounters, DropReason};
use crate::disco::DiscoKey;
use crate::path::{CandidateStats, PathKind, PathState, Route};
use crate::wg::{self, Tunnel};
use weft_policy::{DROP_LOG_INTERVAL, Engine, IpNet, LogLimiter};

/// A gateway heard only through the relay counts as alive this long
/// (persistent keepalives come every 25 s).
const GATEWAY_RELAY_WINDOW: Duration = Duration::from_secs(30);
/// WireGuard's recommended timer granularity.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Keepalive interval that keeps NAT mappings open (WireGuard's customary 25 s).
const PERSISTENT_KEEPALIVE: Duration = Duration::from_secs(25);
/// Handshake initiations admitted per second before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// WireGuard adds 32 bytes to each packet; handshakes are up to 148 bytes.
pub const WG_OVERHEAD: usize = 32;
/// The smallest output buffer the node accepts.
pub const MIN_OUT_BUF: usize = 148;

struct Peer {
    name: String,
    tunn: Tunnel,
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
    /// Our WireGuard identity, the seeded random stream and the TAI64N clock.
    wg: wg::Local,
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
    next_tick: Instant,
    next_rate_reset: Instant,
    relay_up: bool,
    policy: Option<Engine>,
    policy_log: LogLimiter<NodeKey>,
    refused: Refusals,
    usage: usage::UsageIds,
    stun: Stun,
    scratch: Vec<u8>,
    /// Service VIPs and their flows (consumer side).
    services: services::Services,
}

impl Node {
    /// Creates a node for identity `key` with its X25519 secret (see
    /// `weft_identity::Identity::x25519_secret`), for tests and simulations: its
    /// wall clock (WireGuard's handshake timestamps) reads the Unix epoch at
    /// `now`. Shells use [`Node::with_wall_clock`].
    pub fn new(key: NodeKey, x25519_secret: [u8; 32], seed: [u8; 32], now: Instant) -> Self {
        Self::with_wall_clock(key, x25519_secret, seed, now, SystemTime::UNIX_EPOCH)
    }

    /// Creates a node whose wall clock read `wall` at `now` (it then advances
    /// with the `now` of each input). Every random choice (ephemeral keys,
    /// session indices, cookie secrets, retry jitter, discovery nonces) comes
    /// from a ChaCha20 stream keyed by all 32 bytes of `seed`: the agent passes
    /// bytes from the OS generator, a simulation a fixed seed to replay exactly.
    /// A restarted node needs a later `wall` than before, or its peers take
    /// its handshakes for replays.
    pub fn with_wall_clock(
        key: NodeKey,
        x25519_secret: [u8; 32],
        seed: [u8; 32],
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let wg = wg::Local::new(
            x25519_secret,
            wg::Rng::new(seed),
            now,
            wall,
            HANDSHAKE_RATE_LIMIT,
        );
        Self {
            key,
            wg,
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
            next_tick: now,
            next_rate_reset: now,
            relay_up: false,
            policy: None,
            policy_log: LogLimiter::new(DROP_LOG_INTERVAL, 4096),
            refused: Refusals::default(),
            usage: usage::UsageIds::default(),
            stun: Stun::default(),
            scratch: vec![0u8; 65_536 + WG_OVERHEAD],
            services: services::Services::default(),
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

    /// Every configured service's counters (flows, packets, refusals), in
    /// configuration order.
    pub fn service_status(&self) -> Vec<ServiceStatus> {
        self.services.status()
    }

    /// Status of every peer at `now`, ordered by key.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(key, p)| {
                let (since, tx, rx) = p.tunn.stats(now);
                let (tx_packets, rx_packets) = p.tunn.packets();
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
                    tx_bytes: tx,
                    rx_bytes: rx,
                    tx_packets,
                    rx_packets,
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

    /// A fresh 24-bit peer index (the peer's session indices are it shifted
    /// left by 8 plus a counter).
    fn fresh_index(&mut self) -> u32 {
        loop {
            let idx = (self.wg.rng.u64() as u32) & 0x00ff_ffff;
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
