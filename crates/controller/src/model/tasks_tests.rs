//! Tasks in the model, with time passed in: limits checked at creation and on
//! results (at, just under and just over each bound), leases (idempotent,
//! expiring, leasable again), results idempotent by task and lease, deadlines,
//! cancellation, the integrity gate, and what is audited.

use weft_proto::NodeKey;
use weft_proto::task::{
    Action, CreateTaskRequest, MAX_ERROR_BYTES, MAX_OUTPUT_CAP, MAX_SCRIPT_BYTES, MAX_TIMEOUT_SECS,
    ResultAck, RunState, TaskKind, TaskResult, TaskStatus, TaskTarget,
};

use super::*;
use crate::model::{ApproveHook, NewNetwork, NewToken, Operation, Registration};
use crate::secret::SecretHash;
use crate::store::tasks::TASKS_KEPT;
use crate::store::{AuditRecord, Write};

/// A world with network `a` and nodes `n1`, `n2` (tag `web`) and `n3` (no tag).
fn world() -> World {
    let mut w = World::default();
    let mut b = Batch::default();
    let net = NewNetwork {
        name: "a".into(),
        ipv4_cidr: "10.0.0.0/28".parse().unwrap(),
        ipv6_prefix: None,
        dns_domain: "weft.internal".into(),
        pow_difficulty: 0,
    };
    w.apply(&mut b, &Actor::Admin, net, 0).unwrap();
    for (token, tags) in [("web", vec!["web".to_string()]), ("plain", vec![])] {
        let t = NewToken {
            networks: vec!["a".into()],
            tags: tags.into_iter().collect(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of(token),
        };
        w.apply(&mut b, &Actor::Admin, t, 0).unwrap();
    }
    for (i, token) in [(1u8, "web"), (2, "web"), (3, "plain")] {
        let reg = Registration {
            node_key: NodeKey::from_bytes([i; 32]),
            token_hash: SecretHash::of(token),
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

fn node_actor(w: &World, name: &str) -> Actor {
    Actor::Node(w.find_node(name).unwrap().rec.node_key)
}

/// Applies `op` in a fresh batch: its result and the batch's writes (none on
/// error: an operation that fails changes nothing).
fn run<O: Operation>(
    w: &mut World,
    actor: &Actor,
    op: O,
    now_ms: u64,
) -> (Result<O::Output, ApiError>, Vec<Write>) {
    let mut b = Batch::default();
    let out = w.apply(&mut b, actor, op, now_ms);
    (out, b.writes)
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

fn req(target: TaskTarget, kind: TaskKind) -> CreateTaskRequest {
    CreateTaskRequest {
        target,
        kind,
        timeout_secs: None,
        output_cap_bytes: None,
        deadline_secs: None,
    }
}

fn script(body: String) -> TaskKind {
    TaskKind::Script {
        interpreter: "sh".into(),
        body,
    }
}

fn create(
    w: &mut World,
    id: &str,
    r: CreateTaskRequest,
    now_ms: u64,
) -> Result<TaskView, ApiError> {
    let op = CreateTask {
        id: id.into(),
        req: r,
    };
    run(w, &Actor::Admin, op, now_ms).0
}

fn lease(
    w: &mut World,
    node: &str,
    task: &str,
    lease: &str,
    now_ms: u64,
) -> Result<LeasedTask, ApiError> {
    let op = LeaseTask {
        node: id(w, node),
        task_id: task.into(),
        lease_id: lease.into(),
    };
    let actor = node_actor(w, node);
    run(w, &actor, op, now_ms).0
}

fn result(task: &str, lease: &str, stdout: usize, stderr: usize) -> TaskResult {
    TaskResult {
        task_id: task.into(),
        lease_id: lease.into(),
        status: TaskStatus::Completed,
        exit_code: Some(0),
        signal: None,
        duration_ms: 7,
        stdout: "o".repeat(stdout),
        stderr: "e".repeat(stderr),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
    }
}

fn submit(w: &mut World, node: &str, r: TaskResult, now_ms: u64) -> Result<ResultAck, ApiError> {
    let op = SubmitResult {
        node: id(w, node),
        result: r,
    };
    let actor = node_actor(w, node);
    run(w, &actor, op, now_ms).0
}

fn netcheck() -> TaskKind {
    TaskKind::Action(Action::Netcheck)
}

fn run_state(w: &World, task: &str, node: &str) -> RunState {
    w.task(task).unwrap().runs[&id(w, node)].state
}

#[test]
fn create_checks_every_limit_at_under_and_over_its_bound() {
    let mut w = world();
    let node = || TaskTarget::Node("n1".into());
    let with = |timeout: Option<u32>, cap: Option<u32>, kind: TaskKind| CreateTaskRequest {
        timeout_secs: timeout,
        output_cap_bytes: cap,
        ..req(node(), kind)
    };
    let ok = |w: &mut World, i: &str, r| create(w, i, r, 0).map(|_| ());
    let code = |w: &mut World, i: &str, r| create(w, i, r, 0).unwrap_err().code();
    // Timeout.
    assert!(ok(&mut w, "t1", with(Some(MAX_TIMEOUT_SECS), None, netcheck())).is_ok());
    assert!(
        ok(
            &mut w,
            "t2",
            with(Some(MAX_TIMEOUT_SECS - 1), None, netcheck())
        )
        .is_ok()
    );
    assert_eq!(
        code(
            &mut w,
            "t3",
            with(Some(MAX_TIMEOUT_SECS + 1), None, netcheck())
        ),
        "invalid_task"
    );
    assert_eq!(
        code(&mut w, "t3", with(Some(0), None, netcheck())),
        "invalid_task"
    );
    // Output cap.
    assert!(ok(&mut w, "c1", with(None, Some(MAX_OUTPUT_CAP), netcheck())).is_ok());
    assert!(
        ok(
            &mut w,
            "c2",
            with(None, Some(MAX_OUTPUT_CAP - 1), netcheck())
        )
        .is_ok()
    );
    assert_eq!(
        code(
            &mut w,
            "c3",
            with(None, Some(MAX_OUTPUT_CAP + 1), netcheck())
        ),
        "invalid_task"
    );
    // Script size.
    assert!(
        ok(
            &mut w,
            "s1",
            with(None, None, script("x".repeat(MAX_SCRIPT_BYTES)))
        )
        .is_ok()
    );
    assert!(
        ok(
            &mut w,
            "s2",
            with(None, None, script("x".repeat(MAX_SCRIPT_BYTES - 1)))
        )
        .is_ok()
    );
    assert_eq!(
        code(
            &mut w,
            "s3",
            with(None, None, script("x".repeat(MAX_SCRIPT_BYTES + 1)))
        ),
        "invalid_task"
    );
    // Interpreter allowlist.
    for i in ["sh", "bash", "python3", "node"] {
        let k = TaskKind::Script {
            interpreter: i.into(),
            body: "true".into(),
        };
        assert!(
            ok(&mut w, &format!("i-{i}"), with(None, None, k)).is_ok(),
            "{i}"
        );
    }
    let perl = TaskKind::Script {
        interpreter: "perl".into(),
        body: "1".into(),
    };
    assert_eq!(
        code(&mut w, "i-perl", with(None, None, perl)),
        "invalid_task"
    );
    // Nothing refused was written or kept.
    for refused in ["t3", "c3", "s3", "i-perl"] {
        assert!(w.task(refused).is_none(), "{refused}");
    }
    // Defaults: 30 s, 64 KiB, 24 h.
    let v = create(&mut w, "d", req(node(), netcheck()), 1_000).unwrap();
    assert_eq!(v.limits.timeout_secs, 30);
    assert_eq!(v.limits.output_cap_bytes, 64 * 1024);
    assert_eq!(v.deadline_ms, 1_000 + 24 * 3600 * 1000);
}

#[test]
fn targets_resolve_to_one_run_per_enabled_node_at_creation() {
    let mut w = world();
    let v = create(
        &mut w,
        "tag",
        req(TaskTarget::Tag("web".into()), netcheck()),
        0,
    )
    .unwrap();
    let nodes: Vec<&str> = v.runs.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2"]);
    assert!(v.runs.iter().all(|r| r.state == RunState::Pending));
    let v = create(
        &mut w,
        "net",
        req(TaskTarget::Network("a".into()), netcheck()),
        0,
    )
    .unwrap();
    assert_eq!(v.runs.len(), 3);
    let k = NodeKey::from_bytes([3; 32]).to_string();
    let v = create(&mut w, "key", req(TaskTarget::Node(k), netcheck()), 0).unwrap();
    assert_eq!(v.runs[0].node, "n3");
    let e = create(
        &mut w,
        "none",
        req(TaskTarget::Tag("db".into()), netcheck()),
        0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_target_nodes");
    let e = create(
        &mut w,
        "x",
        req(TaskTarget::Node("nope".into()), netcheck()),
        0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "node_not_found");
    let e = create(
        &mut w,
        "tag",
        req(TaskTarget::Tag("web".into()), netcheck()),
        0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "task_exists");
}

#[test]
fn create_is_audited_with_no_script_body() {
    let mut w = world();
    let op = CreateTask {
        id: "t".into(),
        req: req(
            TaskTarget::Tag("web".into()),
            script("echo secret-body".into()),
        ),
    };
    let (out, writes) = run(&mut w, &Actor::Admin, op, 5);
    assert!(out.is_ok());
    let a = audits(&writes);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].action.as_str(), a[0].target.as_str()),
        ("task.create", "t")
    );
    assert_eq!(a[0].detail["kind"], "script sh");
    assert!(!a[0].detail.to_string().contains("secret-body"));
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, Write::PutTask(t) if t.created_by == "admin"))
    );
}

#[test]
fn a_lease_carries_execution_fields_and_is_idempotent_while_live() {
    let mut w = world();
    let r = CreateTaskRequest {
        timeout_secs: Some(10),
        ..req(TaskTarget::Tag("web".into()), netcheck())
    };
    create(&mut w, "t", r, 0).unwrap();
    let l = lease(&mut w, "n1", "t", "L1", 1_000).unwrap();
    assert_eq!(l.lease_id, "L1");
    // now + timeout + 60 s.
    assert_eq!(l.lease_expires_at_ms, 1_000 + 10_000 + LEASE_GRACE_MS);
    assert_eq!(l.kind, netcheck());
    let json = serde_json::to_string(&l).unwrap();
    assert!(
        !json.contains("admin") && !json.contains("created"),
        "{json}"
    );
    // Asked again while the lease lives: the same lease, nothing written.
    let op = LeaseTask {
        node: id(&w, "n1"),
        task_id: "t".into(),
        lease_id: "L2".into(),
    };
    let (again, writes) = run(&mut w, &Actor::Admin, op, 2_000);
    assert_eq!(again.unwrap(), l);
    assert!(writes.is_empty());
    // Another node leases its own run; a node without a run is refused.
    assert_eq!(
        lease(&mut w, "n2", "t", "L3", 1_000).unwrap().lease_id,
        "L3"
    );
    assert_eq!(
        lease(&mut w, "n3", "t", "L4", 1_000).unwrap_err().code(),
        "task_unavailable"
    );
    assert_eq!(
        lease(&mut w, "n1", "nope", "L5", 1_000).unwrap_err().code(),
        "task_unavailable"
    );
    assert_eq!(run_state(&w, "t", "n1"), RunState::Leased);
}

#[test]
fn an_expired_lease_makes_the_task_leasable_again() {
    let mut w = world();
    let r = CreateTaskRequest {
        timeout_secs: Some(1),
        ..req(TaskTarget::Node("n1".into()), netcheck())
    };
    create(&mut w, "t", r, 0).unwrap();
    let n1 = id(&w, "n1");
    let l1 = lease(&mut w, "n1", "t", "L1", 0).unwrap();
    let expiry = l1.lease_expires_at_ms;
    assert_eq!(expiry, 61_000);
    assert!(w.pending_tasks(n1, expiry - 1).is_empty());
    // The sweep just before expiry does nothing; at expiry the run is
    // pending again, audited, and its node is notified again.
    let (out, writes) = run(&mut w, &Actor::System, SweepTasks, expiry - 1);
    assert!(out.unwrap().is_empty() && writes.is_empty());
    let (out, writes) = run(&mut w, &Actor::System, SweepTasks, expiry);
    assert_eq!(out.unwrap(), vec![(n1, "t".to_string())]);
    let a = audits(&writes);
    assert_eq!(
        (a[0].action.as_str(), a[0].actor.as_str()),
        ("task.expire", "system")
    );
    assert_eq!(a[0].detail["reason"], "lease");
    assert_eq!(run_state(&w, "t", "n1"), RunState::Pending);
    assert_eq!(w.pending_tasks(n1, expiry), vec!["t".to_string()]);
    // Without a sweep, an expired lease is leasable too: a new lease.
    let l2 = lease(&mut w, "n1", "t", "L2", expiry + 5).unwrap();
    assert_eq!(l2.lease_id, "L2");
    assert_eq!(w.task("t").unwrap().runs[&n1].leases, 2);
    // The old lease's result is refused now that the task was leased again.
    let e = submit(&mut w, "n1", result("t", "L1", 1, 0), expiry + 6).unwrap_err();
    assert_eq!(e.code(), "lease_superseded");
    assert_eq!(
        submit(&mut w, "n1", result("t", "L2", 1, 0), expiry + 7).unwrap(),
        ResultAck { duplicate: false }
    );
}

#[test]
fn a_result_under_an_expired_lease_not_yet_leased_again_is_taken() {
    let mut w = world();
    create(
        &mut w,
        "t",
        req(TaskTarget::Node("n1".into()), netcheck()),
        0,
    )
    .unwrap();
    let l = lease(&mut w, "n1", "t", "L1", 0).unwrap();
    run(&mut w, &Actor::System, SweepTasks, l.lease_expires_at_ms)
        .0
        .unwrap();
    assert_eq!(run_state(&w, "t", "n1"), RunState::Pending);
    let ack = submit(
        &mut w,
        "n1",
        result("t", "L1", 0, 0),
        l.lease_expires_at_ms + 1,
    )
    .unwrap();
    assert!(!ack.duplicate);
    assert_eq!(run_state(&w, "t", "n1"), RunState::Done);
}

#[test]
fn results_are_idempotent_by_task_and_lease() {
    let mut w = world();
    create(
        &mut w,
        "t",
        req(TaskTarget::Node("n1".into()), netcheck()),
        0,
    )
    .unwrap();
    lease(&mut w, "n1", "t", "L1", 0).unwrap();
    let op = SubmitResult {
        node: id(&w, "n1"),
        result: result("t", "L1", 3, 0),
    };
    let (ack, writes) = run(&mut w, &Actor::Admin, op.clone(), 10);
    assert_eq!(ack.unwrap(), ResultAck { duplicate: false });
    assert!(writes.iter().any(|w| matches!(w, Write::PutTaskResult(_))));
    let a = audits(&writes);
    assert_eq!(a[0].action, "task.result");
    assert_eq!(a[0].detail["status"], "completed");
    assert_eq!(a[0].detail["stdout_bytes"], 3);
    // The same result again: acknowledged as a duplicate, nothing written.
    let (ack, writes) = run(&mut w, &Actor::Admin, op, 20);
    assert_eq!(ack.unwrap(), ResultAck { duplicate: true });
    assert!(writes.is_empty());
    // A result under another lease after completion: 409 task_done.
    let e = submit(&mut w, "n1", result("t", "L9", 0, 0), 30).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("task_done", http::StatusCode::CONFLICT)
    );
    // Done: not leasable, not pending.
    assert_eq!(
        lease(&mut w, "n1", "t", "L2", 40).unwrap_err().code(),
        "task_unavailable"
    );
    assert!(w.pending_tasks(id(&w, "n1"), 40).is_empty());
    let v = w.task("t").unwrap().view(false);
    assert_eq!(v.runs[0].status, Some(TaskStatus::Completed));
    assert!(v.finished());
}

#[test]
fn results_are_checked_against_the_tasks_caps_at_under_and_over() {
    let mut w = world();
    let r = CreateTaskRequest {
        output_cap_bytes: Some(100),
        ..req(TaskTarget::Tag("web".into()), netcheck())
    };
    create(&mut w, "t", r, 0).unwrap();
    lease(&mut w, "n1", "t", "L1", 0).unwrap();
    lease(&mut w, "n2", "t", "L2", 0).unwrap();
    for (out, err) in [(101, 0), (0, 101)] {
        let e = submit(&mut w, "n1", result("t", "L1", out, err), 1).unwrap_err();
        assert_eq!(
            (e.code(), e.status()),
            ("invalid_result", http::StatusCode::BAD_REQUEST)
        );
    }
    let mut long_error = result("t", "L1", 0, 0);
    long_error.error = Some("x".repeat(MAX_ERROR_BYTES + 1));
    assert_eq!(
        submit(&mut w, "n1", long_error, 1).unwrap_err().code(),
        "invalid_result"
    );
    assert_eq!(
        run_state(&w, "t", "n1"),
        RunState::Leased,
        "a refused result changes nothing"
    );
    let mut at_cap = result("t", "L1", 100, 100);
    at_cap.error = Some("x".repeat(MAX_ERROR_BYTES));
    assert!(submit(&mut w, "n1", at_cap, 1).is_ok());
    assert!(submit(&mut w, "n2", result("t", "L2", 99, 99), 1).is_ok());
}

#[test]
fn deadlines_expire_runs_and_refuse_leases() {
    let mut w = world();
    let r = CreateTaskRequest {
        deadline_secs: Some(10),
        ..req(TaskTarget::Tag("web".into()), netcheck())
    };
    create(&mut w, "t", r, 0).unwrap();
    let n1 = id(&w, "n1");
    lease(&mut w, "n2", "t", "L2", 0).unwrap();
    assert_eq!(w.pending_tasks(n1, 9_999), vec!["t".to_string()]);
    assert!(w.pending_tasks(n1, 10_000).is_empty());
    // Past the deadline a lease is refused with 410, even before the sweep.
    let e = lease(&mut w, "n1", "t", "L1", 10_000).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("task_expired", http::StatusCode::GONE)
    );
    let (out, writes) = run(&mut w, &Actor::System, SweepTasks, 10_000);
    assert!(out.unwrap().is_empty());
    assert_eq!(run_state(&w, "t", "n1"), RunState::Expired);
    assert_eq!(run_state(&w, "t", "n2"), RunState::Expired);
    let a = audits(&writes);
    assert_eq!(a.len(), 2);
    assert!(
        a.iter()
            .all(|a| a.action == "task.expire" && a.detail["reason"] == "deadline")
    );
    // The node that held a lease still delivers what it ran.
    assert!(
        !submit(&mut w, "n2", result("t", "L2", 0, 0), 10_500)
            .unwrap()
            .duplicate
    );
    assert_eq!(run_state(&w, "t", "n2"), RunState::Done);
    // A second sweep changes nothing.
    let (_, writes) = run(&mut w, &Actor::System, SweepTasks, 20_000);
    assert!(writes.is_empty());
}

#[test]
fn cancel_stops_runs_without_results() {
    let mut w = world();
    create(
        &mut w,
        "t",
        req(TaskTarget::Tag("web".into()), netcheck()),
        0,
    )
    .unwrap();
    lease(&mut w, "n1", "t", "L1", 0).unwrap();
    submit(&mut w, "n1", result("t", "L1", 0, 0), 1).unwrap();
    let (v, writes) = run(&mut w, &Actor::Admin, CancelTask { id: "t".into() }, 2);
    let v = v.unwrap();
    assert_eq!(v.cancelled_at_ms, Some(2));
    assert_eq!(run_state(&w, "t", "n1"), RunState::Done);
    assert_eq!(run_state(&w, "t", "n2"), RunState::Cancelled);
    assert_eq!(audits(&writes)[0].action, "task.cancel");
    assert_eq!(
        lease(&mut w, "n2", "t", "L2", 3).unwrap_err().code(),
        "task_unavailable"
    );
    assert!(w.pending_tasks(id(&w, "n2"), 3).is_empty());
    let e = run(&mut w, &Actor::Admin, CancelTask { id: "t".into() }, 4)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "task_finished");
    let e = run(&mut w, &Actor::Admin, CancelTask { id: "nope".into() }, 4)
        .0
        .unwrap_err();
    assert_eq!(e.code(), "task_not_found");
}

#[test]
fn hooks_need_an_approval_and_carry_the_approved_hashes_when_leased() {
    let mut w = world();
    let hook = || TaskKind::Hook {
        name: "rotate-logs".into(),
        approved_sha256: vec![],
    };
    let e = create(&mut w, "h", req(TaskTarget::Node("n1".into()), hook()), 0).unwrap_err();
    assert_eq!(e.code(), "hook_not_approved");
    let approve = ApproveHook {
        name: "rotate-logs".into(),
        sha256: "a".repeat(64),
    };
    run(&mut w, &Actor::Admin, approve, 0).0.unwrap();
    create(&mut w, "h", req(TaskTarget::Node("n1".into()), hook()), 0).unwrap();
    let l = lease(&mut w, "n1", "h", "L1", 1).unwrap();
    assert_eq!(
        l.kind,
        TaskKind::Hook {
            name: "rotate-logs".into(),
            approved_sha256: vec!["a".repeat(64)],
        }
    );
    // The stored task keeps no hashes: they are read at lease time.
    assert_eq!(w.task("h").unwrap().rec.kind, hook());
}

#[test]
fn listing_filters_by_node_and_state_newest_first() {
    let mut w = world();
    create(
        &mut w,
        "old",
        req(TaskTarget::Node("n1".into()), netcheck()),
        1,
    )
    .unwrap();
    create(
        &mut w,
        "new",
        req(TaskTarget::Tag("web".into()), script("true".into())),
        2,
    )
    .unwrap();
    lease(&mut w, "n2", "new", "L", 3).unwrap();
    let all = |q: TaskQuery| {
        w.task_list(&q)
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        all(TaskQuery {
            limit: 10,
            ..TaskQuery::default()
        }),
        ["new", "old"]
    );
    assert_eq!(
        all(TaskQuery {
            limit: 1,
            ..TaskQuery::default()
        }),
        ["new"]
    );
    let n2 = Some(id(&w, "n2"));
    assert_eq!(
        all(TaskQuery {
            node: n2,
            limit: 10,
            ..TaskQuery::default()
        }),
        ["new"]
    );
    let leased = Some(RunState::Leased);
    assert_eq!(
        all(TaskQuery {
            state: leased,
            limit: 10,
            ..TaskQuery::default()
        }),
        ["new"]
    );
    let listed = w.task_list(&TaskQuery {
        limit: 10,
        ..TaskQuery::default()
    });
    assert!(listed[0].kind.is_none(), "lists leave the script body out");
    assert_eq!(listed[0].label, "script sh");
}

#[test]
fn the_oldest_finished_tasks_make_room_and_running_ones_are_never_dropped() {
    let mut w = world();
    for i in 0..TASKS_KEPT {
        create(
            &mut w,
            &format!("t{i:04}"),
            req(TaskTarget::Node("n1".into()), netcheck()),
            i as u64,
        )
        .unwrap();
    }
    let e = create(
        &mut w,
        "more",
        req(TaskTarget::Node("n1".into()), netcheck()),
        5_000,
    )
    .unwrap_err();
    assert_eq!(e.code(), "too_many_tasks");
    run(
        &mut w,
        &Actor::Admin,
        CancelTask { id: "t0007".into() },
        5_000,
    )
    .0
    .unwrap();
    let op = CreateTask {
        id: "more".into(),
        req: req(TaskTarget::Node("n1".into()), netcheck()),
    };
    let (out, writes) = run(&mut w, &Actor::Admin, op, 5_001);
    assert!(out.is_ok());
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, Write::DeleteTask(id) if id == "t0007"))
    );
    assert!(w.task("t0007").is_none() && w.task("t0000").is_some());
}

#[test]
fn a_node_whose_integrity_is_a_mismatch_gets_no_script_or_hook_task() {
    use weft_proto::integrity::{ExpectRequest, IntegrityReport};
    let mut w = world();
    let expect = ExpectRequest {
        api_version: None,
        version: "0.1.0".into(),
        sha256: "a".repeat(64),
    };
    run(&mut w, &Actor::Admin, crate::model::ExpectWeftd(expect), 0)
        .0
        .unwrap();
    let report = IntegrityReport {
        api_version: None,
        weftd_version: "0.1.0".into(),
        weftd_sha256: "b".repeat(64),
        hooks: vec![],
        hooks_error: None,
    };
    let op = crate::model::ReportIntegrity {
        node: id(&w, "n1"),
        report,
    };
    let actor = node_actor(&w, "n1");
    run(&mut w, &actor, op, 0).0.unwrap();
    create(
        &mut w,
        "s",
        req(TaskTarget::Tag("web".into()), script("true".into())),
        1,
    )
    .unwrap();
    create(
        &mut w,
        "a",
        req(TaskTarget::Node("n1".into()), netcheck()),
        1,
    )
    .unwrap();
    let e = lease(&mut w, "n1", "s", "L1", 2).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("integrity_mismatch", http::StatusCode::FORBIDDEN)
    );
    assert_eq!(run_state(&w, "s", "n1"), RunState::Pending);
    // Its built-in actions still run, and other nodes are not affected.
    assert!(lease(&mut w, "n1", "a", "L2", 2).is_ok());
    assert!(lease(&mut w, "n2", "s", "L3", 2).is_ok());
}
