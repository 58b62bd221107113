//! Node data and secrets: precedence, bounds, who a change reaches, audit
//! entries without values, removal, and a restart from the store.

use weft_proto::NodeKey;
use weft_proto::data::{
    DataScope, MAX_KEY_LEN, MAX_KEYS_PER_SCOPE, MAX_NODE_BYTES, MAX_SCOPE_BYTES, MAX_SEALED_BYTES,
    MAX_SECRETS_PER_NODE, MAX_VALUE_BYTES, SEALED_OVERHEAD, SetDataRequest, UnsetDataRequest,
    UnsetSecretRequest,
};
use weft_proto::netmap::MapChange;

use super::*;
use crate::model::{
    NewNetwork, NewToken, NodePatch, Operation, Outcome, Registration, RemoveNode, UpdateNode,
};
use crate::netmap::{Payload, compile, snapshot};
use crate::secret::SecretHash;
use crate::store::Write;
use crate::store::testing::test_store;

/// Networks `a` and `b`; n1 (tags web, db) and n2 (web) in `a`, n3 (no tag)
/// in `a` and `b`, n4 in `b`.
pub(crate) fn world(writes: &mut Vec<Write>) -> World {
    let mut w = World::default();
    let mut b = Batch::default();
    for (name, cidr) in [("a", "10.0.0.0/24"), ("b", "10.0.1.0/24")] {
        let net = NewNetwork {
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        };
        w.apply(&mut b, &Actor::Admin, net, 0).unwrap();
    }
    for (tok, nets, tags) in [
        ("t1", vec!["a"], vec!["web", "db"]),
        ("t2", vec!["a"], vec!["web"]),
        ("t3", vec!["a", "b"], vec![]),
        ("t4", vec!["b"], vec![]),
    ] {
        let token = NewToken {
            networks: nets.into_iter().map(String::from).collect(),
            tags: tags.into_iter().map(String::from).collect(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of(tok),
        };
        w.apply(&mut b, &Actor::Admin, token, 0).unwrap();
    }
    for i in 1..=4u8 {
        let reg = Registration {
            node_key: NodeKey::from_bytes([i; 32]),
            token_hash: SecretHash::of(&format!("t{i}")),
            pow_bits: 0,
            name: Some(format!("n{i}")),
            hostname: None,
            facts: None,
            credential_hash: SecretHash::of(&format!("cred{i}")),
        };
        w.apply(&mut b, &Actor::Node(NodeKey::from_bytes([i; 32])), reg, 0)
            .unwrap();
    }
    w.finish_batch(&mut b);
    writes.append(&mut b.writes);
    w
}

pub(crate) fn id(w: &World, name: &str) -> NodeId {
    w.find_node(name).unwrap().rec.id
}

fn set(scope: DataScope, key: &str, value: &str) -> SetData {
    SetData(SetDataRequest {
        scope,
        key: key.into(),
        value: value.into(),
    })
}

fn tag(t: &str) -> DataScope {
    DataScope::Tag(t.into())
}

fn value(w: &World, node: &str, key: &str) -> Option<String> {
    w.node_data(id(w, node))
        .0
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.value)
}

/// Runs `op` as one batch: its result, the batch's outcome and writes.
fn run<O: Operation>(
    w: &mut World,
    op: O,
) -> (Result<O::Output, ApiError>, Option<Outcome>, Vec<Write>) {
    let mut b = Batch::default();
    let r = w.apply(&mut b, &Actor::Admin, op, 5_000);
    let o = w.finish_batch(&mut b);
    (r, o, b.writes)
}

/// Who receives a change that `wanted` picks for `outcome`, by name.
pub(crate) fn recipients_of(
    w: &World,
    o: &Outcome,
    wanted: impl Fn(&MapChange) -> bool,
) -> Vec<String> {
    let mut names = Vec::new();
    for out in compile(w, o) {
        let Payload::Delta(d) = &out.payload else {
            continue;
        };
        let d = &d.to_map_delta();
        if d.changes.iter().any(&wanted) {
            for r in out.recipients.iter() {
                names.push(w.node(*r).unwrap().rec.name.clone());
            }
        }
    }
    names.sort();
    names
}

/// Who receives a `MapChange::Data` for `outcome`, by name.
fn data_recipients(w: &World, o: &Outcome) -> Vec<String> {
    recipients_of(w, o, |c| matches!(c, MapChange::Data { .. }))
}

#[test]
fn precedence_is_node_then_tag_then_network() {
    let mut w = world(&mut Vec::new());
    run(&mut w, set(DataScope::Network("a".into()), "k", "net-a"))
        .0
        .unwrap();
    run(&mut w, set(DataScope::Network("b".into()), "k", "net-b"))
        .0
        .unwrap();
    run(&mut w, set(tag("web"), "k", "tag-web")).0.unwrap();
    run(&mut w, set(tag("db"), "k", "tag-db")).0.unwrap();
    run(&mut w, set(DataScope::Node("n2".into()), "k", "node-n2"))
        .0
        .unwrap();
    // n1: tags db and web; the tag that sorts first wins.
    assert_eq!(value(&w, "n1", "k").as_deref(), Some("tag-db"));
    assert_eq!(value(&w, "n2", "k").as_deref(), Some("node-n2"));
    // n3 is in a and b: the network that sorts first.
    assert_eq!(value(&w, "n3", "k").as_deref(), Some("net-a"));
    assert_eq!(value(&w, "n4", "k").as_deref(), Some("net-b"));
    // The map carries the resolved entries, sorted by key.
    run(&mut w, set(DataScope::Network("a".into()), "a-first", "1"))
        .0
        .unwrap();
    let map = snapshot(&w, id(&w, "n3")).unwrap();
    let keys: Vec<&str> = map.data.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a-first", "k"]);
    // Unsetting the node's entry uncovers its tag's.
    run(
        &mut w,
        UnsetData(UnsetDataRequest {
            scope: DataScope::Node("n2".into()),
            key: "k".into(),
        }),
    )
    .0
    .unwrap();
    assert_eq!(value(&w, "n2", "k").as_deref(), Some("tag-web"));
}

#[test]
fn a_change_reaches_exactly_the_nodes_it_affects() {
    let mut w = world(&mut Vec::new());
    let (_, o, _) = run(&mut w, set(tag("web"), "k", "1"));
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n1", "n2"]);
    // n2 overrides it: a later tag change no longer reaches n2.
    let (_, o, _) = run(&mut w, set(DataScope::Node("n2".into()), "k", "mine"));
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n2"]);
    let (r, o, _) = run(&mut w, set(tag("web"), "k", "2"));
    assert_eq!(r.unwrap().nodes.len(), 1);
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n1"]);
    // A network entry is shadowed for n1 and n2, so only n3 gets it.
    let (_, o, _) = run(&mut w, set(DataScope::Network("a".into()), "k", "net"));
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n3"]);
    // Setting the same value again changes nothing: no version, no event.
    let (r, o, writes) = run(&mut w, set(tag("web"), "k", "2"));
    assert!(r.unwrap().nodes.is_empty());
    assert!(o.is_none() && writes.is_empty());
    // A tag nobody has: stored, no map changes.
    let (r, o, _) = run(&mut w, set(tag("nobody"), "k", "x"));
    assert!(r.unwrap().nodes.is_empty() && o.is_none());
    // Gaining a tag with data reaches that node only.
    let patch = NodePatch {
        tags: Some(["nobody".to_string()].into()),
        ..NodePatch::default()
    };
    let (_, o, _) = run(
        &mut w,
        UpdateNode {
            node: "n4".into(),
            patch,
        },
    );
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n4"]);
    assert_eq!(value(&w, "n4", "k").as_deref(), Some("x"));
    // A secret reaches its node only.
    let (_, o, _) = run(
        &mut w,
        SetSecret {
            node: "n3".into(),
            key: "db".into(),
            sealed: vec![1; SEALED_OVERHEAD + 4],
        },
    );
    assert_eq!(data_recipients(&w, &o.unwrap()), ["n3"]);
    // The delta carries the whole new lists, as a snapshot would.
    let map = snapshot(&w, id(&w, "n3")).unwrap();
    assert_eq!(map.secrets.len(), 1);
    assert_eq!(
        map.secrets[0].sealed_bytes().unwrap(),
        vec![1; SEALED_OVERHEAD + 4]
    );
}

#[test]
fn entries_carry_the_map_version_that_brought_them() {
    let mut w = world(&mut Vec::new());
    let before = w.version;
    run(&mut w, set(tag("web"), "k", "1")).0.unwrap();
    assert_eq!(w.version, before + 1);
    let map = snapshot(&w, id(&w, "n1")).unwrap();
    assert_eq!(map.data_value("k").unwrap().version, before + 1);
}

#[test]
fn keys_values_and_sealed_secrets_at_under_and_over_their_bounds() {
    let mut w = world(&mut Vec::new());
    let node = || DataScope::Node("n1".into());
    for (len, ok) in [
        (MAX_KEY_LEN - 1, true),
        (MAX_KEY_LEN, true),
        (MAX_KEY_LEN + 1, false),
    ] {
        let r = run(&mut w, set(node(), &"k".repeat(len), "v")).0;
        assert_eq!(r.is_ok(), ok, "key of {len}");
    }
    for (len, ok) in [
        (MAX_VALUE_BYTES - 1, true),
        (MAX_VALUE_BYTES, true),
        (MAX_VALUE_BYTES + 1, false),
    ] {
        let r = run(&mut w, set(node(), "v", &"x".repeat(len))).0;
        match r {
            Ok(_) => assert!(ok, "value of {len}"),
            Err(e) => {
                assert!(!ok, "value of {len}");
                assert_eq!(e.code(), "value_too_long");
            }
        }
    }
    for (len, ok) in [
        (SEALED_OVERHEAD - 1, false),
        (SEALED_OVERHEAD, true),
        (MAX_SEALED_BYTES, true),
        (MAX_SEALED_BYTES + 1, false),
    ] {
        let op = SetSecret {
            node: "n1".into(),
            key: "s".into(),
            sealed: vec![7; len],
        };
        assert_eq!(run(&mut w, op).0.is_ok(), ok, "sealed of {len}");
    }
    assert_eq!(
        run(&mut w, set(node(), "bad key", "v"))
            .0
            .unwrap_err()
            .code(),
        "invalid_key"
    );
    // Keys per scope: the last one fits, one more is refused; replacing
    // an existing key still works at the limit.
    let scope = || tag("many");
    for i in 0..MAX_KEYS_PER_SCOPE {
        run(&mut w, set(scope(), &format!("k{i}"), "v")).0.unwrap();
    }
    let over = run(&mut w, set(scope(), "one-more", "v")).0.unwrap_err();
    assert_eq!(over.code(), "too_many_keys");
    run(&mut w, set(scope(), "k0", "new")).0.unwrap();
    for i in 0..MAX_SECRETS_PER_NODE {
        let op = SetSecret {
            node: "n2".into(),
            key: format!("s{i}"),
            sealed: vec![1; SEALED_OVERHEAD],
        };
        run(&mut w, op).0.unwrap();
    }
    let op = SetSecret {
        node: "n2".into(),
        key: "one-more".into(),
        sealed: vec![1; SEALED_OVERHEAD],
    };
    assert_eq!(run(&mut w, op).0.unwrap_err().code(), "too_many_keys");
}

#[test]
fn audit_entries_name_keys_but_never_values_or_ciphertext() {
    let mut w = world(&mut Vec::new());
    let (_, _, writes) = run(&mut w, set(tag("web"), "db.url", "postgres://hunter2@db"));
    let sealed: Vec<u8> = (0..80u8).collect();
    let (_, _, mut more) = run(
        &mut w,
        SetSecret {
            node: "n1".into(),
            key: "db.password".into(),
            sealed: sealed.clone(),
        },
    );
    let (_, _, mut unset) = run(
        &mut w,
        UnsetSecret(UnsetSecretRequest {
            node: "n1".into(),
            key: "db.password".into(),
        }),
    );
    let mut all = writes;
    all.append(&mut more);
    all.append(&mut unset);
    let audits: Vec<&crate::store::AuditRecord> = all
        .iter()
        .filter_map(|w| match w {
            Write::Audit(a) => Some(a),
            _ => None,
        })
        .collect();
    let actions: Vec<&str> = audits.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["data.set", "secret.set", "secret.unset"]);
    let b64 = weft_proto::data::encode_sealed(&sealed);
    for a in &audits {
        let text = a.detail.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&b64), "{text}");
        assert!(!text.contains("[0,1,2,3"), "{text}");
    }
    assert_eq!(audits[0].target, "tag:web");
    assert_eq!(audits[1].detail["key"], "db.password");
    assert_eq!(audits[1].detail["sealed_bytes"], 80);
}

#[test]
fn unknown_scopes_keys_and_nodes_are_refused() {
    let mut w = world(&mut Vec::new());
    let code = |r: Result<DataChanged, ApiError>| r.unwrap_err().code();
    assert_eq!(
        code(run(&mut w, set(DataScope::Node("nope".into()), "k", "v")).0),
        "node_not_found"
    );
    assert_eq!(
        code(run(&mut w, set(DataScope::Network("nope".into()), "k", "v")).0),
        "network_not_found"
    );
    assert_eq!(
        code(run(&mut w, set(tag("Bad Tag"), "k", "v")).0),
        "invalid_tag"
    );
    let unset = UnsetData(UnsetDataRequest {
        scope: tag("web"),
        key: "absent".into(),
    });
    assert_eq!(code(run(&mut w, unset).0), "key_not_found");
    let unset = UnsetSecret(UnsetSecretRequest {
        node: "n1".into(),
        key: "absent".into(),
    });
    assert_eq!(run(&mut w, unset).0.unwrap_err().code(), "key_not_found");
}

#[test]
fn a_restart_keeps_data_and_secrets_and_a_removed_node_takes_its_own() {
    let mut store = test_store();
    let mut writes = Vec::new();
    let mut w = world(&mut writes);
    writes.extend(run(&mut w, set(tag("web"), "k", "tag")).2);
    writes.extend(run(&mut w, set(DataScope::Network("b".into()), "k", "net")).2);
    writes.extend(run(&mut w, set(DataScope::Node("n1".into()), "own", "1")).2);
    let secret = SetSecret {
        node: "n1".into(),
        key: "s".into(),
        sealed: vec![9; 60],
    };
    writes.extend(run(&mut w, secret).2);
    store.apply(&writes).unwrap();
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    for n in ["n1", "n2", "n3", "n4"] {
        assert_eq!(
            back.node_data(id(&back, n)),
            w.node_data(id(&w, n)),
            "{n} after a restart"
        );
    }
    assert_eq!(back.data_items(None), w.data_items(None));
    assert_eq!(back.secret_items(None).len(), 1);
    // Removing n1 removes its node entries and secrets, in memory and in
    // the store (a later node may get its id).
    let n1 = id(&w, "n1");
    let (r, _, writes) = run(&mut w, RemoveNode("n1".into()));
    r.unwrap();
    store.apply(&writes).unwrap();
    assert_eq!(w.node_data(n1), (Vec::new(), Vec::new()));
    assert!(w.secret_items(None).is_empty());
    let back = World::from_snapshot(store.load().unwrap(), Vec::new());
    assert!(back.secret_items(None).is_empty());
    assert!(
        back.data_items(None)
            .iter()
            .all(|i| i.scope != DataScope::Node("n1".into()))
    );
    assert_eq!(back.data_items(None).len(), 2);
}

/// Fills `scope` with 3-character keys `{prefix}NN` and values so that its
/// keys and values total exactly `total` bytes.
fn fill(w: &mut World, scope: &DataScope, prefix: char, total: usize) {
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let key = format!("{prefix}{i:02}");
        let v = (left - key.len()).min(MAX_VALUE_BYTES);
        run(w, set(scope.clone(), &key, &"x".repeat(v))).0.unwrap();
        left -= key.len() + v;
        i += 1;
    }
}

#[test]
fn scope_and_node_byte_budgets_at_under_and_over_their_bounds() {
    let mut w = world(&mut Vec::new());
    let web = tag("web");
    fill(&mut w, &web, 'w', MAX_SCOPE_BYTES - 10);
    // w63 holds the remainder; grow it to just under, at and just over.
    let last = w
        .data_items(Some(&w.scope_ref(&web).unwrap()))
        .into_iter()
        .max_by_key(|i| i.key.clone())
        .unwrap();
    let base = last.value.len();
    run(&mut w, set(web.clone(), &last.key, &"y".repeat(base + 9)))
        .0
        .unwrap();
    run(&mut w, set(web.clone(), &last.key, &"z".repeat(base + 10)))
        .0
        .unwrap();
    let over = run(&mut w, set(web.clone(), &last.key, &"q".repeat(base + 11)));
    assert_eq!(over.0.unwrap_err().code(), "scope_too_large");
    assert!(over.1.is_none() && over.2.is_empty(), "no effect");
    assert_eq!(value(&w, "n2", &last.key), Some("z".repeat(base + 10)));

    // n1 has tags web and db and network a; web holds exactly 1 MiB now.
    assert_eq!(MAX_NODE_BYTES, 2 * MAX_SCOPE_BYTES);
    fill(&mut w, &tag("db"), 'd', MAX_SCOPE_BYTES - 1);
    let a = || DataScope::Network("a".into());
    // Over n1's budget by one byte: refused, no effect.
    let r = run(&mut w, set(a(), "a0", ""));
    assert_eq!(r.0.unwrap_err().code(), "node_data_too_large");
    assert!(r.1.is_none() && r.2.is_empty());
    assert_eq!(value(&w, "n1", "a0"), None);
    // Exactly at it: accepted.
    run(&mut w, set(a(), "a", "")).0.unwrap();
    let secret = |node: &str| SetSecret {
        node: node.into(),
        key: "s".into(),
        sealed: vec![1; SEALED_OVERHEAD],
    };
    let r = run(&mut w, secret("n1"));
    assert_eq!(r.0.unwrap_err().code(), "node_data_too_large");
    assert!(r.2.is_empty());
    assert!(w.secret_items(Some(id(&w, "n1"))).is_empty(), "no effect");
    // n2 (web and a: 1 MiB + 1 byte) has room.
    run(&mut w, secret("n2")).0.unwrap();
}
