//! Remote tasks against the real controller binary: limits on create and on
//! results (at, just under and just over each bound, through the real body
//! limits), idempotent results, `task` events on the map stream (at once for a
//! node with a stream, at stream open for one without), the leased payload
//! (execution fields only), deadlines, and tasks and leases across a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly"
)]

mod common;

use std::time::Duration;

use common::*;
use weft_api_client::{Client, MapStream};
use weft_proto::api::UpdateNodeRequest;
use weft_proto::netmap::{MapEvent, StreamEvent};
use weft_proto::task::{
    Action, CreateTaskRequest, MAX_OUTPUT_CAP, MAX_SCRIPT_BYTES, MAX_TIMEOUT_SECS, RunState,
    TaskKind, TaskResult, TaskStatus, TaskTarget,
};

const IDLE: Duration = Duration::from_secs(10);

fn req(target: TaskTarget, kind: TaskKind) -> CreateTaskRequest {
    CreateTaskRequest {
        target,
        kind,
        timeout_secs: None,
        output_cap_bytes: None,
        deadline_secs: None,
    }
}

fn node(name: &str) -> TaskTarget {
    TaskTarget::Node(name.into())
}

fn script(body: String) -> TaskKind {
    TaskKind::Script {
        interpreter: "sh".into(),
        body,
    }
}

fn result(task: &str, lease: &str, stdout: usize, stderr: usize) -> TaskResult {
    TaskResult {
        task_id: task.into(),
        lease_id: lease.into(),
        status: TaskStatus::Completed,
        exit_code: Some(0),
        signal: None,
        duration_ms: 12,
        stdout: "o".repeat(stdout),
        stderr: "e".repeat(stderr),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
    }
}

/// A registered node: its name and a client with its credential.
async fn join(client: &Client, token: &str) -> (String, Client, String) {
    let r = register(client, token, &identity(8)).await.unwrap();
    let c = client.with_bearer(&r.credential).unwrap();
    (r.name, c, r.credential)
}

/// The next `task` event's task id, skipping map events.
async fn next_task(s: &mut MapStream) -> String {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("no task event within 10 s")
            .expect("stream ended")
            .expect("stream error");
        if let StreamEvent::Task(n) = ev {
            return n.task_id;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_on_create_and_on_results() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (name, nc, _) = join(&ctl.client(), &tok).await;
    let with = |timeout: Option<u32>, cap: Option<u32>, kind: TaskKind| CreateTaskRequest {
        timeout_secs: timeout,
        output_cap_bytes: cap,
        ..req(node(&name), kind)
    };
    let netcheck = || TaskKind::Action(Action::Netcheck);

    // Timeout: at and under the maximum, over it.
    for t in [MAX_TIMEOUT_SECS, MAX_TIMEOUT_SECS - 1] {
        admin
            .create_task(&with(Some(t), None, netcheck()))
            .await
            .unwrap();
    }
    let (status, code, msg) = refused(
        admin
            .create_task(&with(Some(MAX_TIMEOUT_SECS + 1), None, netcheck()))
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_task"));
    assert!(msg.contains("timeout_secs") && msg.contains("601"), "{msg}");
    // Output cap.
    for c in [MAX_OUTPUT_CAP, MAX_OUTPUT_CAP - 1] {
        admin
            .create_task(&with(None, Some(c), netcheck()))
            .await
            .unwrap();
    }
    let (status, code, _) = refused(
        admin
            .create_task(&with(None, Some(MAX_OUTPUT_CAP + 1), netcheck()))
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_task"));
    // Script size: the 64 KiB script passes the API's body limit too.
    for n in [MAX_SCRIPT_BYTES, MAX_SCRIPT_BYTES - 1] {
        admin
            .create_task(&with(None, None, script("x".repeat(n))))
            .await
            .unwrap();
    }
    let (status, code, msg) = refused(
        admin
            .create_task(&with(None, None, script("x".repeat(MAX_SCRIPT_BYTES + 1))))
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_task"), "{msg}");
    // Interpreter allowlist.
    let perl = TaskKind::Script {
        interpreter: "perl".into(),
        body: "1".into(),
    };
    let (status, _, msg) = refused(admin.create_task(&with(None, None, perl)).await);
    assert!(status == 400 && msg.contains("perl"), "{msg}");
    // A hook's approved hashes never come from the request.
    let hook = TaskKind::Hook {
        name: "h".into(),
        approved_sha256: vec!["a".repeat(64)],
    };
    assert_eq!(
        refused(admin.create_task(&with(None, None, hook)).await).1,
        "invalid_task"
    );

    // Results: a task with the largest cap takes 256 KiB per stream (more than
    // the API's default body limit) and refuses one byte more.
    let big = admin
        .create_task(&with(None, Some(MAX_OUTPUT_CAP), netcheck()))
        .await
        .unwrap();
    let lease = nc.lease_task(&big.id).await.unwrap();
    let cap = MAX_OUTPUT_CAP as usize;
    let (status, code, _) = refused(
        nc.submit_task_result(&result(&big.id, &lease.lease_id, cap + 1, 0))
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "invalid_result"));
    let (status, _, _) = refused(
        nc.submit_task_result(&result(&big.id, &lease.lease_id, 0, cap + 1))
            .await,
    );
    assert_eq!(status, 400);
    let ack = nc
        .submit_task_result(&result(&big.id, &lease.lease_id, cap, cap))
        .await
        .unwrap();
    assert!(!ack.duplicate);
    let small = admin
        .create_task(&with(None, Some(1000), netcheck()))
        .await
        .unwrap();
    let lease = nc.lease_task(&small.id).await.unwrap();
    assert_eq!(
        refused(
            nc.submit_task_result(&result(&small.id, &lease.lease_id, 1001, 0))
                .await
        )
        .0,
        400
    );
    assert!(
        !nc.submit_task_result(&result(&small.id, &lease.lease_id, 999, 1000))
            .await
            .unwrap()
            .duplicate
    );

    // Idempotent by (task, lease): the same result again is a duplicate; one
    // under another lease after completion is 409 task_done.
    let again = nc
        .submit_task_result(&result(&small.id, &lease.lease_id, 999, 1000))
        .await
        .unwrap();
    assert!(again.duplicate);
    let (status, code, _) = refused(
        nc.submit_task_result(&result(&small.id, "lse_other", 0, 0))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "task_done"));
    let progress = admin.task_progress(&small.id).await.unwrap();
    assert!(progress.runs[0].result.is_none() && progress.finished());
    let shown = admin.show_task(&small.id).await.unwrap();
    let run = &shown.runs[0];
    assert_eq!(
        (run.state, run.status),
        (RunState::Done, Some(TaskStatus::Completed))
    );
    let r = run.result.as_ref().expect("show carries the result");
    assert_eq!((r.stdout.len(), r.stderr.len()), (999, 1000));

    // Every change is audited, with no outputs in the audit log.
    let audit = admin.audit(50, None, Some(&small.id)).await.unwrap();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"task.create")
            && actions.contains(&"task.lease")
            && actions.contains(&"task.result"),
        "{actions:?}"
    );
    assert!(!serde_json::to_string(&audit).unwrap().contains("ooooo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_reach_online_nodes_at_once_and_offline_ones_when_their_stream_opens() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &["--plain-http"]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (a, ac, _) = join(&ctl.client(), &tok).await;
    let (b, bc, b_cred) = join(&ctl.client(), &tok).await;
    for n in [&a, &b] {
        let tag = UpdateNodeRequest {
            tags: Some(vec!["web".into()]),
            ..UpdateNodeRequest::default()
        };
        admin.update_node(n, &tag).await.unwrap();
    }
    let mut sa = ac.map_stream(None, IDLE).await.unwrap();
    let first = tokio::time::timeout(IDLE, sa.next_map())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, MapEvent::Snapshot(_)));

    let t = admin
        .create_task(&req(
            TaskTarget::Tag("web".into()),
            script("echo hi".into()),
        ))
        .await
        .unwrap();
    assert_eq!(t.runs.len(), 2);
    assert_eq!(
        next_task(&mut sa).await,
        t.id,
        "the online node is told at once"
    );

    // b had no stream: it gets the task right after its snapshot.
    let mut sb = bc.map_stream(None, IDLE).await.unwrap();
    let ev = tokio::time::timeout(IDLE, sb.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, StreamEvent::Map(MapEvent::Snapshot(_))),
        "{ev:?}"
    );
    let ev = tokio::time::timeout(IDLE, sb.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        StreamEvent::Task(weft_proto::task::TaskNotice {
            task_id: t.id.clone()
        })
    );

    // The leased payload holds execution fields only: no admin identity, no
    // token, no creator.
    let bearer = format!("Bearer {b_cred}");
    let body = format!(r#"{{"task_id":"{}"}}"#, t.id);
    let (status, text) = raw(
        &ctl.addr,
        "POST",
        "/v1/node/tasks/lease",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "deadline_ms",
            "kind",
            "lease_expires_at_ms",
            "lease_id",
            "limits",
            "task_id"
        ]
    );
    for secret in [
        ctl.admin_token.as_str(),
        "admin",
        "created",
        b_cred.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    // Leasing again under the live lease is the same lease.
    let again = bc.lease_task(&t.id).await.unwrap();
    assert_eq!(again.lease_id, v["lease_id"].as_str().unwrap());
    // A node without a run of the task cannot lease it.
    let (_, cc, _) = join(&ctl.client(), &tok).await;
    let (status, code, _) = refused(cc.lease_task(&t.id).await);
    assert_eq!((status, code.as_str()), (409, "task_unavailable"));
    // A reconnecting node is told only of tasks it has not leased.
    drop(sb);
    let mut sb = bc.map_stream(None, IDLE).await.unwrap();
    let t2 = admin
        .create_task(&req(node(&b), TaskKind::Action(Action::Diagnostics)))
        .await
        .unwrap();
    assert_eq!(next_task(&mut sb).await, t2.id);
    // Nothing the task carries reaches the controller's log.
    assert!(!ctl.log().contains("echo hi"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_deadline_is_refused_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (name, nc, _) = join(&ctl.client(), &tok).await;
    let t = CreateTaskRequest {
        deadline_secs: Some(1),
        ..req(node(&name), TaskKind::Action(Action::Netcheck))
    };
    let t = admin.create_task(&t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, code, _) = refused(nc.lease_task(&t.id).await);
    assert_eq!((status, code.as_str()), (410, "task_expired"));
    // The sweep (every 5 s) marks the run expired and audits it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = admin.show_task(&t.id).await.unwrap();
        if v.runs[0].state == RunState::Expired {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not expired: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = admin.audit(10, None, Some(&t.id)).await.unwrap();
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "task.expire" && e.actor == "system")
    );
    // No stream gets an expired task.
    let mut s = nc.map_stream(None, IDLE).await.unwrap();
    tokio::time::timeout(IDLE, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_leases_and_results_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (name, _, cred) = join(&ctl.client(), &tok).await;
    let t = admin
        .create_task(&req(node(&name), script("sleep 1".into())))
        .await
        .unwrap();
    let pending = admin
        .create_task(&req(node(&name), TaskKind::Action(Action::Netcheck)))
        .await
        .unwrap();
    let nc = ctl.client().with_bearer(&cred).unwrap();
    let lease = nc.lease_task(&t.id).await.unwrap();

    ctl.kill9();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let nc = ctl.client().with_bearer(&cred).unwrap();
    // The live lease is still this node's: leasing again answers it.
    assert_eq!(nc.lease_task(&t.id).await.unwrap(), lease);
    let v = admin.show_task(&t.id).await.unwrap();
    assert_eq!((v.runs[0].state, v.runs[0].leases), (RunState::Leased, 1));
    // The unleased task reaches the node when its stream opens.
    let mut s = nc.map_stream(None, IDLE).await.unwrap();
    assert_eq!(next_task(&mut s).await, pending.id);
    drop(s);
    // The result arrives after the restart, once.
    assert!(
        !nc.submit_task_result(&result(&t.id, &lease.lease_id, 3, 0))
            .await
            .unwrap()
            .duplicate
    );

    drop(ctl);
    let ctl = Controller::start(dir.path(), &[]);
    let nc = ctl.client().with_bearer(&cred).unwrap();
    assert!(
        nc.submit_task_result(&result(&t.id, &lease.lease_id, 3, 0))
            .await
            .unwrap()
            .duplicate
    );
    let v = ctl.admin().show_task(&t.id).await.unwrap();
    assert_eq!(v.runs[0].state, RunState::Done);
    assert_eq!(
        v.runs[0].result.as_ref().map(|r| r.stdout.as_str()),
        Some("ooo")
    );
    let listed = ctl
        .admin()
        .list_tasks(None, Some(RunState::Pending), None)
        .await
        .unwrap();
    assert_eq!(
        listed
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        [pending.id.as_str()]
    );
}

/// Runs `weft admin task create … --wait` while a fake node leases the task
/// from its stream and returns `result`; the CLI's exit status and output.
async fn wait_with(
    ctl: &Controller,
    nc: &Client,
    args: &[&str],
    status: TaskStatus,
    exit_code: Option<i32>,
) -> (Option<i32>, String, String) {
    let mut s = nc.map_stream(None, IDLE).await.unwrap();
    let child = weft_admin(&ctl.dir)
        .args(["task", "create"])
        .args(args)
        .arg("--wait")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = next_task(&mut s).await;
    let lease = nc.lease_task(&id).await.unwrap();
    let r = TaskResult {
        status,
        exit_code,
        stdout: "hello from the node\n".into(),
        ..result(&id, &lease.lease_id, 0, 0)
    };
    nc.submit_task_result(&r).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_creates_waits_lists_shows_and_cancels_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (name, nc, _) = join(&ctl.client(), &tok).await;

    let (ok, out, err) = ctl.cli(&["task", "create", "--node", &name, "--action", "netcheck"]);
    assert!(ok, "{err}");
    let id = out.split_whitespace().nth(1).expect("task id").to_owned();
    assert!(id.starts_with("tsk_") && out.contains(&name), "{out}");
    let (ok, out, err) = ctl.cli(&["task", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("0/1 done"),
        "{out}{err}"
    );
    let (ok, out, err) = ctl.cli(&["task", "cancel", &id]);
    assert!(ok && out.contains("cancelled (1 runs)"), "{out}{err}");
    let (ok, _, err) = ctl.cli(&["task", "cancel", &id]);
    assert!(!ok && err.contains("no run left to cancel"), "{err}");
    // Refused by the CLI before anything is sent, and by the controller.
    let (ok, _, err) = ctl.cli(&[
        "task",
        "create",
        "--node",
        &name,
        "--action",
        "netcheck",
        "--timeout",
        "11m",
    ]);
    assert!(!ok && err.contains("--timeout"), "{err}");
    let (ok, _, err) = ctl.cli(&["task", "create", "--node", "nope", "--action", "netcheck"]);
    assert!(!ok && err.contains("nope"), "{err}");

    // --wait prints the results and exits 1 unless every run completed.
    let script = dir.path().join("check.sh");
    std::fs::write(&script, "echo hello; exit 3\n").unwrap();
    let args = ["--node", &name, "--script", script.to_str().unwrap()];
    let (code, out, err) = wait_with(&ctl, &nc, &args, TaskStatus::Failed, Some(3)).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("hello from the node") && out.contains("failed (exit 3)"),
        "{out}"
    );
    assert!(err.contains("1 of 1 runs did not complete"), "{err}");
    let args = ["--node", &name, "--action", "diagnostics"];
    let (code, out, err) = wait_with(&ctl, &nc, &args, TaskStatus::Completed, Some(0)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("completed"), "{out}");

    let (ok, out, _) = ctl.cli(&["task", "list", "--state", "done", "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2, "{out}");
    let done = v["tasks"][0]["id"].as_str().unwrap().to_owned();
    let (ok, out, _) = ctl.cli(&["task", "show", &done]);
    assert!(
        ok && out.contains("hello from the node") && out.contains("lease lse_"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_a_task_routes_limit_are_413_naming_that_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &["--plain-http"]);
    let admin_h = format!("Bearer {}", ctl.admin_token);
    let big = vec![b' '; 512 * 1024 + 1];
    let (status, body) = raw(
        &ctl.addr,
        "POST",
        "/v1/admin/tasks",
        &[
            ("content-type", "application/json"),
            ("authorization", &admin_h),
        ],
        &big,
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("524288"), "{body}");
}
