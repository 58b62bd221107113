//! Service lists in maps: after any sequence of service, membership, policy,
//! presence and health changes, every node's map kept by deltas equals a
//! fresh snapshot, and a `MapChange::Services` reaches a node only when its
//! lists changed.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_proto::NodeKey;
use weft_proto::netmap::{MapChange, NetworkMap};
use weft_proto::service::{
    AdvertiseServiceRequest, CreateServiceRequest, Health, HealthReport, InstanceHealth,
};

use crate::error::ApiError;
use crate::model::{
    Actor, AdvertiseService, Batch, CreateService, DecideInstance, LeaveNetwork, NewNetwork,
    NewToken, NodeId, NodePatch, Registration, RemoveNode, RemoveService, ReportHealth, SetPolicy,
    SetPresence, UpdateNode, World,
};
use crate::netmap::{Payload, compile, snapshot};
use crate::secret::SecretHash;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i + 1; 32])
}

fn setup() -> World {
    let mut w = World::default();
    let mut b = Batch::default();
    for (name, cidr) in [("a", "100.64.0.0/24"), ("b", "100.64.1.0/24")] {
        let op = NewNetwork {
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: None,
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
            tags: Default::default(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of(tok),
        };
        w.apply(&mut b, &Actor::Admin, op, 0).unwrap();
    }
    w.finish_batch(&mut b);
    w
}

/// Policies the test switches between: everyone, the `db` port only from
/// tag x, UDP only, and `service:` selectors.
const POLICIES: [&str; 4] = [
    "[[rule]]\naction = \"allow\"\nfrom = \"tag:x\"\nto = \"service:db\"\n\n[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"service:dns\"\nproto = \"udp\"\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"tag:x\"\nto = \"*\"\nproto = \"tcp\"\nports = [5432]\n",
    "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"network:a\"\nproto = \"udp\"\n\n[[rule]]\naction = \"deny\"\nfrom = \"*\"\nto = \"node:n0\"\n",
];

/// Services: name and ports.
const SERVICES: [(&str, &str); 2] = [("db", "5432/tcp"), ("dns", "53/udp,5432/tcp")];

#[derive(Debug, Clone)]
enum Step {
    Register(u8, u8),
    Tag(u8, bool),
    Rename(u8, bool),
    Disable(u8, bool),
    Remove(u8),
    Leave(u8, bool),
    Presence(u8, bool),
    Policy(u8),
    /// Service, network b?, node mask, replace.
    Create(u8, bool, u8, bool),
    RemoveService(u8, bool),
    Advertise(u8, u8, bool),
    Decide(u8, bool, u8, bool),
    Health(u8, u8, bool, bool),
}

fn net_name(b: bool) -> String {
    if b { "b" } else { "a" }.into()
}

fn apply_step(w: &mut World, b: &mut Batch, s: &Step, now: u64) -> Result<(), ApiError> {
    let a = &Actor::Admin;
    let sel = |i: u8| key(i).to_string();
    let id_of = |w: &World, i: u8| w.find_node_by_key(&key(i)).map(|n| n.rec.id);
    let update = |i: u8, patch| UpdateNode {
        node: sel(i),
        patch,
    };
    let svc = |s: u8| SERVICES[usize::from(s % 2)];
    match s {
        Step::Register(i, t) => {
            let t = ["ta", "tb", "tab"][usize::from(*t % 3)];
            let r = Registration {
                node_key: key(*i),
                token_hash: SecretHash::of(t),
                pow_bits: 0,
                name: Some(format!("n{i}")),
                hostname: None,
                facts: None,
                credential_hash: SecretHash::of(&format!("cred{i}")),
            };
            w.apply(b, a, r, now).map(drop)
        }
        Step::Tag(i, on) => {
            let tags = if *on {
                ["x".to_string()].into()
            } else {
                Default::default()
            };
            let patch = NodePatch {
                tags: Some(tags),
                ..NodePatch::default()
            };
            w.apply(b, a, update(*i, patch), now).map(drop)
        }
        Step::Rename(i, alt) => {
            let name = if *alt {
                format!("m{i}")
            } else {
                format!("n{i}")
            };
            let patch = NodePatch {
                name: Some(name),
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
        Step::Leave(i, nb) => {
            let op = LeaveNetwork {
                network: net_name(*nb),
                node: sel(*i),
            };
            w.apply(b, a, op, now).map(drop)
        }
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
        Step::Policy(p) => {
            let op = SetPolicy {
                text: POLICIES[usize::from(*p % 4)].into(),
                expect_version: None,
            };
            w.apply(b, a, op, now).map(drop)
        }
        Step::Create(s, nb, mask, replace) => {
            let (name, ports) = svc(*s);
            let nodes = (0..4u8).filter(|i| mask & (1 << i) != 0).map(sel).collect();
            let req = CreateServiceRequest {
                name: name.into(),
                network: net_name(*nb),
                nodes,
                ports: weft_proto::service::parse_ports(ports).unwrap(),
                health: weft_proto::service::HealthCheck::Tcp,
                replace: *replace,
                expect_version: None,
            };
            w.apply(b, a, CreateService(req), now).map(drop)
        }
        Step::RemoveService(s, nb) => {
            let op = RemoveService {
                network: net_name(*nb),
                name: svc(*s).0.into(),
            };
            w.apply(b, a, op, now).map(drop)
        }
        Step::Advertise(i, s, withdraw) => match id_of(w, *i) {
            Some(node) => {
                let (name, ports) = svc(*s);
                let req = AdvertiseServiceRequest {
                    name: name.into(),
                    network: Some("a".into()),
                    ports: if *withdraw {
                        Vec::new()
                    } else {
                        weft_proto::service::parse_ports(ports).unwrap()
                    },
                    health: weft_proto::service::HealthCheck::Tcp,
                };
                let op = AdvertiseService { node, req };
                w.apply(b, &Actor::Node(key(*i)), op, now).map(drop)
            }
            None => Ok(()),
        },
        Step::Decide(s, nb, i, approve) => {
            let op = DecideInstance {
                network: net_name(*nb),
                name: svc(*s).0.into(),
                node: sel(*i),
                approve: *approve,
            };
            w.apply(b, a, op, now).map(drop)
        }
        Step::Health(i, s, nb, healthy) => match id_of(w, *i) {
            Some(node) => {
                let report = HealthReport {
                    checks: vec![InstanceHealth {
                        service: svc(*s).0.into(),
                        network: net_name(*nb),
                        health: if *healthy {
                            Health::Healthy
                        } else {
                            Health::Unhealthy
                        },
                        checked_ms: now,
                        detail: (!healthy).then(|| "connection refused".into()),
                    }],
                };
                let op = ReportHealth { node, report };
                w.apply(b, &Actor::Node(key(*i)), op, now)
            }
            None => Ok(()),
        },
    }
}

fn arb_step() -> impl Strategy<Value = Step> {
    let n = 0u8..5;
    let s = 0u8..2;
    prop_oneof![
        4 => (n.clone(), 0u8..3).prop_map(|(i, t)| Step::Register(i, t)),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, on)| Step::Tag(i, on)),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, x)| Step::Rename(i, x)),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, d)| Step::Disable(i, d)),
        1 => n.clone().prop_map(Step::Remove),
        1 => (n.clone(), any::<bool>()).prop_map(|(i, nb)| Step::Leave(i, nb)),
        3 => (n.clone(), proptest::bool::weighted(0.75)).prop_map(|(i, on)| Step::Presence(i, on)),
        2 => (0u8..4).prop_map(Step::Policy),
        4 => (s.clone(), any::<bool>(), 0u8..16, any::<bool>())
            .prop_map(|(s, nb, m, r)| Step::Create(s, nb, m, r)),
        1 => (s.clone(), any::<bool>()).prop_map(|(s, nb)| Step::RemoveService(s, nb)),
        2 => (n.clone(), s.clone(), proptest::bool::weighted(0.2))
            .prop_map(|(i, s, wd)| Step::Advertise(i, s, wd)),
        2 => (s.clone(), any::<bool>(), n.clone(), any::<bool>())
            .prop_map(|(s, nb, i, ap)| Step::Decide(s, nb, i, ap)),
        4 => (n, s, any::<bool>(), any::<bool>())
            .prop_map(|(i, s, nb, h)| Step::Health(i, s, nb, h)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn service_deltas_keep_maps_equal_to_snapshots_and_reach_only_changed_nodes(
        batches in proptest::collection::vec(proptest::collection::vec(arb_step(), 1..4), 1..30)
    ) {
        let mut w = setup();
        let mut held: BTreeMap<NodeId, NetworkMap> = BTreeMap::new();
        for (t, steps) in batches.iter().enumerate() {
            let mut batch = Batch::default();
            for s in steps {
                let _ = apply_step(&mut w, &mut batch, s, 1000 * (t as u64 + 1));
            }
            if let Some(o) = w.finish_batch(&mut batch) {
                for id in &o.touched.evicted {
                    held.remove(id);
                }
                for out in compile(&w, &o) {
                    for r in out.recipients.iter() {
                        match &out.payload {
                            Payload::Resync => {
                                held.insert(*r, snapshot(&w, *r).unwrap());
                            }
                            Payload::Delta(d) => {
                                let d = &d.to_map_delta();
                                let Some(map) = held.get_mut(r) else { continue };
                                for c in &d.changes {
                                    if let MapChange::Services { services, provides } = c {
                                        prop_assert!(
                                            (&map.services, &map.provides) != (services, provides),
                                            "node {r} received service lists that change nothing"
                                        );
                                    }
                                }
                                map.apply(d).unwrap();
                            }
                        }
                    }
                }
            }
            let ids: Vec<NodeId> = w.node_ids().collect();
            for id in ids {
                match snapshot(&w, id) {
                    Some(s) => {
                        held.entry(id).or_insert(s);
                    }
                    None => {
                        held.remove(&id);
                    }
                }
            }
            // The incrementally kept policies (their `service:` parts follow
            // the instances) equal a from-scratch compile.
            let fresh = weft_policy::compile(&w.policy.parsed, &w.inventory());
            for id in w.node_ids() {
                let n = w.node(id).unwrap();
                if n.rec.disabled {
                    continue;
                }
                let mut want = fresh.node(&n.rec.name).expect("compiled").clone();
                want.visible_peers.clear();
                prop_assert_eq!(w.node_policy(id).map(|p| &**p), Some(&want), "policy of {}", &n.rec.name);
            }
            for (id, map) in &held {
                let mut fresh = snapshot(&w, *id).unwrap();
                fresh.version = map.version;
                prop_assert_eq!(&map.services, &fresh.services, "services of node {}", id);
                prop_assert_eq!(&map.provides, &fresh.provides, "provides of node {}", id);
                prop_assert_eq!(map, &fresh);
                prop_assert!(fresh.services.iter().all(|s| s.instances.iter().all(|i| i.checked_ms.is_none())));
            }
        }
    }
}
