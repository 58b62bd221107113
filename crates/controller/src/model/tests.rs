//! The aggregates' own invariants: indexes that follow their rows, typed
//! results, and a batch's outcome as a value (the map compiler's side is
//! tested in `netmap::tests`).

use super::*;
use crate::secret::SecretHash;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

/// A world with network `a` (a /29: five addresses) and token `t` for it,
/// and the batch that made them (not closed).
fn world() -> (World, Batch) {
    network_and_token("10.0.0.0/29", Some(3))
}

/// A world with network `a` (`cidr`) and token `t` for it with `max_uses`,
/// and the open batch that made them: the start the model's tests share.
pub(super) fn network_and_token(cidr: &str, max_uses: Option<u32>) -> (World, Batch) {
    let mut w = World::default();
    let mut b = Batch::default();
    let net = NewNetwork {
        name: "a".into(),
        ipv4_cidr: cidr.parse().unwrap(),
        ipv6_prefix: None,
        dns_domain: "weft.internal".into(),
        pow_difficulty: 0,
    };
    w.apply(&mut b, &Actor::Admin, net, 0).unwrap();
    let token = NewToken {
        networks: vec!["a".into()],
        tags: Default::default(),
        expires_at: u64::MAX,
        max_uses,
        description: None,
        hash: SecretHash::of("t"),
    };
    w.apply(&mut b, &Actor::Admin, token, 0).unwrap();
    (w, b)
}

fn registration(i: u8) -> Registration {
    Registration {
        node_key: key(i),
        token_hash: SecretHash::of("t"),
        pow_bits: 0,
        name: Some(format!("n{i}")),
        hostname: None,
        facts: None,
        credential_hash: SecretHash::of(&format!("cred{i}")),
    }
}

fn register(w: &mut World, b: &mut Batch, i: u8) -> Result<Registered, ApiError> {
    w.apply(b, &Actor::Node(key(i)), registration(i), 0)
}

#[test]
fn node_indexes_follow_renames_credentials_and_removal() {
    let (mut w, mut b) = world();
    let first = register(&mut w, &mut b, 1).unwrap();
    assert_eq!(first.name, "n1");
    assert_eq!(first.addresses[0].ipv4.to_string(), "10.0.0.2");

    // A rename answers with the node as it now is; only the new name finds it.
    let patch = NodePatch {
        name: Some("renamed".into()),
        ..NodePatch::default()
    };
    let update = UpdateNode {
        node: "n1".into(),
        patch,
    };
    let d = w.apply(&mut b, &Actor::Admin, update, 0).unwrap();
    assert_eq!(d.node.rec.name, "renamed");
    assert_eq!(d.addresses, first.addresses);
    assert!(w.find_node("n1").is_none());
    assert_eq!(w.find_node("renamed").map(|n| n.rec.node_key), Some(key(1)));

    // Registering again replaces the credential: the old one is forgotten.
    let again = Registration {
        node_key: key(1),
        token_hash: SecretHash::of("t"),
        pow_bits: 0,
        name: None,
        hostname: None,
        facts: None,
        credential_hash: SecretHash::of("cred1b"),
    };
    w.apply(&mut b, &Actor::Node(key(1)), again, 0).unwrap();
    assert!(w.node_by_credential(&SecretHash::of("cred1")).is_none());
    assert!(w.node_by_credential(&SecretHash::of("cred1b")).is_some());

    // Removal takes the row and every index, and frees the address.
    w.apply(&mut b, &Actor::Admin, RemoveNode("renamed".into()), 0)
        .unwrap();
    assert!(w.find_node("renamed").is_none());
    assert!(w.find_node_by_key(&key(1)).is_none());
    assert!(w.node_by_credential(&SecretHash::of("cred1b")).is_none());
    assert_eq!(w.node_count(), 0);
    let e = w
        .apply(&mut b, &Actor::Admin, RemoveNode("renamed".into()), 0)
        .unwrap_err();
    assert_eq!(e.code(), "node_not_found");
    assert!(w.network_by_name("a").unwrap().members.is_empty());
    // The next address after the cursor, as before.
    let second = register(&mut w, &mut b, 2).unwrap();
    assert_eq!(second.addresses[0].ipv4.to_string(), "10.0.0.3");
}

#[test]
fn token_status_is_typed_and_counts_uses() {
    let (mut w, mut b) = world();
    for i in 1..=3 {
        register(&mut w, &mut b, i).unwrap();
    }
    let t = w.tokens().next().unwrap().clone();
    assert_eq!(t.uses, 3);
    assert_eq!(w.token(&t, 0).status, TokenStatus::Exhausted);
    assert_eq!(
        register(&mut w, &mut b, 4).unwrap_err().code(),
        "token_exhausted"
    );
    let revoked = w
        .apply(&mut b, &Actor::Admin, RevokeToken(t.id), 0)
        .unwrap();
    assert_eq!(revoked.status, TokenStatus::Revoked);
    assert_eq!(revoked.networks, ["a"]);
    // Revoked wins over exhausted, even for a retry of a registration.
    assert_eq!(
        register(&mut w, &mut b, 1).unwrap_err().code(),
        "token_revoked"
    );
    let e = w
        .apply(&mut b, &Actor::Admin, RevokeToken(99), 0)
        .unwrap_err();
    assert_eq!(e.code(), "token_not_found");
}

#[test]
fn a_closed_batch_hands_back_its_outcome_and_keeps_nothing() {
    let (mut w, mut b) = world();
    // Creating the network moved the version (a policy edit).
    let o = w.finish_batch(&mut b).expect("the version moved");
    assert!(o.touched.recompile);
    assert_eq!(w.version, 1);
    assert!(
        b.touched.is_empty(),
        "the batch's changes moved to the outcome"
    );

    let mut b = Batch::default();
    register(&mut w, &mut b, 1).unwrap();
    register(&mut w, &mut b, 2).unwrap();
    let o = w.finish_batch(&mut b).expect("the version moved");
    assert_eq!(w.version, 2);
    assert_eq!(o.policy_changed.len(), 2);
    // Both are new: nobody saw them before the batch; they see each other now.
    let (k1, k2) = (key(1), key(2));
    let (now, before) = o.viewpoints(&w, &k1);
    let (other_now, other_before) = o.viewpoints(&w, &k2);
    assert!(now.unwrap().sees(&other_now.unwrap()));
    assert!(before.is_none() && other_before.is_none());

    // A batch that changes no map has no outcome and keeps the version.
    let mut b = Batch::default();
    let missing = w.apply(&mut b, &Actor::Admin, RemoveNode("nobody".into()), 0);
    assert!(missing.is_err());
    assert!(w.finish_batch(&mut b).is_none());
    assert_eq!(w.version, 2);
}

#[test]
fn host_facts_are_stored_at_registration_and_audited_only_when_they_change() {
    use weft_proto::facts::HostFacts;
    let audits = |b: &Batch| -> Vec<(String, serde_json::Value)> {
        b.writes
            .iter()
            .filter_map(|w| match w {
                Write::Audit(a) if a.action == "node.facts" => {
                    Some((a.actor.clone(), a.detail["changed"].clone()))
                }
                _ => None,
            })
            .collect()
    };
    let facts = HostFacts {
        kernel_version: Some("6.1.0".into()),
        boot_time_ms: Some(1_700_000_000_000),
        ..HostFacts::default()
    };
    let (mut w, _) = world();
    let mut b = Batch::default();
    let r = Registration {
        facts: Some(facts.clone()),
        ..registration(1)
    };
    w.apply(&mut b, &Actor::Node(key(1)), r, 5_000).unwrap();
    let n = w.find_node("n1").unwrap();
    assert_eq!(n.rec.facts.as_deref(), Some(&facts));
    assert_eq!(n.rec.facts_changed_ms, Some(5_000));
    let a = audits(&b);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, format!("node:{}", key(1)));
    assert_eq!(a[0].1["kernel_version"]["to"], "6.1.0");
    assert!(
        b.writes
            .iter()
            .any(|w| matches!(w, Write::PutNode(rec) if rec.facts.as_deref() == Some(&facts)))
    );

    let id = n.rec.id;
    let report = |facts: Option<HostFacts>| Report {
        node: id,
        endpoints: None,
        facts,
    };
    let actor = Actor::Node(key(1));
    // The same facts, no facts, or a boot time a second off: no change.
    let jitter = HostFacts {
        boot_time_ms: Some(1_700_000_001_000),
        ..facts.clone()
    };
    for same in [Some(facts.clone()), None, Some(jitter)] {
        let mut b = Batch::default();
        w.apply(&mut b, &actor, report(same), 9_000).unwrap();
        assert!(audits(&b).is_empty());
        assert_eq!(w.node(id).unwrap().rec.facts.as_deref(), Some(&facts));
        assert_eq!(w.node(id).unwrap().rec.facts_changed_ms, Some(5_000));
    }
    // A new kernel: stored, audited with the old and new value, no map moves.
    let upgraded = HostFacts {
        kernel_version: Some("6.8.0".into()),
        ..facts.clone()
    };
    let mut b = Batch::default();
    w.apply(&mut b, &actor, report(Some(upgraded.clone())), 10_000)
        .unwrap();
    let a = audits(&b);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].1,
        serde_json::json!({"kernel_version": {"from": "6.1.0", "to": "6.8.0"}})
    );
    assert_eq!(w.node(id).unwrap().rec.facts.as_deref(), Some(&upgraded));
    assert_eq!(w.node(id).unwrap().rec.facts_changed_ms, Some(10_000));
    assert!(w.finish_batch(&mut b).is_none(), "facts are in no map");
}
