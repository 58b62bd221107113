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

use weft_policy::{LivePolicy, Transition};
use weft_proto::NodeKey;
use weft_proto::api::{self, NodeAddress, NodeInfo, PolicyDoc, TokenInfo};
use weft_proto::netmap::Relay;
use weft_proto::relay_api::RelayInfo;

use crate::error::ApiError;
use crate::policy::PolicyState;
use crate::secret::SecretHash;
use crate::store::{AuditRecord, RelayRecord, RouteRecord, StoreSnapshot, TokenRecord, Write};

mod presence;
mod routes;

pub use presence::{Presence, PresenceConfig};
pub use routes::{GATEWAY_TAG, RouteOp};

mod networks;
mod nodes;
mod policy;
mod relays;
mod tokens;

pub use networks::{FIRST_HOST_OFFSET, NetState, NewNetwork};
pub use nodes::{NodePatch, NodeState, Registration};
pub use relays::{NewRelay, RelayReport};
pub use tokens::NewToken;

/// A network id.
pub type NetId = u64;
/// A node id.
pub type NodeId = u64;
/// A relay id.
pub type RelayId = u64;

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
    pub(super) fn label(&self) -> String {
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

pub(super) fn secs(now_ms: u64) -> u64 {
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
}

impl World {
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
