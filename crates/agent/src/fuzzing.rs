//! Fuzz entry points, shared by the cargo-fuzz target in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. No function here may panic on any input; the
//! assertions inside are the properties being fuzzed.

use std::collections::BTreeSet;
use std::time::Instant;

use weft_dns::Zone;
use weft_proto::netmap::{MapDelta, NetworkMap};
use weft_tunnel::Node;

use crate::netmap::{self, Slots};

/// What the agent does with a map from the controller, minus the I/O: `data` is
/// a snapshot's JSON, then delta JSONs, separated by `0xff` bytes (never in
/// UTF-8). Each map (the snapshot, then after each delta that applies) is
/// derived into the tunnel configuration and interface plans (keeping slots
/// across maps as the agent does), applied to a tunnel `Node` (which compiles
/// the map's access policy) and turned into the DNS zone. A delta that does not
/// apply leaves the map unchanged.
pub fn netmap_apply(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0xff);
    let Some(Ok(mut map)) = parts.next().map(serde_json::from_slice::<NetworkMap>) else {
        return;
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the fuzz harness needs some base instant"
    )]
    let now = Instant::now();
    let mut node = Node::new(map.node.node_key, [3; 32], [4; 32], now);
    let mut slots = Slots::default();
    derive_and_apply(&map, &mut slots, &mut node, now);
    for part in parts.take(16) {
        let Ok(delta) = serde_json::from_slice::<MapDelta>(part) else {
            continue;
        };
        let before = map.clone();
        match map.apply(&delta) {
            Ok(()) => {
                assert_eq!(map.version, delta.version);
                derive_and_apply(&map, &mut slots, &mut node, now);
            }
            Err(e) => {
                assert_eq!(map, before, "a refused delta ({e}) changed the map");
            }
        }
    }
}

fn derive_and_apply(map: &NetworkMap, slots: &mut Slots, node: &mut Node, now: Instant) {
    let derived = netmap::derive(map, slots);
    // Every network has its own slot and interface, and the tunnel has a
    // network entry for each slot.
    let names: BTreeSet<&str> = map.networks.iter().map(|n| n.name.as_str()).collect();
    let slot_set: BTreeSet<usize> = derived.interfaces.iter().map(|i| i.slot).collect();
    assert_eq!(slots.get().len(), names.len());
    assert!(slot_set.iter().all(|s| *s < derived.node.networks.len()));
    assert!(
        derived
            .interfaces
            .iter()
            .all(|i| i.ifname == netmap::ifname(i.slot))
    );
    assert!(
        derived
            .node
            .peers
            .iter()
            .all(|p| p.key != map.node.node_key)
    );
    node.apply_config(now, &derived.node);
    while node.poll_event().is_some() {}
    while node.poll_transmit().is_some() {}
    let _ = node.peer_status(now);
    let zone = Zone::from_map(map);
    let _ = zone.rejected();
}
