use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_proto::NodeKey;

use super::*;
use crate::error::ApiError;
use crate::model::{
    Actor, Batch, NewNetwork, NewToken, NodePatch, Outcome, Registration, RemoveNode, Report,
    SetPolicy, SetPresence, UpdateNode,
};
use crate::model::{SetData, SetSecret, UnsetData, UnsetSecret};
use crate::secret::SecretHash;
use weft_proto::data::{DataScope, SetDataRequest, UnsetDataRequest, UnsetSecretRequest};

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

fn setup() -> World {
    let mut w = World::default();
    let mut b = Batch::default();
    for (name, cidr) in [("a", "100.64.0.0/24"), ("b", "100.64.1.0/24")] {
        let op = NewNetwork {
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: Some(
                if name == "a" {
                    "fd00:a::/64"
                } else {
                    "fd00:b::/64"
                }
                .parse()
                .unwrap(),
            ),
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        };
        w.apply(&mut b, &Actor::Admin, op, 0).unwrap();
    }
    for (tok, nets) in [
        ("ta", vec!["a"]),
        ("tb", vec!["b"]),
        ("tab", vec!["a", "b"]),
    ] {
        let op = NewToken {
            networks: nets.into_iter().map(String::from).collect(),
            tags: ["t".to_string()].into(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of(tok),
        };
        w.apply(&mut b, &Actor::Admin, op, 0).unwrap();
    }
    w
}

fn register(i: u8, token: &str) -> Registration {
    Registration {
        node_key: key(i),
        token_hash: SecretHash::of(token),
        pow_bits: 0,
        name: None,
        hostname: Some(format!("h{i}")),
        facts: None,
        credential_hash: SecretHash::of(&format!("cred{i}")),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Register(u8, u8),
    Rename(u8, u8),
    Tag(u8, bool),
    Disable(u8, bool),
    Remove(u8),
    Report(u8, u16),
    Presence(u8, bool),
    SetPolicy(u8),
    /// Data: scope (0 node i, 1 tag x, 2 tag t, 3 network a, 4 network b),
    /// key, value (`None`: unset).
    Data(u8, u8, Option<u8>),
    /// A secret for node i: key, sealed filler (`None`: unset).
    Secret(u8, u8, Option<u8>),
}

/// Policies the property test switches between: per-network defaults, deny
/// rules (which take the exact visibility path), tags and node names.
const POLICIES: [&str; 4] = [
    "[[rule]]\naction = \"allow\"\nfrom = \"network:a\"\nto = \"network:a\"\n\n[[rule]]\naction = \"allow\"\nfrom = \"network:b\"\nto = \"network:b\"\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n\n[[rule]]\naction = \"deny\"\nfrom = \"tag:x\"\nto = \"network:b\"\nproto = \"tcp\"\nports = [22]\n\n[[rule]]\naction = \"deny\"\nfrom = \"node:name1\"\nto = \"*\"\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"tag:t\"\nto = \"tag:x\"\nproto = \"tcp\"\nports = [80]\n\n[[rule]]\naction = \"allow\"\nfrom = \"node:name2\"\nto = \"*\"\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"network:a\"\nto = \"network:b\"\n\n[[rule]]\naction = \"allow\"\nfrom = \"tag:x\"\nto = \"tag:x\"\n",
];

/// Applies step `s` (nothing if it names a node that does not exist).
fn apply_step(w: &mut World, b: &mut Batch, s: &Step, now: u64) -> Result<(), ApiError> {
    let id_of = |w: &World, i: u8| w.find_node_by_key(&key(i)).map(|n| n.rec.id);
    let sel = |i: u8| key(i).to_string();
    let a = &Actor::Admin;
    let update = |i: u8, patch| UpdateNode {
        node: sel(i),
        patch,
    };
    match s {
        Step::Register(i, t) => {
            let t = ["ta", "tb", "tab"][usize::from(*t % 3)];
            w.apply(b, a, register(*i, t), now).map(drop)
        }
        Step::Rename(i, n) => {
            let patch = NodePatch {
                name: Some(format!("name{n}")),
                ..NodePatch::default()
            };
            w.apply(b, a, update(*i, patch), now).map(drop)
        }
        Step::Tag(i, on) => {
            let patch = NodePatch {
                tags: Some(if *on {
                    ["x".to_string()].into()
                } else {
                    Default::default()
                }),
                ..NodePatch::default()
            };
            w.apply(b, a, update(*i, patch), now).map(drop)
        }
        Step::Disable(i, d) => {
            let patch = NodePatch {
                disabled: Some(*d),
                ..NodePatch::default()
            };
            w.apply(b, a, update(*i, patch), now).map(drop)
        }
        Step::Remove(i) => w.apply(b, a, RemoveNode(sel(*i)), now),
        Step::Report(i, port) => match id_of(w, *i) {
            Some(node) => {
                let endpoints = Some(vec![format!("192.0.2.{i}:{port}").parse().unwrap()]);
                w.apply(
                    b,
                    a,
                    Report {
                        node,
                        endpoints,
                        facts: None,
                    },
                    now,
                )
            }
            None => Ok(()),
        },
        Step::Presence(i, online) => match id_of(w, *i) {
            Some(node) => w.apply(
                b,
                a,
                SetPresence {
                    node,
                    online: *online,
                },
                now,
            ),
            None => Ok(()),
        },
        Step::SetPolicy(p) => {
            let text = POLICIES[usize::from(*p) % POLICIES.len()].into();
            w.apply(b, a, set_policy(text), now).map(drop)
        }
        Step::Data(i, k, v) => {
            let scope = match i % 5 {
                0 => DataScope::Node(sel(i / 5)),
                1 => DataScope::Tag("x".into()),
                2 => DataScope::Tag("t".into()),
                3 => DataScope::Network("a".into()),
                _ => DataScope::Network("b".into()),
            };
            let key = format!("k{k}");
            match v {
                Some(v) => w
                    .apply(
                        b,
                        a,
                        SetData(SetDataRequest {
                            scope,
                            key,
                            value: format!("v{v}"),
                        }),
                        now,
                    )
                    .map(drop),
                None => w
                    .apply(b, a, UnsetData(UnsetDataRequest { scope, key }), now)
                    .map(drop),
            }
        }
        Step::Secret(i, k, v) => {
            let key = format!("s{k}");
            match v {
                Some(v) => w
                    .apply(
                        b,
                        a,
                        SetSecret {
                            node: sel(*i),
                            key,
                            sealed: vec![*v; 60],
                        },
                        now,
                    )
                    .map(drop),
                None => w
                    .apply(
                        b,
                        a,
                        UnsetSecret(UnsetSecretRequest { node: sel(*i), key }),
                        now,
                    )
                    .map(drop),
            }
        }
    }
}

fn set_policy(text: String) -> SetPolicy {
    SetPolicy {
        text,
        expect_version: None,
    }
}

fn arb_step() -> impl Strategy<Value = Step> {
    let n = 0u8..8;
    prop_oneof![
        4 => (n.clone(), 0u8..3).prop_map(|(i, t)| Step::Register(i, t)),
        1 => (n.clone(), 0u8..4).prop_map(|(i, x)| Step::Rename(i, x)),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, b)| Step::Tag(i, b)),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, b)| Step::Disable(i, b)),
        1 => n.clone().prop_map(Step::Remove),
        2 => (n.clone(), 1u16..4).prop_map(|(i, p)| Step::Report(i, p)),
        2 => (n.clone(), any::<bool>()).prop_map(|(i, b)| Step::Presence(i, b)),
        1 => (0u8..4).prop_map(Step::SetPolicy),
        3 => (0u8..40, 0u8..3, proptest::option::weighted(0.7, 0u8..3))
            .prop_map(|(i, k, v)| Step::Data(i, k, v)),
        1 => (n, 0u8..2, proptest::option::weighted(0.7, any::<u8>()))
            .prop_map(|(i, k, v)| Step::Secret(i, k, v)),
    ]
}

/// Applies compile output to the maps the nodes hold, as the hub and agents do.
fn deliver(
    w: &World,
    outcome: &Outcome,
    out: &[Outgoing],
    held: &mut BTreeMap<NodeId, NetworkMap>,
    single_op: bool,
) {
    for id in &outcome.touched.evicted {
        held.remove(id);
    }
    for o in out {
        for r in o.recipients.iter() {
            let node = w.node(*r).unwrap();
            assert!(!node.rec.disabled, "a disabled node received an event");
            match &o.payload {
                Payload::Resync => {
                    held.insert(*r, snapshot(w, *r).unwrap());
                }
                Payload::Delta(d) => {
                    let d = &d.to_map_delta();
                    for c in &d.changes {
                        if let MapChange::PeerUpsert { peer, .. } = c {
                            assert_ne!(
                                peer.node_key, node.rec.node_key,
                                "a node received itself as a peer"
                            );
                        }
                        // One operation per batch: a data change reaches only
                        // nodes whose data or secrets it changes.
                        if let (MapChange::Data { data, secrets }, Some(map), true) =
                            (c, held.get(r), single_op)
                        {
                            assert!(
                                (&map.data, &map.secrets) != (data, secrets),
                                "a node received a data change that changes nothing"
                            );
                        }
                    }
                    if let Some(map) = held.get_mut(r) {
                        map.apply(d).unwrap();
                    }
                }
            }
        }
    }
}

fn check_invariants(w: &World, held: &BTreeMap<NodeId, NetworkMap>) {
    // The incrementally kept policies equal a from-scratch compile.
    let inv = w.inventory();
    let fresh = weft_policy::compile(&w.policy.parsed, &inv);
    let enabled: Vec<&NodeState> = w
        .node_ids()
        .filter_map(|id| w.node(id))
        .filter(|n| !n.rec.disabled)
        .collect();
    for n in &enabled {
        let mut want = fresh.node(&n.rec.name).expect("compiled").clone();
        let visible = std::mem::take(&mut want.visible_peers);
        assert_eq!(
            w.node_policy(n.rec.id).map(|p| &**p),
            Some(&want),
            "incremental policy of {} differs from a fresh compile",
            n.rec.name
        );
        for p in &enabled {
            assert_eq!(
                w.is_visible(&n.rec.node_key, &p.rec.node_key),
                visible.contains(&p.rec.name),
                "visibility {} -> {}",
                n.rec.name,
                p.rec.name
            );
        }
    }
    for (id, map) in held {
        let mut fresh = snapshot(w, *id).expect("held map of a live node");
        // Versions are controller-global: a node's map only moves to the versions
        // that changed it, so it may trail the controller's.
        assert!(map.version <= fresh.version);
        fresh.version = map.version;
        assert_eq!(
            map, &fresh,
            "delta-maintained map differs from a fresh snapshot"
        );
        for net in &map.networks {
            for p in &net.peers {
                assert_ne!(p.node_key, map.node.node_key);
                let peer = w.find_node_by_key(&p.node_key).expect("peer exists");
                assert!(!peer.rec.disabled, "disabled node in a map");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn deltas_keep_every_map_equal_to_a_fresh_snapshot(
        batches in proptest::collection::vec(proptest::collection::vec(arb_step(), 1..5), 1..25)
    ) {
        let mut w = setup();
        let mut held: BTreeMap<NodeId, NetworkMap> = BTreeMap::new();
        let cache = shared::SnapshotCache::default();
        for (t, steps) in batches.iter().enumerate() {
            let mut batch = Batch::default();
            for s in steps {
                let _ = apply_step(&mut w, &mut batch, s, 1000 * (t as u64 + 1));
            }
            if let Some(o) = w.finish_batch(&mut batch) {
                let out = compile(&w, &o);
                deliver(&w, &o, &out, &mut held, steps.len() == 1);
            }
            // Nodes without a map (new, re-enabled) connect and get a snapshot.
            let ids: Vec<NodeId> = w.node_ids().collect();
            for id in ids {
                if let Some(s) = snapshot(&w, id) {
                    held.entry(id).or_insert(s);
                } else {
                    held.remove(&id);
                }
            }
            check_invariants(&w, &held);
            check_shared_snapshots(&w, &cache);
        }
    }
}

/// Snapshots assembled from the shared peer lists are byte for byte the
/// plain encoding (twice: built, then from the cache).
fn check_shared_snapshots(w: &World, cache: &shared::SnapshotCache) {
    for id in w.node_ids() {
        let plain = snapshot(w, id).map(|m| {
            crate::hub::encode(&weft_proto::netmap::MapEvent::Snapshot(m))
                .bytes
                .to_vec()
        });
        for _ in 0..2 {
            let assembled = shared::snapshot_chunks(cache, w, id).map(|c| c.concat());
            assert_eq!(
                assembled.as_deref().map(String::from_utf8_lossy),
                plain.as_deref().map(String::from_utf8_lossy),
                "shared snapshot of node {id}"
            );
        }
    }
}

#[test]
fn a_change_reaches_only_members_of_the_touched_network() {
    let mut w = setup();
    let mut b = Batch::default();
    for (i, t) in [(1, "ta"), (2, "ta"), (3, "tb"), (4, "tb")] {
        w.apply(&mut b, &Actor::Admin, register(i, t), 0).unwrap();
    }
    w.finish_batch(&mut b);
    let id1 = w.find_node_by_key(&key(1)).unwrap().rec.id;
    let mut b = Batch::default();
    w.apply(
        &mut b,
        &Actor::Admin,
        Report {
            node: id1,
            endpoints: Some(vec!["192.0.2.1:1".parse().unwrap()]),
            facts: None,
        },
        0,
    )
    .unwrap();
    let o = w.finish_batch(&mut b).expect("the version moved");
    let out = compile(&w, &o);
    let id2 = w.find_node_by_key(&key(2)).unwrap().rec.id;
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].recipients, &[id2]);
    let Payload::Delta(d) = &out[0].payload else {
        panic!("expected a delta")
    };
    let d = &d.to_map_delta();
    assert!(
        matches!(&d.changes[..], [MapChange::PeerUpsert { peer, .. }] if peer.node_key == key(1))
    );
}

#[test]
fn a_peers_last_seen_is_unix_milliseconds() {
    let mut w = setup();
    let mut b = Batch::default();
    let now_ms = 1_700_000_000_750;
    for i in [1, 2] {
        w.apply(&mut b, &Actor::Admin, register(i, "ta"), now_ms)
            .unwrap();
    }
    w.finish_batch(&mut b);
    let id2 = w.find_node_by_key(&key(2)).unwrap().rec.id;
    let map = snapshot(&w, id2).unwrap();
    let peer = map.networks[0]
        .peers
        .iter()
        .find(|p| p.node_key == key(1))
        .unwrap();
    // Recorded to the second, carried in milliseconds.
    assert_eq!(peer.last_seen_ms, Some(1_700_000_000_000));
}

#[test]
fn one_join_reaches_every_member_with_its_new_policy() {
    let mut w = setup();
    let mut b = Batch::default();
    for i in 1..=50 {
        w.apply(&mut b, &Actor::Admin, register(i, "ta"), 0)
            .unwrap();
    }
    w.finish_batch(&mut b);
    let mut b = Batch::default();
    w.apply(&mut b, &Actor::Admin, register(99, "ta"), 0)
        .unwrap();
    let o = w.finish_batch(&mut b).expect("the version moved");
    let out = compile(&w, &o);
    // Each existing member's compiled policy now names the newcomer's addresses:
    // one delta each (the newcomer as a peer, the new policy), one resync for the
    // newcomer.
    assert_eq!(out.len(), 51);
    for o in &out[..50] {
        assert_eq!(o.recipients.len(), 1);
        let Payload::Delta(d) = &o.payload else {
            panic!("expected a delta")
        };
        let d = &d.to_map_delta();
        assert!(
            d.changes.iter().any(
                |c| matches!(c, MapChange::PeerUpsert { peer, .. } if peer.node_key == key(99))
            )
        );
        assert!(
            d.changes
                .iter()
                .any(|c| matches!(c, MapChange::Policy { policy: Some(_) }))
        );
    }
    assert!(matches!(out[50].payload, Payload::Resync));
}

#[test]
fn visibility_follows_the_policy() {
    let mut w = setup();
    let mut b = Batch::default();
    for (i, t) in [(1, "ta"), (2, "ta"), (3, "ta")] {
        w.apply(&mut b, &Actor::Admin, register(i, t), 0).unwrap();
    }
    w.finish_batch(&mut b);
    let id = |i: u8| w.find_node_by_key(&key(i)).unwrap().rec.id;
    let (id1, id2, id3) = (id(1), id(2), id(3));
    let name = |i: u8| w.find_node_by_key(&key(i)).unwrap().rec.name.clone();
    let (n1, n2) = (name(1), name(2));
    let mut held: BTreeMap<NodeId, NetworkMap> = [id1, id2, id3]
        .into_iter()
        .map(|i| (i, snapshot(&w, i).unwrap()))
        .collect();
    assert_eq!(held[&id3].networks[0].peers.len(), 2);

    // Only 1 -> 2 on tcp/5432: 3 sees nobody, nobody sees 3.
    let text = format!(
        "[[rule]]\nname = \"one to two\"\naction = \"allow\"\nfrom = \"node:{n1}\"\nto = \"node:{n2}\"\nproto = \"tcp\"\nports = [5432]\n"
    );
    let mut b = Batch::default();
    w.apply(&mut b, &Actor::Admin, set_policy(text), 5).unwrap();
    let o = w.finish_batch(&mut b).expect("the version moved");
    assert_eq!(o.policy_changed.len(), 3);
    let out = compile(&w, &o);
    deliver(&w, &o, &out, &mut held, false);
    check_invariants(&w, &held);
    assert!(held[&id3].networks[0].peers.is_empty());
    assert_eq!(held[&id1].networks[0].peers.len(), 1);
    assert_eq!(held[&id1].networks[0].peers[0].node_key, key(2));
    assert_eq!(held[&id2].networks[0].peers[0].node_key, key(1));
    let Some(MapPolicy::Compiled(p3)) = held[&id3].policy.clone() else {
        panic!("node 3's map has no readable policy");
    };
    assert!(p3.visible_peers.is_empty() && p3.outbound.is_empty());

    // A change to 3 reaches nobody else.
    let mut b = Batch::default();
    w.apply(
        &mut b,
        &Actor::Admin,
        Report {
            node: id3,
            endpoints: Some(vec!["192.0.2.3:1".parse().unwrap()]),
            facts: None,
        },
        6,
    )
    .unwrap();
    let o = w.finish_batch(&mut b).expect("the version moved");
    assert!(compile(&w, &o).is_empty());

    // A policy that fails its tests is refused, and nothing changes.
    let bad = format!(
        "{}\n[[test]]\nfrom = \"node:{n2}\"\nto = \"node:{n1}\"\nproto = \"tcp\"\nport = 5432\nexpect = \"allow\"\n",
        w.policy.rec.text
    );
    let mut b = Batch::default();
    let e = w
        .apply(&mut b, &Actor::Admin, set_policy(bad), 7)
        .unwrap_err();
    assert_eq!(e.code(), "policy_tests_failed", "{e}");
    assert!(b.writes.is_empty());
}

#[test]
fn addresses_are_unique_and_skip_reserved() {
    let mut w = World::default();
    let mut b = Batch::default();
    w.apply(
        &mut b,
        &Actor::Admin,
        NewNetwork {
            name: "tiny".into(),
            ipv4_cidr: "10.0.0.0/29".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
        0,
    )
    .unwrap();
    w.apply(
        &mut b,
        &Actor::Admin,
        NewToken {
            networks: vec!["tiny".into()],
            tags: Default::default(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of("t"),
        },
        0,
    )
    .unwrap();
    let mut got = Vec::new();
    for i in 1..=5 {
        let r = w.apply(&mut b, &Actor::Admin, register(i, "t"), 0).unwrap();
        got.push(r.addresses[0].ipv4.to_string());
    }
    // /29: .0 network, .1 reserved, .7 broadcast: five usable.
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    );
    let err = w
        .apply(&mut b, &Actor::Admin, register(6, "t"), 0)
        .unwrap_err();
    assert_eq!(err.code(), "network_full");
    // Removing one frees its address for the next node.
    w.apply(&mut b, &Actor::Admin, RemoveNode(key(3).to_string()), 0)
        .unwrap();
    let r = w.apply(&mut b, &Actor::Admin, register(7, "t"), 0).unwrap();
    assert_eq!(r.addresses[0].ipv4.to_string(), "10.0.0.4");
}

#[test]
fn reregistration_is_idempotent_and_tokens_are_accounted() {
    let mut w = setup();
    let mut b = Batch::default();
    w.apply(
        &mut b,
        &Actor::Admin,
        NewToken {
            networks: vec!["a".into()],
            tags: Default::default(),
            expires_at: 100,
            max_uses: Some(1),
            description: None,
            hash: SecretHash::of("once"),
        },
        0,
    )
    .unwrap();
    let first = w
        .apply(&mut b, &Actor::Admin, register(1, "once"), 0)
        .unwrap();
    // Same key again: same addresses, no use consumed (the token is one-shot).
    let again = w
        .apply(&mut b, &Actor::Admin, register(1, "once"), 0)
        .unwrap();
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    // Even after expiry, a retry succeeds; a new key does not.
    assert!(
        w.apply(&mut b, &Actor::Admin, register(1, "once"), 200_000)
            .is_ok()
    );
    assert_eq!(
        w.apply(&mut b, &Actor::Admin, register(2, "once"), 0)
            .unwrap_err()
            .code(),
        "token_exhausted"
    );
    assert_eq!(
        w.apply(&mut b, &Actor::Admin, register(3, "nope"), 0)
            .unwrap_err()
            .code(),
        "invalid_token"
    );
    // The old credential no longer works; the newest does.
    assert!(w.node_by_credential(&SecretHash::of("cred1")).is_some());
}

#[test]
fn property_test_policies_are_valid() {
    for p in POLICIES {
        let parsed = weft_policy::parse(p).unwrap();
        assert!(parsed.validate().is_ok(), "{p}");
    }
}
