//! The netmap compiler: pure functions from the controller state to one node's
//! [`NetworkMap`] ([`snapshot`]) and from a closed batch's [`Outcome`] to the
//! deltas each affected node must receive ([`compile`]).
//!
//! Rules (property-tested below): a node never receives itself as a peer; a
//! disabled or removed node is in nobody's map and receives nothing; only members
//! of a touched network (and nodes whose compiled policy changed) receive
//! anything; a node's map lists only the peers its compiled policy lets it see
//! (`visible_peers`: some packet allowed in either direction) and carries that
//! compiled policy. The cost of a change is proportional
//! to the members of the networks it touches, and nodes that receive the same
//! changes share one delta (the hub serializes it once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_policy::{CompiledPolicy, Viewpoint};
use weft_proto::NodeKey;
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{MapChange, NetworkMap, NetworkView, Peer, SelfNode};
use weft_proto::policy::MapPolicy;

use crate::model::{NetId, NetState, NodeId, NodeState, Outcome, World};
use crate::store::MembershipRecord;
pub use delta::Delta;

mod blocklist;
pub mod delta;
mod services;
pub mod shared;
mod ssh;

/// What a group of nodes receives for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These changes (sharing the batch's peer changes with its other
    /// deltas).
    Delta(Arc<Delta>),
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
        last_seen_ms: n.rec.seen_published.map(crate::model::secs_to_ms),
        online: n.online,
    }
}

fn network_view(
    world: &World,
    net: &NetState,
    me: &NodeState,
    m: &MembershipRecord,
) -> NetworkView {
    let viewer = world.viewpoint(&me.rec.node_key);
    let mut peers: Vec<Peer> = net
        .members
        .iter()
        .filter(|id| **id != me.rec.id)
        .filter_map(|id| world.node(*id))
        .filter(|p| !p.rec.disabled)
        .filter(|p| {
            viewer
                .as_ref()
                .is_some_and(|v| world.viewpoint(&p.rec.node_key).is_some_and(|o| v.sees(&o)))
        })
        .filter_map(|p| p.memberships.get(&net.rec.id).map(|pm| peer_view(p, pm)))
        .collect();
    peers.sort_by_key(|a| a.node_key);
    let mut view = network_view_parts(world, net, me, m, |k| {
        peers.binary_search_by_key(k, |p| p.node_key).is_ok()
    });
    view.peers = peers;
    view
}

/// `me`'s view of `net` without its peers (`peers` is empty; `is_peer` says
/// which keys are among them, for the routes).
fn network_view_parts(
    world: &World,
    net: &NetState,
    me: &NodeState,
    m: &MembershipRecord,
    is_peer: impl Fn(&NodeKey) -> bool,
) -> NetworkView {
    let (gateways, serves) = world.map_routes(net.rec.id, me.rec.id);
    // Only through gateways this node may talk to.
    let routes = gateways
        .into_iter()
        .filter_map(|(prefix, mut keys)| {
            keys.retain(|k| is_peer(k));
            let mut keys = keys.into_iter();
            let via = keys.next()?;
            Some(weft_proto::netmap::SubnetRoute {
                prefix,
                via,
                backups: keys.collect(),
            })
        })
        .collect();
    NetworkView {
        name: net.rec.name.clone(),
        ipv4_cidr: net.rec.ipv4_cidr,
        ipv6_prefix: net.rec.ipv6_prefix,
        dns_domain: net.rec.dns_domain.clone(),
        ipv4: m.ipv4,
        ipv6: m.ipv6,
        peers: Vec::new(),
        routes,
        serves,
        anomaly: net.rec.anomaly.filter(|a| !a.is_empty()),
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
    let (data, secrets) = world.node_data(node);
    let (services, provides) = world.node_service_lists(node);
    Some(NetworkMap {
        api_version: API_VERSION,
        version: world.version,
        node: self_node(me),
        networks,
        relays: world.map_relays(),
        policy: world.node_policy(node).map(map_policy),
        data,
        secrets,
        host_firewall: world.node_host_firewall(node).cloned(),
        dns_blocklist: world.dns_blocklist_ref(),
        services,
        provides,
        ssh_hosts: world.node_ssh_hosts(node),
    })
}

/// A change in a touched network: its subject's key, whether it is an upsert,
/// the change, and the subject's viewpoints (now, before).
type Entry<'a> = (
    NodeKey,
    bool,
    MapChange,
    Option<Viewpoint<'a, NodeKey>>,
    Option<Viewpoint<'a, NodeKey>>,
);

/// A node that may have changed visibility: key, viewpoints (now, before).
type Candidate<'a> = (
    &'a NodeKey,
    Option<Viewpoint<'a, NodeKey>>,
    Option<Viewpoint<'a, NodeKey>>,
);

/// Computes who receives what for the changes of a batch, at `world.version`.
///
/// Peer visibility: a node receives changes only about peers its compiled policy
/// lets it see (removals also about peers it saw before the batch). A node whose
/// compiled policy changed receives it ([`MapChange::Policy`]) with upserts of
/// the peers it can now see and removals of those it no longer may.
pub fn compile(world: &World, outcome: &Outcome) -> Vec<Outgoing> {
    let touched = &outcome.touched;
    let version = world.version;
    let enabled = |id: &NodeId| world.node(*id).is_some_and(|n| !n.rec.disabled);
    let sees = |a: &Option<Viewpoint<'_, NodeKey>>, b: &Option<Viewpoint<'_, NodeKey>>| match (a, b)
    {
        (Some(a), Some(b)) => a.sees(b),
        _ => false,
    };
    let visibility_changed = outcome.visibility_changed();
    // Candidates for visibility changes, with their viewpoints (now, before):
    // the changed nodes, and (when a recipient itself changed, or the policy did)
    // the members of each network.
    let changed_vps: Vec<Candidate<'_>> = visibility_changed
        .iter()
        .flatten()
        .map(|k| {
            let (now, before) = outcome.viewpoints(world, k);
            (k, now, before)
        })
        .collect();
    let needs_members = outcome.policy_changed.iter().any(|id| {
        world.node(*id).is_some_and(|n| {
            visibility_changed
                .as_ref()
                .is_none_or(|c| c.contains(&n.rec.node_key))
        })
    });
    let member_vps: BTreeMap<NetId, Vec<Candidate<'_>>> = if needs_members {
        world
            .network_ids()
            .filter_map(|id| world.network(id))
            .map(|net| {
                let v = net
                    .members
                    .iter()
                    .filter_map(|id| world.node(*id))
                    .map(|n| {
                        let (now, before) = outcome.viewpoints(world, &n.rec.node_key);
                        (&n.rec.node_key, now, before)
                    })
                    .collect();
                (net.rec.id, v)
            })
            .collect()
    } else {
        BTreeMap::new()
    };

    let changed_groups = group_candidates(changed_vps.iter());
    let member_groups: Option<BTreeMap<NetId, Vec<Vec<&Candidate<'_>>>>> = member_vps
        .iter()
        .map(|(n, c)| Some((*n, group_candidates(c.iter())?)))
        .collect();

    // Per touched network: its changes, each with the key of its subject and
    // whether it is an upsert.
    let mut by_net: BTreeMap<NetId, Vec<Entry<'_>>> = BTreeMap::new();
    for (net_id, key) in &touched.entries {
        let Some(net) = world.network(*net_id) else {
            continue;
        };
        let subject = world
            .find_node_by_key(key)
            .filter(|n| !n.rec.disabled)
            .and_then(|n| n.memberships.get(net_id).map(|m| (n, m)));
        let (upsert, change) = match subject {
            Some((n, m)) => (
                true,
                MapChange::PeerUpsert {
                    network: net.rec.name.clone(),
                    peer: peer_view(n, m),
                },
            ),
            None => (
                false,
                MapChange::PeerRemove {
                    network: net.rec.name.clone(),
                    node_key: *key,
                },
            ),
        };
        let (now, before) = outcome.viewpoints(world, key);
        by_net
            .entry(*net_id)
            .or_default()
            .push((*key, upsert, change, now, before));
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
    for id in touched
        .self_changed
        .iter()
        .chain(touched.left.keys())
        .chain(outcome.policy_changed.iter())
        .chain(touched.data.iter())
        .chain(touched.hostfw.iter())
        .chain(touched.ssh_hosts.iter())
        .chain(touched.services.iter())
        .filter(|id| enabled(id))
    {
        per_recipient.entry(*id).or_default();
    }

    // Every entry once, in (network, key) order; a recipient's changes are a
    // list of indices into it, so recipients that receive the same changes
    // share one delta, cloned once (not once per recipient: a presence storm
    // touches every node, each of them seen by every other).
    let flat: Vec<(NetId, &Entry<'_>)> = by_net
        .iter()
        .flat_map(|(n, es)| es.iter().map(move |e| (*n, e)))
        .collect();
    let mut ranges: BTreeMap<NetId, std::ops::Range<usize>> = BTreeMap::new();
    for (i, (n, _)) in flat.iter().enumerate() {
        ranges.entry(*n).or_insert(i..i).end = i + 1;
    }
    // The batch's peer changes, once: every delta slices them.
    let shared: Arc<[MapChange]> = flat.iter().map(|(_, e)| e.2.clone()).collect();
    let mut groups: BTreeMap<Vec<usize>, Vec<NodeId>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut resync = Vec::new();
    for (id, nets) in per_recipient {
        if touched.resync.contains(&id) {
            resync.push(id);
            continue;
        }
        let Some(me) = world.node(id) else { continue };
        let mine = me.rec.node_key;
        let (me_now, me_before) = outcome.viewpoints(world, &me.rec.node_key);
        let mut shown_idx = Vec::new();
        for n in &nets {
            for i in ranges.get(n).cloned().unwrap_or_default() {
                let (key, upsert, _, now, before) = flat[i].1;
                let shown = if *upsert {
                    sees(&me_now, now)
                } else {
                    sees(&me_before, before) || sees(&me_now, now)
                };
                if *key != mine && shown {
                    shown_idx.push(i);
                }
            }
        }
        let is_subject = touched.self_changed.contains(&id)
            || touched.left.contains_key(&id)
            || outcome.policy_changed.contains(&id)
            || touched.data.contains(&id)
            || touched.hostfw.contains(&id)
            || touched.ssh_hosts.contains(&id)
            || touched.services.contains(&id)
            || nets.iter().any(|n| touched.entries.contains(&(*n, mine)));
        if !is_subject {
            if !shown_idx.is_empty() {
                groups.entry(shown_idx).or_default().push(id);
            }
            continue;
        }
        let keys: Vec<(NetId, NodeKey)> = shown_idx
            .iter()
            .map(|i| (flat[*i].0, flat[*i].1.0))
            .collect();
        let mut changes: Vec<MapChange> = Vec::new();
        // Networks it left (deleted): each goes whole, peers and all.
        if let Some(left) = touched.left.get(&id) {
            changes.extend(
                left.iter()
                    .map(|n| MapChange::NetworkRemove { network: n.clone() }),
            );
        }
        if touched.self_changed.contains(&id) {
            changes.push(MapChange::SelfUpdate {
                node: self_node(me),
            });
        }
        if touched.data.contains(&id) {
            let (data, secrets) = world.node_data(id);
            changes.push(MapChange::Data { data, secrets });
        }
        if touched.hostfw.contains(&id) {
            changes.push(MapChange::HostFirewall {
                spec: world.node_host_firewall(id).cloned(),
            });
        }
        if touched.ssh_hosts.contains(&id) {
            changes.push(ssh::change(world, id));
        }
        if touched.services.contains(&id) {
            changes.push(services::change(world, id));
        }
        if outcome.policy_changed.contains(&id) {
            let sent: BTreeSet<(NetId, NodeKey)> = keys.iter().copied().collect();
            let changed_me = visibility_changed
                .as_ref()
                .is_none_or(|c| c.contains(&mine));
            // Visibility flips towards the candidates, deduplicated.
            let mut flips: BTreeMap<NodeKey, bool> = BTreeMap::new();
            if let (Some(cg), Some(mg)) = (&changed_groups, &member_groups) {
                // Once per group of candidates alike (see `group_candidates`).
                let member_groups = me
                    .memberships
                    .keys()
                    .filter(|_| changed_me)
                    .filter_map(|n| mg.get(n))
                    .flatten();
                for group in cg.iter().chain(member_groups) {
                    let Some((_, now, before)) = group.iter().find(|c| *c.0 != mine) else {
                        continue;
                    };
                    let (b, a) = (sees(&me_before, before), sees(&me_now, now));
                    if a != b {
                        for (key, _, _) in group.iter().filter(|c| *c.0 != mine) {
                            flips.insert(**key, a);
                        }
                    }
                }
            } else {
                let members = me
                    .memberships
                    .keys()
                    .filter(|_| changed_me)
                    .filter_map(|n| member_vps.get(n))
                    .flatten();
                for (key, now, before) in changed_vps.iter().chain(members) {
                    let (b, a) = (sees(&me_before, before), sees(&me_now, now));
                    if a != b {
                        flips.insert(**key, a);
                    }
                }
            }
            changes.extend(policy_changes(world, me, &flips, &sent));
        }
        let delta = Delta::picked(version, &shared, &shown_idx, changes);
        if !delta.is_empty() {
            out.push(Outgoing {
                recipients: Arc::from(vec![id]),
                payload: Payload::Delta(Arc::new(delta)),
            });
        }
    }
    for (shown_idx, recipients) in groups {
        out.push(Outgoing {
            recipients: Arc::from(recipients),
            payload: Payload::Delta(Arc::new(Delta::picked(
                version,
                &shared,
                &shown_idx,
                Vec::new(),
            ))),
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
    if touched.dns_blocklist {
        blocklist::add_change(world, &mut out);
    }
    out
}

/// `candidates` grouped by their visibility classes before and after the
/// batch (`None` in a class: no viewpoint): every node sees the members of a
/// group alike (but itself), so a recipient decides once per group, and a
/// policy edit costs O(n × groups), not O(n²). `None` when a deny rule makes
/// prefixes count ([`weft_policy::Viewpoint::class`]).
fn group_candidates<'a, 'b>(
    candidates: impl Iterator<Item = &'b Candidate<'a>>,
) -> Option<Vec<Vec<&'b Candidate<'a>>>> {
    type Class = Option<weft_policy::VisibilityClass>;
    let mut groups: BTreeMap<(Class, Class), Vec<&'b Candidate<'a>>> = BTreeMap::new();
    for c in candidates {
        let now = match &c.1 {
            Some(v) => Some(v.class()?),
            None => None,
        };
        let before = match &c.2 {
            Some(v) => Some(v.class()?),
            None => None,
        };
        groups.entry((before, now)).or_default().push(c);
    }
    Some(groups.into_values().collect())
}

/// A compiled policy as shipped in the map: typed and versioned, shared with
/// the model (no copy).
fn map_policy(p: &Arc<CompiledPolicy>) -> MapPolicy {
    MapPolicy::Compiled(Arc::clone(p))
}

/// The changes of a node whose compiled policy changed: the new policy, then
/// the peers it may now see (in every network it shares with them) and the
/// removal of those it saw before and no longer may (`flips`: peer key → now
/// visible), leaving out the entries it already receives (`sent`).
///
/// Only the nodes whose policy inputs changed can have changed visibility
/// towards an unchanged node; a changed node, or every node after a policy
/// edit, compares against every member of its networks (the caller's
/// candidates).
fn policy_changes(
    world: &World,
    me: &NodeState,
    flips: &BTreeMap<NodeKey, bool>,
    sent: &BTreeSet<(NetId, NodeKey)>,
) -> Vec<MapChange> {
    let Some(np) = world.node_policy(me.rec.id) else {
        return Vec::new();
    };
    let mut changes = vec![MapChange::Policy {
        policy: Some(map_policy(np)),
    }];
    for (key, now) in flips {
        let key = *key;
        if *now {
            let Some(peer) = world.find_node_by_key(&key).filter(|p| !p.rec.disabled) else {
                continue;
            };
            for (net_id, pm) in &peer.memberships {
                if sent.contains(&(*net_id, key)) {
                    continue;
                }
                if let (Some(net), true) =
                    (world.network(*net_id), me.memberships.contains_key(net_id))
                {
                    changes.push(MapChange::PeerUpsert {
                        network: net.rec.name.clone(),
                        peer: peer_view(peer, pm),
                    });
                }
            }
        } else {
            for net_id in me.memberships.keys() {
                if sent.contains(&(*net_id, key)) {
                    continue;
                }
                if let Some(net) = world.network(*net_id) {
                    changes.push(MapChange::PeerRemove {
                        network: net.rec.name.clone(),
                        node_key: key,
                    });
                }
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests;
