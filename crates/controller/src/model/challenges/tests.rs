//! A challenge is used once, by a successful registration, on every replica
//! replaying the batch; the set stays bounded and prunes by the batch time.

use super::*;
use crate::model::tests::network_and_token;
use crate::model::{AnyOp, ChangeBody, RecordedOp};
use crate::secret::SecretHash;
use crate::store::challenges::TAG_LEN;
use weft_proto::NodeKey;

const T0: u64 = 1_000_000;
const TTL: u64 = 60_000;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

/// A world with network `a` and token `t` (three uses) for it.
fn world() -> World {
    let (mut w, mut b) = network_and_token("10.0.0.0/24", Some(3));
    w.finish_batch(&mut b);
    w
}

fn op(i: u8, tag: u8, issued_ms: u64, token: &str, max_used: u32) -> ChallengedRegistration {
    ChallengedRegistration {
        challenge: UsedChallengeRecord {
            tag: [tag; TAG_LEN],
            expires_ms: issued_ms + TTL,
        },
        max_used,
        registration: Registration {
            node_key: key(i),
            token_hash: SecretHash::of(token),
            pow_bits: 0,
            name: Some(format!("n{i}")),
            hostname: None,
            facts: None,
            credential_hash: SecretHash::of(&format!("cred{i}")),
        },
    }
}

fn run(
    w: &mut World,
    o: ChallengedRegistration,
    now_ms: u64,
) -> (Result<Registered, ApiError>, Batch) {
    let mut b = Batch::default();
    let actor = Actor::Node(o.registration.node_key);
    let r = w.apply(&mut b, &actor, o, now_ms);
    (r, b)
}

fn code(r: Result<Registered, ApiError>) -> &'static str {
    r.err().map_or("ok", |e| e.code())
}

#[test]
fn a_challenge_is_used_once_and_only_by_a_successful_registration() {
    let mut w = world();
    // A failed registration (unknown token) leaves the challenge unused.
    let (r, b) = run(&mut w, op(1, 1, T0, "nope", 16), T0);
    assert_eq!(code(r), "invalid_token");
    assert!(b.writes.is_empty() && !w.challenge_used(&[1; TAG_LEN]));
    let (r, b) = run(&mut w, op(1, 1, T0, "t", 16), T0);
    assert!(r.is_ok());
    assert!(b.writes.contains(&Write::Challenge(ChallengeWrite::Use(
        UsedChallengeRecord {
            tag: [1; TAG_LEN],
            expires_ms: T0 + TTL,
        }
    ))));
    // Again, even by another node or a retry of the same one: refused,
    // nothing written.
    for i in [1, 2] {
        let (r, b) = run(&mut w, op(i, 1, T0, "t", 16), T0 + 1);
        assert_eq!(code(r), "invalid_challenge");
        assert!(b.writes.is_empty());
    }
    // An expired challenge is refused by the batch's clock too.
    let (r, _) = run(&mut w, op(3, 3, T0, "t", 16), T0 + TTL);
    assert_eq!(code(r), "invalid_challenge");
}

#[test]
fn the_set_is_bounded_and_pruned_by_the_batch_time_after_a_margin() {
    let mut w = world();
    assert!(run(&mut w, op(1, 1, T0, "t", 2), T0).0.is_ok());
    assert!(run(&mut w, op(2, 2, T0 + 10, "t", 2), T0 + 10).0.is_ok());
    // Full: refused with 503 rather than forgetting a live challenge.
    let (r, b) = run(&mut w, op(3, 3, T0 + 20, "t", 2), T0 + 20);
    assert_eq!(code(r), "too_many_registrations");
    assert!(b.writes.is_empty());
    // Expired but within the margin: still remembered, still full.
    let late = T0 + TTL + KEEP_AFTER_EXPIRY_MS - 1;
    let (r, _) = run(&mut w, op(3, 3, late, "t", 2), late);
    assert_eq!(code(r), "too_many_registrations");
    assert!(w.challenge_used(&[1; TAG_LEN]));
    // Past the margin: the first is pruned (one write), the second kept.
    let later = T0 + TTL + KEEP_AFTER_EXPIRY_MS;
    let (r, b) = run(&mut w, op(3, 3, later, "t", 2), later);
    assert!(r.is_ok(), "{r:?}");
    assert!(b.writes.contains(&Write::Challenge(ChallengeWrite::Prune {
        through_ms: T0 + TTL
    })));
    assert!(!w.challenge_used(&[1; TAG_LEN]));
    assert!(w.challenge_used(&[2; TAG_LEN]) && w.challenge_used(&[3; TAG_LEN]));
    assert_eq!(w.used_challenge_count(), 2);
}

#[test]
fn another_replica_replaying_the_registration_refuses_the_challenge_too() {
    let mut a = world();
    let mut b = world();
    let o = op(1, 7, T0, "t", 16);
    let mut batch = Batch::default();
    let actor = Actor::Node(key(1));
    a.apply(&mut batch, &actor, o.clone(), T0).unwrap();
    a.finish_batch(&mut batch);
    let recorded = AnyOp::record(&o).expect("the op is replayable");
    let body = ChangeBody {
        now_ms: T0,
        ops: vec![RecordedOp {
            actor: actor.clone(),
            op: recorded,
        }],
        version: a.version,
        writes: batch.writes.len(),
        ..ChangeBody::default()
    };
    // Through the changes log's JSON, as replicas see it.
    let body: ChangeBody = serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
    b.replay(1, body).expect("replays");
    assert!(b.challenge_used(&[7; TAG_LEN]));
    let (r, _) = run(&mut b, op(2, 7, T0, "t", 16), T0 + 5);
    assert_eq!(code(r), "invalid_challenge");
}

#[test]
fn the_stored_set_loads_back() {
    let mut w = world();
    assert!(run(&mut w, op(1, 1, T0, "t", 16), T0).0.is_ok());
    let loaded = UsedChallenges::load(vec![UsedChallengeRecord {
        tag: [1; TAG_LEN],
        expires_ms: T0 + TTL,
    }]);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.expired(T0 + TTL), 1);
    assert_eq!(loaded.expired(T0 + TTL - 1), 0);
}
