//! The controller's state in memory and the operations on it.
//!
//! [`World`] is loaded from the store at start and is the authority while this
//! controller runs: every operation validates against it, mutates it and records
//! the row-level [`Write`]s that make the change durable, plus what it
//! [`Touched`] for the netmap compiler. An operation either fails without any
//! effect or succeeds completely, and returns its own typed result
//! ([`Operation::Output`]). Closing a batch ([`World::finish_batch`]) yields
//! its [`Outcome`] (what changed, and visibility before the batch), a value
//! the caller hands to the netmap compiler. Time comes in as an argument;
//! nothing here does I/O, so the whole module is deterministic and
//! unit-tested.
//!
//! One module per aggregate, each owning its operations and invariants:
//! `networks` (and memberships), `tokens`, `nodes`, `relays`, `policy`,
//! `routes`; `presence` is the debouncer whose decisions arrive as
//! [`SetPresence`]. The JSON views of this state live in `crate::api::views`.

use std::collections::{BTreeMap, BTreeSet};

use weft_policy::{LivePolicy, Transition, Viewpoint};
use weft_proto::NodeKey;
use weft_proto::netmap::Relay;

use crate::error::ApiError;
use crate::secret::SecretHash;
use crate::store::{AuditRecord, RouteRecord, StoreSnapshot, Write};

/// `operation!(Op => Output, |op, world, batch, actor, now_ms| body)`
/// implements [`Operation`] for the request type `Op`: `body` carries it out
/// (usually by calling the `World` method that owns the write) and returns
/// `Result<Output, ApiError>`.
macro_rules! operation {
    ($op:ty => $out:ty, |$o:ident, $w:ident, $b:ident, $a:pat_param, $now:ident| $body:expr) => {
        impl $crate::model::Operation for $op {
            type Output = $out;

            fn apply(
                self,
                $w: &mut $crate::model::World,
                $b: &mut $crate::model::Batch,
                $a: &$crate::model::Actor,
                $now: u64,
            ) -> Result<$out, $crate::error::ApiError> {
                let $o = self;
                $body
            }
        }
    };
}

mod audit;
mod challenges;
mod data;
mod dns_blocklist;
mod events;
mod facts;
mod hostfw;
mod integrity;
mod networks;
mod networks_remove;
mod nodes;
mod policy;
mod presence;
mod relays;
mod remote;
mod rotate_key;
mod routes;
mod services;
mod services_node;
mod services_view;
mod ssh;
mod tasks;
mod tokens;
pub mod usage;

pub use audit::PruneAudit;
pub use challenges::{ChallengeRefusal, ChallengedRegistration, KEEP_AFTER_EXPIRY_MS};
pub use data::{DataChanged, SetData, SetSecret, UnsetData, UnsetSecret};
pub use dns_blocklist::{Blocklist, ClearDnsBlocklist, SetDnsBlocklist};
pub use events::{RecordEvents, SetNetworkAnomaly};
pub use hostfw::{AllowRule, RevokeRule, SetFirewall, SweepFirewall};
pub use integrity::{
    ApproveHook, CONTROLLER_EVENT_BASE, ExpectWeftd, ReportIntegrity, RevokeHook, judge,
};
pub use networks::{FIRST_HOST_OFFSET, LeaveNetwork, Left, NetState, NewNetwork};
pub use networks_remove::{NetworkRemoved, RemoveNetwork};
pub use nodes::{
    NodeDetail, NodePatch, NodeState, Registered, Registration, RemoveNode, Report, SetPresence,
    UpdateNode,
};
pub use policy::{PolicyState, SetPolicy};
pub use presence::{Presence, PresenceConfig, RESTART_GRACE, assumed_online};
pub use relays::{NewRelay, RelayReport, RemoveRelay, ReportRelay};
pub use remote::{
    AnyOp, ChangeBody, Diverged, Holders, RecordedOp, Replayed, ReplicaGone, StreamPresence,
};
pub use rotate_key::{RotateKey, RotatedKey};
pub use routes::{AdvertiseRoutes, ChangeRoute, GATEWAY_TAG, RouteOp, RouteStatus};
pub use services::{AdvertiseService, CreateService, DecideInstance, RemoveService, ReportHealth};
pub use ssh::{ReportSshServer, ReportSshSessions};
pub use tasks::{
    CancelTask, CreateTask, LEASE_GRACE_MS, LeaseTask, SubmitResult, SweepTasks, TaskQuery,
    TaskState,
};
pub use tokens::{NewToken, RevokeToken, Token, TokenStatus};

use networks::Networks;
use nodes::Nodes;
use relays::Relays;
use tokens::Tokens;

/// A network id.
pub type NetId = u64;
/// A node id.
pub type NodeId = u64;
/// A relay id.
pub type RelayId = u64;

/// Who did something (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Actor {
    /// The admin token holder.
    Admin,
    /// A node, by key.
    Node(NodeKey),
    /// A relay, by name.
    Relay(String),
    /// The controller itself (timers: task leases and deadlines).
    System,
}

impl Actor {
    pub(super) fn label(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Node(k) => format!("node:{k}"),
            Actor::Relay(name) => format!("relay:{name}"),
            Actor::System => "system".into(),
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
    /// Nodes that left networks (by name) that were deleted: each gets a
    /// `MapChange::NetworkRemove` per network (a delta, not a snapshot),
    /// unless it is in `resync` too.
    pub left: BTreeMap<NodeId, BTreeSet<String>>,
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
    /// Nodes whose resolved data or secrets changed: each receives its new
    /// lists (`MapChange::Data`).
    pub data: BTreeSet<NodeId>,
    /// The DNS blocklist changed: every enabled node receives its reference
    /// (`MapChange::DnsBlocklist`).
    pub dns_blocklist: bool,
    /// Nodes whose host firewall may have changed (marked by operations);
    /// when the batch closes, exactly those whose spec changed, each receiving
    /// it (`MapChange::HostFirewall`).
    pub hostfw: BTreeSet<NodeId>,
    /// Nodes whose `ssh_hosts` changed (recomputed for every node when a
    /// server report or a batch changes them; exactly those receive
    /// `MapChange::SshHosts`).
    pub ssh_hosts: BTreeSet<NodeId>,
    /// Nodes whose service lists may have changed (marked by operations);
    /// when the batch closes, exactly those whose `services`/`provides`
    /// changed, each receiving them (`MapChange::Services`).
    pub services: BTreeSet<NodeId>,
}

impl Touched {
    /// Whether any map changed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.self_changed.is_empty()
            && self.resync.is_empty()
            && self.left.is_empty()
            && self.evicted.is_empty()
            && self.evicted_relays.is_empty()
            && !self.recompile
            && self.policy_nodes.is_empty()
            && self.data.is_empty()
            && !self.dns_blocklist
            && self.hostfw.is_empty()
            && self.ssh_hosts.is_empty()
            && self.services.is_empty()
    }
}

/// What a closed batch changed that moved the map version: what the netmap
/// compiler, the hub and the relay feed act on.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What the batch's operations touched.
    pub touched: Touched,
    /// The nodes whose compiled policy changed.
    pub policy_changed: BTreeSet<NodeId>,
    /// Visibility before the batch, for the nodes whose policy inputs changed
    /// (everyone's after a policy edit).
    transition: Transition<NodeKey>,
}

impl Outcome {
    /// Node `k` as visibility sees it in `world` now, and before the batch.
    pub fn viewpoints<'a>(
        &'a self,
        world: &'a World,
        k: &'a NodeKey,
    ) -> (
        Option<Viewpoint<'a, NodeKey>>,
        Option<Viewpoint<'a, NodeKey>>,
    ) {
        (
            world.live.viewpoint(k),
            self.transition.viewpoint_before(&world.live, k),
        )
    }

    /// The nodes whose visibility to others the batch may have changed
    /// (`None`: anyone's, the policy changed).
    pub fn visibility_changed(&self) -> Option<BTreeSet<NodeKey>> {
        self.transition
            .changed_nodes()
            .map(|i| i.copied().collect())
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

/// A state-changing operation and the value it returns.
///
/// Each aggregate's module defines its operations (e.g. [`NewNetwork`],
/// [`UpdateNode`], [`SetPolicy`]); [`World::apply`] runs one and hands back
/// its own typed result, so a caller never matches on another operation's.
pub trait Operation: Send + 'static {
    /// What a successful operation returns.
    type Output: Send + 'static;

    /// Validates against `world`, mutates it and records the writes and what
    /// changed in `batch`; on error nothing changed.
    fn apply(
        self,
        world: &mut World,
        batch: &mut Batch,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Self::Output, ApiError>;
}

/// The controller's state.
#[derive(Debug, Default)]
pub struct World {
    /// The last map version handed out.
    pub version: u64,
    /// The last change of the changes log this state includes (several
    /// replicas: [`remote`]).
    pub change_seq: u64,
    /// Which replicas hold each node's map streams.
    holders: Holders,
    /// Admin token hash.
    pub admin_hash: Option<SecretHash>,
    /// Relays from the configuration (`--relay URL`): in every map, URL only.
    pub relays: Vec<Relay>,
    /// The access policy in force.
    pub policy: PolicyState,
    /// Every enabled node's compiled policy and visibility, kept incrementally.
    live: LivePolicy<NodeKey>,
    networks: Networks,
    nodes: Nodes,
    tokens: Tokens,
    /// Registered relays (`relays` are the configured ones).
    registered: Relays,
    /// Subnet routes by (network, prefix, gateway node).
    routes: BTreeMap<routes::RouteKey, RouteRecord>,
    /// Node data and sealed secrets.
    data: data::Data,
    /// Remote tasks and their runs.
    tasks: tasks::Tasks,
    /// Approved hooks, expected weftd hashes, nodes' reports and states.
    integrity: integrity::Integrity,
    /// The DNS blocklist in force.
    dns_blocklist: Option<Blocklist>,
    /// The host firewall file, dynamic rules and every node's compiled spec.
    hostfw: hostfw::HostFw,
    /// Services, their instances and health, and each node's map lists.
    services: services::Registry,
    /// SSH servers, audited session keys, every node's `ssh_hosts`.
    ssh: ssh::Ssh,
    /// Registration challenges used, until they expire.
    used_challenges: challenges::UsedChallenges,
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
            networks: Networks::load(snap.networks),
            tokens: Tokens::load(snap.tokens),
            nodes: Nodes::load(snap.nodes),
            registered: Relays::load(snap.relays),
            integrity: integrity::Integrity::load(snap.integrity),
            tasks: tasks::Tasks::load(snap.tasks),
            data: data::Data::load(snap.data),
            dns_blocklist: snap.dns_blocklist.map(Blocklist::new),
            hostfw: hostfw::HostFw::load(snap.hostfw),
            ssh: ssh::Ssh::load(snap.ssh),
            used_challenges: challenges::UsedChallenges::load(snap.used_challenges),
            ..World::default()
        };
        for m in snap.memberships {
            if let (Some(net), Some(node)) = (
                w.networks.get_mut(&m.network_id),
                w.nodes.get_mut(&m.node_id),
            ) {
                net.admit(&m);
                node.memberships.insert(m.network_id, m);
            }
        }
        let registry = services::Registry::load(
            snap.services,
            |id| w.networks.get(&id).is_some(),
            |id| w.nodes.get(&id).is_some(),
        );
        w.services = registry;
        for r in snap.routes {
            if w.nodes.get(&r.node_id).is_some() && w.networks.get(&r.network_id).is_some() {
                w.routes.insert((r.network_id, r.prefix, r.node_id), r);
            }
        }
        w.policy = match snap.policy {
            Some(rec) => PolicyState::from_record(rec),
            None => {
                let names: Vec<&str> = w.networks.names().collect();
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
        w.compile_all_host_firewalls();
        w.compute_all_ssh_hosts();
        w.compute_all_service_lists();
        w
    }
}

impl World {
    // ---- writes ----

    /// Applies one operation. On error nothing changed.
    pub fn apply<O: Operation>(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: O,
        now_ms: u64,
    ) -> Result<O::Output, ApiError> {
        op.apply(self, batch, actor, now_ms)
    }

    pub(super) fn audit(
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
    /// Closes a batch: if any map changed, moves the version forward, records
    /// it, brings the compiled policies up to date and returns what changed
    /// (`None`: no map changed, the version stays).
    pub fn finish_batch(&mut self, batch: &mut Batch) -> Option<Outcome> {
        if batch.touched.is_empty() {
            return None;
        }
        self.version += 1;
        batch.writes.push(Write::SetMapVersion(self.version));
        let mut outcome = Outcome {
            touched: std::mem::take(&mut batch.touched),
            ..Outcome::default()
        };
        if outcome.touched.recompile || !outcome.touched.policy_nodes.is_empty() {
            (outcome.policy_changed, outcome.transition) = self.recompile(&outcome.touched);
            self.resync_for_policy_changes(&outcome.policy_changed, &mut outcome.touched);
        }
        // Else visibility did not change in this batch: no transition.
        self.refresh_host_firewalls(&mut outcome.touched);
        self.refresh_ssh_hosts(&mut outcome.touched);
        self.refresh_services(
            &mut outcome.touched,
            &outcome.policy_changed,
            &mut batch.writes,
        );
        Some(outcome)
    }
}

#[cfg(test)]
mod tests;
