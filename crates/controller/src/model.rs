//! The controller's state in memory and the operations on it.
//!
//! [`World`] is loaded from the store at start and is the authority while this
//! controller runs: every operation validates against it, mutates it and records
//! the row-level [`Write`]s that make the change durable, plus what it
//! [`Touched`] for the netmap compiler. An operation either fails without any
//! effect or succeeds completely. Time comes in as an argument; nothing here
//! does I/O, so the whole module is deterministic and unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use weft_policy::{CompiledPolicy, LivePolicy, Membership, NodeFacts, Transition, Viewpoint};
use weft_proto::NodeKey;
use weft_proto::api::{
    self, NodeAddress, NodeInfo, PolicyCheckRequest, PolicyCheckResponse, PolicyDoc,
    PolicyPairDecision, TokenInfo,
};
use weft_proto::net::{Ipv4Net, Ipv6Net};
use weft_proto::netmap::Relay;
use weft_proto::relay_api::RelayInfo;

use crate::error::ApiError;
use crate::policy::{self, InventoryNode, PolicyState};
use crate::secret::SecretHash;
use crate::store::{
    AuditRecord, MembershipRecord, NetworkRecord, NodeRecord, PolicyRecord, RelayRecord,
    RouteRecord, StoreSnapshot, TokenRecord, Write,
};

mod presence;
mod routes;

pub use presence::{Presence, PresenceConfig};
pub use routes::{GATEWAY_TAG, RouteOp};

/// A network id.
pub type NetId = u64;
/// A node id.
pub type NodeId = u64;
/// A relay id.
pub type RelayId = u64;

/// Offsets below this are not handed out: `.0` is the network address and `.1`
/// is reserved for a future in-network controller/DNS address.
pub const FIRST_HOST_OFFSET: u64 = 2;

/// A network and its indexes.
#[derive(Debug, Clone)]
pub struct NetState {
    /// The row.
    pub rec: NetworkRecord,
    /// Member nodes.
    pub members: BTreeSet<NodeId>,
    used: BTreeSet<u64>,
    cursor: u64,
}

/// A node and its indexes.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The row.
    pub rec: NodeRecord,
    /// Its memberships by network.
    pub memberships: BTreeMap<NetId, MembershipRecord>,
    /// Online as peers see it (`online` in maps and the admin API): a map
    /// stream stayed open for the online delay and the node has not been
    /// without one for the offline grace period since ([`Presence`] decides).
    /// Not persisted: after a restart every node is offline until it
    /// reconnects.
    pub online: bool,
    /// The `last_seen` value peers were last told about.
    pub seen_published: Option<u64>,
}

/// Who did something (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The admin token holder.
    Admin,
    /// A node, by key.
    Node(NodeKey),
    /// A relay, by name.
    Relay(String),
}

impl Actor {
    fn label(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Node(k) => format!("node:{k}"),
            Actor::Relay(name) => format!("relay:{name}"),
        }
    }
}

/// What a batch changed, in the netmap compiler's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// `(network, node key)` entries to re-send: an upsert if the node is now an
    /// enabled member of the network, else a removal.
    pub entries: BTreeSet<(NetId, NodeKey)>,
    /// Nodes whose own entry (name, tags) changed.
    pub self_changed: BTreeSet<NodeId>,
    /// Nodes whose set of networks changed: they get a fresh snapshot.
    pub resync: BTreeSet<NodeId>,
    /// Nodes whose streams must be closed (disabled or removed).
    pub evicted: BTreeSet<NodeId>,
    /// Relays whose member streams must be closed (removed).
    pub evicted_relays: BTreeSet<RelayId>,
    /// The policy text changed: recompile every node's policy when the batch
    /// closes.
    pub recompile: bool,
    /// Nodes whose policy inputs (name, tags, memberships, enabled state, or
    /// existence) changed: recompiled, with the nodes their change affects,
    /// when the batch closes.
    pub policy_nodes: BTreeSet<NodeKey>,
    /// Filled when the batch closes: the nodes whose compiled policy changed
    /// (visibility before the batch: [`World::viewpoints`]).
    pub policy_changed: BTreeSet<NodeId>,
}

impl Touched {
    /// Whether any map changed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.self_changed.is_empty()
            && self.resync.is_empty()
            && self.evicted.is_empty()
            && self.evicted_relays.is_empty()
            && !self.recompile
            && self.policy_nodes.is_empty()
    }
}

/// The effects of a batch of operations.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rows to persist, in order.
    pub writes: Vec<Write>,
    /// What the netmap compiler must look at.
    pub touched: Touched,
}

/// A validated request to create a network.
#[derive(Debug, Clone)]
pub struct NewNetwork {
    /// Name.
    pub name: String,
    /// IPv4 prefix.
    pub ipv4_cidr: Ipv4Net,
    /// IPv6 prefix.
    pub ipv6_prefix: Option<Ipv6Net>,
    /// DNS domain.
    pub dns_domain: String,
    /// PoW bits.
    pub pow_difficulty: u32,
}

/// A validated request to create a join token.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Network names.
    pub networks: Vec<String>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// `None` = unlimited.
    pub max_uses: Option<u32>,
    /// Free text.
    pub description: Option<String>,
    /// Hash of the generated secret.
    pub hash: SecretHash,
}

/// A registration whose signature and proof of work the handler already checked.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The key.
    pub node_key: NodeKey,
    /// Hash of the presented join token.
    pub token_hash: SecretHash,
    /// Proof-of-work bits the key reaches.
    pub pow_bits: u32,
    /// Validated requested name.
    pub name: Option<String>,
    /// Validated host name.
    pub hostname: Option<String>,
    /// Hash of the new credential.
    pub credential_hash: SecretHash,
}

/// A validated request to register a relay.
#[derive(Debug, Clone)]
pub struct NewRelay {
    /// Name (a DNS label).
    pub name: String,
    /// URL (a valid `RelayUrl`).
    pub url: String,
    /// Hash of the generated relay token.
    pub hash: SecretHash,
}

/// What a relay reports about itself (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// `sha256:<hex>` of its TLS certificate.
    pub tls_fingerprint: Option<String>,
    /// Its STUN port.
    pub stun_port: Option<u16>,
}

/// A validated node update.
#[derive(Debug, Clone, Default)]
pub struct NodePatch {
    /// New name.
    pub name: Option<String>,
    /// New tags.
    pub tags: Option<BTreeSet<String>>,
    /// Disable / enable.
    pub disabled: Option<bool>,
}

/// A state-changing operation.
#[derive(Debug, Clone)]
pub enum Op {
    /// Admin: create a network.
    CreateNetwork(NewNetwork),
    /// Admin: create a join token.
    CreateToken(NewToken),
    /// Admin: revoke a join token.
    RevokeToken(u64),
    /// Agent: register.
    Register(Registration),
    /// Admin: rename, tag, disable, enable (node by key or name).
    UpdateNode(String, NodePatch),
    /// Admin: remove a node (by key or name).
    RemoveNode(String),
    /// Agent: liveness and endpoints.
    Report(NodeId, Option<Vec<SocketAddr>>),
    /// The node went online (`true`) or offline (`false`), as [`Presence`]
    /// debounced its map streams.
    Presence(NodeId, bool),
    /// Admin: register a relay.
    CreateRelay(NewRelay),
    /// Admin: replace the policy text (validated against the current nodes),
    /// optionally only if the current version is the given one.
    SetPolicy(String, Option<u64>),
    /// Admin: remove a relay (by name).
    RemoveRelay(String),
    /// Relay: report its TLS fingerprint and STUN port.
    RelayReport(RelayId, RelayReport),
    /// Agent: the subnets it advertises (CIDR text, validated here).
    AdvertiseRoutes(NodeId, Vec<String>),
    /// Admin: add, approve, reject or withdraw a subnet route.
    Route(RouteOp, api::RouteRequest),
    /// Admin: remove a node from one network (network name, node key or name).
    LeaveNetwork(String, String),
}

/// What a successful operation returns.
#[derive(Debug, Clone)]
pub enum Output {
    /// A network.
    Network(api::Network),
    /// A token.
    Token(TokenInfo),
    /// A registration.
    Registered {
        /// Final name.
        name: String,
        /// Addresses.
        addresses: Vec<NodeAddress>,
    },
    /// A node.
    Node(Box<NodeInfo>),
    /// A relay.
    Relay(RelayInfo),
    /// The policy.
    Policy(PolicyDoc),
    /// Subnet routes (those an operation touched).
    Routes(Vec<api::RouteInfo>),
    /// A node left a network.
    Left(api::LeaveResponse),
    /// Nothing to return.
    Done,
}

/// The controller's state.
#[derive(Debug, Default)]
pub struct World {
    /// The last map version handed out.
    pub version: u64,
    /// Admin token hash.
    pub admin_hash: Option<SecretHash>,
    /// Relays from the configuration (`--relay URL`): in every map, URL only.
    pub relays: Vec<Relay>,
    /// The access policy in force.
    pub policy: PolicyState,
    /// Every enabled node's compiled policy and visibility, kept incrementally.
    live: LivePolicy<NodeKey>,
    /// Visibility before the last batch that changed a policy input.
    policy_before: Transition<NodeKey>,
    networks: BTreeMap<NetId, NetState>,
    network_by_name: BTreeMap<String, NetId>,
    nodes: BTreeMap<NodeId, NodeState>,
    node_by_key: BTreeMap<NodeKey, NodeId>,
    node_by_name: BTreeMap<String, NodeId>,
    // Lookup only, never iterated.
    node_by_cred: HashMap<SecretHash, NodeId>,
    tokens: BTreeMap<u64, TokenRecord>,
    token_by_hash: HashMap<SecretHash, u64>,
    relay_records: BTreeMap<RelayId, RelayRecord>,
    /// Subnet routes by (network, prefix, gateway node).
    routes: BTreeMap<routes::RouteKey, RouteRecord>,
    relay_by_name: BTreeMap<String, RelayId>,
    // Lookup only, never iterated.
    relay_by_token: HashMap<SecretHash, RelayId>,
    next_network_id: u64,
    next_node_id: u64,
    next_token_id: u64,
    next_relay_id: u64,
    next_audit_id: u64,
}

fn secs(now_ms: u64) -> u64 {
    now_ms / 1000
}

/// The store keeps these times in Unix seconds; the API and maps carry Unix
/// milliseconds (`*_ms`), converted here at the boundary.
pub(crate) fn secs_to_ms(secs: u64) -> u64 {
    secs.saturating_mul(1000)
}

impl World {
    /// Builds the state from what the store loaded.
    pub fn from_snapshot(snap: StoreSnapshot, relays: Vec<Relay>) -> Self {
        let mut w = World {
            version: snap.map_version,
            admin_hash: snap.admin_hash,
            relays,
            next_audit_id: snap.max_audit_id + 1,
            next_network_id: 1,
            next_node_id: 1,
            next_token_id: 1,
            next_relay_id: 1,
            ..World::default()
        };
        for n in snap.networks {
            w.next_network_id = w.next_network_id.max(n.id + 1);
            w.network_by_name.insert(n.name.clone(), n.id);
            w.networks.insert(
                n.id,
                NetState {
                    rec: n,
                    members: BTreeSet::new(),
                    used: BTreeSet::new(),
                    cursor: FIRST_HOST_OFFSET,
                },
            );
        }
        for n in snap.nodes {
            w.next_node_id = w.next_node_id.max(n.id + 1);
            w.node_by_key.insert(n.node_key, n.id);
            w.node_by_name.insert(n.name.clone(), n.id);
            w.node_by_cred.insert(n.credential_hash, n.id);
            let seen = n.last_seen;
            w.nodes.insert(
                n.id,
                NodeState {
                    rec: n,
                    memberships: BTreeMap::new(),
                    online: false,
                    seen_published: seen,
                },
            );
        }
        for m in snap.memberships {
            if let (Some(net), Some(node)) = (
                w.networks.get_mut(&m.network_id),
                w.nodes.get_mut(&m.node_id),
            ) {
                net.members.insert(m.node_id);
                if let Some(off) = net.rec.ipv4_cidr.offset_of(m.ipv4) {
                    net.used.insert(off);
                }
                node.memberships.insert(m.network_id, m);
            }
        }
        for t in snap.tokens {
            w.next_token_id = w.next_token_id.max(t.id + 1);
            w.token_by_hash.insert(t.token_hash, t.id);
            w.tokens.insert(t.id, t);
        }
        for r in snap.relays {
            w.next_relay_id = w.next_relay_id.max(r.id + 1);
            w.relay_by_name.insert(r.name.clone(), r.id);
            w.relay_by_token.insert(r.token_hash, r.id);
            w.relay_records.insert(r.id, r);
        }
        for r in snap.routes {
            if w.nodes.contains_key(&r.node_id) && w.networks.contains_key(&r.network_id) {
                w.routes.insert((r.network_id, r.prefix, r.node_id), r);
            }
        }
        w.policy = match snap.policy {
            Some(rec) => PolicyState::from_record(rec),
            None => {
                let names: Vec<&str> = w.network_by_name.keys().map(String::as_str).collect();
                PolicyState::generated(&names)
            }
        };
        w.live = LivePolicy::new(
            w.policy.parsed.clone(),
            w.nodes
                .values()
                .filter(|n| !n.rec.disabled)
                .map(|n| (n.rec.node_key, w.node_facts(n)))
                .collect::<Vec<_>>(),
        );
        w
    }

    // ---- policy ----

    /// Every enabled node as the policy sees it.
    pub(crate) fn inventory_nodes(&self) -> Vec<InventoryNode<'_>> {
        self.nodes
            .values()
            .filter(|n| !n.rec.disabled)
            .map(|n| InventoryNode {
                name: &n.rec.name,
                key: n.rec.node_key,
                tags: n.rec.tags.iter().cloned().collect(),
                networks: n
                    .memberships
                    .values()
                    .filter_map(|m| {
                        let net = self.networks.get(&m.network_id)?;
                        let mut addrs = vec![std::net::IpAddr::V4(m.ipv4)];
                        addrs.extend(m.ipv6.map(std::net::IpAddr::V6));
                        Some((net.rec.name.clone(), addrs))
                    })
                    .collect(),
                routed_subnets: self.routed_subnets(n.rec.id),
            })
            .collect()
    }

    /// How the policy sees an (enabled) node.
    fn node_facts(&self, n: &NodeState) -> NodeFacts {
        NodeFacts {
            name: n.rec.name.clone(),
            tags: n.rec.tags.iter().cloned().collect(),
            networks: n
                .memberships
                .values()
                .filter_map(|m| {
                    let net = self.networks.get(&m.network_id)?;
                    let mut addrs = vec![std::net::IpAddr::V4(m.ipv4)];
                    addrs.extend(m.ipv6.map(std::net::IpAddr::V6));
                    Some(Membership {
                        network: net.rec.name.clone(),
                        addrs,
                    })
                })
                .collect(),
            routed_subnets: self.routed_subnets(n.rec.id),
        }
    }

    /// Brings the compiled policies up to date with the batch: everything after
    /// a policy edit, else only the changed nodes and those their change
    /// affects. Returns the nodes whose compiled policy changed.
    fn recompile(&mut self, touched: &Touched) -> BTreeSet<NodeId> {
        for key in &touched.policy_nodes {
            match self.find_node_by_key(key).filter(|n| !n.rec.disabled) {
                Some(n) => {
                    let f = self.node_facts(n);
                    self.live.upsert(*key, f);
                }
                None => self.live.remove(key),
            }
        }
        // (Also when the policy changed in a batch that was never closed.)
        let flushed = if touched.recompile || self.live.policy() != &self.policy.parsed {
            // Recompiles everyone (with the changes above); the transition still
            // knows the state before the batch.
            self.live.set_policy(self.policy.parsed.clone())
        } else {
            self.live.flush()
        };
        self.policy_before = flushed.transition;
        flushed
            .changed
            .iter()
            .filter_map(|k| self.node_by_key.get(k).copied())
            .collect()
    }

    /// The compiled policy of an enabled node.
    pub fn node_policy(&self, id: NodeId) -> Option<&Arc<CompiledPolicy>> {
        self.live.compiled(&self.nodes.get(&id)?.rec.node_key)
    }

    /// Whether nodes `a` and `b` may see each other now.
    pub fn is_visible(&self, a: &NodeKey, b: &NodeKey) -> bool {
        self.live.is_visible(a, b)
    }

    /// Node `k` as visibility sees it now, and before the last batch.
    pub fn viewpoints<'a>(
        &'a self,
        k: &'a NodeKey,
    ) -> (
        Option<Viewpoint<'a, NodeKey>>,
        Option<Viewpoint<'a, NodeKey>>,
    ) {
        (
            self.live.viewpoint(k),
            self.policy_before.viewpoint_before(&self.live, k),
        )
    }

    /// The nodes whose visibility to others the last batch may have changed
    /// (`None`: anyone's, the policy changed).
    pub fn visibility_changed(&self) -> Option<BTreeSet<NodeKey>> {
        self.policy_before
            .changed_nodes()
            .map(|i| i.copied().collect())
    }

    /// Decides `req` against the policy in force and the current nodes.
    pub fn check_policy(&self, req: &PolicyCheckRequest) -> Result<PolicyCheckResponse, ApiError> {
        let sel = |what: &str, s: &str| {
            weft_policy::Selector::parse_or_node(s)
                .map_err(|e| ApiError::invalid("invalid_selector", format!("{what}: {e}")))
        };
        let from = sel("from", &req.from)?;
        let to = sel("to", &req.to)?;
        let proto = match req.proto.as_deref() {
            None => weft_policy::Proto::Any,
            Some(p) => p
                .parse()
                .map_err(|e| ApiError::invalid("invalid_proto", format!("proto: {e}")))?,
        };
        // `any` asks about every protocol: tcp and udp at the port, and icmp.
        let services = weft_policy::Service::for_check(proto, req.port)
            .map_err(|e| ApiError::invalid("invalid_service", e.to_string()))?;
        let inv = policy::inventory(&self.inventory_nodes());
        let reports: Vec<_> = services
            .iter()
            .map(|s| (s, self.policy.parsed.check(&inv, &from, &to, *s)))
            .collect();
        let several = reports.len() > 1;
        let pairs = reports
            .iter()
            .flat_map(|(s, r)| r.pairs.iter().map(move |p| (s, p)))
            .map(|(s, p)| PolicyPairDecision {
                from_node: p.from_node.clone(),
                from_addr: p.from_addr,
                to_node: p.to_node.clone(),
                to_addr: p.to_addr,
                verdict: if p.verdict.is_allow() {
                    "allow"
                } else {
                    "deny"
                }
                .into(),
                rule: p.rule.as_ref().and_then(|r| r.name.clone()),
                rule_number: p.rule.as_ref().map(|r| r.id.0 + 1),
                line: p.rule.as_ref().map(|r| r.line),
                explanation: if several {
                    format!("{s}: {p}")
                } else {
                    p.to_string()
                },
            })
            .collect();
        Ok(PolicyCheckResponse {
            version: self.policy.rec.version,
            allowed: reports.iter().all(|(_, r)| r.all_allowed()),
            pairs,
            representative: reports.iter().any(|(_, r)| r.representative),
            truncated: reports.iter().any(|(_, r)| r.truncated),
        })
    }

    fn set_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        expect: Option<u64>,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        if let Some(v) = expect
            && v != self.policy.rec.version
        {
            return Err(ApiError::conflict(
                "policy_version_mismatch",
                format!(
                    "the policy is at version {}, not {v}; fetch it again",
                    self.policy.rec.version
                ),
            ));
        }
        let inv = policy::inventory(&self.inventory_nodes());
        let parsed = policy::validate(&text, &inv)?;
        if text == self.policy.rec.text {
            return Ok(Output::Policy(self.policy.doc()));
        }
        self.put_policy(batch, actor, text, parsed, "set", now_ms);
        Ok(Output::Policy(self.policy.doc()))
    }

    fn put_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        parsed: weft_policy::Policy,
        reason: &str,
        now_ms: u64,
    ) {
        let from = self.policy.rec.version;
        let rec = PolicyRecord {
            version: from + 1,
            text,
            author: actor.label(),
            at_ms: now_ms,
        };
        batch.writes.push(Write::PutPolicy(rec.clone()));
        let rules: Vec<String> = parsed
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("#{}", i + 1)))
            .collect();
        let detail = json!({"from_version": from, "to_version": rec.version, "reason": reason, "rules": rules, "bytes": rec.text.len()});
        self.policy = PolicyState { rec, parsed };
        batch.touched.recompile = true;
        self.audit(
            batch,
            actor,
            "policy.update",
            "policy".into(),
            detail,
            now_ms,
        );
    }

    // ---- reads ----

    /// The node holding this credential.
    pub fn node_by_credential(&self, hash: &SecretHash) -> Option<&NodeState> {
        self.node_by_cred
            .get(hash)
            .and_then(|id| self.nodes.get(id))
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Option<&NodeState> {
        self.nodes.get(&id)
    }

    /// The ids of all networks.
    pub fn network_ids(&self) -> impl Iterator<Item = NetId> + '_ {
        self.networks.keys().copied()
    }

    /// A network by id.
    pub fn network(&self, id: NetId) -> Option<&NetState> {
        self.networks.get(&id)
    }

    /// A node by key (43-character text) or name.
    pub fn find_node(&self, sel: &str) -> Option<&NodeState> {
        let by_key = sel
            .parse::<NodeKey>()
            .ok()
            .and_then(|k| self.node_by_key.get(&k));
        by_key
            .or_else(|| self.node_by_name.get(sel))
            .and_then(|id| self.nodes.get(id))
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Network info for the admin API.
    pub fn network_info(&self, net: &NetState) -> api::Network {
        api::Network {
            name: net.rec.name.clone(),
            ipv4_cidr: net.rec.ipv4_cidr,
            ipv6_prefix: net.rec.ipv6_prefix,
            dns_domain: net.rec.dns_domain.clone(),
            pow_difficulty: net.rec.pow_difficulty,
            node_count: net.members.len() as u64,
            created_at_ms: secs_to_ms(net.rec.created_at),
        }
    }

    /// All networks, by name.
    pub fn networks_info(&self) -> Vec<api::Network> {
        self.network_by_name
            .values()
            .filter_map(|id| self.networks.get(id))
            .map(|n| self.network_info(n))
            .collect()
    }

    /// A network by name.
    pub fn network_by_name(&self, name: &str) -> Option<&NetState> {
        self.network_by_name
            .get(name)
            .and_then(|id| self.networks.get(id))
    }

    /// Node info for the admin API.
    pub fn node_info(&self, n: &NodeState) -> NodeInfo {
        NodeInfo {
            node_key: n.rec.node_key,
            name: n.rec.name.clone(),
            hostname: n.rec.hostname.clone(),
            tags: n.rec.tags.iter().cloned().collect(),
            disabled: n.rec.disabled,
            online: n.online,
            endpoints: n.rec.endpoints.clone(),
            last_seen_ms: n.rec.last_seen.map(secs_to_ms),
            created_at_ms: secs_to_ms(n.rec.created_at),
            addresses: self.addresses(n),
        }
    }

    /// Nodes for the admin API, by name, optionally only members of a network.
    pub fn nodes_info(&self, network: Option<NetId>) -> Vec<NodeInfo> {
        self.node_by_name
            .values()
            .filter_map(|id| self.nodes.get(id))
            .filter(|n| network.is_none_or(|net| n.memberships.contains_key(&net)))
            .map(|n| self.node_info(n))
            .collect()
    }

    /// A node's addresses, by network name.
    pub fn addresses(&self, n: &NodeState) -> Vec<NodeAddress> {
        let mut out: Vec<NodeAddress> = n
            .memberships
            .values()
            .filter_map(|m| {
                self.networks.get(&m.network_id).map(|net| NodeAddress {
                    network: net.rec.name.clone(),
                    ipv4: m.ipv4,
                    ipv6: m.ipv6,
                })
            })
            .collect();
        out.sort_by(|a, b| a.network.cmp(&b.network));
        out
    }

    /// Token info for the admin API.
    pub fn token_info(&self, t: &TokenRecord, now_ms: u64) -> TokenInfo {
        let state = match token_state(t, now_ms) {
            Ok(()) => "active",
            Err(ApiError::TokenGone { code, .. }) => code.trim_start_matches("token_"),
            Err(_) => "invalid",
        };
        let mut networks: Vec<String> = t
            .networks
            .iter()
            .filter_map(|id| self.networks.get(id).map(|n| n.rec.name.clone()))
            .collect();
        networks.sort();
        TokenInfo {
            id: t.id,
            networks,
            tags: t.tags.iter().cloned().collect(),
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at_ms: secs_to_ms(t.expires_at),
            created_at_ms: secs_to_ms(t.created_at),
            state: state.to_owned(),
            description: t.description.clone(),
        }
    }

    /// All tokens, by id.
    pub fn tokens_info(&self, now_ms: u64) -> Vec<TokenInfo> {
        self.tokens
            .values()
            .map(|t| self.token_info(t, now_ms))
            .collect()
    }

    /// All node ids (for tests and checks).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    /// The nodes online now (kept across a reload of the state: presence is
    /// not persisted).
    pub fn online_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.online)
            .map(|n| n.rec.id)
            .collect()
    }

    /// Marks `ids` online again after a reload (see [`World::online_nodes`]).
    pub fn restore_online(&mut self, ids: &[NodeId]) {
        for id in ids {
            if let Some(n) = self.nodes.get_mut(id) {
                n.online = true;
            }
        }
    }

    // ---- writes ----

    /// Applies one operation. On error nothing changed.
    pub fn apply(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: Op,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        match op {
            Op::CreateNetwork(n) => self.create_network(batch, actor, n, now_ms),
            Op::CreateToken(t) => self.create_token(batch, actor, t, now_ms),
            Op::RevokeToken(id) => self.revoke_token(batch, actor, id, now_ms),
            Op::Register(r) => self.register(batch, r, now_ms),
            Op::UpdateNode(sel, patch) => self.update_node(batch, actor, &sel, patch, now_ms),
            Op::RemoveNode(sel) => self.remove_node(batch, actor, &sel, now_ms),
            Op::Report(id, endpoints) => self.report(batch, id, endpoints, now_ms),
            Op::Presence(id, up) => self.presence(batch, id, up, now_ms),
            Op::CreateRelay(r) => self.create_relay(batch, actor, r, now_ms),
            Op::RemoveRelay(name) => self.remove_relay(batch, actor, &name, now_ms),
            Op::RelayReport(id, report) => self.relay_report(batch, id, report, now_ms),
            Op::SetPolicy(text, expect) => self.set_policy(batch, actor, text, expect, now_ms),
            Op::AdvertiseRoutes(id, routes) => self.advertise_routes(batch, id, &routes, now_ms),
            Op::Route(op, req) => self.route_op(batch, actor, op, &req, now_ms),
            Op::LeaveNetwork(net, node) => self.leave_network(batch, actor, &net, &node, now_ms),
        }
    }

    fn audit(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        action: &str,
        target: String,
        detail: serde_json::Value,
        now_ms: u64,
    ) {
        let id = self.next_audit_id;
        self.next_audit_id += 1;
        batch.writes.push(Write::Audit(AuditRecord {
            id,
            at_ms: now_ms,
            actor: actor.label(),
            action: action.to_owned(),
            target,
            detail,
        }));
    }

    fn create_network(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        n: NewNetwork,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        // The same check as subnet routes: an overlay on loopback, link-local,
        // multicast or broadcast space could never carry traffic.
        weft_proto::net::check_routable_v4(&n.ipv4_cidr).map_err(|e| {
            ApiError::invalid("invalid_cidr", format!("ipv4_cidr {} {e}", n.ipv4_cidr))
        })?;
        if let Some(p) = &n.ipv6_prefix {
            weft_proto::net::check_routable_v6(p)
                .map_err(|e| ApiError::invalid("invalid_cidr", format!("ipv6_prefix {p} {e}")))?;
        }
        if self.network_by_name.contains_key(&n.name) {
            return Err(ApiError::conflict(
                "network_exists",
                format!("network {:?} already exists", n.name),
            ));
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|o| o.rec.ipv4_cidr.overlaps(&n.ipv4_cidr))
        {
            return Err(ApiError::conflict(
                "cidr_overlap",
                format!(
                    "{} overlaps network {:?} ({})",
                    n.ipv4_cidr, other.rec.name, other.rec.ipv4_cidr
                ),
            ));
        }
        if let Some(r) = self.route_overlapping(&n.ipv4_cidr) {
            let gw = self
                .nodes
                .get(&r.node_id)
                .map(|g| g.rec.name.clone())
                .unwrap_or_default();
            return Err(ApiError::conflict(
                "cidr_overlap",
                format!(
                    "{} overlaps the subnet route {} of gateway {gw:?}; withdraw that route first",
                    n.ipv4_cidr, r.prefix
                ),
            ));
        }
        let id = self.next_network_id;
        self.next_network_id += 1;
        let rec = NetworkRecord {
            id,
            name: n.name.clone(),
            ipv4_cidr: n.ipv4_cidr,
            ipv6_prefix: n.ipv6_prefix,
            dns_domain: n.dns_domain,
            pow_difficulty: n.pow_difficulty,
            created_at: secs(now_ms),
        };
        batch.writes.push(Write::PutNetwork(rec.clone()));
        self.network_by_name.insert(n.name.clone(), id);
        let state = NetState {
            rec,
            members: BTreeSet::new(),
            used: BTreeSet::new(),
            cursor: FIRST_HOST_OFFSET,
        };
        let info = self.network_info(&state);
        self.networks.insert(id, state);
        self.audit(
            batch,
            actor,
            "network.create",
            n.name,
            json!({"ipv4_cidr": info.ipv4_cidr, "ipv6_prefix": info.ipv6_prefix, "dns_domain": info.dns_domain, "pow_difficulty": info.pow_difficulty}),
            now_ms,
        );
        // The new network's default rule, visible and editable in the policy.
        if let Some((text, parsed)) = self.policy.with_network(&info.name) {
            self.put_policy(batch, actor, text, parsed, "network.create", now_ms);
        } else {
            tracing::error!(network = %info.name, "could not append the network's default rule to the policy");
        }
        Ok(Output::Network(info))
    }

    fn create_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        t: NewToken,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let mut networks = BTreeSet::new();
        for name in &t.networks {
            let id = self.network_by_name.get(name).ok_or_else(|| {
                ApiError::not_found("network_not_found", format!("no network named {name:?}"))
            })?;
            networks.insert(*id);
        }
        let id = self.next_token_id;
        self.next_token_id += 1;
        let rec = TokenRecord {
            id,
            token_hash: t.hash,
            description: t.description,
            tags: t.tags,
            networks,
            max_uses: t.max_uses,
            uses: 0,
            expires_at: t.expires_at,
            revoked: false,
            created_at: secs(now_ms),
        };
        batch.writes.push(Write::PutToken(rec.clone()));
        let info = self.token_info(&rec, now_ms);
        self.token_by_hash.insert(rec.token_hash, id);
        self.tokens.insert(id, rec);
        self.audit(
            batch,
            actor,
            "token.create",
            format!("token:{id}"),
            json!({"networks": info.networks, "tags": info.tags, "max_uses": info.max_uses, "expires_at_ms": info.expires_at_ms}),
            now_ms,
        );
        Ok(Output::Token(info))
    }

    fn revoke_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: u64,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let t = self.tokens.get_mut(&id).ok_or_else(|| {
            ApiError::not_found("token_not_found", format!("no token with id {id}"))
        })?;
        t.revoked = true;
        let rec = t.clone();
        batch.writes.push(Write::PutToken(rec.clone()));
        self.audit(
            batch,
            actor,
            "token.revoke",
            format!("token:{id}"),
            json!({}),
            now_ms,
        );
        Ok(Output::Token(self.token_info(&rec, now_ms)))
    }

    fn register(
        &mut self,
        batch: &mut Batch,
        r: Registration,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let token_id = *self
            .token_by_hash
            .get(&r.token_hash)
            .ok_or(ApiError::InvalidToken)?;
        let token = self
            .tokens
            .get(&token_id)
            .ok_or(ApiError::InvalidToken)?
            .clone();
        let existing = self.node_by_key.get(&r.node_key).copied();
        if let Some(id) = existing
            && self.nodes.get(&id).is_some_and(|n| n.rec.disabled)
        {
            return Err(ApiError::NodeDisabled);
        }
        let joined: BTreeSet<NetId> = existing
            .and_then(|id| self.nodes.get(&id))
            .map(|n| n.memberships.keys().copied().collect())
            .unwrap_or_default();
        let new_nets: Vec<NetId> = token
            .networks
            .iter()
            .copied()
            .filter(|n| !joined.contains(n))
            .collect();
        let is_retry = existing.is_some() && new_nets.is_empty();
        if token.revoked {
            return Err(token_gone("token_revoked", "join token was revoked"));
        }
        // A retry of a registration whose response was lost succeeds even if the
        // token has since expired or been used up: it consumes nothing.
        if !is_retry {
            token_state(&token, now_ms)?;
        }
        let required = token
            .networks
            .iter()
            .filter_map(|id| self.networks.get(id))
            .map(|n| n.rec.pow_difficulty)
            .max()
            .unwrap_or(0);
        if r.pow_bits < required {
            return Err(ApiError::PowTooWeak {
                achieved: r.pow_bits,
                required,
            });
        }
        // Plan the addresses before changing anything.
        let mut planned = Vec::with_capacity(new_nets.len());
        for net_id in &new_nets {
            let net = self.networks.get(net_id).ok_or(ApiError::Internal)?;
            // One node's networks must not overlap: its interfaces would claim
            // the same addresses.
            if let Some(other) = joined
                .iter()
                .chain(new_nets.iter().filter(|o| *o != net_id))
                .filter_map(|o| self.networks.get(o))
                .find(|o| o.rec.ipv4_cidr.overlaps(&net.rec.ipv4_cidr))
            {
                return Err(ApiError::conflict(
                    "cidr_overlap",
                    format!(
                        "joining network {:?} ({}) would give this node overlapping networks: it overlaps {:?} ({})",
                        net.rec.name, net.rec.ipv4_cidr, other.rec.name, other.rec.ipv4_cidr
                    ),
                ));
            }
            let off = net.free_offset().ok_or_else(|| {
                ApiError::conflict(
                    "network_full",
                    format!(
                        "network {:?} ({}) has no free address",
                        net.rec.name, net.rec.ipv4_cidr
                    ),
                )
            })?;
            planned.push((*net_id, off));
        }
        let name = match existing.and_then(|id| self.nodes.get(&id)) {
            Some(n) => n.rec.name.clone(),
            None => self.unique_name(r.name.clone().unwrap_or_else(|| {
                crate::validate::derive_node_name(r.hostname.as_deref(), &r.node_key)
            }))?,
        };

        // Everything checked: apply.
        let now = secs(now_ms);
        let id = existing.unwrap_or_else(|| {
            let id = self.next_node_id;
            self.next_node_id += 1;
            id
        });
        let mut node = match existing.and_then(|id| self.nodes.remove(&id)) {
            Some(n) => n,
            None => NodeState {
                rec: NodeRecord {
                    id,
                    node_key: r.node_key,
                    name: name.clone(),
                    hostname: r.hostname.clone(),
                    tags: BTreeSet::new(),
                    disabled: false,
                    credential_hash: r.credential_hash,
                    endpoints: Vec::new(),
                    last_seen: None,
                    created_at: now,
                },
                memberships: BTreeMap::new(),
                online: false,
                seen_published: None,
            },
        };
        self.node_by_cred.remove(&node.rec.credential_hash);
        node.rec.credential_hash = r.credential_hash;
        node.rec.last_seen = Some(now);
        if r.hostname.is_some() {
            node.rec.hostname = r.hostname.clone();
        }
        let tags_before = node.rec.tags.clone();
        node.rec.tags.extend(token.tags.iter().cloned());
        let tags_changed = node.rec.tags != tags_before;
        if tags_changed {
            batch.touched.self_changed.insert(id);
        }
        self.node_by_cred.insert(r.credential_hash, id);
        self.node_by_key.insert(r.node_key, id);
        self.node_by_name.insert(name.clone(), id);
        batch.writes.push(Write::PutNode(node.rec.clone()));
        for (net_id, off) in planned {
            let Some(net) = self.networks.get_mut(&net_id) else {
                continue;
            };
            let Some(ipv4) = net.rec.ipv4_cidr.nth(off) else {
                continue;
            };
            net.used.insert(off);
            net.cursor = off + 1;
            net.members.insert(id);
            let m = MembershipRecord {
                node_id: id,
                network_id: net_id,
                ipv4,
                ipv6: net.rec.ipv6_prefix.and_then(|p| p.nth(u128::from(off))),
                token_id: Some(token_id),
                joined_at: now,
            };
            batch.writes.push(Write::PutMembership(m.clone()));
            node.memberships.insert(net_id, m);
        }
        if !is_retry {
            batch.touched.resync.insert(id);
            if let Some(t) = self.tokens.get_mut(&token_id) {
                t.uses = t.uses.saturating_add(1);
                batch.writes.push(Write::PutToken(t.clone()));
            }
        }
        // Peers learn about the node in every network (new ones, and the old ones
        // when tags changed).
        if !is_retry || tags_changed {
            Self::touch_everywhere(batch, &mut node);
            batch.touched.policy_nodes.insert(node.rec.node_key);
        }
        let key = node.rec.node_key;
        let addresses = {
            self.nodes.insert(id, node);
            self.nodes
                .get(&id)
                .map(|n| self.addresses(n))
                .unwrap_or_default()
        };
        let action = if existing.is_none() {
            "node.register"
        } else if is_retry {
            "node.reregister"
        } else {
            "node.join"
        };
        self.audit(
            batch,
            &Actor::Node(key),
            action,
            key.to_string(),
            json!({"name": name, "token": format!("token:{token_id}"), "addresses": addresses}),
            now_ms,
        );
        Ok(Output::Registered { name, addresses })
    }

    fn unique_name(&self, base: String) -> Result<String, ApiError> {
        if !self.node_by_name.contains_key(&base) {
            return Ok(base);
        }
        for i in 2..10_000u32 {
            let suffix = format!("-{i}");
            let mut stem = base.clone();
            stem.truncate(crate::validate::MAX_LABEL - suffix.len());
            let candidate = format!("{}{suffix}", stem.trim_end_matches('-'));
            if !self.node_by_name.contains_key(&candidate) {
                return Ok(candidate);
            }
        }
        Err(ApiError::conflict(
            "name_taken",
            format!("no free name derived from {base:?}"),
        ))
    }

    fn node_id_for(&self, sel: &str) -> Result<NodeId, ApiError> {
        self.find_node(sel).map(|n| n.rec.id).ok_or_else(|| {
            ApiError::not_found(
                "node_not_found",
                format!("no node with key or name {sel:?}"),
            )
        })
    }

    fn touch_everywhere(batch: &mut Batch, node: &mut NodeState) {
        node.seen_published = node.rec.last_seen;
        for net in node.memberships.keys() {
            batch.touched.entries.insert((*net, node.rec.node_key));
        }
    }

    fn update_node(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        sel: &str,
        patch: NodePatch,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let id = self.node_id_for(sel)?;
        if let Some(name) = &patch.name
            && self
                .node_by_name
                .get(name)
                .is_some_and(|other| *other != id)
        {
            return Err(ApiError::conflict(
                "name_taken",
                format!("another node is named {name:?}"),
            ));
        }
        let Some(mut node) = self.nodes.remove(&id) else {
            return Err(ApiError::Internal);
        };
        let key = node.rec.node_key.to_string();
        let mut audits = Vec::new();
        if let Some(name) = patch.name
            && name != node.rec.name
        {
            audits.push(("node.rename", json!({"from": node.rec.name, "to": name})));
            self.node_by_name.remove(&node.rec.name);
            self.node_by_name.insert(name.clone(), id);
            node.rec.name = name;
            batch.touched.self_changed.insert(id);
            Self::touch_everywhere(batch, &mut node);
        }
        if let Some(tags) = patch.tags
            && tags != node.rec.tags
        {
            audits.push(("node.tag", json!({"from": node.rec.tags, "to": tags})));
            node.rec.tags = tags;
            batch.touched.self_changed.insert(id);
            Self::touch_everywhere(batch, &mut node);
        }
        if let Some(disabled) = patch.disabled
            && disabled != node.rec.disabled
        {
            audits.push((
                if disabled {
                    "node.disable"
                } else {
                    "node.enable"
                },
                json!({}),
            ));
            node.rec.disabled = disabled;
            Self::touch_everywhere(batch, &mut node);
            if disabled {
                batch.touched.evicted.insert(id);
            }
        }
        if !audits.is_empty() {
            batch.writes.push(Write::PutNode(node.rec.clone()));
            batch.touched.policy_nodes.insert(node.rec.node_key);
        }
        self.nodes.insert(id, node);
        for (action, detail) in audits {
            self.audit(batch, actor, action, key.clone(), detail, now_ms);
        }
        let info = self
            .nodes
            .get(&id)
            .map(|n| self.node_info(n))
            .ok_or(ApiError::Internal)?;
        Ok(Output::Node(Box::new(info)))
    }

    fn remove_node(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        sel: &str,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let id = self.node_id_for(sel)?;
        let Some(mut node) = self.nodes.remove(&id) else {
            return Err(ApiError::Internal);
        };
        Self::touch_everywhere(batch, &mut node);
        batch.touched.evicted.insert(id);
        batch.touched.policy_nodes.insert(node.rec.node_key);
        for (net_id, m) in &node.memberships {
            if let Some(net) = self.networks.get_mut(net_id) {
                net.members.remove(&id);
                if let Some(off) = net.rec.ipv4_cidr.offset_of(m.ipv4) {
                    net.used.remove(&off);
                }
            }
        }
        self.node_by_key.remove(&node.rec.node_key);
        self.node_by_name.remove(&node.rec.name);
        self.node_by_cred.remove(&node.rec.credential_hash);
        self.drop_routes_of(batch, id, None);
        batch.writes.push(Write::DeleteNode(id));
        let addresses: Vec<String> = node
            .memberships
            .values()
            .map(|m| m.ipv4.to_string())
            .collect();
        self.audit(
            batch,
            actor,
            "node.remove",
            node.rec.node_key.to_string(),
            json!({"name": node.rec.name, "addresses": addresses}),
            now_ms,
        );
        Ok(Output::Done)
    }

    fn report(
        &mut self,
        batch: &mut Batch,
        id: NodeId,
        endpoints: Option<Vec<SocketAddr>>,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let node = self.nodes.get_mut(&id).ok_or(ApiError::Unauthorized)?;
        if node.rec.disabled {
            return Err(ApiError::NodeDisabled);
        }
        node.rec.last_seen = Some(secs(now_ms));
        if let Some(mut eps) = endpoints {
            // An endpoint inside an overlay network (this node's own address or
            // another node's) would send peers' datagrams into the tunnel:
            // dropped, the others kept. (The handler refused loopback,
            // unspecified, multicast and broadcast endpoints already.)
            let networks = &self.networks;
            eps.retain(|e| {
                let overlay = networks.values().any(|n| match e.ip().to_canonical() {
                    std::net::IpAddr::V4(ip) => n.rec.ipv4_cidr.contains(ip),
                    std::net::IpAddr::V6(ip) => n.rec.ipv6_prefix.is_some_and(|p| p.contains(ip)),
                });
                if overlay {
                    tracing::debug!(node = id, endpoint = %e, "dropped a reported endpoint in overlay address space");
                }
                !overlay && weft_proto::net::unusable_endpoint(e).is_none()
            });
            eps.sort();
            eps.dedup();
            if eps != node.rec.endpoints {
                node.rec.endpoints = eps;
                Self::touch_everywhere(batch, node);
            }
        }
        batch.writes.push(Write::PutNode(node.rec.clone()));
        Ok(Output::Done)
    }

    fn presence(
        &mut self,
        batch: &mut Batch,
        id: NodeId,
        online: bool,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(Output::Done);
        };
        if node.online != online {
            node.online = online;
            node.rec.last_seen = Some(secs(now_ms));
            batch.writes.push(Write::PutNode(node.rec.clone()));
            if !node.rec.disabled {
                Self::touch_everywhere(batch, node);
            }
            // A gateway coming or going may change which gateway carries a subnet.
            self.resync_gateway_networks(batch, id);
        }
        Ok(Output::Done)
    }
}

impl NetState {
    /// Number of addresses that can be handed out.
    pub fn capacity(&self) -> u64 {
        self.rec
            .ipv4_cidr
            .size()
            .saturating_sub(FIRST_HOST_OFFSET + 1)
    }

    /// The next free host offset at or after the cursor (wrapping), skipping the
    /// network address, the reserved `.1` and the broadcast address.
    fn free_offset(&self) -> Option<u64> {
        let last = self.rec.ipv4_cidr.size().checked_sub(2)?;
        if last < FIRST_HOST_OFFSET || self.used.len() as u64 >= self.capacity() {
            return None;
        }
        let start = self.cursor.clamp(FIRST_HOST_OFFSET, last);
        let scan = |from: u64, to: u64| {
            let mut candidate = from;
            for used in self.used.range(from..=to) {
                if *used != candidate {
                    break;
                }
                candidate += 1;
            }
            (candidate <= to).then_some(candidate)
        };
        scan(start, last).or_else(|| scan(FIRST_HOST_OFFSET, start))
    }
}

fn token_gone(code: &'static str, message: &str) -> ApiError {
    ApiError::TokenGone {
        code,
        message: message.to_owned(),
    }
}

/// Whether a token can be used now.
fn token_state(t: &TokenRecord, now_ms: u64) -> Result<(), ApiError> {
    if t.revoked {
        return Err(token_gone("token_revoked", "join token was revoked"));
    }
    if secs(now_ms) >= t.expires_at {
        return Err(token_gone("token_expired", "join token has expired"));
    }
    if t.max_uses.is_some_and(|max| t.uses >= max) {
        return Err(token_gone("token_exhausted", "join token has been used up"));
    }
    Ok(())
}

impl World {
    // ---- relays ----

    /// The relays every map lists: registered relays by name, then the
    /// configured `--relay` URLs.
    pub fn map_relays(&self) -> Vec<Relay> {
        self.relay_by_name
            .values()
            .filter_map(|id| self.relay_records.get(id))
            .map(|r| Relay {
                url: r.url.clone(),
                name: Some(r.name.clone()),
                tls_fingerprint: r.tls_fingerprint.clone(),
                stun_port: r.stun_port,
            })
            .chain(self.relays.iter().cloned())
            .collect()
    }

    /// The relay holding this token.
    pub fn relay_by_token(&self, hash: &SecretHash) -> Option<&RelayRecord> {
        self.relay_by_token
            .get(hash)
            .and_then(|id| self.relay_records.get(id))
    }

    /// A relay by id.
    pub fn relay(&self, id: RelayId) -> Option<&RelayRecord> {
        self.relay_records.get(&id)
    }

    /// A relay by name.
    pub fn relay_by_name(&self, name: &str) -> Option<&RelayRecord> {
        self.relay_by_name
            .get(name)
            .and_then(|id| self.relay_records.get(id))
    }

    /// Relay info for the admin API (`connected` is filled in by the caller).
    pub fn relay_info(r: &RelayRecord) -> RelayInfo {
        RelayInfo {
            name: r.name.clone(),
            url: r.url.clone(),
            tls_fingerprint: r.tls_fingerprint.clone(),
            stun_port: r.stun_port,
            created_at_ms: secs_to_ms(r.created_at),
            last_seen_ms: r.last_seen.map(secs_to_ms),
            connected: false,
        }
    }

    /// All relays, by name.
    pub fn relays_info(&self) -> Vec<(RelayId, RelayInfo)> {
        self.relay_by_name
            .values()
            .filter_map(|id| self.relay_records.get(id))
            .map(|r| (r.id, Self::relay_info(r)))
            .collect()
    }

    /// Whether `key` is a member a relay may serve: a registered, enabled node.
    pub fn is_relay_member(&self, key: &NodeKey) -> bool {
        self.find_node_by_key(key).is_some_and(|n| !n.rec.disabled)
    }

    /// Every key a relay may serve, sorted.
    pub fn relay_members(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.node_by_key
            .iter()
            .filter(|(_, id)| self.nodes.get(id).is_some_and(|n| !n.rec.disabled))
            .map(|(k, _)| *k)
    }

    /// Every enabled node gets a fresh snapshot: the relay list changed.
    fn resync_all(&self, batch: &mut Batch) {
        batch.touched.resync.extend(
            self.nodes
                .values()
                .filter(|n| !n.rec.disabled)
                .map(|n| n.rec.id),
        );
    }

    fn create_relay(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        r: NewRelay,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        if self.relay_by_name.contains_key(&r.name) {
            return Err(ApiError::conflict(
                "relay_exists",
                format!("relay {:?} already exists", r.name),
            ));
        }
        let id = self.next_relay_id;
        self.next_relay_id += 1;
        let rec = RelayRecord {
            id,
            name: r.name.clone(),
            url: r.url,
            token_hash: r.hash,
            tls_fingerprint: None,
            stun_port: None,
            created_at: secs(now_ms),
            last_seen: None,
        };
        batch.writes.push(Write::PutRelay(rec.clone()));
        let info = Self::relay_info(&rec);
        self.relay_by_name.insert(rec.name.clone(), id);
        self.relay_by_token.insert(rec.token_hash, id);
        self.relay_records.insert(id, rec);
        self.resync_all(batch);
        self.audit(
            batch,
            actor,
            "relay.create",
            format!("relay:{}", r.name),
            json!({"url": info.url}),
            now_ms,
        );
        Ok(Output::Relay(info))
    }

    fn remove_relay(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        name: &str,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let id = *self.relay_by_name.get(name).ok_or_else(|| {
            ApiError::not_found("relay_not_found", format!("no relay named {name:?}"))
        })?;
        let Some(rec) = self.relay_records.remove(&id) else {
            return Err(ApiError::Internal);
        };
        self.relay_by_name.remove(&rec.name);
        self.relay_by_token.remove(&rec.token_hash);
        batch.writes.push(Write::DeleteRelay(id));
        batch.touched.evicted_relays.insert(id);
        self.resync_all(batch);
        self.audit(
            batch,
            actor,
            "relay.remove",
            format!("relay:{}", rec.name),
            json!({"url": rec.url}),
            now_ms,
        );
        Ok(Output::Done)
    }

    fn relay_report(
        &mut self,
        batch: &mut Batch,
        id: RelayId,
        report: RelayReport,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let rec = self
            .relay_records
            .get_mut(&id)
            .ok_or(ApiError::Unauthorized)?;
        let changed =
            rec.tls_fingerprint != report.tls_fingerprint || rec.stun_port != report.stun_port;
        let before = json!({"tls_fingerprint": rec.tls_fingerprint, "stun_port": rec.stun_port});
        rec.tls_fingerprint = report.tls_fingerprint;
        rec.stun_port = report.stun_port;
        rec.last_seen = Some(secs(now_ms));
        let rec = rec.clone();
        batch.writes.push(Write::PutRelay(rec.clone()));
        if changed {
            self.resync_all(batch);
            self.audit(
                batch,
                &Actor::Relay(rec.name.clone()),
                "relay.report",
                format!("relay:{}", rec.name),
                json!({"from": before, "to": {"tls_fingerprint": rec.tls_fingerprint, "stun_port": rec.stun_port}}),
                now_ms,
            );
        }
        Ok(Output::Relay(Self::relay_info(&rec)))
    }
}

impl World {
    /// A node by key.
    pub fn find_node_by_key(&self, key: &NodeKey) -> Option<&NodeState> {
        self.node_by_key.get(key).and_then(|id| self.nodes.get(id))
    }
}

impl World {
    /// Closes a batch: if any map changed, moves the version forward and records
    /// it. Returns whether the version moved.
    pub fn finish_batch(&mut self, batch: &mut Batch) -> bool {
        if batch.touched.is_empty() {
            return false;
        }
        self.version += 1;
        batch.writes.push(Write::SetMapVersion(self.version));
        if batch.touched.recompile || !batch.touched.policy_nodes.is_empty() {
            batch.touched.policy_changed = self.recompile(&batch.touched);
            self.resync_for_policy_changes(batch);
        } else {
            // Visibility did not change in this batch.
            self.policy_before = Transition::default();
        }
        true
    }
}
