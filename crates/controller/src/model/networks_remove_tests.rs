//! Deleting a network: what goes (memberships, routes, services, data,
//! token grants, the generated policy rule), what stays (the nodes, other
//! networks), who receives what, and the same state after a restart.

use weft_proto::NodeKey;
use weft_proto::api::RouteRequest;
use weft_proto::netmap::{MapChange, NetworkMap};
use weft_proto::service::{CreateServiceRequest, HealthCheck, parse_ports};

use super::*;
use crate::model::data::tests::{id, recipients_of, world};
use crate::model::{
    ChangeRoute, CreateService, GATEWAY_TAG, NewNetwork, NodePatch, Operation, Outcome,
    Registration, RouteOp, SetData, UpdateNode,
};
use crate::netmap::{Payload, compile, snapshot};
use crate::secret::SecretHash;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, Write};

fn run<O: Operation>(
    w: &mut World,
    op: O,
) -> (Result<O::Output, ApiError>, Option<Outcome>, Vec<Write>) {
    let mut b = Batch::default();
    let r = w.apply(&mut b, &Actor::Admin, op, 7_000);
    let o = w.finish_batch(&mut b);
    (r, o, b.writes)
}

fn ok<O: Operation>(w: &mut World, writes: &mut Vec<Write>, op: O) -> O::Output {
    let (r, _, mut ws) = run(w, op);
    writes.append(&mut ws);
    r.unwrap()
}

fn remove(name: &str) -> RemoveNetwork {
    RemoveNetwork { name: name.into() }
}

/// `world()` (networks a: n1 n2 n3, b: n3 n4; tokens t1 t2 → a, t3 → a b,
/// t4 → b) plus, in `a`, a service `db` on n1, a data entry and an
/// approved route of n3.
fn furnished(writes: &mut Vec<Write>) -> World {
    let mut w = world(writes);
    ok(
        &mut w,
        writes,
        CreateService(CreateServiceRequest {
            name: "db".into(),
            network: "a".into(),
            nodes: vec!["n1".into()],
            ports: parse_ports("5432/tcp").unwrap(),
            health: HealthCheck::Tcp,
            replace: false,
            expect_version: None,
        }),
    );
    ok(
        &mut w,
        writes,
        SetData(weft_proto::data::SetDataRequest {
            scope: weft_proto::data::DataScope::Network("a".into()),
            key: "k".into(),
            value: "v".into(),
        }),
    );
    ok(
        &mut w,
        writes,
        UpdateNode {
            node: "n3".into(),
            patch: NodePatch {
                tags: Some([GATEWAY_TAG.to_string()].into()),
                ..NodePatch::default()
            },
        },
    );
    ok(
        &mut w,
        writes,
        ChangeRoute {
            op: RouteOp::Add,
            req: RouteRequest {
                node: "n3".into(),
                prefix: "192.168.50.0/24".into(),
                network: Some("a".into()),
            },
        },
    );
    w
}

#[test]
fn removing_a_network_takes_what_names_it_and_keeps_the_nodes() {
    let mut writes = Vec::new();
    let mut w = furnished(&mut writes);
    let a = w.network_by_name("a").unwrap().rec.id;
    assert!(w.policy.rec.text.contains("network:a"));
    let before: Vec<(String, NetworkMap)> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| (n.to_string(), snapshot(&w, id(&w, n)).unwrap()))
        .collect();
    let policy_before = w.policy.rec.version;
    // Tokens t1 t2 (a), t3 (a b), t4 (b), in that order.
    let t: Vec<u64> = w.tokens().map(|t| t.id).collect();

    let (r, o, ws) = run(&mut w, remove("a"));
    let gone = r.unwrap();
    assert_eq!(
        gone,
        NetworkRemoved {
            network: "a".into(),
            members: 3,
            orphaned: 2,
            routes: 1,
            services: vec!["db".into()],
            data_keys: 1,
            tokens_changed: vec![t[2]],
            tokens_revoked: vec![t[0], t[1]],
            policy_rule_removed: true,
        }
    );

    // The network is gone; every node stays, n3 in b only.
    assert!(w.network_by_name("a").is_none());
    assert!(w.network(a).is_none());
    for n in ["n1", "n2", "n3", "n4"] {
        assert!(w.find_node(n).is_some(), "{n} keeps its identity");
    }
    let nets = |w: &World, n: &str| -> Vec<u64> {
        w.find_node(n)
            .unwrap()
            .memberships
            .keys()
            .copied()
            .collect()
    };
    assert!(nets(&w, "n1").is_empty());
    assert_eq!(nets(&w, "n3"), [w.network_by_name("b").unwrap().rec.id]);
    assert!(w.service_list().services.is_empty());
    assert!(w.data_items(None).is_empty());
    assert!(!w.policy.rec.text.contains("network:a"));
    assert!(w.policy.rec.text.contains("network:b"));
    assert_eq!(w.policy.rec.version, policy_before + 1);
    let tokens: Vec<(u64, bool, usize)> = w
        .tokens()
        .map(|t| (t.id, t.revoked, t.networks.len()))
        .collect();
    assert_eq!(
        tokens,
        [
            (t[0], true, 0),
            (t[1], true, 0),
            (t[2], false, 1),
            (t[3], false, 1)
        ]
    );

    // One write deletes the network row; each membership its own; audited.
    assert_eq!(
        ws.iter()
            .filter(|x| matches!(x, Write::DeleteNetwork(id) if *id == a))
            .count(),
        1
    );
    assert_eq!(
        ws.iter()
            .filter(|x| matches!(x, Write::DeleteMembership { network_id, .. } if *network_id == a))
            .count(),
        3
    );
    let audit = ws
        .iter()
        .find_map(|x| match x {
            Write::Audit(r) if r.action == "network.remove" => Some(r),
            _ => None,
        })
        .expect("audited");
    assert_eq!(audit.target, "a");
    assert_eq!(audit.detail["members"], 3);
    assert_eq!(
        audit.detail["tokens_revoked"],
        serde_json::json!([t[0], t[1]])
    );

    // Members get a delta that drops the network (no snapshot); nobody gets
    // a per-peer change in the gone network; every node's map before, with
    // the deltas it received applied, is its map now.
    let o = o.expect("maps changed");
    let out = compile(&w, &o);
    assert!(
        !out.iter().any(|x| matches!(x.payload, Payload::Resync)),
        "{out:?}"
    );
    let removed = recipients_of(
        &w,
        &o,
        |c| matches!(c, MapChange::NetworkRemove { network } if network == "a"),
    );
    assert_eq!(removed, ["n1", "n2", "n3"]);
    for x in &out {
        if let Payload::Delta(d) = &x.payload {
            let d = &d.to_map_delta();
            assert!(
                !d.changes.iter().any(|c| matches!(
                    c,
                    MapChange::PeerRemove { network, .. } | MapChange::PeerUpsert { network, .. }
                        if network == "a"
                )),
                "{d:?}"
            );
        }
    }
    for (name, mut map) in before {
        let me = id(&w, &name);
        for x in out.iter().filter(|x| x.recipients.contains(&me)) {
            if let Payload::Delta(d) = &x.payload {
                let d = &d.to_map_delta();
                map.apply(d).unwrap();
            }
        }
        let now = snapshot(&w, me).unwrap();
        map.version = now.version;
        assert_eq!(map, now, "{name}: the map before plus its deltas");
    }
    let n1 = snapshot(&w, id(&w, "n1")).expect("n1 still has a map");
    assert!(n1.networks.is_empty());
    let n3 = snapshot(&w, id(&w, "n3")).unwrap();
    let names: Vec<&str> = n3.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    assert!(n3.networks[0].routes.is_empty() && n3.services.is_empty());

    // The same state after a restart from the store.
    writes.extend(ws);
    let mut store = SqliteStore::open_in_memory().unwrap();
    store.apply(&writes).unwrap();
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    assert!(back.network_by_name("a").is_none());
    assert_eq!(back.node_ids().count(), 4);
    assert_eq!(nets(&back, "n3"), nets(&w, "n3"));
    assert!(nets(&back, "n1").is_empty());
    assert_eq!(back.policy.rec.text, w.policy.rec.text);
    let back_tokens: Vec<(u64, bool, usize)> = back
        .tokens()
        .map(|t| (t.id, t.revoked, t.networks.len()))
        .collect();
    assert_eq!(back_tokens, tokens);
    assert!(back.service_list().services.is_empty());
    assert_eq!(
        snapshot(&back, id(&back, "n3")),
        snapshot(&w, id(&w, "n3")).map(|m| NetworkMap {
            version: back.version,
            ..m
        })
    );
}

#[test]
fn after_removal_the_name_cidr_and_tokens_behave() {
    let mut writes = Vec::new();
    let mut w = furnished(&mut writes);
    run(&mut w, remove("a")).0.unwrap();

    // Unknown now: 404.
    let e = run(&mut w, remove("a")).0.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (404, "network_not_found"));

    // A revoked token registers nobody; t3 still joins b.
    let reg = |i: u8, tok: &str| Registration {
        node_key: NodeKey::from_bytes([40 + i; 32]),
        token_hash: SecretHash::of(tok),
        pow_bits: 0,
        name: Some(format!("m{i}")),
        hostname: None,
        facts: None,
        credential_hash: SecretHash::of(&format!("m{i}")),
    };
    assert!(run(&mut w, reg(1, "t1")).0.is_err());
    let joined = run(&mut w, reg(2, "t3")).0.unwrap();
    assert_eq!(joined.addresses.len(), 1);

    // The name and the CIDR are free again; the policy gets one default
    // rule for it, not two.
    run(
        &mut w,
        NewNetwork {
            name: "a".into(),
            ipv4_cidr: "10.0.0.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
    )
    .0
    .unwrap();
    assert_eq!(
        w.policy.rec.text.matches("network:a").count(),
        2,
        "from and to of one rule"
    );
}

#[test]
fn an_edited_policy_keeps_its_rule_and_an_empty_network_goes_quietly() {
    let mut writes = Vec::new();
    let mut w = world(&mut writes);
    run(
        &mut w,
        NewNetwork {
            name: "c".into(),
            ipv4_cidr: "10.0.2.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        },
    )
    .0
    .unwrap();
    let text = w
        .policy
        .rec
        .text
        .replace("members of c may reach each other", "c talks to itself");
    run(
        &mut w,
        crate::model::SetPolicy {
            text,
            expect_version: None,
        },
    )
    .0
    .unwrap();
    let version = w.policy.rec.version;
    let (r, o, _) = run(&mut w, remove("c"));
    let gone = r.unwrap();
    assert_eq!((gone.members, gone.orphaned), (0, 0));
    assert!(!gone.policy_rule_removed);
    assert_eq!(
        w.policy.rec.version, version,
        "an edited policy is left alone"
    );
    // No member, no policy change: no map changed, the version stays.
    assert!(o.is_none());
}

#[test]
fn a_default_rule_with_keys_added_is_left_alone() {
    let mut w = world(&mut Vec::new());
    let rule = render_rule(&Rule::network_members("b"));
    assert!(w.policy.rec.text.contains(&rule));
    let text = w
        .policy
        .rec
        .text
        .replace(&rule, &format!("{rule}proto = \"tcp\"\n"));
    run(
        &mut w,
        crate::model::SetPolicy {
            text: text.clone(),
            expect_version: None,
        },
    )
    .0
    .unwrap();
    let gone = run(&mut w, remove("b")).0.unwrap();
    assert!(!gone.policy_rule_removed);
    assert_eq!(w.policy.rec.text, text);
}
