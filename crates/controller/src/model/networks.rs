//! Networks and memberships: creating a network (its CIDRs checked against
//! the others and against subnet routes, its default rule appended to the
//! policy), handing out addresses, and a node leaving one network.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use weft_proto::net::{Ipv4Net, Ipv6Net};

use super::{Actor, Batch, NetId, NodeId, World, secs};
use crate::error::ApiError;
use crate::store::{MembershipRecord, NetworkRecord, Write};

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
    /// Host offsets handed out (one per member).
    used: BTreeSet<u64>,
    /// Where the search for a free offset starts.
    cursor: u64,
}

/// The networks, by id, with their index by name; ids are handed out here.
#[derive(Debug, Default)]
pub(super) struct Networks {
    rows: BTreeMap<NetId, NetState>,
    by_name: BTreeMap<String, NetId>,
    next_id: NetId,
}

impl Networks {
    /// From the stored rows.
    pub(super) fn load(rows: Vec<NetworkRecord>) -> Networks {
        let mut nets = Networks {
            next_id: 1,
            ..Networks::default()
        };
        for rec in rows {
            nets.next_id = nets.next_id.max(rec.id + 1);
            nets.insert(NetState::new(rec));
        }
        nets
    }

    fn insert(&mut self, net: NetState) {
        self.by_name.insert(net.rec.name.clone(), net.rec.id);
        self.rows.insert(net.rec.id, net);
    }

    /// Forgets network `id`. Its id is not handed out again while this
    /// controller runs (after a restart it may be: nothing names it then).
    pub(super) fn remove(&mut self, id: NetId) -> Option<NetState> {
        let net = self.rows.remove(&id)?;
        self.by_name.remove(&net.rec.name);
        Some(net)
    }

    /// A network by id.
    pub(super) fn get(&self, id: &NetId) -> Option<&NetState> {
        self.rows.get(id)
    }

    /// A network by id, to admit or release a member.
    pub(super) fn get_mut(&mut self, id: &NetId) -> Option<&mut NetState> {
        self.rows.get_mut(id)
    }

    /// The id of the network named `name`.
    pub(super) fn id_by_name(&self, name: &str) -> Option<NetId> {
        self.by_name.get(name).copied()
    }

    /// Every network, by id.
    pub(super) fn values(&self) -> impl Iterator<Item = &NetState> + '_ {
        self.rows.values()
    }

    /// The names of every network, sorted.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_name.keys().map(String::as_str)
    }
}

/// A validated request to create a network.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// Admin: remove a node from one network; its address there is released, its
/// routes there are forgotten, its other networks stay.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeaveNetwork {
    /// The network's name.
    pub network: String,
    /// The node's key or name.
    pub node: String,
}

/// A node left a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The node's name.
    pub node: String,
    /// The network's name.
    pub network: String,
}

operation!(NewNetwork => NetState, |op, w, batch, actor, now_ms| {
    w.create_network(batch, actor, op, now_ms)
});

operation!(LeaveNetwork => Left, |op, w, batch, actor, now_ms| {
    w.leave_network(batch, actor, &op.network, &op.node, now_ms)
});

impl World {
    /// All networks, by name.
    pub fn networks_by_name(&self) -> impl Iterator<Item = &NetState> + '_ {
        self.networks
            .by_name
            .values()
            .filter_map(|id| self.networks.get(id))
    }

    /// The ids of all networks.
    pub fn network_ids(&self) -> impl Iterator<Item = NetId> + '_ {
        self.networks.rows.keys().copied()
    }

    /// A network by id.
    pub fn network(&self, id: NetId) -> Option<&NetState> {
        self.networks.get(&id)
    }

    /// A network by name.
    pub fn network_by_name(&self, name: &str) -> Option<&NetState> {
        self.networks
            .id_by_name(name)
            .and_then(|id| self.networks.get(&id))
    }

    pub(super) fn create_network(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        n: NewNetwork,
        now_ms: u64,
    ) -> Result<NetState, ApiError> {
        // The same check as subnet routes: an overlay on loopback, link-local,
        // multicast or broadcast space could never carry traffic.
        weft_proto::net::check_routable_v4(&n.ipv4_cidr).map_err(|e| {
            ApiError::invalid("invalid_cidr", format!("ipv4_cidr {} {e}", n.ipv4_cidr))
        })?;
        if let Some(p) = &n.ipv6_prefix {
            weft_proto::net::check_routable_v6(p)
                .map_err(|e| ApiError::invalid("invalid_cidr", format!("ipv6_prefix {p} {e}")))?;
        }
        if self.networks.by_name.contains_key(&n.name) {
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
        if let Some((range, owner)) = self.service_range_overlapping(&n.ipv4_cidr) {
            return Err(ApiError::conflict(
                "cidr_overlap",
                format!(
                    "{} overlaps the service range {range} of network {owner:?} (where its services' virtual IPs come from); pick another CIDR",
                    n.ipv4_cidr
                ),
            ));
        }
        let id = self.networks.next_id;
        self.networks.next_id += 1;
        let rec = NetworkRecord {
            id,
            name: n.name.clone(),
            ipv4_cidr: n.ipv4_cidr,
            ipv6_prefix: n.ipv6_prefix,
            dns_domain: n.dns_domain,
            pow_difficulty: n.pow_difficulty,
            created_at: secs(now_ms),
            anomaly: None,
        };
        batch.writes.push(Write::PutNetwork(rec.clone()));
        let state = NetState::new(rec);
        let rec = state.rec.clone();
        self.networks.insert(state.clone());
        self.audit(
            batch,
            actor,
            "network.create",
            n.name,
            json!({"ipv4_cidr": rec.ipv4_cidr, "ipv6_prefix": rec.ipv6_prefix, "dns_domain": rec.dns_domain, "pow_difficulty": rec.pow_difficulty}),
            now_ms,
        );
        // The new network's default rule, visible and editable in the policy.
        if let Some((text, parsed)) = self.policy.with_network(&rec.name) {
            self.put_policy(batch, actor, text, parsed, "network.create", now_ms);
        } else {
            tracing::error!(network = %rec.name, "could not append the network's default rule to the policy");
        }
        Ok(state)
    }

    /// `admin network leave NETWORK NODE`: the node leaves one network; its
    /// address there is released, its routes there are forgotten, its other
    /// networks stay.
    pub(super) fn leave_network(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        network: &str,
        sel: &str,
        now_ms: u64,
    ) -> Result<Left, ApiError> {
        let id = self.node_id_for(sel)?;
        let net_id = self.networks.id_by_name(network).ok_or_else(|| {
            ApiError::not_found("network_not_found", format!("no network named {network:?}"))
        })?;
        let mut node = self.take_node(id, sel)?;
        let Some(m) = node.memberships.remove(&net_id) else {
            let name = node.rec.name.clone();
            self.nodes.put(node);
            return Err(ApiError::conflict(
                "not_a_member",
                format!("node {name:?} is not a member of network {network:?}"),
            ));
        };
        if let Some(net) = self.networks.get_mut(&net_id) {
            net.release(&m);
        }
        // Peers in that network drop it; the node gets a map without it.
        batch.touched.entries.insert((net_id, node.rec.node_key));
        batch.touched.resync.insert(id);
        batch.touched.policy_nodes.insert(node.rec.node_key);
        let (key, name) = (node.rec.node_key, node.rec.name.clone());
        self.nodes.put(node);
        self.drop_routes_of(batch, id, Some(net_id));
        batch.writes.push(Write::DeleteMembership {
            node_id: id,
            network_id: net_id,
        });
        self.audit(
            batch,
            actor,
            "node.leave",
            key.to_string(),
            json!({"name": name, "network": network, "ipv4": m.ipv4.to_string()}),
            now_ms,
        );
        Ok(Left {
            node: name,
            network: network.to_owned(),
        })
    }
}

impl NetState {
    fn new(rec: NetworkRecord) -> NetState {
        NetState {
            rec,
            members: BTreeSet::new(),
            used: BTreeSet::new(),
            cursor: FIRST_HOST_OFFSET,
        }
    }

    /// Records membership `m` (its node and address), as loaded.
    pub(super) fn admit(&mut self, m: &MembershipRecord) {
        self.members.insert(m.node_id);
        if let Some(off) = self.rec.ipv4_cidr.offset_of(m.ipv4) {
            self.used.insert(off);
        }
    }

    /// Records new membership `m`, whose address [`NetState::free_offset`]
    /// just handed out: the next search starts after it.
    pub(super) fn join(&mut self, m: &MembershipRecord) {
        self.admit(m);
        if let Some(off) = self.rec.ipv4_cidr.offset_of(m.ipv4) {
            self.cursor = off + 1;
        }
    }

    /// Forgets membership `m`: its address is free again.
    pub(super) fn release(&mut self, m: &MembershipRecord) {
        self.members.remove(&m.node_id);
        if let Some(off) = self.rec.ipv4_cidr.offset_of(m.ipv4) {
            self.used.remove(&off);
        }
    }

    /// Number of addresses that can be handed out.
    pub fn capacity(&self) -> u64 {
        self.rec
            .ipv4_cidr
            .size()
            .saturating_sub(FIRST_HOST_OFFSET + 1)
    }

    /// The next free host offset at or after the cursor (wrapping), skipping the
    /// network address, the reserved `.1` and the broadcast address.
    pub(super) fn free_offset(&self) -> Option<u64> {
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
