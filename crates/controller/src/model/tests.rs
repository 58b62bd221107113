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
    let mut w = World::default();
    let mut b = Batch::default();
    let net = NewNetwork {
        name: "a".into(),
        ipv4_cidr: "10.0.0.0/29".parse().unwrap(),
        ipv6_prefix: None,
        dns_domain: "weft.internal".into(),
        pow_difficulty: 0,
    };
    w.apply(&mut b, &Actor::Admin, net, 0).unwrap();
    let token = NewToken {
        networks: vec!["a".into()],
        tags: Default::default(),
        expires_at: u64::MAX,
        max_uses: Some(3),
        description: None,
        hash: SecretHash::of("t"),
    };
    w.apply(&mut b, &Actor::Admin, token, 0).unwrap();
    (w, b)
}

fn register(w: &mut World, b: &mut Batch, i: u8) -> Result<Registered, ApiError> {
    let r = Registration {
        node_key: key(i),
        token_hash: SecretHash::of("t"),
        pow_bits: 0,
        name: Some(format!("n{i}")),
        hostname: None,
        credential_hash: SecretHash::of(&format!("cred{i}")),
    };
    w.apply(b, &Actor::Node(key(i)), r, 0)
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
