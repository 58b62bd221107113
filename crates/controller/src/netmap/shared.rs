//! Snapshots encoded from shared bytes.
//!
//! A full mesh of n nodes has n maps that each list n − 1 of the same n peer
//! entries: encoding every snapshot from scratch costs O(n) each and O(n²)
//! after a controller restart, when every agent asks for one at once. Here
//! each network's peer entries are encoded once per map version
//! ([`PeerList`]: the JSON of every enabled member, sorted by key, joined by
//! commas), and a node's snapshot is assembled as a chain of [`Bytes`]: its
//! own small parts, encoded for it, and slices of the shared list covering the
//! runs of peers it may see (two slices in a full mesh: the peers before it
//! and after it). The bytes are exactly those of [`super::snapshot`] encoded
//! as an SSE `snapshot` event (tested), so agents cannot tell the difference.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weft_policy::VisibilityClass;
use weft_proto::NodeKey;
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{EVENT_SNAPSHOT, NetworkMap, NetworkView, Peer};

use super::{map_policy, network_view_parts, peer_view, self_node};
use crate::model::{NetId, NetState, NodeId, World};

/// One network's peer entries at one map version.
#[derive(Debug)]
pub struct PeerList {
    version: u64,
    /// `entry,entry,...`: each enabled member's [`peer_view`] as JSON.
    bytes: Bytes,
    /// Per entry, sorted by key: the node, its key, and its span in `bytes`.
    entries: Vec<(NodeId, NodeKey, usize, usize)>,
    /// The entries' values, to reuse their encoding at the next version.
    peers: Vec<Peer>,
    /// Per entry, its visibility class (an index into `reps`; `None`: not
    /// in the policy, seen by nobody); `None` when classes do not decide
    /// visibility (a deny rule: [`weft_policy::Viewpoint::class`]).
    classes: Option<Vec<Option<usize>>>,
    /// Per class, up to two of its members (one that is not the viewer).
    reps: Vec<Vec<NodeKey>>,
}

impl PeerList {
    /// Encodes `net`'s enabled members as peers, copying the bytes of those
    /// that did not change since `prev`.
    pub fn build(world: &World, net: &NetState, prev: Option<&PeerList>) -> Self {
        let mut members: Vec<_> = net
            .members
            .iter()
            .filter_map(|id| world.node(*id))
            .filter(|p| !p.rec.disabled)
            .filter_map(|p| p.memberships.get(&net.rec.id).map(|m| (p, m)))
            .collect();
        members.sort_by_key(|(p, _)| p.rec.node_key);
        let mut buf =
            Vec::with_capacity(prev.map_or(members.len() * 256, |p| p.bytes.len() + 1024));
        let mut entries = Vec::with_capacity(members.len());
        let mut peers = Vec::with_capacity(members.len());
        let mut j = 0;
        let mut table: BTreeMap<VisibilityClass, usize> = BTreeMap::new();
        let mut reps: Vec<Vec<NodeKey>> = Vec::new();
        let mut classes = Some(Vec::with_capacity(members.len()));
        for (p, m) in members {
            if !buf.is_empty() {
                buf.push(b',');
            }
            let start = buf.len();
            let peer = peer_view(p, m);
            // Both lists are sorted by key: walk the previous one alongside.
            let old = prev.and_then(|prev| {
                while prev.entries.get(j).is_some_and(|e| e.1 < p.rec.node_key) {
                    j += 1;
                }
                let e = prev.entries.get(j).filter(|e| e.1 == p.rec.node_key)?;
                (prev.peers.get(j) == Some(&peer)).then(|| &prev.bytes[e.2..e.3])
            });
            match old {
                Some(bytes) => buf.extend_from_slice(bytes),
                // A peer holds only strings, numbers and addresses: this
                // cannot fail.
                None => {
                    if serde_json::to_writer(&mut buf, &peer).is_err() {
                        buf.truncate(start.saturating_sub(1));
                        continue;
                    }
                }
            }
            entries.push((p.rec.id, p.rec.node_key, start, buf.len()));
            peers.push(peer);
            if let Some(cs) = classes.as_mut() {
                match world.viewpoint(&p.rec.node_key).map(|v| v.class()) {
                    None => cs.push(None),
                    Some(None) => classes = None,
                    Some(Some(c)) => {
                        let next = reps.len();
                        let i = *table.entry(c).or_insert(next);
                        if i == next {
                            reps.push(Vec::new());
                        }
                        if reps[i].len() < 2 {
                            reps[i].push(p.rec.node_key);
                        }
                        cs.push(Some(i));
                    }
                }
            }
        }
        PeerList {
            version: world.version,
            bytes: Bytes::from(buf),
            entries,
            peers,
            classes,
            reps,
        }
    }

    /// Slices covering the entries `keep` marks (one flag per entry, in
    /// order), comma-joined.
    fn slices(&self, keep: &[bool], out: &mut Chunks) {
        let mut run: Option<(usize, usize)> = None;
        let mut first = true;
        let mut flush = |run: (usize, usize), out: &mut Chunks| {
            if !std::mem::take(&mut first) {
                out.text(b",");
            }
            out.shared(self.bytes.slice(run.0..run.1));
        };
        for ((_, _, start, end), keep) in self.entries.iter().zip(keep) {
            if *keep {
                run = Some(match run {
                    Some((s, _)) => (s, *end),
                    None => (*start, *end),
                });
            } else if let Some(r) = run.take() {
                flush(r, out);
            }
        }
        if let Some(r) = run {
            flush(r, out);
        }
    }
}

/// Each network's peer list at the latest version asked for, built on first
/// use from the one before.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    lists: Mutex<HashMap<NetId, Arc<PeerList>>>,
}

impl SnapshotCache {
    /// `net`'s peer list at `world.version`.
    fn list(&self, world: &World, net: &NetState) -> Arc<PeerList> {
        let mut lists = self
            .lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = lists.get(&net.rec.id);
        if let Some(l) = prev.filter(|l| l.version == world.version) {
            return l.clone();
        }
        // Built under the lock: concurrent snapshots of the same version wait
        // for one build instead of each doing it.
        let l = Arc::new(PeerList::build(world, net, prev.map(|p| &**p)));
        lists.insert(net.rec.id, l.clone());
        l
    }

    /// Forgets every list (after the state was reloaded).
    pub fn clear(&self) {
        self.lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// An event being assembled: owned text and shared slices, in order.
#[derive(Debug, Default)]
pub struct Chunks {
    out: Vec<Bytes>,
    text: Vec<u8>,
}

impl Chunks {
    fn text(&mut self, b: &[u8]) {
        self.text.extend_from_slice(b);
    }

    fn shared(&mut self, b: Bytes) {
        if !self.text.is_empty() {
            self.out.push(Bytes::from(std::mem::take(&mut self.text)));
        }
        self.out.push(b);
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.text.is_empty() {
            self.out.push(Bytes::from(self.text));
        }
        self.out
    }
}

/// Splits `json` around its only occurrence of `"field":[]`: the text up to
/// and including `"field":`, and the text after `[]`. `None` if it occurs
/// other than once (a value could hold such a key: the caller then encodes the
/// plain way).
pub(super) fn split_at_empty<'a>(json: &'a [u8], field: &str) -> Option<(&'a [u8], &'a [u8])> {
    let pat = format!("\"{field}\":[]");
    let pat = pat.as_bytes();
    let mut found = None;
    for (i, w) in json.windows(pat.len()).enumerate() {
        if w == pat {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    let i = found?;
    let open = i + pat.len() - 2;
    Some((&json[..open], &json[open + 2..]))
}

/// The SSE `snapshot` event of `node` at the world's version, as chunks that
/// share the networks' peer lists; `None` if the node does not exist or is
/// disabled, or its map cannot be split (then [`super::snapshot`] it is).
pub fn snapshot_chunks(cache: &SnapshotCache, world: &World, node: NodeId) -> Option<Vec<Bytes>> {
    let me = world.node(node).filter(|n| !n.rec.disabled)?;
    let viewer = world.viewpoint(&me.rec.node_key);
    let mut views: Vec<(NetworkView, Arc<PeerList>, Vec<bool>)> = Vec::new();
    for m in me.memberships.values() {
        let Some(net) = world.network(m.network_id) else {
            continue;
        };
        let list = cache.list(world, net);
        let keep: Vec<bool> = match (&viewer, &list.classes) {
            // Decided once per class: a representative that is not the viewer.
            (Some(v), Some(classes)) if v.class().is_some() => {
                let verdict: Vec<bool> = list
                    .reps
                    .iter()
                    .map(|keys| {
                        keys.iter()
                            .find(|k| **k != me.rec.node_key)
                            .is_some_and(|k| world.viewpoint(k).is_some_and(|o| v.sees(&o)))
                    })
                    .collect();
                list.entries
                    .iter()
                    .zip(classes)
                    .map(|((id, _, _, _), c)| *id != node && c.is_some_and(|c| verdict[c]))
                    .collect()
            }
            _ => list
                .entries
                .iter()
                .map(|(id, key, _, _)| {
                    *id != node
                        && viewer
                            .as_ref()
                            .is_some_and(|v| world.viewpoint(key).is_some_and(|o| v.sees(&o)))
                })
                .collect(),
        };
        let visible: Vec<NodeKey> = list
            .entries
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(e, _)| e.1)
            .collect();
        let view = network_view_parts(world, net, me, m, |k| visible.binary_search(k).is_ok());
        views.push((view, list, keep));
    }
    views.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let (data, secrets) = world.node_data(node);
    let (services, provides) = world.node_service_lists(node);
    let map = NetworkMap {
        api_version: API_VERSION,
        version: world.version,
        node: self_node(me),
        networks: Vec::new(),
        relays: world.map_relays(),
        policy: world.node_policy(node).map(map_policy),
        data,
        secrets,
        host_firewall: world.node_host_firewall(node).cloned(),
        dns_blocklist: world.dns_blocklist_ref(),
        services,
        provides,
        ssh_hosts: world.node_ssh_hosts(node),
    };
    let map_json = serde_json::to_vec(&map).ok()?;
    let (map_head, map_tail) = split_at_empty(&map_json, "networks")?;
    let mut out = Chunks::default();
    out.text(format!("id: {}\nevent: {EVENT_SNAPSHOT}\ndata: ", world.version).as_bytes());
    out.text(map_head);
    out.text(b"[");
    for (i, (view, list, keep)) in views.iter().enumerate() {
        let view_json = serde_json::to_vec(view).ok()?;
        let (head, tail) = split_at_empty(&view_json, "peers")?;
        if i > 0 {
            out.text(b",");
        }
        out.text(head);
        out.text(b"[");
        list.slices(keep, &mut out);
        out.text(b"]");
        out.text(tail);
    }
    out.text(b"]");
    out.text(map_tail);
    out.text(b"\n\n");
    Some(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_split_only_when_it_occurs_once() {
        let (h, t) = split_at_empty(br#"{"a":1,"peers":[],"b":2}"#, "peers").unwrap();
        assert_eq!((h, t), (&br#"{"a":1,"peers":"#[..], &br#","b":2}"#[..]));
        assert!(split_at_empty(br#"{"peers":[],"x":{"peers":[]}}"#, "peers").is_none());
        assert!(split_at_empty(br#"{"peers":[1]}"#, "peers").is_none());
        // Inside a string the quotes are escaped: no match.
        assert!(split_at_empty(br#"{"s":"\"peers\":[]"}"#, "peers").is_none());
    }
}
