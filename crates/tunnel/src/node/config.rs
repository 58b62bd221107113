//! What the node should look like (built from the network map) and how it gets there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use weft_proto::NodeKey;

use super::*;
use crate::disco::DiscoKey;
use crate::path::PathState;
use weft_policy::CompiledPolicy;

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
    /// directions (default deny, stateful). `None` (the map carried no policy, or
    /// one the agent cannot read) drops every packet as
    /// [`crate::DropReason::NoPolicy`]; nothing turns enforcement off except the
    /// `unenforced-benchmark-only` build feature.
    pub policy: Option<CompiledPolicy>,
    /// The services this node may use, by VIP: a packet to a VIP goes to one
    /// of the service's backends, per flow (see [`ServiceNat`]).
    pub services: Vec<ServiceNat>,
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

impl Node {
    /// Makes the peer set and addresses match `cfg`. Peers no longer listed are
    /// forgotten at once (their sessions end; their packets are dropped as
    /// `unknown_session`); existing sessions of kept peers survive.
    pub fn apply_config(&mut self, now: Instant, cfg: &NodeConfig) {
        self.apply_policy(now, cfg.policy.as_ref());
        self.services.apply(&cfg.services);
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
                let tunn = Tunnel::new(&self.wg, x, index, Some(PERSISTENT_KEEPALIVE), now);
                let (Some(tunn), Some(shared)) = (tunn, self.wg.dh(&x)) else {
                    self.events.push_back(Event::PeerRejected {
                        key: *key,
                        why: "not a valid Ed25519 key",
                    });
                    continue;
                };
                self.by_index.insert(index, *key);
                self.by_x25519.insert(x, *key);
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
                        disco: DiscoKey::from_shared(&shared),
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
                    && let Ok(Some(n)) =
                        peer.tunn
                            .initiate(&mut self.wg, now, false, &mut self.scratch)
                {
                    let msg = &self.scratch[..n];
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
}
