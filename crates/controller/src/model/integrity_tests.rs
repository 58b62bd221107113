//! Integrity judged from reports, expectations and approvals: the
//! transitions between `unknown`, `ok` and `mismatch`, their audit entries,
//! the `integrity_mismatch` event, and what a mismatch blocks.

use weft_proto::NodeKey;
use weft_proto::events::{AnomalyKind, Baseline};
use weft_proto::integrity::{ExpectRequest, HookHash, IntegrityReport, IntegrityState};

use super::*;
use crate::model::tests::network_and_token;
use crate::model::{Operation, Registration, RemoveNode};
use crate::secret::SecretHash;
use crate::store::{AuditRecord, EventRecord, Write};

const V: &str = "0.1.0";

fn h(c: char) -> String {
    c.to_string().repeat(64)
}

/// A world with network `a`, and nodes `n1` and `n2` registered in it.
fn world() -> World {
    let (mut w, mut b) = network_and_token("10.0.0.0/29", None);
    for i in 1..=2u8 {
        let reg = Registration {
            node_key: NodeKey::from_bytes([i; 32]),
            token_hash: SecretHash::of("t"),
            pow_bits: 0,
            name: Some(format!("n{i}")),
            hostname: None,
            facts: None,
            credential_hash: SecretHash::of(&format!("cred{i}")),
        };
        w.apply(&mut b, &Actor::Node(NodeKey::from_bytes([i; 32])), reg, 0)
            .unwrap();
    }
    w
}

fn id(w: &World, name: &str) -> NodeId {
    w.find_node(name).unwrap().rec.id
}

fn report(weftd: char, hooks: &[(&str, char)]) -> IntegrityReport {
    IntegrityReport {
        api_version: None,
        weftd_version: V.into(),
        weftd_sha256: h(weftd),
        hooks: hooks
            .iter()
            .map(|(name, c)| HookHash {
                name: (*name).into(),
                sha256: h(*c),
            })
            .collect(),
        hooks_error: None,
    }
}

/// Applies `op` in a fresh batch; returns its output and the batch's writes.
fn run<O: Operation>(w: &mut World, actor: &Actor, op: O, now_ms: u64) -> (O::Output, Vec<Write>) {
    let mut b = Batch::default();
    let out = w.apply(&mut b, actor, op, now_ms).unwrap();
    (out, b.writes)
}

fn node_report(w: &mut World, name: &str, r: IntegrityReport, now_ms: u64) -> Vec<Write> {
    let node = id(w, name);
    let key = w.find_node(name).unwrap().rec.node_key;
    run(
        w,
        &Actor::Node(key),
        ReportIntegrity { node, report: r },
        now_ms,
    )
    .1
}

fn audits(writes: &[Write]) -> Vec<&AuditRecord> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Audit(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn events(writes: &[Write]) -> Vec<&EventRecord> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .collect()
}

fn expect(w: &mut World, c: char, now_ms: u64) -> Vec<Write> {
    let req = ExpectRequest {
        api_version: None,
        version: V.into(),
        sha256: h(c),
    };
    run(w, &Actor::Admin, ExpectWeftd(req), now_ms).1
}

fn approve(w: &mut World, name: &str, c: char, now_ms: u64) -> Vec<Write> {
    let op = ApproveHook {
        name: name.into(),
        sha256: h(c),
    };
    run(w, &Actor::Admin, op, now_ms).1
}

#[test]
fn unknown_until_compared_then_ok_then_mismatch_and_back() {
    let mut w = world();
    let n1 = id(&w, "n1");
    assert_eq!(w.integrity_state(n1), IntegrityState::Unknown, "no report");
    assert!(w.integrity_allows_exec(n1), "unknown does not block");

    // A report with nothing expected for its version: still unknown, said why.
    let writes = node_report(&mut w, "n1", report('a', &[]), 10);
    assert!(matches!(&writes[0], Write::PutNodeIntegrity(r) if r.node_id == n1));
    assert_eq!(w.integrity_state(n1), IntegrityState::Unknown);
    let shown = w.node_integrity(w.node(n1).unwrap());
    assert!(shown.reasons[0].contains("no expected sha256 for weftd 0.1.0"));
    assert_eq!(shown.reported_at_ms, Some(10));

    // The admin expects that hash: ok, audited as a change of state.
    let writes = expect(&mut w, 'a', 20);
    assert_eq!(w.integrity_state(n1), IntegrityState::Ok);
    let a = audits(&writes);
    assert_eq!(a[0].action, "integrity.expect");
    assert_eq!(a[0].target, V);
    assert_eq!(a[1].action, "node.integrity");
    assert_eq!(a[1].detail["from"], "unknown");
    assert_eq!(a[1].detail["to"], "ok");
    assert!(events(&writes).is_empty());

    // The node now runs another binary: mismatch, an event, exec blocked.
    let writes = node_report(&mut w, "n1", report('b', &[]), 30);
    assert_eq!(w.integrity_state(n1), IntegrityState::Mismatch);
    assert!(!w.integrity_allows_exec(n1));
    assert!(w.integrity_allows_exec(id(&w, "n2")), "only that node");
    let ev = events(&writes);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].node_name, "n1");
    assert_eq!(ev[0].event.kind, AnomalyKind::IntegrityMismatch);
    assert_eq!(ev[0].event.baseline, Baseline::Expected);
    assert!(ev[0].event.id >= CONTROLLER_EVENT_BASE);
    assert!(
        ev[0].event.summary.contains("weftd 0.1.0 is"),
        "{}",
        ev[0].event.summary
    );
    assert_eq!(ev[0].event.validate(), Ok(()), "bounded like any event");
    assert_eq!(audits(&writes)[0].detail["to"], "mismatch");

    // The same report every 10 minutes: no new event, no audit.
    let writes = node_report(&mut w, "n1", report('b', &[]), 40);
    assert!(events(&writes).is_empty() && audits(&writes).is_empty());

    // Resolved by the node running the expected binary again.
    let writes = node_report(&mut w, "n1", report('a', &[]), 50);
    assert_eq!(w.integrity_state(n1), IntegrityState::Ok);
    assert!(w.integrity_allows_exec(n1));
    assert_eq!(audits(&writes)[0].detail["to"], "ok");
    assert!(events(&writes).is_empty());
}

#[test]
fn a_hook_changed_after_approval_is_a_mismatch_until_re_approved() {
    let mut w = world();
    let n1 = id(&w, "n1");
    expect(&mut w, 'a', 1);
    let writes = approve(&mut w, "backup", 'c', 2);
    let a = audits(&writes);
    assert_eq!(a[0].action, "hook.approve");
    assert_eq!(a[0].target, "backup");
    assert_eq!(a[0].detail["sha256"], h('c'));
    assert_eq!(w.approved_hook_hashes("backup"), vec![h('c')]);
    assert!(w.approved_hook_hashes("other").is_empty());

    node_report(
        &mut w,
        "n1",
        report('a', &[("backup", 'c'), ("new", 'f')]),
        3,
    );
    assert_eq!(
        w.integrity_state(n1),
        IntegrityState::Ok,
        "a hook nobody approved never runs: not a mismatch"
    );

    // The file is edited: its hash is not the approved one.
    let writes = node_report(&mut w, "n1", report('a', &[("backup", 'd')]), 4);
    assert_eq!(w.integrity_state(n1), IntegrityState::Mismatch);
    let ev = events(&writes);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].event.details["reason_1"],
        format!(
            "hook backup is {} (not approved; weft admin hook approve to accept it)",
            h('d')
        )
    );

    // Re-approving the new content resolves it (the admin's action is the actor).
    let writes = approve(&mut w, "backup", 'd', 5);
    assert_eq!(w.integrity_state(n1), IntegrityState::Ok);
    let a = audits(&writes);
    assert_eq!(a[1].action, "node.integrity");
    assert_eq!(a[1].actor, "admin");
    assert_eq!(w.approved_hook_hashes("backup"), vec![h('c'), h('d')]);
    // Approving again changes nothing and audits nothing.
    assert!(approve(&mut w, "backup", 'd', 6).is_empty());

    // Revoking the hash it runs makes it a mismatch again: an event.
    let op = RevokeHook {
        name: "backup".into(),
        sha256: Some(h('d')),
    };
    let (left, writes) = run(&mut w, &Actor::Admin, op, 7);
    assert_eq!(left.approvals.len(), 1);
    let a = audits(&writes);
    assert_eq!(a[0].action, "hook.revoke");
    assert_eq!(a[0].detail["sha256"][0], h('d'));
    assert!(
        matches!(&writes[0], Write::DeleteHookApproval { name, sha256: Some(_) } if name == "backup")
    );
    assert_eq!(w.integrity_state(n1), IntegrityState::Mismatch);
    assert_eq!(events(&writes).len(), 1);

    // Revoking every hash: no approval left, the hook never runs, not a mismatch.
    let op = RevokeHook {
        name: "backup".into(),
        sha256: None,
    };
    let (left, _) = run(&mut w, &Actor::Admin, op, 8);
    assert!(left.approvals.is_empty());
    assert!(w.approved_hook_hashes("backup").is_empty());
    assert_eq!(w.integrity_state(n1), IntegrityState::Ok);

    // Revoking what is not approved is a 404, and changes nothing.
    let mut b = Batch::default();
    let op = RevokeHook {
        name: "backup".into(),
        sha256: None,
    };
    let err = w.apply(&mut b, &Actor::Admin, op, 9).unwrap_err();
    assert_eq!(err.code(), "hook_not_approved");
    assert!(b.writes.is_empty());
}

#[test]
fn a_refused_hooks_directory_is_a_mismatch_and_new_reasons_raise_a_new_event() {
    let mut w = world();
    let n1 = id(&w, "n1");
    expect(&mut w, 'a', 1);
    approve(&mut w, "x", 'c', 1);
    let mut r = report('a', &[]);
    r.hooks_error = Some("/etc/weft/hooks is mode 0755 (want 0700)".into());
    let writes = node_report(&mut w, "n1", r.clone(), 2);
    assert_eq!(w.integrity_state(n1), IntegrityState::Mismatch);
    assert_eq!(events(&writes).len(), 1);
    // Still mismatched, but for one more reason: a new event.
    r.hooks.push(HookHash {
        name: "x".into(),
        sha256: h('d'),
    });
    let writes = node_report(&mut w, "n1", r, 3);
    let ev = events(&writes);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event.observed, 2.0);
    assert!(ev[0].event.summary.contains("(and 1 more)"));
    assert!(
        audits(&writes).is_empty(),
        "the state itself did not change"
    );
}

#[test]
fn bad_input_is_refused_and_bounds_hold() {
    let mut w = world();
    let mut b = Batch::default();
    let bad = ApproveHook {
        name: "../etc/passwd".into(),
        sha256: h('a'),
    };
    assert_eq!(
        w.apply(&mut b, &Actor::Admin, bad, 0).unwrap_err().code(),
        "invalid_integrity"
    );
    let bad = ApproveHook {
        name: "ok".into(),
        sha256: "ABC".into(),
    };
    assert!(w.apply(&mut b, &Actor::Admin, bad, 0).is_err());
    let n1 = id(&w, "n1");
    let mut r = report('a', &[]);
    r.weftd_sha256 = "nothex".into();
    let op = ReportIntegrity {
        node: n1,
        report: r,
    };
    assert!(w.apply(&mut b, &Actor::Admin, op, 0).is_err());
    assert!(b.writes.is_empty(), "nothing written for refused input");

    // At most MAX_APPROVALS_PER_HOOK hashes per hook: the next is refused.
    let hex = "0123456789abcdef";
    for i in 0..MAX_APPROVALS_PER_HOOK {
        let c = hex.chars().nth(i).unwrap();
        approve(&mut w, "many", c, 1);
    }
    let over = ApproveHook {
        name: "many".into(),
        sha256: format!("{}1", "0".repeat(63)),
    };
    assert_eq!(
        w.apply(&mut b, &Actor::Admin, over, 2).unwrap_err().code(),
        "too_many_approvals"
    );
}

#[test]
fn the_state_is_judged_again_after_a_restart_and_a_removed_node_is_forgotten() {
    let mut w = world();
    let n1 = id(&w, "n1");
    expect(&mut w, 'a', 1);
    approve(&mut w, "x", 'c', 1);
    node_report(&mut w, "n1", report('a', &[("x", 'd')]), 2);
    assert_eq!(w.integrity_state(n1), IntegrityState::Mismatch);

    // What the store would load: the same judgement, no event.
    let snap = IntegritySnapshot {
        approvals: vec![HookApprovalRecord {
            name: "x".into(),
            sha256: h('c'),
            approved_at_ms: 1,
        }],
        expected: vec![ExpectedRecord {
            version: V.into(),
            sha256: h('a'),
            set_at_ms: 1,
        }],
        reports: vec![NodeIntegrityRecord {
            node_id: n1,
            reported_at_ms: 2,
            report: report('a', &[("x", 'd')]),
        }],
    };
    let loaded = Integrity::load(snap);
    assert_eq!(
        loaded.judged.get(&n1).map(|j| j.0),
        Some(IntegrityState::Mismatch)
    );

    run(&mut w, &Actor::Admin, RemoveNode("n1".into()), 3);
    assert_eq!(w.integrity_state(n1), IntegrityState::Unknown);
    assert_eq!(w.integrity_overview().nodes.len(), 1, "only n2 is left");
}

#[test]
fn a_mismatched_node_is_refused_script_and_hook_leases_but_not_actions_until_resolved() {
    use weft_proto::task::{Action, CreateTaskRequest, TaskKind, TaskTarget};

    use crate::model::{CreateTask, LeaseTask};

    let mut w = world();
    expect(&mut w, 'a', 1);
    approve(&mut w, "backup", 'c', 1);
    let kinds = [
        (
            "script",
            TaskKind::Script {
                interpreter: "sh".into(),
                body: "true".into(),
            },
        ),
        (
            "hook",
            TaskKind::Hook {
                name: "backup".into(),
                approved_sha256: vec![],
            },
        ),
        ("action", TaskKind::Action(Action::Netcheck)),
    ];
    for (task, kind) in &kinds {
        let op = CreateTask {
            id: (*task).into(),
            req: CreateTaskRequest {
                target: TaskTarget::Node("n1".into()),
                kind: kind.clone(),
                timeout_secs: None,
                output_cap_bytes: None,
                deadline_secs: None,
            },
        };
        run(&mut w, &Actor::Admin, op, 2);
    }
    let n1 = id(&w, "n1");
    let key = w.find_node("n1").unwrap().rec.node_key;
    let lease = |w: &mut World, task: &str, now_ms: u64| {
        let op = LeaseTask {
            node: n1,
            task_id: task.into(),
            lease_id: format!("L-{task}-{now_ms}"),
        };
        let mut b = Batch::default();
        w.apply(&mut b, &Actor::Node(key), op, now_ms)
    };

    // The hook file on n1 was edited: mismatch.
    node_report(&mut w, "n1", report('a', &[("backup", 'd')]), 3);
    assert!(!w.integrity_allows_exec(n1));
    for task in ["script", "hook"] {
        let e = lease(&mut w, task, 4).unwrap_err();
        assert_eq!(e.code(), "integrity_mismatch", "{task}");
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
    }
    assert!(lease(&mut w, "action", 4).is_ok(), "actions still run");

    // Re-approved after review: leases work again and carry both hashes.
    approve(&mut w, "backup", 'd', 5);
    assert!(lease(&mut w, "script", 6).is_ok());
    let l = lease(&mut w, "hook", 6).unwrap();
    assert_eq!(
        l.kind,
        TaskKind::Hook {
            name: "backup".into(),
            approved_sha256: vec![h('c'), h('d')],
        }
    );
}
