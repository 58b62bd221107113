//! The per-node network map and its versioned deltas, as streamed by the controller.
//!
//! A node's map lists, for every overlay network it is a member of, its own
//! addresses and its peers. The controller sends a [`MapEvent::Snapshot`] first and
//! then [`MapEvent::Delta`]s; every event carries the controller-global version it
//! brings the map to (also the SSE event id). [`NetworkMap::apply`] is the one
//! definition of what a delta means: applying the deltas a node received to its
//! snapshot yields exactly the snapshot the controller would send now.
//!
//! Ordering is canonical (networks by name, peers by key, tags sorted), so two maps
//! with the same content compare equal.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::NodeKey;
use crate::api::API_VERSION;
use crate::data::{DataEntry, SecretEntry};
use crate::dnsblock::DnsBlocklistRef;
use crate::hostfw::HostFirewallSpec;
use crate::net::{Ipv4Net, Ipv6Net};
use crate::policy::MapPolicy;
use crate::service::{ProvidedService, ServiceView};
use crate::ssh::SshHost;
use crate::task::{EVENT_TASK, TaskNotice};

/// SSE event name of a [`MapEvent::Snapshot`].
pub const EVENT_SNAPSHOT: &str = "snapshot";
/// SSE event name of a [`MapEvent::Delta`].
pub const EVENT_DELTA: &str = "delta";
/// SSE event name of a [`ReconnectNotice`].
pub const EVENT_RECONNECT: &str = "reconnect";
/// The longest spread a [`ReconnectNotice`] may ask for (10 minutes).
pub const MAX_RECONNECT_WITHIN_MS: u64 = 600_000;

/// Default DNS domain of a network: names are `<node>.<network>.<domain>`.
pub const DEFAULT_DNS_DOMAIN: &str = "weft.internal";

/// Everything one node needs to know to join its overlay networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    /// Wire format version ([`API_VERSION`]).
    pub api_version: u32,
    /// The controller-global version this map reflects.
    pub version: u64,
    /// The node itself.
    pub node: SelfNode,
    /// The networks the node is a member of, sorted by name.
    pub networks: Vec<NetworkView>,
    /// Relays the node may use (from the controller's configuration).
    #[serde(default)]
    pub relays: Vec<Relay>,
    /// The access policy compiled for this node, typed and versioned
    /// ([`crate::policy`]). The controller always sends one; a map without one,
    /// or with one the agent cannot read, denies every packet (fail closed).
    /// The node's peers are exactly the nodes this policy lets it reach or be
    /// reached by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<MapPolicy>,
    /// The admin's data for this node ([`crate::data`]), resolved (node over
    /// tag over network) and sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataEntry>,
    /// The admin's secrets for this node, each sealed to the node's X25519
    /// key, sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretEntry>,
    /// The host firewall the controller compiled for this node
    /// ([`crate::hostfw`]); `None`: the node has no host firewall (the agent
    /// removes its table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_firewall: Option<HostFirewallSpec>,
    /// The DNS blocklist the node's resolver applies ([`crate::dnsblock`]): the
    /// node fetches the list when the version changes. None: no blocklist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_blocklist: Option<DnsBlocklistRef>,
    /// The named services this node may use ([`crate::service`]), sorted by
    /// network and name; each lists only the instances its policy lets it
    /// reach. A service the policy does not let it use is absent (no DNS
    /// record, no VIP route).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceView>,
    /// The services this node provides (it checks their local instance and
    /// reports health), sorted by network and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<ProvidedService>,
    /// The nodes this node may log in to with `weft ssh` ([`crate::ssh`]),
    /// with their host keys and the users allowed, sorted by node name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_hosts: Vec<SshHost>,
}

/// The receiving node's own entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfNode {
    /// Its identity key.
    pub node_key: NodeKey,
    /// Its name (a DNS label, unique on the controller).
    pub name: String,
    /// Its tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One network as seen by one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The network's name (a DNS label).
    pub name: String,
    /// The network's IPv4 prefix.
    pub ipv4_cidr: Ipv4Net,
    /// The network's IPv6 prefix, if it has one.
    #[serde(default)]
    pub ipv6_prefix: Option<Ipv6Net>,
    /// DNS domain: peers are `<peer>.<network>.<dns_domain>`.
    pub dns_domain: String,
    /// This node's IPv4 address in the network.
    pub ipv4: Ipv4Addr,
    /// This node's IPv6 address in the network, if the network has a prefix.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The other members, sorted by key. Never contains the node itself, nor a
    /// disabled node.
    pub peers: Vec<Peer>,
    /// Physical subnets reachable through a gateway peer (approved routes, each
    /// with its current primary gateway), sorted by prefix. Only routes whose
    /// gateway is in `peers`, and never a subnet this node serves itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<SubnetRoute>,
    /// Subnets this node is an approved gateway for in this network (it forwards
    /// and masquerades overlay traffic to them), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serves: Vec<Ipv4Net>,
    /// The anomaly thresholds the admin set for this network (`None`: the
    /// agent's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::events::AnomalyThresholds>,
}

/// A physical subnet reached through a gateway peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRoute {
    /// The subnet.
    pub prefix: Ipv4Net,
    /// The gateway peer that carries it now (the primary).
    pub via: NodeKey,
    /// The other approved gateways, in the order they take over (the agent
    /// skips a gateway whose path is dead without waiting for the controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<NodeKey>,
}

/// Another member of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its identity key (its WireGuard key is derived from it).
    pub node_key: NodeKey,
    /// Its name.
    pub name: String,
    /// Its tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its IPv4 address in this network.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address in this network.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Candidate underlay addresses it reported (`ip:port`).
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// When it was last seen (Unix milliseconds), as of its last change in
    /// this map.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// Whether it is connected to the controller, debounced: it becomes true
    /// once the node's map stream has stayed open for the controller's online
    /// delay (`--online-after-ms`, 5 s by default) and false once the node has
    /// had no stream for the offline grace period (`--offline-after-ms`, 15 s).
    /// A node whose stream flaps within those windows changes nothing here.
    #[serde(default)]
    pub online: bool,
}

/// A relay server (see `weft_relay_core::frame` for its protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// Where to reach it, for example `https://relay.example.net:443`.
    pub url: String,
    /// Its name on the controller (absent for relays given by the controller's
    /// `--relay` flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `sha256:<hex>` of its TLS certificate: pin it. Absent when unknown (the
    /// relay has not reported yet, or a `--relay` flag relay): then the system
    /// CA roots decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// UDP port of its STUN server on the URL's host, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun_port: Option<u16>,
}

impl Relay {
    /// A relay known only by its URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            tls_fingerprint: None,
            stun_port: None,
        }
    }
}

/// What changed between two versions of one node's map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDelta {
    /// Wire format version ([`API_VERSION`]).
    pub api_version: u32,
    /// The version the map has after this delta.
    pub version: u64,
    /// The changes, applied in order.
    pub changes: Vec<MapChange>,
}

/// One change to a map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MapChange {
    /// A peer appeared in a network or changed: replace its whole entry.
    PeerUpsert {
        /// The network's name.
        network: String,
        /// The new entry.
        peer: Peer,
    },
    /// A peer left a network (removed, disabled, or left).
    PeerRemove {
        /// The network's name.
        network: String,
        /// The peer.
        node_key: NodeKey,
    },
    /// The node left a network (the network was deleted): drop it, with its
    /// peers, routes and names. Later changes of the same delta do not name
    /// it.
    NetworkRemove {
        /// The network's name.
        network: String,
    },
    /// The node's own entry changed (renamed, tagged).
    SelfUpdate {
        /// The new entry.
        node: SelfNode,
    },
    /// The node's compiled access policy changed: replace it.
    Policy {
        /// The new compiled policy (see [`NetworkMap::policy`]).
        #[serde(default)]
        policy: Option<MapPolicy>,
    },
    /// The node's data or secrets changed: replace both lists.
    Data {
        /// The new resolved data (see [`NetworkMap::data`]).
        #[serde(default)]
        data: Vec<DataEntry>,
        /// The new sealed secrets (see [`NetworkMap::secrets`]).
        #[serde(default)]
        secrets: Vec<SecretEntry>,
    },
    /// The node's host firewall changed: replace it (`None`: none any more).
    HostFirewall {
        /// The new spec (see [`NetworkMap::host_firewall`]).
        #[serde(default)]
        spec: Option<HostFirewallSpec>,
    },
    /// The DNS blocklist changed (set, new mode, cleared): replace the reference.
    DnsBlocklist {
        /// The new reference (see [`NetworkMap::dns_blocklist`]).
        #[serde(default)]
        blocklist: Option<DnsBlocklistRef>,
    },
    /// The services this node may use or provides changed (created, removed,
    /// an instance's health, the policy): replace both lists.
    Services {
        /// The new list (see [`NetworkMap::services`]).
        #[serde(default)]
        services: Vec<ServiceView>,
        /// The new list (see [`NetworkMap::provides`]).
        #[serde(default)]
        provides: Vec<ProvidedService>,
    },
    /// The SSH servers this node may log in to changed: replace the list.
    SshHosts {
        /// The new list (see [`NetworkMap::ssh_hosts`]).
        #[serde(default)]
        hosts: Vec<SshHost>,
    },
}

/// One event of a map stream.
#[derive(Debug, Clone, PartialEq, Eq)]
// Decoded, handled and dropped one at a time (as StreamEvent): boxing the map
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum MapEvent {
    /// The whole map: replaces whatever the receiver had.
    Snapshot(NetworkMap),
    /// Changes since the previous event.
    Delta(MapDelta),
}

/// Why a delta cannot be applied: the receiver should reconnect without a
/// `Last-Event-ID` to get a fresh snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The delta is from an API version this build does not know.
    #[error("delta has api_version {0}, expected {API_VERSION}")]
    UnknownApiVersion(u32),
    /// The delta does not move the version forward.
    #[error("delta version {delta} is not newer than the map's version {map}")]
    Stale {
        /// The map's version.
        map: u64,
        /// The delta's version.
        delta: u64,
    },
    /// A change names a network the map does not have.
    #[error("delta names unknown network {0:?}")]
    UnknownNetwork(String),
    /// A change would make the node its own peer.
    #[error("delta lists the node itself as a peer")]
    SelfAsPeer,
}

/// Why an SSE event is not a valid map event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapEventError {
    /// The event name is neither `snapshot`, `delta` nor `task`.
    #[error("unknown map event type {0:?}")]
    UnknownEvent(String),
    /// The data is not the JSON of the event type.
    #[error("map event data is not valid: {0}")]
    Json(String),
    /// The payload's api_version is unknown.
    #[error("map event has api_version {0}, expected {API_VERSION}")]
    UnknownApiVersion(u32),
    /// The SSE id does not match the payload's version.
    #[error("map event id does not match its version")]
    IdMismatch,
}

impl MapEvent {
    /// The version the event brings the map to.
    pub fn version(&self) -> u64 {
        match self {
            MapEvent::Snapshot(m) => m.version,
            MapEvent::Delta(d) => d.version,
        }
    }

    /// The SSE event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            MapEvent::Snapshot(_) => EVENT_SNAPSHOT,
            MapEvent::Delta(_) => EVENT_DELTA,
        }
    }

    /// Decodes an SSE event (`event`, `id`, `data`) into a map event, checking the
    /// API version and that the id equals the version.
    pub fn decode(event: &str, id: Option<&str>, data: &str) -> Result<Self, MapEventError> {
        let json = |e: serde_json::Error| MapEventError::Json(e.to_string());
        let ev = match event {
            EVENT_SNAPSHOT => MapEvent::Snapshot(serde_json::from_str(data).map_err(json)?),
            EVENT_DELTA => MapEvent::Delta(serde_json::from_str(data).map_err(json)?),
            other => {
                // Bounded, and cut at a character boundary.
                let name: String = other.chars().take(64).collect();
                return Err(MapEventError::UnknownEvent(name));
            }
        };
        let api = match &ev {
            MapEvent::Snapshot(m) => m.api_version,
            MapEvent::Delta(d) => d.api_version,
        };
        if api != API_VERSION {
            return Err(MapEventError::UnknownApiVersion(api));
        }
        if let Some(id) = id
            && id.parse::<u64>().ok() != Some(ev.version())
        {
            return Err(MapEventError::IdMismatch);
        }
        Ok(ev)
    }

    /// The JSON payload (the SSE `data` field).
    pub fn to_json(&self) -> String {
        let r = match self {
            MapEvent::Snapshot(m) => serde_json::to_string(m),
            MapEvent::Delta(d) => serde_json::to_string(d),
        };
        // These types contain only strings, numbers and addresses: serialization
        // cannot fail.
        r.unwrap_or_default()
    }
}

/// One event of a node's map stream: a map event, or a task waiting for the
/// node to lease it (`task`, see [`crate::task`]).
#[derive(Debug, Clone, PartialEq, Eq)]
// A stream event is decoded, handled and dropped one at a time: boxing the map
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum StreamEvent {
    /// A snapshot or a delta.
    Map(MapEvent),
    /// A task to lease.
    Task(TaskNotice),
    /// The controller is going away (SIGTERM, draining): reconnect elsewhere.
    Reconnect(ReconnectNotice),
}

/// `reconnect`: the controller that sent it is shutting down. The receiver
/// closes this stream and, after a random wait in `[0, within_ms)` (so a fleet
/// does not arrive at once), opens one on the next controller URL it knows
/// (another replica), resuming with `Last-Event-ID`. The event has no `id:`
/// line: it is not a map version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectNotice {
    /// Spread the reconnects over this many milliseconds (at most
    /// [`MAX_RECONNECT_WITHIN_MS`]).
    pub within_ms: u64,
    /// Why, for the log (at most 200 bytes).
    #[serde(default)]
    pub reason: String,
}

impl ReconnectNotice {
    /// Decodes and bounds the event's data.
    pub fn decode(data: &str) -> Result<Self, MapEventError> {
        let n: ReconnectNotice =
            serde_json::from_str(data).map_err(|e| MapEventError::Json(e.to_string()))?;
        if n.within_ms > MAX_RECONNECT_WITHIN_MS || n.reason.len() > 200 {
            return Err(MapEventError::Json(
                "reconnect notice out of bounds (within_ms at most 600000, reason at most 200 bytes)"
                    .into(),
            ));
        }
        Ok(n)
    }

    /// The JSON payload (the SSE `data` field).
    pub fn to_json(&self) -> String {
        // Numbers and a string: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl StreamEvent {
    /// Decodes an SSE event. A `task` event carries no id of its own (the SSE
    /// parser repeats the last map id, which is ignored here); every other event
    /// is decoded by [`MapEvent::decode`].
    pub fn decode(event: &str, id: Option<&str>, data: &str) -> Result<Self, MapEventError> {
        if event == EVENT_TASK {
            return TaskNotice::decode(data)
                .map(StreamEvent::Task)
                .map_err(|e| MapEventError::Json(e.to_string()));
        }
        if event == EVENT_RECONNECT {
            return ReconnectNotice::decode(data).map(StreamEvent::Reconnect);
        }
        MapEvent::decode(event, id, data).map(StreamEvent::Map)
    }
}

impl NetworkMap {
    /// Applies a delta in place. On error the map is unchanged.
    pub fn apply(&mut self, delta: &MapDelta) -> Result<(), ApplyError> {
        if delta.api_version != API_VERSION {
            return Err(ApplyError::UnknownApiVersion(delta.api_version));
        }
        if delta.version <= self.version {
            return Err(ApplyError::Stale {
                map: self.version,
                delta: delta.version,
            });
        }
        // Check everything first so a bad delta leaves the map untouched.
        let mut removed: Vec<&str> = Vec::new();
        let known = |removed: &[&str], network: &str| {
            if removed.contains(&network) {
                return Err(ApplyError::UnknownNetwork(network.to_owned()));
            }
            self.network_index(network).map(|_| ())
        };
        for change in &delta.changes {
            match change {
                MapChange::PeerUpsert { network, peer } => {
                    if peer.node_key == self.node.node_key {
                        return Err(ApplyError::SelfAsPeer);
                    }
                    known(&removed, network)?;
                }
                MapChange::PeerRemove { network, .. } => {
                    known(&removed, network)?;
                }
                MapChange::NetworkRemove { network } => {
                    known(&removed, network)?;
                    removed.push(network);
                }
                MapChange::SelfUpdate { .. }
                | MapChange::Policy { .. }
                | MapChange::Data { .. }
                | MapChange::HostFirewall { .. }
                | MapChange::DnsBlocklist { .. }
                | MapChange::Services { .. }
                | MapChange::SshHosts { .. } => {}
            }
        }
        for change in &delta.changes {
            match change {
                MapChange::PeerUpsert { network, peer } => {
                    let i = self.network_index(network)?;
                    let peers = &mut self.networks[i].peers;
                    match peers.binary_search_by(|p| p.node_key.cmp(&peer.node_key)) {
                        Ok(j) => peers[j] = peer.clone(),
                        Err(j) => peers.insert(j, peer.clone()),
                    }
                }
                MapChange::PeerRemove { network, node_key } => {
                    let i = self.network_index(network)?;
                    let peers = &mut self.networks[i].peers;
                    if let Ok(j) = peers.binary_search_by(|p| p.node_key.cmp(node_key)) {
                        peers.remove(j);
                    }
                }
                MapChange::NetworkRemove { network } => {
                    let i = self.network_index(network)?;
                    self.networks.remove(i);
                }
                MapChange::SelfUpdate { node } => self.node = node.clone(),
                MapChange::Policy { policy } => self.policy = policy.clone(),
                MapChange::Data { data, secrets } => {
                    self.data = data.clone();
                    self.secrets = secrets.clone();
                }
                MapChange::DnsBlocklist { blocklist } => self.dns_blocklist = blocklist.clone(),
                MapChange::HostFirewall { spec } => self.host_firewall = spec.clone(),
                MapChange::Services { services, provides } => {
                    self.services = services.clone();
                    self.provides = provides.clone();
                }
                MapChange::SshHosts { hosts } => self.ssh_hosts = hosts.clone(),
            }
        }
        self.version = delta.version;
        Ok(())
    }

    /// The admin's data value for `key` (already resolved for this node).
    pub fn data_value(&self, key: &str) -> Option<&DataEntry> {
        self.data
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.data[i])
    }

    /// The sealed secret for `key` (open it with the node's X25519 secret:
    /// `weft_identity::sealed::open`).
    pub fn secret(&self, key: &str) -> Option<&SecretEntry> {
        self.secrets
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.secrets[i])
    }

    /// The network with this name.
    pub fn network(&self, name: &str) -> Option<&NetworkView> {
        self.networks.iter().find(|n| n.name == name)
    }

    fn network_index(&self, name: &str) -> Result<usize, ApplyError> {
        self.networks
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .map_err(|_| ApplyError::UnknownNetwork(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::from_bytes([b; 32])
    }

    fn peer(b: u8) -> Peer {
        Peer {
            node_key: key(b),
            name: format!("n{b}"),
            tags: vec![],
            ipv4: Ipv4Addr::new(100, 64, 0, b),
            ipv6: None,
            endpoints: vec![],
            last_seen_ms: None,
            online: false,
        }
    }

    fn map() -> NetworkMap {
        NetworkMap {
            api_version: API_VERSION,
            version: 5,
            node: SelfNode {
                node_key: key(1),
                name: "me".into(),
                tags: vec![],
            },
            networks: vec![NetworkView {
                name: "lab".into(),
                ipv4_cidr: "100.64.0.0/24".parse().unwrap(),
                ipv6_prefix: None,
                dns_domain: DEFAULT_DNS_DOMAIN.into(),
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: None,
                peers: vec![peer(3)],
                routes: vec![],
                serves: vec![],
                anomaly: None,
            }],
            relays: vec![],
            policy: None,
            data: vec![],
            secrets: vec![],
            host_firewall: None,
            dns_blocklist: None,
            services: vec![],
            provides: vec![],
            ssh_hosts: vec![],
        }
    }

    fn delta(version: u64, changes: Vec<MapChange>) -> MapDelta {
        MapDelta {
            api_version: API_VERSION,
            version,
            changes,
        }
    }

    #[test]
    fn upsert_keeps_peers_sorted_and_remove_is_idempotent() {
        let mut m = map();
        let up = |b| MapChange::PeerUpsert {
            network: "lab".into(),
            peer: peer(b),
        };
        m.apply(&delta(6, vec![up(9), up(2)])).unwrap();
        let keys: Vec<_> = m.networks[0].peers.iter().map(|p| p.node_key).collect();
        assert_eq!(keys, vec![key(2), key(3), key(9)]);
        let rm = MapChange::PeerRemove {
            network: "lab".into(),
            node_key: key(3),
        };
        m.apply(&delta(7, vec![rm.clone(), rm])).unwrap();
        assert_eq!(m.networks[0].peers.len(), 2);
        assert_eq!(m.version, 7);
    }

    #[test]
    fn a_network_removal_drops_the_network_and_nothing_may_name_it_after() {
        let mut m = map();
        let mut other = m.networks[0].clone();
        other.name = "zoo".into();
        m.networks.push(other);
        let rm = |n: &str| MapChange::NetworkRemove { network: n.into() };
        let j = serde_json::to_value(rm("lab")).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"op": "network_remove", "network": "lab"})
        );
        // A change naming the network after its removal: refused whole.
        let bad = delta(
            6,
            vec![
                rm("lab"),
                MapChange::PeerUpsert {
                    network: "lab".into(),
                    peer: peer(4),
                },
            ],
        );
        assert_eq!(m.apply(&bad), Err(ApplyError::UnknownNetwork("lab".into())));
        assert_eq!(m.networks.len(), 2);
        assert_eq!(
            m.apply(&delta(6, vec![rm("lab"), rm("lab")])),
            Err(ApplyError::UnknownNetwork("lab".into()))
        );
        m.apply(&delta(6, vec![rm("lab")])).unwrap();
        let names: Vec<&str> = m.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["zoo"]);
        assert_eq!(m.version, 6);
        assert_eq!(
            m.apply(&delta(7, vec![rm("lab")])),
            Err(ApplyError::UnknownNetwork("lab".into()))
        );
    }

    #[test]
    fn a_host_firewall_change_replaces_the_spec_and_none_removes_it() {
        use crate::hostfw::ChainPolicy;
        let mut m = map();
        let spec = HostFirewallSpec {
            version: 4,
            input: ChainPolicy::Drop,
            output: ChainPolicy::Accept,
            forward: ChainPolicy::Accept,
            management: vec![],
            management_ports: vec![22],
            log_drops: true,
            rules: vec![],
        };
        let change = MapChange::HostFirewall {
            spec: Some(spec.clone()),
        };
        let j = serde_json::to_value(&change).unwrap();
        assert_eq!(j["op"], "host_firewall");
        m.apply(&delta(6, vec![change])).unwrap();
        assert_eq!(m.host_firewall, Some(spec));
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["host_firewall"]["version"], 4);
        m.apply(&delta(7, vec![MapChange::HostFirewall { spec: None }]))
            .unwrap();
        assert_eq!(m.host_firewall, None);
        // Absent from the wire when none (older agents and maps stay the same).
        let j = serde_json::to_value(&m).unwrap();
        assert!(j.get("host_firewall").is_none());
    }

    #[test]
    fn a_dns_blocklist_change_replaces_the_reference() {
        use crate::dnsblock::{BlockMode, DnsBlocklistRef};
        let mut m = map();
        let r = DnsBlocklistRef {
            version: 6,
            sha256: "ab".repeat(32),
            entries: 2,
            mode: BlockMode::Zero,
        };
        let change = MapChange::DnsBlocklist {
            blocklist: Some(r.clone()),
        };
        let j = serde_json::to_value(&change).unwrap();
        assert_eq!(j["op"], "dns_blocklist");
        assert_eq!(j["blocklist"]["mode"], "zero");
        m.apply(&delta(6, vec![change])).unwrap();
        assert_eq!(m.dns_blocklist, Some(r));
        m.apply(&delta(7, vec![MapChange::DnsBlocklist { blocklist: None }]))
            .unwrap();
        assert_eq!(m.dns_blocklist, None);
        let j = serde_json::to_value(&m).unwrap();
        assert!(j.get("dns_blocklist").is_none());
    }

    #[test]
    fn a_data_change_replaces_data_and_secrets_and_lookups_find_them() {
        let mut m = map();
        let entry = |k: &str, v: &str| DataEntry {
            key: k.into(),
            value: v.into(),
            version: 6,
        };
        let secret = SecretEntry {
            key: "db".into(),
            sealed: "AAAA".into(),
            version: 6,
        };
        let change = MapChange::Data {
            data: vec![entry("a", "1"), entry("b", "2")],
            secrets: vec![secret.clone()],
        };
        m.apply(&delta(6, vec![change.clone()])).unwrap();
        assert_eq!(m.data_value("b").map(|e| e.value.as_str()), Some("2"));
        assert_eq!(m.data_value("c"), None);
        assert_eq!(m.secret("db"), Some(&secret));
        // The wire form, and an empty change clears both lists.
        let j = serde_json::to_value(&change).unwrap();
        assert_eq!(j["op"], "data");
        m.apply(&delta(
            7,
            vec![MapChange::Data {
                data: vec![],
                secrets: vec![],
            }],
        ))
        .unwrap();
        assert!(m.data.is_empty() && m.secrets.is_empty());
        // A map without data serializes without the fields (older agents).
        let j = serde_json::to_value(&m).unwrap();
        assert!(j.get("data").is_none() && j.get("secrets").is_none());
    }

    #[test]
    fn bad_deltas_leave_map_unchanged() {
        let mut m = map();
        let before = m.clone();
        let up = MapChange::PeerUpsert {
            network: "lab".into(),
            peer: peer(4),
        };
        assert_eq!(
            m.apply(&delta(5, vec![up.clone()])),
            Err(ApplyError::Stale { map: 5, delta: 5 })
        );
        let other = MapChange::PeerUpsert {
            network: "nope".into(),
            peer: peer(4),
        };
        assert!(matches!(
            m.apply(&delta(6, vec![up, other])),
            Err(ApplyError::UnknownNetwork(_))
        ));
        let me = MapChange::PeerUpsert {
            network: "lab".into(),
            peer: peer(1),
        };
        assert_eq!(m.apply(&delta(6, vec![me])), Err(ApplyError::SelfAsPeer));
        assert_eq!(m, before);
    }

    #[test]
    fn event_round_trip_and_checks() {
        let ev = MapEvent::Snapshot(map());
        let json = ev.to_json();
        assert_eq!(MapEvent::decode(EVENT_SNAPSHOT, Some("5"), &json), Ok(ev));
        assert_eq!(
            MapEvent::decode(EVENT_SNAPSHOT, Some("6"), &json),
            Err(MapEventError::IdMismatch)
        );
        assert!(matches!(
            MapEvent::decode("bogus", None, &json),
            Err(MapEventError::UnknownEvent(_))
        ));
        let d = MapEvent::Delta(delta(9, vec![]));
        let mut v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        v["api_version"] = 99.into();
        assert_eq!(
            MapEvent::decode(EVENT_DELTA, None, &v.to_string()),
            Err(MapEventError::UnknownApiVersion(99))
        );
        assert!(matches!(
            MapEvent::decode(EVENT_DELTA, None, "{"),
            Err(MapEventError::Json(_))
        ));
    }

    #[test]
    fn stream_events_carry_tasks_without_ids() {
        let json = MapEvent::Snapshot(map()).to_json();
        assert_eq!(
            StreamEvent::decode(EVENT_SNAPSHOT, Some("5"), &json),
            Ok(StreamEvent::Map(MapEvent::Snapshot(map())))
        );
        // The SSE parser repeats the last id on a task event: it is ignored.
        assert_eq!(
            StreamEvent::decode(EVENT_TASK, Some("5"), r#"{"task_id":"t1"}"#),
            Ok(StreamEvent::Task(TaskNotice {
                task_id: "t1".into()
            }))
        );
        assert!(StreamEvent::decode(EVENT_TASK, None, r#"{"task_id":""}"#).is_err());
        assert!(matches!(
            StreamEvent::decode("bogus", None, "{}"),
            Err(MapEventError::UnknownEvent(_))
        ));
    }

    #[test]
    fn reconnect_notices_are_bounded() {
        let n = ReconnectNotice {
            within_ms: 5000,
            reason: "controller shutting down".into(),
        };
        assert_eq!(
            StreamEvent::decode(EVENT_RECONNECT, Some("9"), &n.to_json()),
            Ok(StreamEvent::Reconnect(n))
        );
        assert_eq!(
            StreamEvent::decode(EVENT_RECONNECT, None, r#"{"within_ms":0}"#),
            Ok(StreamEvent::Reconnect(ReconnectNotice {
                within_ms: 0,
                reason: String::new()
            }))
        );
        assert!(StreamEvent::decode(EVENT_RECONNECT, None, r#"{"within_ms":600001}"#).is_err());
        let long = format!(r#"{{"within_ms":1,"reason":"{}"}}"#, "x".repeat(201));
        assert!(StreamEvent::decode(EVENT_RECONNECT, None, &long).is_err());
        assert!(StreamEvent::decode(EVENT_RECONNECT, None, "{").is_err());
    }
}
