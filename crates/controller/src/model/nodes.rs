//! Nodes: registration (which consumes a join token use and allocates an
//! address in each of the token's networks), renames, tags, disabling,
//! removal, reported endpoints and presence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use serde_json::json;
use weft_proto::NodeKey;
use weft_proto::api::NodeAddress;
use weft_proto::facts::HostFacts;

use crate::error::ApiError;
use crate::secret::SecretHash;
use crate::store::{MembershipRecord, NodeRecord, Write};

use super::facts::take_facts;
use super::tokens::TokenStatus;
use super::{Actor, Batch, NetId, NodeId, World, secs};

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
}

/// The nodes, by id, with their indexes by key, name and credential; ids are
/// handed out here. A node being changed is taken out ([`Nodes::take`]) and
/// put back ([`Nodes::put`]), which keeps every index in step with its row.
#[derive(Debug, Default)]
pub(super) struct Nodes {
    rows: BTreeMap<NodeId, NodeState>,
    by_key: BTreeMap<NodeKey, NodeId>,
    by_name: BTreeMap<String, NodeId>,
    // Lookup only, never iterated.
    by_cred: HashMap<SecretHash, NodeId>,
    next_id: NodeId,
}

impl Nodes {
    /// From the stored rows (memberships are added by the caller).
    pub(super) fn load(rows: Vec<NodeRecord>) -> Nodes {
        let mut nodes = Nodes {
            next_id: 1,
            ..Nodes::default()
        };
        for rec in rows {
            nodes.next_id = nodes.next_id.max(rec.id + 1);
            nodes.put(NodeState {
                rec,
                memberships: BTreeMap::new(),
                online: false,
            });
        }
        nodes
    }

    /// Puts `node` in, with its indexes.
    pub(super) fn put(&mut self, node: NodeState) {
        self.by_key.insert(node.rec.node_key, node.rec.id);
        self.by_name.insert(node.rec.name.clone(), node.rec.id);
        self.by_cred.insert(node.rec.credential_hash, node.rec.id);
        self.rows.insert(node.rec.id, node);
    }

    /// Takes node `id` out, with its indexes.
    pub(super) fn take(&mut self, id: NodeId) -> Option<NodeState> {
        let node = self.rows.remove(&id)?;
        self.by_key.remove(&node.rec.node_key);
        self.by_name.remove(&node.rec.name);
        self.by_cred.remove(&node.rec.credential_hash);
        Some(node)
    }

    /// A node by id.
    pub(super) fn get(&self, id: &NodeId) -> Option<&NodeState> {
        self.rows.get(id)
    }

    /// A node by id, to change what no index covers (endpoints, presence,
    /// memberships).
    pub(super) fn get_mut(&mut self, id: &NodeId) -> Option<&mut NodeState> {
        self.rows.get_mut(id)
    }

    /// Every node, by id.
    pub(super) fn values(&self) -> impl Iterator<Item = &NodeState> + '_ {
        self.rows.values()
    }

    /// The id of the node with key `key`.
    pub(super) fn id_by_key(&self, key: &NodeKey) -> Option<NodeId> {
        self.by_key.get(key).copied()
    }

    /// The id of the node named `name`.
    pub(super) fn id_by_name(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// The keys of the enabled nodes, sorted.
    pub(super) fn enabled_keys(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.by_key
            .iter()
            .filter(|(_, id)| self.rows.get(id).is_some_and(|n| !n.rec.disabled))
            .map(|(k, _)| *k)
    }
}

/// A registration whose signature and proof of work the handler already checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Validated host facts.
    pub facts: Option<HostFacts>,
    /// Hash of the new credential.
    pub credential_hash: SecretHash,
}

/// A validated node update.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodePatch {
    /// New name.
    pub name: Option<String>,
    /// New tags.
    pub tags: Option<BTreeSet<String>>,
    /// Disable / enable.
    pub disabled: Option<bool>,
}

/// Admin: rename, tag, disable or enable a node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpdateNode {
    /// The node's key or name.
    pub node: String,
    /// What changes.
    pub patch: NodePatch,
}

/// Admin: remove a node, by key or name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoveNode(pub String);

/// Agent: liveness and (optionally) its endpoints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The reporting node.
    pub node: NodeId,
    /// Its endpoints, if it sent them.
    pub endpoints: Option<Vec<SocketAddr>>,
    /// Its validated host facts, if it sent them.
    pub facts: Option<HostFacts>,
}

/// The node went online or offline, as [`Presence`](super::Presence)
/// debounced its map streams.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct SetPresence {
    /// The node.
    pub node: NodeId,
    /// Online now.
    pub online: bool,
}

/// A registration's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The node's final name.
    pub name: String,
    /// Its addresses, by network name.
    pub addresses: Vec<NodeAddress>,
}

/// A node as an operation left it, with its addresses.
#[derive(Debug, Clone)]
pub struct NodeDetail {
    /// The node.
    pub node: NodeState,
    /// Its addresses, by network name.
    pub addresses: Vec<NodeAddress>,
}

operation!(Registration => Registered, |op, w, batch, _, now_ms| {
    w.register(batch, op, now_ms)
});

operation!(UpdateNode => NodeDetail, |op, w, batch, actor, now_ms| {
    w.update_node(batch, actor, &op.node, op.patch, now_ms)
});

operation!(RemoveNode => (), |op, w, batch, actor, now_ms| {
    w.remove_node(batch, actor, &op.0, now_ms)
});

operation!(Report => (), |op, w, batch, actor, now_ms| {
    w.report(batch, actor, op, now_ms)
});

operation!(SetPresence => (), |op, w, batch, _, now_ms| {
    w.presence(batch, op.node, op.online, now_ms);
    Ok(())
});

impl World {
    /// Nodes by name, optionally only members of `network`.
    pub fn nodes_by_name(&self, network: Option<NetId>) -> impl Iterator<Item = &NodeState> + '_ {
        self.nodes
            .by_name
            .values()
            .filter_map(|id| self.nodes.get(id))
            .filter(move |n| network.is_none_or(|net| n.memberships.contains_key(&net)))
    }

    // ---- reads ----

    /// The node holding this credential.
    pub fn node_by_credential(&self, hash: &SecretHash) -> Option<&NodeState> {
        self.nodes
            .by_cred
            .get(hash)
            .and_then(|id| self.nodes.get(id))
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Option<&NodeState> {
        self.nodes.get(&id)
    }

    /// A node by key (43-character text) or name.
    pub fn find_node(&self, sel: &str) -> Option<&NodeState> {
        let by_key = sel
            .parse::<NodeKey>()
            .ok()
            .and_then(|k| self.nodes.id_by_key(&k));
        by_key
            .or_else(|| self.nodes.id_by_name(sel))
            .and_then(|id| self.nodes.get(&id))
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.rows.len()
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

    /// All node ids (for tests and checks).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.rows.keys().copied()
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
        // Instances' health follows their providers' presence.
        self.compute_all_service_lists();
    }

    /// A node by key.
    pub fn find_node_by_key(&self, key: &NodeKey) -> Option<&NodeState> {
        self.nodes.id_by_key(key).and_then(|id| self.nodes.get(&id))
    }

    fn register(
        &mut self,
        batch: &mut Batch,
        r: Registration,
        now_ms: u64,
    ) -> Result<Registered, ApiError> {
        let token = self
            .tokens
            .by_hash(&r.token_hash)
            .ok_or(ApiError::InvalidToken)?
            .clone();
        let token_id = token.id;
        let existing = self.nodes.id_by_key(&r.node_key);
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
        // A retry of a registration whose response was lost succeeds even if the
        // token has since expired or been used up (it consumes nothing), but
        // not once it was revoked.
        let status = TokenStatus::of(&token, now_ms);
        if !is_retry || status == TokenStatus::Revoked {
            status.usable()?;
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
            let id = self.nodes.next_id;
            self.nodes.next_id += 1;
            id
        });
        let mut node = match existing.and_then(|id| self.nodes.take(id)) {
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
                    seen_published: None,
                    created_at: now,
                    facts: None,
                    facts_changed_ms: None,
                },
                memberships: BTreeMap::new(),
                online: false,
            },
        };
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
            self.data_tags_changed(batch, id, &node.memberships, &tags_before, &node.rec.tags);
        }
        let facts = take_facts(&mut node.rec, r.facts, now_ms);
        // Peers are told below (touch_everywhere): the row written here, before
        // its memberships, carries the time they are told.
        let publish = !is_retry || tags_changed;
        if publish {
            node.rec.seen_published = node.rec.last_seen;
        }
        batch.writes.push(Write::PutNode(node.rec.clone()));
        for (net_id, off) in planned {
            let Some(net) = self.networks.get_mut(&net_id) else {
                continue;
            };
            let Some(ipv4) = net.rec.ipv4_cidr.nth(off) else {
                continue;
            };
            let m = MembershipRecord {
                node_id: id,
                network_id: net_id,
                ipv4,
                ipv6: net.rec.ipv6_prefix.and_then(|p| p.nth(u128::from(off))),
                token_id: Some(token_id),
                joined_at: now,
            };
            net.join(&m);
            batch.writes.push(Write::PutMembership(m.clone()));
            node.memberships.insert(net_id, m);
        }
        if !is_retry {
            batch.touched.resync.insert(id);
            if let Some(t) = self.tokens.count_use(token_id) {
                batch.writes.push(Write::PutToken(t.clone()));
            }
        }
        // Peers learn about the node in every network (new ones, and the old ones
        // when tags changed).
        if publish {
            Self::touch_everywhere(batch, &mut node);
            batch.touched.policy_nodes.insert(node.rec.node_key);
        }
        let key = node.rec.node_key;
        let addresses = {
            self.nodes.put(node);
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
        self.audit_facts(batch, &Actor::Node(key), key.to_string(), facts, now_ms);
        Ok(Registered { name, addresses })
    }

    fn unique_name(&self, base: String) -> Result<String, ApiError> {
        if self.nodes.id_by_name(&base).is_none() {
            return Ok(base);
        }
        for i in 2..10_000u32 {
            let suffix = format!("-{i}");
            let mut stem = base.clone();
            stem.truncate(crate::validate::MAX_LABEL - suffix.len());
            let candidate = format!("{}{suffix}", stem.trim_end_matches('-'));
            if self.nodes.id_by_name(&candidate).is_none() {
                return Ok(candidate);
            }
        }
        Err(ApiError::conflict(
            "name_taken",
            format!("no free name derived from {base:?}"),
        ))
    }

    pub(super) fn node_id_for(&self, sel: &str) -> Result<NodeId, ApiError> {
        self.find_node(sel)
            .map(|n| n.rec.id)
            .ok_or_else(|| node_not_found(sel))
    }

    /// Takes node `id`, found by `sel`, out to change it (put it back with
    /// [`Nodes::put`]).
    pub(super) fn take_node(&mut self, id: NodeId, sel: &str) -> Result<NodeState, ApiError> {
        self.nodes.take(id).ok_or_else(|| node_not_found(sel))
    }

    /// Tells `node`'s peers in every network about it, with its current
    /// `last_seen`. Write the row ([`Write::PutNode`]) after this, so that
    /// the stored `seen_published` is what peers were told.
    pub(super) fn touch_everywhere(batch: &mut Batch, node: &mut NodeState) {
        node.rec.seen_published = node.rec.last_seen;
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
    ) -> Result<NodeDetail, ApiError> {
        let id = self.node_id_for(sel)?;
        if let Some(name) = &patch.name
            && self.nodes.id_by_name(name).is_some_and(|other| other != id)
        {
            return Err(ApiError::conflict(
                "name_taken",
                format!("another node is named {name:?}"),
            ));
        }
        let mut node = self.take_node(id, sel)?;
        let key = node.rec.node_key.to_string();
        let mut audits = Vec::new();
        if let Some(name) = patch.name
            && name != node.rec.name
        {
            audits.push(("node.rename", json!({"from": node.rec.name, "to": name})));
            node.rec.name = name;
            batch.touched.self_changed.insert(id);
            Self::touch_everywhere(batch, &mut node);
        }
        if let Some(tags) = patch.tags
            && tags != node.rec.tags
        {
            audits.push(("node.tag", json!({"from": node.rec.tags, "to": tags})));
            self.data_tags_changed(batch, id, &node.memberships, &node.rec.tags, &tags);
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
        let out = NodeDetail {
            addresses: self.addresses(&node),
            node: node.clone(),
        };
        self.nodes.put(node);
        for (action, detail) in audits {
            self.audit(batch, actor, action, key.clone(), detail, now_ms);
        }
        Ok(out)
    }

    fn remove_node(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        sel: &str,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let id = self.node_id_for(sel)?;
        let mut node = self.take_node(id, sel)?;
        Self::touch_everywhere(batch, &mut node);
        batch.touched.evicted.insert(id);
        batch.touched.policy_nodes.insert(node.rec.node_key);
        for (net_id, m) in &node.memberships {
            if let Some(net) = self.networks.get_mut(net_id) {
                net.release(m);
            }
        }
        self.drop_routes_of(batch, id, None);
        self.data_forget_node(id);
        self.integrity.forget(id);
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
        Ok(())
    }

    fn report(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        Report {
            node: id,
            endpoints,
            facts,
        }: Report,
        now_ms: u64,
    ) -> Result<(), ApiError> {
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
        let facts = take_facts(&mut node.rec, facts, now_ms);
        let key = node.rec.node_key.to_string();
        batch.writes.push(Write::PutNode(node.rec.clone()));
        self.audit_facts(batch, actor, key, facts, now_ms);
        Ok(())
    }

    fn presence(&mut self, batch: &mut Batch, id: NodeId, online: bool, now_ms: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.online != online {
            node.online = online;
            node.rec.last_seen = Some(secs(now_ms));
            if !node.rec.disabled {
                Self::touch_everywhere(batch, node);
            }
            batch.writes.push(Write::PutNode(node.rec.clone()));
            // A gateway coming or going may change which gateway carries a subnet.
            self.resync_gateway_networks(batch, id);
        }
    }
}

/// 404 `node_not_found` for selector `sel` (a key or a name).
pub(super) fn node_not_found(sel: &str) -> ApiError {
    ApiError::not_found(
        "node_not_found",
        format!("no node with key or name {sel:?}"),
    )
}

#[cfg(test)]
#[path = "nodes_seen_tests.rs"]
mod seen_tests;
