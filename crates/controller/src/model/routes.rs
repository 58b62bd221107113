//! Subnet routes: validation, approval, which gateway carries a subnet, and
//! what each node's map says about them.
//!
//! Rules:
//! - A route is an IPv4 prefix a gateway node offers in one network. It comes
//!   from the node's agent (`weft up --advertise-routes`), recorded as
//!   `pending` in every network the node is a member of, or from an admin
//!   (`admin route add`), recorded as `approved`.
//! - Only nodes with the tag [`GATEWAY_TAG`] may advertise routes; any other
//!   node's advertisement is refused (403 `route_not_permitted`). An admin may
//!   set a route on any node.
//! - A prefix must be a routable IPv4 subnet: not the default route, not
//!   loopback, link-local, multicast or reserved space, and it may not overlap
//!   any overlay network's CIDR (that includes host routes to overlay
//!   addresses).
//! - Only approved routes are in maps and in the policy (`subnet:` selectors).
//!   Of the gateways approved for one subnet in one network, the primary is
//!   the first approved one that is online (its map stream stayed open past
//!   the presence delay, see `model::presence`), else the first
//!   approved one. Members receive the subnet with its primary gateway when
//!   their policy lets them see that gateway; a gateway never receives a route
//!   to a subnet it offers itself.
//! - Route changes and gateway presence changes send the members of the
//!   network a fresh snapshot (route changes are rare; maps stay exact).

use std::collections::BTreeSet;

use serde_json::json;
use weft_proto::NodeKey;
use weft_proto::api::RouteRequest;
use weft_proto::net::{Ipv4Net, check_routable_v4};

use super::nodes::node_not_found;
use super::{Actor, Batch, NetId, NodeId, Touched, World, secs};
use crate::error::ApiError;
use crate::store::{RouteRecord, RouteSource, RouteState, Write};

/// The tag that lets a node advertise subnet routes.
pub const GATEWAY_TAG: &str = "gateway";

/// Most routes one node may advertise.
pub(super) const MAX_ROUTES_PER_NODE: usize = 64;

/// (network, prefix, gateway node).
pub(super) type RouteKey = (NetId, Ipv4Net, NodeId);

/// An admin's route operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RouteOp {
    /// Set a route on a node, approved at once.
    Add,
    /// Approve a pending (or rejected) route.
    Approve,
    /// Reject a route: it leaves the maps and advertising it again does not
    /// bring it back (approve it to).
    Reject,
    /// Withdraw a route: it leaves the maps and is forgotten; a node that still
    /// advertises it offers it again as pending.
    Withdraw,
}

impl RouteOp {
    fn verb(self) -> &'static str {
        match self {
            RouteOp::Add => "add",
            RouteOp::Approve => "approve",
            RouteOp::Reject => "reject",
            RouteOp::Withdraw => "withdraw",
        }
    }
}

/// Agent: the subnets a node advertises (CIDR text, validated here); the set
/// replaces its previous one (admin-set routes stay).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdvertiseRoutes {
    /// The advertising node.
    pub node: NodeId,
    /// The prefixes, as sent.
    pub routes: Vec<String>,
}

/// Admin: add, approve, reject or withdraw a subnet route.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChangeRoute {
    /// What to do.
    pub op: RouteOp,
    /// Which route.
    pub req: RouteRequest,
}

/// A route with what the admin API shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    /// The row.
    pub rec: RouteRecord,
    /// The gateway's name.
    pub node: String,
    /// The gateway's key.
    pub node_key: NodeKey,
    /// The network's name.
    pub network: String,
    /// Approved, and this gateway carries the subnet now.
    pub primary: bool,
    /// The gateway is online.
    pub online: bool,
}

operation!(AdvertiseRoutes => (), |op, w, batch, _, now_ms| {
    w.advertise_routes(batch, op.node, &op.routes, now_ms)
});

operation!(ChangeRoute => Vec<RouteStatus>, |op, w, batch, actor, now_ms| {
    w.route_op(batch, actor, op.op, &op.req, now_ms)
});

/// Parses and checks one route prefix (without looking at the networks): the
/// same check as an overlay network's CIDR ([`check_routable_v4`]).
pub(super) fn parse_prefix(text: &str) -> Result<Ipv4Net, ApiError> {
    let shown: String = text.chars().take(64).collect();
    let prefix: Ipv4Net = text.trim().parse().map_err(|e| {
        ApiError::invalid(
            "invalid_cidr",
            format!("route {shown:?} is not an IPv4 CIDR such as 192.168.50.0/24: {e}"),
        )
    })?;
    check_routable_v4(&prefix)
        .map_err(|e| ApiError::invalid("invalid_cidr", format!("route {prefix} {e}")))?;
    Ok(prefix)
}

impl World {
    /// Refuses a prefix that overlaps any overlay network.
    fn check_not_overlay(&self, prefix: Ipv4Net) -> Result<(), ApiError> {
        if let Some(net) = self
            .networks
            .values()
            .find(|n| n.rec.ipv4_cidr.overlaps(&prefix))
        {
            let what = if prefix.prefix_len() == 32 {
                "is a host route to an overlay address of"
            } else {
                "overlaps the overlay CIDR of"
            };
            return Err(ApiError::conflict(
                "route_overlaps_overlay",
                format!(
                    "route {prefix} {what} network {:?} ({}); overlay addresses are reached directly, never through a gateway",
                    net.rec.name, net.rec.ipv4_cidr
                ),
            ));
        }
        Ok(())
    }

    /// An approved route that overlaps `cidr` (for refusing a new network).
    pub(super) fn route_overlapping(&self, cidr: &Ipv4Net) -> Option<&RouteRecord> {
        self.routes
            .values()
            .find(|r| r.state == RouteState::Approved && r.prefix.overlaps(cidr))
    }

    /// The approved subnets `node` is a gateway for, in any network (policy input).
    pub(super) fn routed_subnets(&self, node: NodeId) -> Vec<weft_policy::IpNet> {
        let mut v: Vec<weft_policy::IpNet> = self
            .routes
            .values()
            .filter(|r| r.node_id == node && r.state == RouteState::Approved)
            .filter_map(|r| {
                weft_policy::IpNet::new(r.prefix.network().into(), r.prefix.prefix_len()).ok()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn usable_gateway(&self, id: NodeId) -> Option<bool> {
        self.nodes
            .get(&id)
            .filter(|n| !n.rec.disabled)
            .map(|n| n.online)
    }

    /// The gateway that carries `prefix` in `net` now.
    pub fn primary_gateway(&self, net: NetId, prefix: Ipv4Net) -> Option<NodeId> {
        self.gateways(net, prefix).first().copied()
    }

    /// The approved gateways of `prefix` in `net`, in the order they carry it:
    /// online ones first, each group by approval time.
    pub fn gateways(&self, net: NetId, prefix: Ipv4Net) -> Vec<NodeId> {
        let mut candidates: Vec<(bool, u64, NodeId)> = self
            .routes
            .range((net, prefix, NodeId::MIN)..=(net, prefix, NodeId::MAX))
            .filter(|(_, r)| r.state == RouteState::Approved)
            .filter_map(|(_, r)| {
                let online = self.usable_gateway(r.node_id)?;
                Some((!online, r.approved_at.unwrap_or(u64::MAX), r.node_id))
            })
            .collect();
        candidates.sort_unstable();
        candidates.into_iter().map(|c| c.2).collect()
    }

    /// What `me`'s map says about routes in `net`: subnets reached through
    /// gateways, each with its gateways in order (before the visibility
    /// filter, which the netmap compiler applies), and subnets `me` serves.
    pub fn map_routes(
        &self,
        net: NetId,
        me: NodeId,
    ) -> (Vec<(Ipv4Net, Vec<NodeKey>)>, Vec<Ipv4Net>) {
        let mine: BTreeSet<Ipv4Net> = self
            .routes
            .values()
            .filter(|r| r.network_id == net && r.node_id == me)
            .map(|r| r.prefix)
            .collect();
        let serves: Vec<Ipv4Net> = self
            .routes
            .values()
            .filter(|r| r.network_id == net && r.node_id == me && r.state == RouteState::Approved)
            .map(|r| r.prefix)
            .collect();
        let policy = self.node_policy(me);
        let prefixes: BTreeSet<Ipv4Net> = self
            .routes
            .values()
            .filter(|r| r.network_id == net && r.state == RouteState::Approved)
            .map(|r| r.prefix)
            .filter(|p| !mine.contains(p))
            // Only subnets the policy lets this node reach (some part of).
            .filter(|p| policy.is_none_or(|cp| may_reach(cp, *p)))
            .collect();
        let routes = prefixes
            .into_iter()
            .map(|p| {
                let keys = self
                    .gateways(net, p)
                    .into_iter()
                    .filter_map(|g| self.nodes.get(&g).map(|n| n.rec.node_key))
                    .collect();
                (p, keys)
            })
            .collect();
        (routes, serves)
    }

    /// After a batch that changed compiled policies: members of networks with
    /// approved routes get a fresh snapshot (which subnets they may reach may
    /// have changed).
    pub(super) fn resync_for_policy_changes(
        &self,
        policy_changed: &BTreeSet<NodeId>,
        touched: &mut Touched,
    ) {
        let nets: BTreeSet<NetId> = self
            .routes
            .values()
            .filter(|r| r.state == RouteState::Approved)
            .map(|r| r.network_id)
            .collect();
        if nets.is_empty() {
            return;
        }
        let ids: Vec<NodeId> = policy_changed
            .iter()
            .copied()
            .filter(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.memberships.keys().any(|m| nets.contains(m)))
            })
            .collect();
        touched.resync.extend(ids);
    }

    /// Every route, by (network, prefix, gateway), with its status.
    pub fn routes(&self) -> impl Iterator<Item = RouteStatus> + '_ {
        self.routes.values().filter_map(|r| self.route_status(r))
    }

    fn route_status(&self, r: &RouteRecord) -> Option<RouteStatus> {
        let node = self.nodes.get(&r.node_id)?;
        let net = self.networks.get(&r.network_id)?;
        Some(RouteStatus {
            rec: r.clone(),
            node: node.rec.name.clone(),
            node_key: node.rec.node_key,
            network: net.rec.name.clone(),
            primary: r.state == RouteState::Approved
                && self.primary_gateway(r.network_id, r.prefix) == Some(r.node_id),
            online: node.online,
        })
    }

    /// Every member of `net` gets a fresh snapshot, and the gateway's policy
    /// inputs changed (its routed subnets).
    fn resync_network(&self, batch: &mut Batch, net: NetId, gateway: NodeId) {
        if let Some(n) = self.networks.get(&net) {
            batch.touched.resync.extend(n.members.iter().copied());
        }
        if let Some(g) = self.nodes.get(&gateway) {
            batch.touched.policy_nodes.insert(g.rec.node_key);
        }
    }

    /// After `node`'s presence changed: resync the networks where it is an
    /// approved gateway (the primary may have changed).
    pub(super) fn resync_gateway_networks(&self, batch: &mut Batch, node: NodeId) {
        let nets: BTreeSet<NetId> = self
            .routes
            .values()
            .filter(|r| r.node_id == node && r.state == RouteState::Approved)
            .map(|r| r.network_id)
            .collect();
        for net in nets {
            if let Some(n) = self.networks.get(&net) {
                batch.touched.resync.extend(n.members.iter().copied());
            }
        }
    }

    /// Forgets `node`'s routes (in `net`, or everywhere), resyncing the
    /// networks where one was approved. The rows go with the node or membership.
    pub(super) fn drop_routes_of(&mut self, batch: &mut Batch, node: NodeId, net: Option<NetId>) {
        let gone: Vec<RouteKey> = self
            .routes
            .iter()
            .filter(|(_, r)| r.node_id == node && net.is_none_or(|n| n == r.network_id))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(r) = self.routes.remove(&k)
                && r.state == RouteState::Approved
            {
                self.resync_network(batch, r.network_id, node);
            }
        }
    }

    /// `POST /v1/node/routes`: the node's advertised set replaces its previous
    /// one (admin-set routes stay).
    fn advertise_routes(
        &mut self,
        batch: &mut Batch,
        id: NodeId,
        texts: &[String],
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let node = self.nodes.get(&id).ok_or(ApiError::Unauthorized)?;
        if node.rec.disabled {
            return Err(ApiError::NodeDisabled);
        }
        if texts.len() > MAX_ROUTES_PER_NODE {
            return Err(ApiError::invalid(
                "too_many_routes",
                format!("at most {MAX_ROUTES_PER_NODE} routes per node"),
            ));
        }
        let mut wanted = BTreeSet::new();
        for t in texts {
            let p = parse_prefix(t)?;
            self.check_not_overlay(p)?;
            wanted.insert(p);
        }
        if !wanted.is_empty() && !node.rec.tags.contains(GATEWAY_TAG) {
            return Err(ApiError::Forbidden {
                code: "route_not_permitted",
                message: format!(
                    "node {:?} may not advertise routes: only nodes tagged {GATEWAY_TAG:?} may (an admin can tag it: weft admin node tag {} {GATEWAY_TAG})",
                    node.rec.name, node.rec.name
                ),
            });
        }
        let key = node.rec.node_key;
        let nets: Vec<NetId> = node.memberships.keys().copied().collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for net in nets {
            for p in &wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    self.routes.entry((net, *p, id))
                {
                    let r = RouteRecord {
                        node_id: id,
                        network_id: net,
                        prefix: *p,
                        state: RouteState::Pending,
                        source: RouteSource::Node,
                        approved_at: None,
                        created_at: secs(now_ms),
                    };
                    batch.writes.push(Write::PutRoute(r.clone()));
                    slot.insert(r);
                    added.push(*p);
                }
            }
            let stale: Vec<RouteKey> = self
                .routes
                .iter()
                .filter(|(k, r)| {
                    k.0 == net
                        && k.2 == id
                        && r.source == RouteSource::Node
                        && r.state != RouteState::Rejected
                        && !wanted.contains(&k.1)
                })
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                if let Some(r) = self.routes.remove(&k) {
                    batch.writes.push(Write::DeleteRoute {
                        node_id: id,
                        network_id: net,
                        prefix: k.1,
                    });
                    if r.state == RouteState::Approved {
                        self.resync_network(batch, net, id);
                    }
                    removed.push(k.1);
                }
            }
        }
        if !added.is_empty() || !removed.is_empty() {
            // The gateway's own map lists the routes it serves.
            batch.touched.resync.insert(id);
            added.sort_unstable();
            added.dedup();
            removed.sort_unstable();
            removed.dedup();
            let show = |v: &[Ipv4Net]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
            self.audit(
                batch,
                &Actor::Node(key),
                "route.advertise",
                key.to_string(),
                json!({"pending": show(&added), "removed": show(&removed)}),
                now_ms,
            );
        }
        Ok(())
    }

    /// The networks `req` names for `node`: the one given, or for `add` the
    /// node's only network, or for the others every network where it has the
    /// route.
    fn route_networks(
        &self,
        op: RouteOp,
        node: NodeId,
        prefix: Ipv4Net,
        req: &RouteRequest,
    ) -> Result<Vec<NetId>, ApiError> {
        let n = self
            .nodes
            .get(&node)
            .ok_or_else(|| node_not_found(&req.node))?;
        if let Some(name) = &req.network {
            let net = self.networks.id_by_name(name).ok_or_else(|| {
                ApiError::not_found("network_not_found", format!("no network named {name:?}"))
            })?;
            if !n.memberships.contains_key(&net) {
                return Err(ApiError::conflict(
                    "not_a_member",
                    format!("node {:?} is not a member of network {name:?}", n.rec.name),
                ));
            }
            return Ok(vec![net]);
        }
        if op == RouteOp::Add {
            let mut nets = n.memberships.keys().copied();
            return match (nets.next(), nets.next()) {
                (Some(net), None) => Ok(vec![net]),
                (None, _) => Err(ApiError::conflict(
                    "not_a_member",
                    format!("node {:?} is in no network", n.rec.name),
                )),
                (Some(_), Some(_)) => Err(ApiError::invalid(
                    "network_required",
                    format!(
                        "node {:?} is in several networks: say which (--network)",
                        n.rec.name
                    ),
                )),
            };
        }
        let nets: Vec<NetId> = self
            .routes
            .keys()
            .filter(|k| k.1 == prefix && k.2 == node)
            .map(|k| k.0)
            .collect();
        if nets.is_empty() {
            return Err(ApiError::not_found(
                "route_not_found",
                format!("node {:?} has no route {prefix}", n.rec.name),
            ));
        }
        Ok(nets)
    }

    /// `admin route add|approve|reject|withdraw`.
    fn route_op(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: RouteOp,
        req: &RouteRequest,
        now_ms: u64,
    ) -> Result<Vec<RouteStatus>, ApiError> {
        let id = self.node_id_for(&req.node)?;
        let prefix = parse_prefix(&req.prefix)?;
        if matches!(op, RouteOp::Add | RouteOp::Approve) {
            self.check_not_overlay(prefix)?;
        }
        let nets = self.route_networks(op, id, prefix, req)?;
        let key = self
            .nodes
            .get(&id)
            .map(|n| n.rec.node_key)
            .ok_or_else(|| node_not_found(&req.node))?;
        let mut touched = Vec::new();
        for net in nets {
            let k = (net, prefix, id);
            let before = self.routes.get(&k).map(|r| r.state);
            match op {
                RouteOp::Add | RouteOp::Approve => {
                    let r = match self.routes.get(&k) {
                        Some(r) => RouteRecord {
                            state: RouteState::Approved,
                            approved_at: if r.state == RouteState::Approved {
                                r.approved_at
                            } else {
                                Some(now_ms)
                            },
                            ..r.clone()
                        },
                        None => RouteRecord {
                            node_id: id,
                            network_id: net,
                            prefix,
                            state: RouteState::Approved,
                            source: RouteSource::Admin,
                            approved_at: Some(now_ms),
                            created_at: secs(now_ms),
                        },
                    };
                    batch.writes.push(Write::PutRoute(r.clone()));
                    self.routes.insert(k, r);
                }
                RouteOp::Reject => {
                    if let Some(r) = self.routes.get_mut(&k) {
                        r.state = RouteState::Rejected;
                        r.approved_at = None;
                        batch.writes.push(Write::PutRoute(r.clone()));
                    }
                }
                RouteOp::Withdraw => {
                    self.routes.remove(&k);
                    batch.writes.push(Write::DeleteRoute {
                        node_id: id,
                        network_id: net,
                        prefix,
                    });
                }
            }
            let after = self.routes.get(&k).map(|r| r.state);
            if before == Some(RouteState::Approved) || after == Some(RouteState::Approved) {
                self.resync_network(batch, net, id);
            }
            batch.touched.resync.insert(id);
            let net_name = self
                .networks
                .get(&net)
                .map(|n| n.rec.name.clone())
                .unwrap_or_default();
            self.audit(
                batch,
                actor,
                &format!("route.{}", op.verb()),
                key.to_string(),
                json!({"prefix": prefix.to_string(), "network": net_name,
                       "from": before.map(RouteState::as_str), "to": after.map(RouteState::as_str)}),
                now_ms,
            );
            touched.push(k);
        }
        Ok(touched
            .iter()
            .filter_map(|k| self.routes.get(k).and_then(|r| self.route_status(r)))
            .collect())
    }
}

/// Whether `cp` allows some packet from this node into `prefix`.
fn may_reach(cp: &weft_policy::CompiledPolicy, prefix: Ipv4Net) -> bool {
    let Ok(p) = weft_policy::IpNet::new(prefix.network().into(), prefix.prefix_len()) else {
        return false;
    };
    cp.outbound.iter().any(|r| {
        r.action == weft_policy::Action::Allow
            && r.peers
                .iter()
                .any(|q| q.contains(&p.network()) || p.contains(&q.network()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_with_clear_messages() {
        assert_eq!(
            parse_prefix("192.168.50.0/24").unwrap().to_string(),
            "192.168.50.0/24"
        );
        let e = parse_prefix("192.168.50.0/33").unwrap_err();
        assert_eq!(e.code(), "invalid_cidr");
        assert!(e.to_string().contains("not an IPv4 CIDR"), "{e}");
        let e = parse_prefix("192.168.50.1/24").unwrap_err();
        assert!(e.to_string().contains("192.168.50.1/24"), "{e}");
        let e = parse_prefix("0.0.0.0/0").unwrap_err();
        assert!(e.to_string().contains("default route"), "{e}");
        let e = parse_prefix("127.0.0.0/8").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(parse_prefix("nonsense").is_err());
    }
}
