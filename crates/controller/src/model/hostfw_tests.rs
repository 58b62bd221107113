//! The host firewall: validation with lines, per-node compile, who a change
//! reaches, dynamic rules and their expiry, audit, and a restart from the store.

use weft_proto::hostfw::{ChainPolicy, Direction, Proto};
use weft_proto::netmap::MapChange;

use super::*;
use crate::model::data::tests::{id, recipients_of, world};
use crate::model::{NodePatch, Operation, Outcome, RemoveNode, UpdateNode};
use crate::netmap::snapshot;
use crate::store::Write;
use crate::store::testing::test_store;

/// n1 (tags web, db), n2 (web), n3, n4: tag db and n3 get a firewall.
const FILE: &str = r#"[[firewall]]
nodes = ["tag:db", "n3"]
management = ["10.9.0.0/16"]

[[firewall.rule]]
proto = "tcp"
port = 5432
from = "10.0.0.0/24"
"#;

/// Runs `op` as admin at `now_ms` as one batch.
fn run_at<O: Operation>(
    w: &mut World,
    actor: Actor,
    op: O,
    now_ms: u64,
) -> (Result<O::Output, ApiError>, Option<Outcome>, Vec<Write>) {
    let mut b = Batch::default();
    let r = w.apply(&mut b, &actor, op, now_ms);
    let o = w.finish_batch(&mut b);
    (r, o, b.writes)
}

fn set(text: &str) -> SetFirewall {
    SetFirewall {
        text: text.into(),
        expect_version: None,
    }
}

fn allow(node: &str, port: &str, ttl_secs: Option<u64>) -> AllowRule {
    AllowRule(AllowRuleRequest {
        node: node.into(),
        direction: Direction::In,
        proto: Proto::Tcp,
        ports: port.into(),
        peers: vec!["192.0.2.0/24".into()],
        comment: "task".into(),
        ttl_secs,
    })
}

/// Who receives a `MapChange::HostFirewall` for `outcome`, by name.
fn recipients(w: &World, o: &Option<Outcome>) -> Vec<String> {
    o.as_ref().map_or_else(Vec::new, |o| {
        recipients_of(w, o, |c| matches!(c, MapChange::HostFirewall { .. }))
    })
}

fn audits(writes: &[Write]) -> Vec<(String, String)> {
    writes
        .iter()
        .filter_map(|wr| match wr {
            Write::Audit(a) => Some((a.action.clone(), a.target.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_invalid_file_is_refused_with_its_lines_and_changes_nothing() {
    let mut w = world(&mut Vec::new());
    let text = "[[firewall]]\nnodes = [\"*\"]\ninput = \"dorp\"\n\n[[firewall.rule]]\nport = 80\n";
    let (r, o, writes) = run_at(&mut w, Actor::Admin, set(text), 1_000);
    let e = r.unwrap_err();
    assert_eq!(e.code(), "firewall_invalid");
    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
    let msg = e.to_string();
    assert!(msg.contains("firewall:3:9: unknown chain policy"), "{msg}");
    assert!(msg.contains("3 | input = \"dorp\""), "{msg}");
    assert!(msg.contains("firewall:6:"), "{msg}");
    assert!(o.is_none() && writes.is_empty());
    assert_eq!(w.firewall_doc().version, 0);
    // A stale expected version is a conflict.
    let op = SetFirewall {
        text: FILE.into(),
        expect_version: Some(3),
    };
    let e = run_at(&mut w, Actor::Admin, op, 1_000).0.unwrap_err();
    assert_eq!(e.code(), "firewall_version_mismatch");
}

#[test]
fn the_file_compiles_per_node_and_reaches_exactly_the_nodes_it_changes() {
    let mut w = world(&mut Vec::new());
    let (r, o, writes) = run_at(&mut w, Actor::Admin, set(FILE), 1_000);
    let doc = r.unwrap();
    assert_eq!(doc.version, 1);
    let names: Vec<&str> = doc.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, vec!["n1", "n3"]);
    assert_eq!(recipients(&w, &o), vec!["n1", "n3"]);
    assert_eq!(
        audits(&writes),
        vec![("firewall.set".to_owned(), "firewall".to_owned())]
    );
    let n1 = w.node_host_firewall(id(&w, "n1")).unwrap().clone();
    assert_eq!(n1.version, w.version);
    assert_eq!(n1.input, ChainPolicy::Drop);
    assert_eq!(n1.management_ports, vec![22]);
    assert_eq!(n1.rules[0].id, "line:5");
    assert!(w.node_host_firewall(id(&w, "n2")).is_none());
    // The snapshot carries it; a node without one has none.
    let snap = snapshot(&w, id(&w, "n1")).unwrap();
    assert_eq!(snap.host_firewall.as_ref(), Some(&n1));
    assert_eq!(snapshot(&w, id(&w, "n2")).unwrap().host_firewall, None);

    // The same text again changes nothing.
    let (r, o, writes) = run_at(&mut w, Actor::Admin, set(FILE), 2_000);
    assert_eq!(r.unwrap().version, 1);
    assert!(o.is_none() && writes.is_empty());

    // A new version that changes only n3's firewall reaches only n3; n1's
    // spec keeps its version.
    let v1 = n1.version;
    let text = format!("{FILE}\n[[firewall]]\nnodes = \"n3\"\ninput = \"accept\"\n")
        .replace("[\"tag:db\", \"n3\"]", "\"tag:db\"");
    let (r, o, _) = run_at(&mut w, Actor::Admin, set(&text), 3_000);
    assert_eq!(r.unwrap().version, 2);
    assert_eq!(recipients(&w, &o), vec!["n3"]);
    assert_eq!(w.node_host_firewall(id(&w, "n1")).unwrap().version, v1);
    let n3 = w.node_host_firewall(id(&w, "n3")).unwrap();
    assert_eq!(n3.input, ChainPolicy::Accept);
    assert!(n3.version > v1);

    // Tagging n2 db gives it n1's profile: only n2 hears of it.
    let op = UpdateNode {
        node: "n2".into(),
        patch: NodePatch {
            tags: Some(["db".to_owned()].into()),
            ..NodePatch::default()
        },
    };
    let (r, o, _) = run_at(&mut w, Actor::Admin, op, 4_000);
    r.unwrap();
    assert_eq!(recipients(&w, &o), vec!["n2"]);
    assert!(w.node_host_firewall(id(&w, "n2")).is_some());

    // An empty file: nobody has one any more, and each of them hears it.
    let (_, o, _) = run_at(&mut w, Actor::Admin, set("# none\n"), 5_000);
    assert_eq!(recipients(&w, &o), vec!["n1", "n2", "n3"]);
    assert!(w.node_host_firewall(id(&w, "n1")).is_none());
}

#[test]
fn dynamic_rules_reach_their_node_expire_and_are_audited() {
    let mut w = world(&mut Vec::new());
    run_at(&mut w, Actor::Admin, set(FILE), 1_000).0.unwrap();
    // No firewall on n2: an allow would do nothing, so it is refused.
    let e = run_at(&mut w, Actor::Admin, allow("n2", "80", None), 2_000)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "no_host_firewall");
    let e = run_at(&mut w, Actor::Admin, allow("n1", "80,0", None), 2_000)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "invalid_rule");
    let e = run_at(&mut w, Actor::Admin, allow("nope", "80", None), 2_000)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "node_not_found");

    let (r, o, writes) = run_at(&mut w, Actor::Admin, allow("n1", "80", Some(60)), 2_000);
    let info = r.unwrap();
    assert_eq!(info.id, "dyn:1");
    assert_eq!(info.node, "n1");
    assert_eq!(info.rule.expires_at_ms, Some(62_000));
    assert_eq!(recipients(&w, &o), vec!["n1"]);
    assert_eq!(
        audits(&writes),
        vec![("firewall.allow".to_owned(), "node:n1".to_owned())]
    );
    let spec = w.node_host_firewall(id(&w, "n1")).unwrap();
    assert_eq!(spec.rules.last().unwrap().id, "dyn:1");
    let (r, _, _) = run_at(&mut w, Actor::Admin, allow("n3", "443", None), 2_000);
    assert_eq!(r.unwrap().id, "dyn:2");
    assert_eq!(w.firewall_rules(Some("n3")).unwrap().len(), 1);
    assert_eq!(w.firewall_rules(None).unwrap().len(), 2);

    // The sweep removes it once due, not before; only n1 hears of it.
    let (r, o, writes) = run_at(&mut w, Actor::System, SweepFirewall, 61_999);
    assert!(r.unwrap().is_empty());
    assert!(o.is_none() && writes.is_empty());
    let (r, o, writes) = run_at(&mut w, Actor::System, SweepFirewall, 62_000);
    assert_eq!(r.unwrap(), vec!["dyn:1"]);
    assert_eq!(recipients(&w, &o), vec!["n1"]);
    assert_eq!(
        audits(&writes),
        vec![("firewall.expire".to_owned(), "node:n1".to_owned())]
    );
    assert!(
        w.node_host_firewall(id(&w, "n1"))
            .unwrap()
            .rules
            .iter()
            .all(|r| r.id != "dyn:1")
    );

    // Revoke, by either spelling of the id.
    let (r, o, writes) = run_at(&mut w, Actor::Admin, RevokeRule { id: "2".into() }, 70_000);
    assert_eq!(r.unwrap().id, "dyn:2");
    assert_eq!(recipients(&w, &o), vec!["n3"]);
    assert_eq!(
        audits(&writes),
        vec![("firewall.revoke".to_owned(), "node:n3".to_owned())]
    );
    let e = run_at(
        &mut w,
        Actor::Admin,
        RevokeRule { id: "dyn:2".into() },
        70_000,
    )
    .0
    .unwrap_err();
    assert_eq!(e.code(), "rule_not_found");
}

#[test]
fn a_restart_keeps_the_file_and_rules_and_a_removed_node_takes_its_rules() {
    let mut store = test_store();
    let mut writes = Vec::new();
    let mut w = world(&mut writes);
    writes.extend(run_at(&mut w, Actor::Admin, set(FILE), 1_000).2);
    let (r, _, wr) = run_at(&mut w, Actor::Admin, allow("n1", "80-81", Some(600)), 2_000);
    r.unwrap();
    writes.extend(wr);
    let (r, _, wr) = run_at(&mut w, Actor::Admin, allow("n3", "22", None), 2_000);
    r.unwrap();
    writes.extend(wr);
    store.apply(&writes).unwrap();
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    assert_eq!(back.firewall_doc().text, FILE);
    assert_eq!(back.firewall_doc().version, 1);
    assert_eq!(
        back.firewall_rules(None).unwrap(),
        w.firewall_rules(None).unwrap()
    );
    for n in ["n1", "n2", "n3", "n4"] {
        let strip = |s: Option<&HostFirewallSpec>| {
            s.map(|s| HostFirewallSpec {
                version: 0,
                ..s.clone()
            })
        };
        assert_eq!(
            strip(back.node_host_firewall(id(&back, n))),
            strip(w.node_host_firewall(id(&w, n))),
            "{n} after a restart"
        );
    }
    // The next rule id continues.
    let mut back = back;
    let (r, _, _) = run_at(&mut back, Actor::Admin, allow("n3", "23", None), 3_000);
    assert_eq!(r.unwrap().id, "dyn:3");

    let (r, _, wr) = run_at(&mut w, Actor::Admin, RemoveNode("n1".into()), 3_000);
    r.unwrap();
    store.apply(&wr).unwrap();
    assert_eq!(w.firewall_rules(None).unwrap().len(), 1);
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    let left = back.firewall_rules(None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].node, "n3");
}

#[test]
fn a_rename_moves_a_node_out_of_a_profile_that_named_it() {
    let mut w = world(&mut Vec::new());
    run_at(&mut w, Actor::Admin, set(FILE), 1_000).0.unwrap();
    assert!(w.node_host_firewall(id(&w, "n3")).is_some());
    let op = UpdateNode {
        node: "n3".into(),
        patch: NodePatch {
            name: Some("n3b".into()),
            ..NodePatch::default()
        },
    };
    let (r, o, _) = run_at(&mut w, Actor::Admin, op, 2_000);
    r.unwrap();
    assert_eq!(recipients(&w, &o), vec!["n3b"]);
    assert!(w.node_host_firewall(id(&w, "n3b")).is_none());
}

#[test]
fn a_node_holds_at_most_max_rules_declared_and_dynamic_together() {
    let mut w = world(&mut Vec::new());
    let mut text = String::from("[[firewall]]\nnodes = \"n1\"\n");
    for p in 1..MAX_RULES {
        text.push_str(&format!("[[firewall.rule]]\nproto = \"tcp\"\nport = {p}\n"));
    }
    run_at(&mut w, Actor::Admin, set(&text), 1_000).0.unwrap();
    run_at(&mut w, Actor::Admin, allow("n1", "80", None), 2_000)
        .0
        .unwrap();
    let e = run_at(&mut w, Actor::Admin, allow("n1", "81", None), 2_000)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "too_many_rules");
    // A file that, with the node's dynamic rule, would pass the bound is
    // refused, naming the node.
    let more = format!("{text}[[firewall.rule]]\nproto = \"udp\"\nport = 1\n");
    let e = run_at(&mut w, Actor::Admin, set(&more), 3_000)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "firewall_invalid");
    assert!(e.to_string().contains("node n1"), "{e}");
}
