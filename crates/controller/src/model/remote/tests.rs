//! A batch replayed on another replica ends exactly where it ended on the
//! replica that committed it; presence is held by any replica.

use super::*;
use crate::model::{NewNetwork, NewToken, NodePatch, Registration, SetPolicy, UpdateNode};
use crate::netmap;
use crate::secret::SecretHash;
use crate::store::PresenceRecord;
use weft_proto::NodeKey;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

/// Applies `ops` on `w` as the engine does and records the batch.
fn commit(w: &mut World, ops: Vec<(Actor, AnyOp)>, now_ms: u64) -> (ChangeBody, Option<Outcome>) {
    let mut batch = Batch::default();
    let mut recorded = Vec::new();
    for (actor, op) in ops {
        let before = batch.writes.len();
        let kept = op.clone();
        op.apply(w, &mut batch, &actor, now_ms);
        if batch.writes.len() > before {
            recorded.push(RecordedOp { actor, op: kept });
        }
    }
    let outcome = w.finish_batch(&mut batch);
    let body = ChangeBody {
        now_ms,
        ops: recorded,
        version: w.version,
        writes: batch.writes.len(),
        ..ChangeBody::default()
    };
    (body, outcome)
}

fn through_json(body: &ChangeBody) -> ChangeBody {
    serde_json::from_str(&serde_json::to_string(body).unwrap()).unwrap()
}

fn setup() -> Vec<(Actor, AnyOp)> {
    vec![
        (
            Actor::Admin,
            AnyOp::NewNetwork(NewNetwork {
                name: "a".into(),
                ipv4_cidr: "10.0.0.0/24".parse().unwrap(),
                ipv6_prefix: Some("fd00:1::/48".parse().unwrap()),
                dns_domain: "weft.internal".into(),
                pow_difficulty: 0,
            }),
        ),
        (
            Actor::Admin,
            AnyOp::NewToken(NewToken {
                networks: vec!["a".into()],
                tags: ["web".to_string()].into(),
                expires_at: u64::MAX,
                max_uses: None,
                description: Some("t".into()),
                hash: SecretHash::of("t"),
            }),
        ),
    ]
}

fn registration(i: u8) -> (Actor, AnyOp) {
    (
        Actor::Node(key(i)),
        AnyOp::Registration(Registration {
            node_key: key(i),
            token_hash: SecretHash::of("t"),
            pow_bits: 0,
            name: Some(format!("n{i}")),
            hostname: Some("h".into()),
            facts: None,
            credential_hash: SecretHash::of(&format!("cred{i}")),
        }),
    )
}

fn presence(replica: &str, node: NodeId, online: bool) -> (Actor, AnyOp) {
    (
        Actor::Admin,
        AnyOp::StreamPresence(StreamPresence {
            replica: replica.into(),
            node,
            online,
        }),
    )
}

fn assert_same(a: &World, b: &World) {
    assert_eq!(a.version, b.version);
    let ids: Vec<NodeId> = a.node_ids().collect();
    assert_eq!(ids, b.node_ids().collect::<Vec<_>>());
    for id in ids {
        assert_eq!(
            netmap::snapshot(a, id).map(|m| serde_json::to_value(m).unwrap()),
            netmap::snapshot(b, id).map(|m| serde_json::to_value(m).unwrap()),
            "node {id}"
        );
        assert_eq!(a.node(id).map(|n| n.online), b.node(id).map(|n| n.online));
    }
    assert_eq!(a.holders(), b.holders());
}

#[test]
fn replayed_batches_end_where_they_ended_on_the_committing_replica() {
    let mut a = World::default();
    let mut b = World::default();
    let batches = vec![
        setup(),
        vec![registration(1), registration(2), registration(3)],
        vec![presence("r1", 1, true), presence("r2", 2, true)],
        vec![
            (
                Actor::Admin,
                AnyOp::UpdateNode(UpdateNode {
                    node: "n2".into(),
                    patch: NodePatch {
                        name: Some("db".into()),
                        tags: Some(["db".to_string()].into()),
                        disabled: None,
                    },
                }),
            ),
            registration(4),
        ],
        vec![(
            Actor::Admin,
            AnyOp::SetPolicy(SetPolicy {
                text: "[[allow]]\nfrom = [\"tag:web\"]\nto = [\"tag:db\"]\n".into(),
                expect_version: None,
            }),
        )],
        vec![presence("r1", 2, true), presence("r2", 2, false)],
    ];
    for (i, ops) in batches.into_iter().enumerate() {
        let now = 1_000 * (i as u64 + 1);
        let (body, local) = commit(&mut a, ops, now);
        let replayed = b.replay(i as u64 + 1, through_json(&body)).unwrap();
        assert_eq!(
            local.as_ref().map(|o| &o.touched),
            replayed.outcome.as_ref().map(|o| &o.touched),
            "batch {i}"
        );
        assert_eq!(
            local.as_ref().map(|o| &o.policy_changed),
            replayed.outcome.as_ref().map(|o| &o.policy_changed)
        );
        if let (Some(l), Some(r)) = (&local, &replayed.outcome) {
            // The same deltas for every recipient.
            let lo = netmap::compile(&a, l);
            let ro = netmap::compile(&b, r);
            assert_eq!(format!("{lo:?}"), format!("{ro:?}"), "batch {i}");
        }
        assert_same(&a, &b);
    }
    assert!(a.node(1).unwrap().online && a.node(2).unwrap().online);
}

#[test]
fn a_node_is_online_while_any_replica_holds_it() {
    let mut w = World::default();
    commit(&mut w, setup(), 1);
    commit(&mut w, vec![registration(1), registration(2)], 2);
    let (body, o) = commit(
        &mut w,
        vec![presence("r1", 0, true), presence("r2", 0, true)],
        3,
    );
    assert!(o.is_some() && w.node(0).unwrap().online);
    assert_eq!(body.ops.len(), 2);
    // r1 lets go of node 0: r2 still holds it, nothing moves.
    let v = w.version;
    commit(&mut w, vec![presence("r1", 0, false)], 4);
    assert!(w.node(0).unwrap().online);
    assert_eq!(w.version, v);
    commit(&mut w, vec![presence("r1", 1, true)], 5);
    // r2 dies: node 0 goes offline, node 1 (held by r1) stays online.
    let (body, _) = commit(
        &mut w,
        vec![(
            Actor::System,
            AnyOp::ReplicaGone(ReplicaGone {
                replica: "r2".into(),
            }),
        )],
        6,
    );
    assert!(body.writes > 0);
    assert!(!w.node(0).unwrap().online);
    assert!(w.node(1).unwrap().online);
    assert_eq!(w.holders().replicas(), ["r1".to_string()].into());
    // Loading the stored rows gives the same presence.
    let mut fresh = World::default();
    for (i, b) in [setup()].into_iter().enumerate() {
        commit(&mut fresh, b, i as u64);
    }
    commit(&mut fresh, vec![registration(1), registration(2)], 2);
    fresh.load_presence(&[PresenceRecord {
        replica: "r1".into(),
        node_id: 1,
    }]);
    assert!(fresh.node(1).unwrap().online && !fresh.node(0).unwrap().online);
    assert_eq!(fresh.holders(), w.holders());
}

#[test]
fn a_replay_that_does_not_end_where_it_was_committed_is_refused() {
    let mut a = World::default();
    let mut b = World::default();
    let (mut body, _) = commit(&mut a, setup(), 1);
    body.writes += 1;
    assert!(b.replay(1, body.clone()).is_err());
    let mut b = World::default();
    body.writes -= 1;
    body.version += 1;
    assert!(b.replay(1, body).is_err());
    let mut b = World::default();
    let opaque = ChangeBody {
        opaque: true,
        version: 1,
        writes: 1,
        ..ChangeBody::default()
    };
    assert!(b.replay(1, opaque).is_err());
    // A start moves the version by one, nothing else.
    let bump = ChangeBody {
        bump: true,
        version: 1,
        writes: 1,
        ..ChangeBody::default()
    };
    assert!(
        matches!(b.replay(1, bump.clone()), Ok(r) if r.outcome.is_none() && r.tasks.is_empty())
    );
    assert_eq!(b.version, 1);
    assert!(b.replay(2, bump).is_err(), "the version already moved");
}

#[test]
fn a_replayed_task_names_the_streams_to_notify_as_its_replica_did() {
    use crate::model::{CreateTask, LeaseTask, SweepTasks};
    use weft_proto::task::{Action, CreateTaskRequest, TaskKind, TaskTarget};
    let mut a = World::default();
    let mut b = World::default();
    let mut seq = 0;
    let mut step = |a: &mut World, b: &mut World, ops: Vec<(Actor, AnyOp)>, now: u64| {
        let (body, _) = commit(a, ops, now);
        seq += 1;
        let r = b.replay(seq, through_json(&body)).unwrap();
        assert_same(a, b);
        r.tasks
    };
    assert!(step(&mut a, &mut b, setup(), 1).is_empty());
    let regs = vec![registration(1), registration(2)];
    assert!(step(&mut a, &mut b, regs, 2).is_empty());
    let create = CreateTask {
        id: "tsk_1".into(),
        req: CreateTaskRequest {
            target: TaskTarget::Tag("web".into()),
            kind: TaskKind::Action(Action::Netcheck),
            timeout_secs: Some(1),
            output_cap_bytes: None,
            deadline_secs: None,
        },
    };
    let tasks = step(
        &mut a,
        &mut b,
        vec![(Actor::Admin, AnyOp::CreateTask(create))],
        3,
    );
    let t = |n: NodeId| (n, "tsk_1".to_string());
    assert_eq!(tasks, vec![t(0), t(1)], "every run's node, as the API does");
    // Node 0 leases its run and lets the lease expire: the sweep offers it
    // again, on every replica.
    let lease = LeaseTask {
        node: 0,
        task_id: "tsk_1".into(),
        lease_id: "lse_1".into(),
    };
    let lease = vec![(Actor::Node(key(1)), AnyOp::LeaseTask(lease))];
    assert!(step(&mut a, &mut b, lease, 4).is_empty());
    let expired = a.task("tsk_1").unwrap().runs[&0]
        .lease_expires_at_ms
        .unwrap();
    let sweep = vec![(Actor::System, AnyOp::SweepTasks(SweepTasks))];
    assert_eq!(step(&mut a, &mut b, sweep, expired), vec![t(0)]);
}
