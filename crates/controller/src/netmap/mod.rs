//! The netmap compiler: pure functions from the controller state to one node's
//! [`NetworkMap`] ([`snapshot`]) and from what a batch [`Touched`] to the deltas
//! each affected node must receive ([`compile`]).
//!
//! Rules (property-tested below): a node never receives itself as a peer; a
//! disabled or removed node is in nobody's map and receives nothing; only members
//! of a touched network receive anything. The cost of a change is proportional
//! to the members of the networks it touches, and nodes that receive the same
//! changes share one delta (the hub serializes it once).

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_proto::NodeKey;
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{MapChange, MapDelta, NetworkMap, NetworkView, Peer, SelfNode};

use crate::model::{NetId, NetState, NodeId, NodeState, Touched, World};
use crate::store::MembershipRecord;

/// What a group of nodes receives for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These changes.
    Delta(Arc<MapDelta>),
    /// A fresh snapshot each (their set of networks changed).
    Resync,
}

/// One payload and the nodes that receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Sorted, unique, enabled nodes.
    pub recipients: Arc<[NodeId]>,
    /// What they receive.
    pub payload: Payload,
}

fn self_node(n: &NodeState) -> SelfNode {
    SelfNode {
        node_key: n.rec.node_key,
        name: n.rec.name.clone(),
        tags: n.rec.tags.iter().cloned().collect(),
    }
}

/// How `n` appears to the other members of one network.
pub fn peer_view(n: &NodeState, m: &MembershipRecord) -> Peer {
    Peer {
        node_key: n.rec.node_key,
        name: n.rec.name.clone(),
        tags: n.rec.tags.iter().cloned().collect(),
        ipv4: m.ipv4,
        ipv6: m.ipv6,
        endpoints: n.rec.endpoints.clone(),
        last_seen: n.seen_published,
        online: n.streams > 0,
    }
}

fn network_view(
    world: &World,
    net: &NetState,
    me: &NodeState,
    m: &MembershipRecord,
) -> NetworkView {
    let mut peers: Vec<Peer> = net
        .members
        .iter()
        .filter(|id| **id != me.rec.id)
        .filter_map(|id| world.node(*id))
        .filter(|p| !p.rec.disabled)
        .filter_map(|p| p.memberships.get(&net.rec.id).map(|pm| peer_view(p, pm)))
        .collect();
    peers.sort_by_key(|a| a.node_key);
    NetworkView {
        name: net.rec.name.clone(),
        ipv4_cidr: net.rec.ipv4_cidr,
        ipv6_prefix: net.rec.ipv6_prefix,
        dns_domain: net.rec.dns_domain.clone(),
        ipv4: m.ipv4,
        ipv6: m.ipv6,
        peers,
    }
}

/// The full map of `node` at the world's current version; `None` if the node
/// does not exist or is disabled.
pub fn snapshot(world: &World, node: NodeId) -> Option<NetworkMap> {
    let me = world.node(node).filter(|n| !n.rec.disabled)?;
    let mut networks: Vec<NetworkView> = me
        .memberships
        .values()
        .filter_map(|m| {
            world
                .network(m.network_id)
                .map(|net| network_view(world, net, me, m))
        })
        .collect();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    Some(NetworkMap {
        api_version: API_VERSION,
        version: world.version,
        node: self_node(me),
        networks,
        relays: world.map_relays(),
    })
}

/// Computes who receives what for the changes in `touched`, at `world.version`.
pub fn compile(world: &World, touched: &Touched) -> Vec<Outgoing> {
    let version = world.version;
    let enabled = |id: &NodeId| world.node(*id).is_some_and(|n| !n.rec.disabled);

    // Per touched network: its changes, each with the key of its subject.
    let mut by_net: BTreeMap<NetId, Vec<(NodeKey, MapChange)>> = BTreeMap::new();
    for (net_id, key) in &touched.entries {
        let Some(net) = world.network(*net_id) else {
            continue;
        };
        let subject = world
            .find_node_by_key(key)
            .filter(|n| !n.rec.disabled)
            .and_then(|n| n.memberships.get(net_id).map(|m| (n, m)));
        let change = match subject {
            Some((n, m)) => MapChange::PeerUpsert {
                network: net.rec.name.clone(),
                peer: peer_view(n, m),
            },
            None => MapChange::PeerRemove {
                network: net.rec.name.clone(),
                node_key: *key,
            },
        };
        by_net.entry(*net_id).or_default().push((*key, change));
    }

    // Each recipient's touched networks; subjects are handled one by one.
    let mut per_recipient: BTreeMap<NodeId, Vec<NetId>> = BTreeMap::new();
    for net_id in by_net.keys() {
        let Some(net) = world.network(*net_id) else {
            continue;
        };
        for member in net.members.iter().filter(|m| enabled(m)) {
            per_recipient.entry(*member).or_default().push(*net_id);
        }
    }
    for id in touched.self_changed.iter().filter(|id| enabled(id)) {
        per_recipient.entry(*id).or_default();
    }

    let mut groups: BTreeMap<Vec<NetId>, Vec<NodeId>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut resync = Vec::new();
    for (id, nets) in per_recipient {
        if touched.resync.contains(&id) {
            resync.push(id);
            continue;
        }
        let Some(me) = world.node(id) else { continue };
        let is_subject = touched.self_changed.contains(&id)
            || nets
                .iter()
                .any(|n| touched.entries.contains(&(*n, me.rec.node_key)));
        if !is_subject {
            groups.entry(nets).or_default().push(id);
            continue;
        }
        let mut changes: Vec<MapChange> = nets
            .iter()
            .filter_map(|n| by_net.get(n))
            .flatten()
            .filter(|(key, _)| *key != me.rec.node_key)
            .map(|(_, c)| c.clone())
            .collect();
        if touched.self_changed.contains(&id) {
            changes.push(MapChange::SelfUpdate {
                node: self_node(me),
            });
        }
        if !changes.is_empty() {
            out.push(Outgoing {
                recipients: Arc::from(vec![id]),
                payload: Payload::Delta(Arc::new(MapDelta {
                    api_version: API_VERSION,
                    version,
                    changes,
                })),
            });
        }
    }
    for (nets, recipients) in groups {
        let changes: Vec<MapChange> = nets
            .iter()
            .filter_map(|n| by_net.get(n))
            .flatten()
            .map(|(_, c)| c.clone())
            .collect();
        out.push(Outgoing {
            recipients: Arc::from(recipients),
            payload: Payload::Delta(Arc::new(MapDelta {
                api_version: API_VERSION,
                version,
                changes,
            })),
        });
    }
    // Resync every touched node that is still enabled (new members and nodes
    // that joined a network), even if no peer changed.
    for id in touched.resync.iter().filter(|id| enabled(id)) {
        if !resync.contains(id) {
            resync.push(*id);
        }
    }
    if !resync.is_empty() {
        resync.sort_unstable();
        out.push(Outgoing {
            recipients: Arc::from(resync),
            payload: Payload::Resync,
        });
    }
    out
}

#[cfg(test)]
mod tests;
