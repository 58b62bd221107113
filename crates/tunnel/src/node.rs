//! The data-plane state machine: one per overlay network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_proto::NodeKey;

use crate::batch::{DatagramBatch, PacketBatch};
use crate::counters::{DropCounters, DropReason};
use crate::disco::{self, Disco, DiscoKey};
use crate::ip::{self, IpView};
use crate::path::{CandidateStats, PathKind, PathState, Route};
use weft_policy::{
    CompiledPolicy, ConntrackConfig, DROP_LOG_INTERVAL, Direction, DropReason as PolicyDrop,
    Engine, FiveTuple, IpNet, LogLimiter, Verdict,
};
use weft_proto::stun;

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

/// Index of an overlay network in [`NodeConfig::networks`] (and of its TUN).
pub type NetIndex = usize;

/// What the node should look like: built by the agent from the network map.
///
/// One node serves every network the machine is a member of, so a peer met in two
/// networks has one WireGuard session; which network a packet belongs to is decided
/// by its overlay addresses, and networks never leak into each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The networks, indexed by [`NetIndex`].
    pub networks: Vec<NetworkConfig>,
    /// The peers this node may talk to, in any of the networks.
    pub peers: Vec<PeerConfig>,
    /// The access policy compiled for this node, enforced on every packet in both
    /// directions (default deny, stateful). `None` turns enforcement off: only for
    /// tests and controllers that predate policies.
    pub policy: Option<CompiledPolicy>,
}

/// One overlay network as the data plane sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// This node's overlay addresses in this network.
    pub local_addresses: Vec<IpAddr>,
    /// Subnets this node is a gateway for in this network: packets from the
    /// network's peers to them are accepted (and leave through the TUN).
    pub serves: Vec<IpNet>,
}

/// One peer as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Identity key (its X25519 key is derived from it).
    pub key: NodeKey,
    /// Display name.
    pub name: String,
    /// Overlay addresses per network; packets from this peer must come from one of
    /// these, in the network of their destination.
    pub addresses: Vec<(NetIndex, IpAddr)>,
    /// Underlay candidates (`ip:port`) to try.
    pub endpoints: Vec<SocketAddr>,
    /// Subnets this peer is a gateway for, per network, each with its rank
    /// among the subnet's gateways (0: the controller's primary). Packets to a
    /// subnet go to the best-ranked gateway that is alive (heard over a trusted
    /// direct path, or through the relay within 30 s), else to the best-ranked
    /// one; packets from this peer may come from these subnets.
    pub routes: Vec<(NetIndex, IpNet, u32)>,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dest {
    /// Directly over the UDP socket.
    Udp(SocketAddr),
    /// Through the relay, addressed to this peer.
    Relay(NodeKey),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: Dest,
    /// Bytes (WireGuard or discovery message).
    pub payload: Vec<u8>,
}

/// Something the shell may want to log or show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WireGuard session with this peer is established (first or after expiry).
    PeerUp {
        /// The peer.
        key: NodeKey,
    },
    /// The peer's session expired (no handshake for 3 minutes).
    PeerDown {
        /// The peer.
        key: NodeKey,
    },
    /// Packets to this peer now take another path (direct address, relay).
    PathChanged {
        /// The peer.
        key: NodeKey,
        /// The new path.
        path: PathKind,
    },
    /// The access policy dropped a packet (at most one event per peer per 10 s;
    /// every drop is counted).
    PolicyDrop {
        /// The peer on the other end.
        key: NodeKey,
        /// Outbound or inbound.
        direction: Direction,
        /// The packet and the rule that decided, in words.
        explanation: String,
        /// Drops for this peer since the last event.
        suppressed: u64,
    },
    /// A policy from the controller could not be used; everything is denied until
    /// a valid one arrives.
    PolicyRejected {
        /// Why.
        why: String,
    },
    /// The set of this node's reflexive addresses (as STUN servers see its UDP
    /// socket) changed; the shell reports them to the controller as candidates.
    ReflexiveAddresses {
        /// The current set.
        addrs: Vec<SocketAddr>,
    },
    /// A peer in the configuration was ignored (bad key, duplicate address, ourselves).
    PeerRejected {
        /// The peer.
        key: NodeKey,
        /// Why.
        why: &'static str,
    },
}

/// Result of a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum TunOutcome<'a> {
    /// Send this datagram.
    Send {
        /// Destination.
        dst: Dest,
        /// The encrypted datagram (in the caller's buffer).
        datagram: &'a [u8],
    },
    /// The packet waits for a handshake; handshake messages are in `poll_transmit`.
    Queued,
    /// Write this packet back to the TUN (an ICMP error for the sender).
    Reply(&'a [u8]),
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Result of a datagram received on the UDP socket.
#[derive(Debug, PartialEq, Eq)]
pub enum NetOutcome<'a> {
    /// Write this decrypted packet to the TUN of network `net`.
    WriteTun {
        /// Which network's TUN.
        net: NetIndex,
        /// The plaintext IP packet (in the caller's buffer).
        packet: &'a [u8],
    },
    /// Nothing for the TUN (handshake, keepalive); check `poll_transmit`.
    Handled,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Status of one peer, for `weft status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Identity key.
    pub key: NodeKey,
    /// Display name.
    pub name: String,
    /// Overlay addresses, per network.
    pub addresses: Vec<(NetIndex, IpAddr)>,
    /// The path packets take now.
    pub path: PathKind,
    /// How long the path has been in use.
    pub path_age: Option<Duration>,
    /// The direct address, when direct.
    pub endpoint: Option<SocketAddr>,
    /// Every candidate and what probing it found (for `weft why`).
    pub candidates: Vec<(SocketAddr, CandidateStats)>,
    /// Time since the current session's handshake.
    pub since_handshake: Option<Duration>,
    /// Time since something authenticated last arrived from the peer (directly
    /// or through the relay); `None`: never.
    pub last_heard: Option<Duration>,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
    /// Packets dropped that were attributed to this peer.
    pub drops: DropCounters,
}

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

/// STUN reflexive-address discovery against the relays' STUN servers.
#[derive(Debug, Default)]
struct Stun {
    servers: Vec<SocketAddr>,
    pending: BTreeMap<[u8; 12], (SocketAddr, Instant)>,
    mapped: BTreeMap<SocketAddr, (SocketAddr, Instant)>,
    next: Option<Instant>,
    reported: Vec<SocketAddr>,
}

/// How often reflexive addresses are refreshed (NAT mappings and roaming).
const STUN_EVERY: Duration = Duration::from_secs(20);
/// A mapping not confirmed for this long is forgotten.
const STUN_FORGET: Duration = Duration::from_secs(75);

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

    /// Makes the peer set and addresses match `cfg`. Peers no longer listed are
    /// forgotten at once (their sessions end; their packets are dropped as
    /// `unknown_session`); existing sessions of kept peers survive.
    pub fn apply_config(&mut self, now: Instant, cfg: &NodeConfig) {
        self.apply_policy(now, cfg.policy.clone());
        self.local.clear();
        self.served.clear();
        for (net, nc) in cfg.networks.iter().enumerate() {
            for a in &nc.local_addresses {
                self.local.entry(*a).or_insert(net);
            }
            self.served.extend(nc.serves.iter().map(|p| (net, *p)));
        }
        let wanted: BTreeMap<NodeKey, &PeerConfig> = cfg
            .peers
            .iter()
            .filter(|p| p.key != self.key)
            .map(|p| (p.key, p))
            .collect();

        let gone: Vec<NodeKey> = self
            .peers
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(peer) = self.peers.remove(&key) {
                self.by_index.remove(&peer.index);
                self.by_x25519.remove(&peer.x25519);
            }
        }

        // Underlay candidates are never loopback, unspecified, multicast or
        // broadcast, nor an overlay address (sent there, a datagram would loop
        // back into the tunnel); the controller drops them, and so do we.
        let overlay: BTreeSet<IpAddr> = self
            .local
            .keys()
            .copied()
            .chain(
                wanted
                    .values()
                    .flat_map(|p| p.addresses.iter().map(|a| a.1)),
            )
            .collect();
        let usable = |e: &&SocketAddr| {
            weft_proto::net::unusable_endpoint(e).is_none()
                && !overlay.contains(&e.ip().to_canonical())
        };

        let mut fresh = BTreeSet::new();
        for (key, pc) in &wanted {
            if !self.peers.contains_key(key) {
                fresh.insert(*key);
                let Ok(x) = weft_identity::x25519_public_of(key) else {
                    self.events.push_back(Event::PeerRejected {
                        key: *key,
                        why: "not a valid Ed25519 key",
                    });
                    continue;
                };
                let index = self.fresh_index();
                let tunn = Tunn::new(
                    self.secret.clone(),
                    PublicKey::from(x),
                    None,
                    Some(PERSISTENT_KEEPALIVE_SECS),
                    index,
                    Some(self.rate_limiter.clone()),
                );
                self.by_index.insert(index, *key);
                self.by_x25519.insert(x, *key);
                let shared = self.secret.diffie_hellman(&PublicKey::from(x));
                self.peers.insert(
                    *key,
                    Peer {
                        name: String::new(),
                        tunn,
                        index,
                        x25519: x,
                        addresses: BTreeSet::new(),
                        routes: Vec::new(),
                        path: PathState::default(),
                        disco: DiscoKey::from_shared(shared.as_bytes()),
                        up: false,
                        drops: DropCounters::default(),
                    },
                );
            }
            if let Some(peer) = self.peers.get_mut(key) {
                peer.name.clone_from(&pc.name);
                peer.addresses = pc.addresses.iter().copied().collect();
                peer.routes.clone_from(&pc.routes);
                let endpoints: Vec<SocketAddr> =
                    pc.endpoints.iter().filter(usable).copied().collect();
                peer.path.set_candidates(&endpoints, now);
            }
            if fresh.contains(key) {
                // Handshake at once rather than on first traffic: a peer that still
                // holds a session with our previous incarnation (we restarted)
                // learns our new one now, instead of after its 15 s retry timer.
                if let Some(peer) = self.peers.get_mut(key)
                    && let TunnResult::WriteToNetwork(msg) = peer
                        .tunn
                        .format_handshake_initiation(&mut self.scratch, false)
                {
                    send_handshake(&mut self.transmits, *key, peer, msg, now, self.relay_up);
                }
            }
        }

        // Cryptokey routing table: each overlay address belongs to exactly one peer.
        // On a conflict the smaller key keeps it and the other peer is told off.
        self.by_ip.clear();
        let mut conflicts = Vec::new();
        for (key, peer) in &self.peers {
            for addr in &peer.addresses {
                if self.local.contains_key(&addr.1) {
                    conflicts.push((*key, "claims one of this node's addresses"));
                } else if self.by_ip.contains_key(addr) {
                    conflicts.push((*key, "claims an address another peer has"));
                } else {
                    self.by_ip.insert(*addr, *key);
                }
            }
        }
        // Routed subnets: longest prefix first, so the most specific route wins.
        self.routes = self
            .peers
            .iter()
            .flat_map(|(k, p)| p.routes.iter().map(|(n, net, r)| (*n, *net, *r, *k)))
            .collect();
        self.routes
            .sort_by(|a, b| b.1.prefix_len().cmp(&a.1.prefix_len()).then(a.cmp(b)));
        for (key, why) in conflicts {
            if let Some(peer) = self.peers.get_mut(&key) {
                let keep: BTreeSet<(NetIndex, IpAddr)> = peer
                    .addresses
                    .iter()
                    .copied()
                    .filter(|a| self.by_ip.get(a) == Some(&key))
                    .collect();
                peer.addresses = keep;
            }
            self.events.push_back(Event::PeerRejected { key, why });
        }
    }

    fn apply_policy(&mut self, now: Instant, policy: Option<CompiledPolicy>) {
        // Benchmark builds only (see the feature in Cargo.toml): no enforcement.
        #[cfg(feature = "unenforced-benchmark-only")]
        let policy: Option<CompiledPolicy> = policy.and(None);
        let Some(cp) = policy else {
            self.policy = None;
            return;
        };
        match self.policy.as_mut() {
            Some(engine) => match engine.replace_policy(cp, now) {
                Ok(ended) if ended > 0 => {
                    tracing::info!(
                        flows = ended,
                        "policy change ended flows it no longer allows"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.events
                        .push_back(Event::PolicyRejected { why: e.to_string() });
                    self.policy = Some(Engine::deny_all(ConntrackConfig::default()));
                }
            },
            None => match Engine::new(cp, ConntrackConfig::default()) {
                Ok(e) => self.policy = Some(e),
                Err(e) => {
                    self.events
                        .push_back(Event::PolicyRejected { why: e.to_string() });
                    self.policy = Some(Engine::deny_all(ConntrackConfig::default()));
                }
            },
        }
    }

    /// Runs the policy on a packet to or from `key`; on a drop counts it and
    /// (rate-limited) reports it.
    fn police(
        &mut self,
        now: Instant,
        key: NodeKey,
        dir: Direction,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        let Some(engine) = self.policy.as_mut() else {
            return Ok(());
        };
        let Ok(tuple) = FiveTuple::parse(packet) else {
            self.drops.add(DropReason::MalformedIp);
            return Err(DropReason::MalformedIp);
        };
        match engine.decide(dir, &tuple, now) {
            Verdict::Allow { .. } => Ok(()),
            Verdict::Drop(why) => {
                let reason = match why {
                    PolicyDrop::NoRule => DropReason::PolicyNoRule,
                    PolicyDrop::Denied(_) => DropReason::PolicyDenied,
                };
                self.drops.add(reason);
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.drops.add(reason);
                }
                if let Some(suppressed) = self.policy_log.check(&key, now) {
                    let explanation = engine.explain(dir, &tuple, now).to_string();
                    self.events.push_back(Event::PolicyDrop {
                        key,
                        direction: dir,
                        explanation,
                        suppressed,
                    });
                }
                Err(reason)
            }
        }
    }

    /// Explains what the policy would do with `packet` in direction `dir` now
    /// (`None` when enforcement is off).
    pub fn explain(
        &self,
        dir: Direction,
        packet: &FiveTuple,
        now: Instant,
    ) -> Option<(bool, String)> {
        self.policy.as_ref().map(|e| {
            let x = e.explain(dir, packet, now);
            (matches!(x.verdict, Verdict::Allow { .. }), x.to_string())
        })
    }

    /// Handles a packet read from the TUN: route it to a peer by destination
    /// address and encrypt it into `out` (at least `packet.len() + 32` and
    /// [`MIN_OUT_BUF`] bytes).
    pub fn handle_tun_packet<'a>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> TunOutcome<'a> {
        let Ok(view) = IpView::parse(packet) else {
            return self.drop_tun(DropReason::MalformedIp);
        };
        let packet = &packet[..view.total_len];
        let routed = || self.gateway_for(now, net, view.dst);
        let Some(key) = self.by_ip.get(&(net, view.dst)).copied().or_else(routed) else {
            self.drops.add(DropReason::NoRoute);
            let from = self
                .local
                .iter()
                .find(|(a, n)| **n == net && a.is_ipv4() == view.src.is_ipv4())
                .map(|(a, _)| *a);
            if let Some(from) = from
                && let Some(n) = ip::icmp_unreachable(packet, &view, from, out)
            {
                return TunOutcome::Reply(&out[..n]);
            }
            return TunOutcome::Dropped(DropReason::NoRoute);
        };
        if out.len() < packet.len() + WG_OVERHEAD || out.len() < MIN_OUT_BUF {
            return self.drop_tun(DropReason::BufferTooSmall);
        }
        if let Err(reason) = self.police(now, key, Direction::Egress, packet) {
            // Tell the local sender at once instead of letting it time out.
            if let Some(from) = self
                .local
                .iter()
                .find(|(a, n)| **n == net && a.is_ipv4() == view.src.is_ipv4())
                .map(|(a, _)| *a)
                && let Some(n) =
                    ip::icmp_error(packet, &view, from, out, ip::Unreachable::Prohibited)
            {
                return TunOutcome::Reply(&out[..n]);
            }
            return TunOutcome::Dropped(reason);
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.drop_tun(DropReason::NoRoute);
        };
        let relay_up = self.relay_up;
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(buf) => {
                if is_data(buf) {
                    let dst = match peer.path.route(now, relay_up) {
                        Route::Direct(a) => Dest::Udp(a),
                        Route::Relay => Dest::Relay(key),
                        Route::Candidates => {
                            // No confirmed path and no relay: best effort.
                            let first = peer.path.candidates().next();
                            match first {
                                Some(a) => Dest::Udp(a),
                                None => return self.drop_tun(DropReason::NoPath),
                            }
                        }
                    };
                    let n = buf.len();
                    return TunOutcome::Send {
                        dst,
                        datagram: &out[..n],
                    };
                }
                // A handshake initiation (the packet is queued behind it).
                send_handshake(&mut self.transmits, key, peer, buf, now, relay_up);
                TunOutcome::Queued
            }
            TunnResult::Done => TunOutcome::Queued,
            TunnResult::Err(_) => {
                peer.drops.add(DropReason::SessionError);
                self.drop_tun(DropReason::SessionError)
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                self.drop_tun(DropReason::SessionError)
            }
        }
    }

    /// The gateway for `dst` in `net`: among the gateways of the longest
    /// matching prefix, the best-ranked one that is alive, else the best-ranked.
    fn gateway_for(&self, now: Instant, net: NetIndex, dst: IpAddr) -> Option<NodeKey> {
        let mut first: Option<(IpNet, NodeKey)> = None;
        for (n, p, _, k) in &self.routes {
            if *n != net || !p.contains(&dst) {
                continue;
            }
            match first {
                None => first = Some((*p, *k)),
                // Only the gateways of the most specific prefix compete.
                Some((fp, _)) if fp != *p => break,
                Some(_) => {}
            }
            if self
                .peers
                .get(k)
                .is_some_and(|peer| peer.path.alive(now, GATEWAY_RELAY_WINDOW))
            {
                return Some(*k);
            }
        }
        first.map(|f| f.1)
    }

    /// Handles packets read together from the TUN of `net` (the segments of one
    /// offload read, say): each exactly as [`Node::handle_tun_packet`] would, in
    /// order. Encrypted datagrams are appended to `out` (grouped for GSO sends),
    /// ICMP errors for local senders to `replies`; handshakes and queued packets
    /// go to [`Node::poll_transmit`] as usual.
    pub fn handle_tun_batch<'p>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packets: impl IntoIterator<Item = &'p [u8]>,
        out: &mut DatagramBatch,
        replies: &mut PacketBatch,
    ) {
        for packet in packets {
            let space = out.space((packet.len() + WG_OVERHEAD).max(MIN_OUT_BUF));
            let sent = match self.handle_tun_packet(now, net, packet, space) {
                TunOutcome::Send { dst, datagram } => Some((dst, datagram.len())),
                TunOutcome::Reply(icmp) => {
                    replies.push(net, icmp);
                    None
                }
                TunOutcome::Queued | TunOutcome::Dropped(_) => None,
            };
            if let Some((dst, n)) = sent {
                out.commit(dst, n);
            }
        }
    }

    /// Handles datagrams received together from `from` (the datagrams of one GRO
    /// read, say): each exactly as [`Node::handle_datagram`] would, in order.
    /// Packets for a TUN are appended to `out` with their network.
    pub fn handle_datagram_batch<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagrams: impl IntoIterator<Item = &'d [u8]>,
        out: &mut PacketBatch,
    ) {
        for datagram in datagrams {
            let space = out.space(datagram.len().max(MIN_OUT_BUF));
            let written = match self.handle_datagram(now, from, datagram, space) {
                NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                NetOutcome::Handled | NetOutcome::Dropped(_) => None,
            };
            if let Some((net, n)) = written {
                out.commit(net, n);
            }
        }
    }

    /// Handles a datagram from the UDP socket. Only packets authenticated by a
    /// peer's WireGuard session, whose inner source address belongs to that peer
    /// and whose destination is this node, come out as [`NetOutcome::WriteTun`].
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        if out.len() < datagram.len() || out.len() < MIN_OUT_BUF {
            return self.drop_net(None, DropReason::BufferTooSmall);
        }
        if disco::is_disco(datagram) {
            return self.handle_disco(now, from, datagram);
        }
        if stun::is_stun(datagram) {
            return self.handle_stun(now, from, datagram);
        }
        self.handle_wireguard(now, Some(from), None, datagram, out)
    }

    /// Handles a WireGuard message that the relay delivered from peer `src`.
    pub fn handle_relay_frame<'a>(
        &mut self,
        now: Instant,
        src: NodeKey,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        if out.len() < datagram.len() || out.len() < MIN_OUT_BUF {
            return self.drop_net(None, DropReason::BufferTooSmall);
        }
        if !self.peers.contains_key(&src) {
            return self.drop_net(None, DropReason::UnknownPeer);
        }
        self.handle_wireguard(now, None, Some(src), datagram, out)
    }

    /// Tells the node whether the relay connection is up (it then routes peers
    /// without a direct path through it).
    pub fn set_relay_available(&mut self, now: Instant, up: bool) {
        if self.relay_up == up {
            return;
        }
        self.relay_up = up;
        if up {
            // Peers still waiting for a handshake (their candidates may be
            // unreachable) get one through the relay now, not at the next retry.
            for (key, peer) in &mut self.peers {
                if !peer.up
                    && let TunnResult::WriteToNetwork(msg) = peer
                        .tunn
                        .format_handshake_initiation(&mut self.scratch, true)
                {
                    self.transmits.push_back(Transmit {
                        dst: Dest::Relay(*key),
                        payload: msg.to_vec(),
                    });
                }
            }
        }
        self.report_path_changes(now);
    }

    fn handle_wireguard<'a>(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        via_relay: Option<NodeKey>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        let src_ip = from.map(|f| f.ip());
        let key = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => return self.drop_net(None, DropReason::NotWireGuard),
            Ok(Packet::HandshakeInit(init)) => {
                // Check MAC1 and load before the expensive Diffie-Hellman.
                match self.rate_limiter.verify_packet(src_ip, datagram, out) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        if let Some(from) = from {
                            self.transmits.push_back(Transmit {
                                dst: Dest::Udp(from),
                                payload: cookie.to_vec(),
                            });
                        }
                        return self.drop_net(None, DropReason::UnderLoad);
                    }
                    Err(_) => return self.drop_net(None, DropReason::BadAuth),
                }
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => match self.by_x25519.get(&half.peer_static_public) {
                        Some(k) => *k,
                        None => return self.drop_net(None, DropReason::UnknownPeer),
                    },
                    Err(_) => return self.drop_net(None, DropReason::BadAuth),
                }
            }
            Ok(Packet::HandshakeResponse(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
            Ok(Packet::PacketCookieReply(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
            Ok(Packet::PacketData(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
        };
        if via_relay.is_some_and(|k| k != key) {
            // The relay says it is from one peer, the message belongs to another.
            return self.drop_net(None, DropReason::BadAuth);
        }
        let data = is_data(datagram);
        let relay_up = self.relay_up;
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let reply_to = match from {
            Some(f) => Dest::Udp(f),
            None => Dest::Relay(key),
        };
        let res = peer.tunn.decapsulate(src_ip, datagram, out);
        match res {
            TunnResult::WriteToNetwork(buf) => {
                // Handshake response, or keepalive after one: reply where it came from.
                self.transmits.push_back(Transmit {
                    dst: reply_to,
                    payload: buf.to_vec(),
                });
                heard(&mut self.events, key, peer, from, now);
                // Flush packets that queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(b) =
                    peer.tunn.decapsulate(None, &[], &mut self.scratch)
                {
                    let dst = match peer.path.route(now, relay_up) {
                        Route::Direct(a) => Dest::Udp(a),
                        Route::Relay => Dest::Relay(key),
                        Route::Candidates => reply_to,
                    };
                    self.transmits.push_back(Transmit {
                        dst,
                        payload: b.to_vec(),
                    });
                }
                self.report_path_changes(now);
                NetOutcome::Handled
            }
            TunnResult::Done => {
                if data {
                    // An authenticated keepalive.
                    heard(&mut self.events, key, peer, from, now);
                    self.report_path_changes(now);
                }
                NetOutcome::Handled
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %key, error = ?e, "WireGuard refused a datagram");
                let reason = match e {
                    WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => {
                        DropReason::Replay
                    }
                    WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
                        DropReason::UnknownSession
                    }
                    WireGuardError::UnderLoad => DropReason::UnderLoad,
                    WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => {
                        DropReason::NotWireGuard
                    }
                    WireGuardError::ConnectionExpired => DropReason::SessionError,
                    // A response to a handshake we already replaced (both sides
                    // initiated at once): harmless, the newer handshake wins.
                    WireGuardError::UnexpectedPacket => DropReason::StaleHandshake,
                    _ => DropReason::BadAuth,
                };
                self.drop_net(Some(key), reason)
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                let n = pkt.len();
                heard(&mut self.events, key, peer, from, now);
                self.deliver(now, key, IpAddr::V4(src), n, out)
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                let n = pkt.len();
                heard(&mut self.events, key, peer, from, now);
                self.deliver(now, key, IpAddr::V6(src), n, out)
            }
        }
    }

    /// Runs WireGuard's timers (handshake retries, rekeys, keepalives) when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(engine) = self.policy.as_mut() {
            engine.handle_timeout(now);
        }
        if now >= self.next_rate_reset {
            self.rate_limiter.reset_count();
            self.next_rate_reset = now + Duration::from_secs(1);
        }
        self.run_paths(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TIMER_TICK;
        let relay_up = self.relay_up;
        for (key, peer) in &mut self.peers {
            match peer.tunn.update_timers(&mut self.scratch) {
                TunnResult::WriteToNetwork(buf) => {
                    if is_data(buf) {
                        let dst = match peer.path.route(now, relay_up) {
                            Route::Direct(a) => Some(Dest::Udp(a)),
                            Route::Relay => Some(Dest::Relay(*key)),
                            Route::Candidates => None,
                        };
                        if let Some(dst) = dst {
                            self.transmits.push_back(Transmit {
                                dst,
                                payload: buf.to_vec(),
                            });
                        }
                    } else {
                        send_handshake(&mut self.transmits, *key, peer, buf, now, relay_up);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) if peer.up => {
                    peer.up = false;
                    self.events.push_back(Event::PeerDown { key: *key });
                }
                _ => {}
            }
        }
    }

    /// When [`Node::handle_timeout`] wants to run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let wg = (self.next_tick.min(self.next_rate_reset), "wireguard timers");
        let paths = self
            .peers
            .values()
            .filter_map(|p| p.path.next_due(wg.0))
            .min()
            .map(|t| (t, "path discovery"));
        let policy = self.policy.as_ref().and_then(Engine::poll_timeout);
        let stun = self
            .stun
            .next
            .filter(|_| !self.stun.servers.is_empty())
            .map(|t| (t, "stun refresh"));
        [Some(wg), paths, policy, stun]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
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

    fn deliver<'a>(
        &mut self,
        now: Instant,
        key: NodeKey,
        src: IpAddr,
        n: usize,
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        self.report_path_change(key, now);
        let Some(peer) = self.peers.get(&key) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let Ok(view) = IpView::parse(&out[..n]) else {
            return self.drop_net(Some(key), DropReason::MalformedIp);
        };
        // The destination picks the network: one of this node's addresses, or a
        // subnet it serves (possibly in several networks: the one where the
        // source belongs to the peer). The source must be the peer's address, or
        // inside a subnet the peer routes, in that same network.
        let src_ok = |net: NetIndex| {
            peer.addresses.contains(&(net, src))
                || peer
                    .routes
                    .iter()
                    .any(|(n, p, _)| *n == net && p.contains(&src))
        };
        let chosen = match self.local.get(&view.dst) {
            Some(&net) => Some(net).filter(|n| src_ok(*n)),
            None => {
                let mut served = self
                    .served
                    .iter()
                    .filter(|(_, p)| p.contains(&view.dst))
                    .peekable();
                if served.peek().is_none() {
                    return self.drop_net(Some(key), DropReason::NotForUs);
                }
                served.map(|s| s.0).find(|n| src_ok(*n))
            }
        };
        let Some(net) = chosen.filter(|_| view.src == src) else {
            return self.drop_net(Some(key), DropReason::SpoofedSource);
        };
        if let Err(reason) = self.police(now, key, Direction::Ingress, &out[..n]) {
            return NetOutcome::Dropped(reason);
        }
        NetOutcome::WriteTun {
            net,
            packet: &out[..n],
        }
    }

    /// Handles a discovery ping or pong from `from`.
    fn handle_disco<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> NetOutcome<'a> {
        let Ok(sender) = disco::sender(datagram) else {
            return self.drop_net(None, DropReason::BadDisco);
        };
        let Some(peer) = self.peers.get_mut(&sender) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let Ok(msg) = peer.disco.open(datagram) else {
            return self.drop_net(Some(sender), DropReason::BadDisco);
        };
        match msg {
            Disco::Ping { tx } => {
                // Answer, learn the address, and ping back so our NAT opens too.
                peer.path.pinged_from(from);
                let nonce = next_nonce(&mut self.rng);
                let pong = peer
                    .disco
                    .seal(&self.key, nonce, &Disco::Pong { tx, observed: from });
                self.transmits.push_back(Transmit {
                    dst: Dest::Udp(from),
                    payload: pong,
                });
                if !peer.path.direct_fresh(now) {
                    let tx = splitmix(&mut self.rng);
                    let nonce = next_nonce(&mut self.rng);
                    peer.path.ping_sent(tx, from, now);
                    self.transmits.push_back(Transmit {
                        dst: Dest::Udp(from),
                        payload: peer.disco.seal(&self.key, nonce, &Disco::Ping { tx }),
                    });
                }
            }
            Disco::Pong { tx, .. } => {
                if !peer.path.pong(tx, from, now) {
                    return self.drop_net(Some(sender), DropReason::BadDisco);
                }
            }
        }
        self.report_path_change(sender, now);
        NetOutcome::Handled
    }

    /// Sets the STUN servers used to learn this node's reflexive addresses (the
    /// relays' STUN ports); a change queries them at once.
    pub fn set_stun_servers(&mut self, now: Instant, servers: Vec<SocketAddr>) {
        if servers != self.stun.servers {
            self.stun.servers = servers;
            self.stun
                .mapped
                .retain(|s, _| self.stun.servers.contains(s));
            self.stun.next = Some(now);
        }
    }

    /// The reflexive addresses STUN servers currently report.
    pub fn reflexive_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.stun.mapped.values().map(|(a, _)| *a).collect();
        v.sort();
        v.dedup();
        v
    }

    fn handle_stun<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> NetOutcome<'a> {
        let Ok(resp) = stun::parse_binding_response(datagram) else {
            return self.drop_net(None, DropReason::BadStun);
        };
        match self.stun.pending.remove(&resp.transaction_id) {
            Some((server, _)) if server == from => {
                self.stun.mapped.insert(server, (resp.mapped, now));
                self.report_reflexive();
                NetOutcome::Handled
            }
            _ => self.drop_net(None, DropReason::BadStun),
        }
    }

    fn report_reflexive(&mut self) {
        let now_set = self.reflexive_addresses();
        if now_set != self.stun.reported {
            self.stun.reported.clone_from(&now_set);
            self.events
                .push_back(Event::ReflexiveAddresses { addrs: now_set });
        }
    }

    fn run_stun(&mut self, now: Instant) {
        self.stun
            .pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < Duration::from_secs(5));
        let before = self.stun.mapped.len();
        self.stun
            .mapped
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < STUN_FORGET);
        if self.stun.mapped.len() != before {
            self.report_reflexive();
        }
        if self.stun.servers.is_empty() || self.stun.next.is_some_and(|t| now < t) {
            return;
        }
        self.stun.next = Some(now + STUN_EVERY);
        for server in self.stun.servers.clone() {
            let mut id = [0u8; 12];
            id[..8].copy_from_slice(&splitmix(&mut self.rng).to_le_bytes());
            id[8..].copy_from_slice(&(splitmix(&mut self.rng) as u32).to_le_bytes());
            let mut msg = Vec::with_capacity(28);
            stun::encode_binding_request(&id, true, &mut msg);
            self.stun.pending.insert(id, (server, now));
            self.transmits.push_back(Transmit {
                dst: Dest::Udp(server),
                payload: msg,
            });
        }
    }

    /// Sends due discovery pings and reports path changes.
    fn run_paths(&mut self, now: Instant) {
        self.run_stun(now);
        let relay_up = self.relay_up;
        for (key, peer) in &mut self.peers {
            for to in peer.path.due_pings(now) {
                let tx = splitmix(&mut self.rng);
                let nonce = next_nonce(&mut self.rng);
                peer.path.ping_sent(tx, to, now);
                self.transmits.push_back(Transmit {
                    dst: Dest::Udp(to),
                    payload: peer.disco.seal(&self.key, nonce, &Disco::Ping { tx }),
                });
            }
            if let Some(path) = peer.path.changed(now, relay_up) {
                // A direct path that went quiet may mean our own underlay
                // address changed (roaming): learn the reflexive address again
                // now rather than at the next refresh, so peers get the new one.
                if !matches!(path, PathKind::Direct(_)) {
                    self.stun.next = Some(now);
                }
                self.events
                    .push_back(Event::PathChanged { key: *key, path });
            }
        }
    }

    fn report_path_changes(&mut self, now: Instant) {
        let keys: Vec<NodeKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.report_path_change(k, now);
        }
    }

    fn report_path_change(&mut self, key: NodeKey, now: Instant) {
        let relay_up = self.relay_up;
        if let Some(peer) = self.peers.get_mut(&key)
            && let Some(path) = peer.path.changed(now, relay_up)
        {
            self.events.push_back(Event::PathChanged { key, path });
        }
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
