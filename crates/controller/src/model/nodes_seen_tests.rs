//! The `last_seen` peers were told survives a restart: a controller that
//! reloads its state from the store (or a replica started later) sends the
//! same maps as one that kept running, at the same map version.

use super::*;
use crate::model::data::tests::{id, world};
use crate::model::{Operation, Outcome};
use crate::netmap::shared::{SnapshotCache, snapshot_chunks};
use crate::netmap::snapshot;
use crate::store::testing::test_store;

/// Runs `op` as one batch at `now_ms`; its outcome and writes.
fn run<O: Operation>(
    w: &mut World,
    actor: Actor,
    op: O,
    now_ms: u64,
) -> (Option<Outcome>, Vec<Write>) {
    let mut b = Batch::default();
    w.apply(&mut b, &actor, op, now_ms).unwrap();
    let o = w.finish_batch(&mut b);
    (o, b.writes)
}

fn report(node: NodeId) -> Report {
    Report {
        node,
        endpoints: None,
        facts: None,
    }
}

fn presence(node: NodeId, online: bool) -> SetPresence {
    SetPresence { node, online }
}

/// `name`'s `last_seen_ms` in `viewer`'s snapshot.
fn seen_by(w: &World, viewer: &str, name: &str) -> Option<u64> {
    let map = snapshot(w, id(w, viewer)).unwrap();
    let key = w.find_node(name).unwrap().rec.node_key;
    map.networks
        .iter()
        .flat_map(|n| &n.peers)
        .find(|p| p.node_key == key)
        .unwrap()
        .last_seen_ms
}

/// Every node's snapshot, as JSON and as the stream's shared encoding.
fn maps(w: &World) -> Vec<(String, Vec<u8>)> {
    let cache = SnapshotCache::default();
    w.node_ids()
        .map(|n| {
            let json = serde_json::to_string(&snapshot(w, n).unwrap()).unwrap();
            let bytes = snapshot_chunks(&cache, w, n).unwrap().concat();
            (json, bytes)
        })
        .collect()
}

/// Reloads `w`'s state from `store`, as a restarted controller does (the
/// nodes online before are restored, as the replicas' presence rows do).
fn restart(store: &mut dyn crate::store::Store, w: &World) -> World {
    let mut back = World::from_snapshot(store.load().unwrap(), Vec::new());
    back.restore_online(&w.online_nodes());
    back
}

#[test]
fn a_restart_sends_the_last_seen_peers_were_told_not_the_newest_report() {
    let mut store = test_store();
    let mut writes = Vec::new();
    let mut w = world(&mut writes);
    store.apply(&writes).unwrap();
    let n1 = id(&w, "n1");

    // n1 comes online (peers told: 10 s), reports (last_seen 20 s, peers not
    // told: no map change), goes offline (told: 30 s), reports again (40 s).
    let (o, wr) = run(&mut w, Actor::Admin, presence(n1, true), 10_000);
    assert!(o.is_some());
    store.apply(&wr).unwrap();
    let node = Actor::Node(w.find_node("n1").unwrap().rec.node_key);
    let (o, wr) = run(&mut w, node.clone(), report(n1), 20_000);
    assert!(o.is_none(), "a liveness report changes no map");
    store.apply(&wr).unwrap();
    assert_eq!(seen_by(&w, "n2", "n1"), Some(10_000));
    let back = restart(&mut *store, &w);
    assert_eq!(back.version, w.version);
    assert_eq!(seen_by(&back, "n2", "n1"), Some(10_000));
    assert!(maps(&back) == maps(&w), "maps after a restart, n1 online");

    let (o, wr) = run(&mut w, Actor::Admin, presence(n1, false), 30_000);
    let key = w.find_node("n1").unwrap().rec.node_key;
    assert!(
        o.unwrap().touched.entries.iter().any(|(_, k)| *k == key),
        "going offline is published"
    );
    store.apply(&wr).unwrap();
    let (_, wr) = run(&mut w, node, report(n1), 40_000);
    store.apply(&wr).unwrap();
    assert_eq!(w.find_node("n1").unwrap().rec.last_seen, Some(40));
    let back = restart(&mut *store, &w);
    assert_eq!(back.version, w.version);
    assert_eq!(seen_by(&back, "n2", "n1"), Some(30_000));
    assert_eq!(seen_by(&back, "n3", "n1"), Some(30_000));
    assert!(maps(&back) == maps(&w), "maps after a restart, n1 offline");
    // last_seen itself is kept (it counts recently seen nodes at start).
    assert_eq!(back.find_node("n1").unwrap().rec.last_seen, Some(40));
}
