//! The task runner against a stand-in controller (leases and results over
//! HTTP on loopback), and what a leased task becomes.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use weft_proto::task::{DEFAULT_OUTPUT_CAP, TaskKind, TaskLimits};

use super::*;

/// What the stand-in controller saw and answers.
#[derive(Default)]
struct Seen {
    leases: Vec<String>,
    results: Vec<TaskResult>,
    /// Results sent, whatever the answer.
    attempts: usize,
    /// The status answered to results (200 when 0).
    result_status: u16,
}

/// A stand-in controller: leases `kind` under a lease id per task
/// (`lease-<task>`), records results and answers them with
/// `Seen::result_status`. One request per connection.
async fn controller(kind: TaskKind, limits: TaskLimits, seen: Arc<Mutex<Seen>>) -> String {
    crate::stand_in::controller(move |head, body| {
        if head.starts_with("POST /v1/node/tasks/lease ") {
            let req: LeaseRequest = serde_json::from_str(body).unwrap();
            seen.lock().unwrap().leases.push(req.task_id.clone());
            let t = LeasedTask {
                lease_id: format!("lease-{}", req.task_id),
                task_id: req.task_id,
                lease_expires_at_ms: u64::MAX,
                deadline_ms: u64::MAX,
                kind: kind.clone(),
                limits,
            };
            (200, serde_json::to_string(&t).unwrap())
        } else if head.starts_with("POST /v1/node/tasks/result ") {
            let r: TaskResult = serde_json::from_str(body).unwrap();
            let mut s = seen.lock().unwrap();
            s.attempts += 1;
            let status = if s.result_status == 0 {
                200
            } else {
                s.result_status
            };
            if status == 200 {
                s.results.push(r);
            }
            let json = match status {
                200 => r#"{"duplicate":false}"#,
                409 => r#"{"code":"task_done","message":"done"}"#,
                _ => r#"{"code":"unavailable","message":"later"}"#,
            };
            (status, json.to_owned())
        } else {
            (404, r#"{"code":"not_found","message":"?"}"#.to_owned())
        }
    })
    .await
}

fn script(body: &str) -> TaskKind {
    TaskKind::Script {
        interpreter: "sh".into(),
        body: body.into(),
    }
}

/// Settings with exec on and a work directory `nobody` can traverse.
fn exec_on(work: &std::path::Path) -> TaskSettings {
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).unwrap();
    TaskSettings {
        allow_exec: true,
        work_dir: work.to_owned(),
        ..TaskSettings::default()
    }
}

fn notice(id: &str) -> TaskNotice {
    TaskNotice { task_id: id.into() }
}

/// Waits up to 10 s for `cond`.
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_script_task_is_leased_run_and_its_result_sent_with_the_lease_id() {
    let (state, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = controller(
        script("echo \"hi $WEFT_TASK_LEASE_ID\"; echo err >&2; exit 3"),
        TaskLimits::default(),
        seen.clone(),
    )
    .await;
    let tasks = Tasks::start(exec_on(work.path()), state.path());
    tasks.set_link(Some(&crate::stand_in::joined(&url)));
    tasks.notices().send(notice("t1")).await.unwrap();
    assert!(until(|| !seen.lock().unwrap().results.is_empty()).await);
    let r = seen.lock().unwrap().results[0].clone();
    assert_eq!(
        (r.task_id.as_str(), r.lease_id.as_str()),
        ("t1", "lease-t1")
    );
    assert_eq!(r.status, TaskStatus::Failed);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout, "hi lease-t1\n");
    assert_eq!(r.stderr, "err\n");
    assert!(r.check(DEFAULT_OUTPUT_CAP).is_ok());
    // Delivered: the outbox is empty, and a repeated notice runs nothing.
    assert!(until(|| tasks.results.lock().unwrap().pending() == 0).await);
    tasks.notices().send(notice("t1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().unwrap().leases, ["t1"]);
    assert!(tasks.failures().is_empty());
    assert_eq!(
        tasks.status(),
        TasksStatus {
            running: 0,
            delivered: 1,
            waiting: 0,
            lost: 0
        }
    );
}

#[tokio::test]
async fn a_node_with_exec_off_refuses_and_the_result_says_so() {
    let state = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = controller(script("echo never"), TaskLimits::default(), seen.clone()).await;
    let tasks = Tasks::start(TaskSettings::default(), state.path());
    tasks.set_link(Some(&crate::stand_in::joined(&url)));
    tasks.notices().send(notice("t2")).await.unwrap();
    assert!(until(|| !seen.lock().unwrap().results.is_empty()).await);
    let r = seen.lock().unwrap().results[0].clone();
    assert_eq!(r.status, TaskStatus::Refused);
    assert_eq!(r.lease_id, "lease-t2");
    assert_eq!(
        r.error.as_deref(),
        Some("exec is off on this node (weftd --allow-exec)")
    );
    assert!(r.stdout.is_empty() && r.exit_code.is_none());
}

#[tokio::test]
async fn a_result_waits_out_an_outage_and_a_restart_and_its_task_never_runs_twice() {
    let (state, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let seen = Arc::new(Mutex::new(Seen {
        result_status: 503,
        ..Seen::default()
    }));
    let url = controller(script("echo once"), TaskLimits::default(), seen.clone()).await;
    let tasks = Tasks::start(exec_on(work.path()), state.path());
    tasks.set_link(Some(&crate::stand_in::joined(&url)));
    tasks.notices().send(notice("t3")).await.unwrap();
    // Run, then kept: on disk before the first try.
    assert!(until(|| tasks.results.lock().unwrap().pending() == 1).await);
    assert!(state.path().join(results::FILE).exists());
    // The first try was answered (503), so none is in flight.
    assert!(until(|| seen.lock().unwrap().attempts >= 1).await);
    // A restart (the runner dropped as a killed agent would leave it).
    drop(tasks);
    let tasks = Tasks::start(exec_on(work.path()), state.path());
    assert_eq!(tasks.results.lock().unwrap().pending(), 1);
    seen.lock().unwrap().result_status = 200;
    tasks.set_link(Some(&crate::stand_in::joined(&url)));
    // The notice again (the stream reopened): not run again, the waiting
    // result is sent.
    tasks.notices().send(notice("t3")).await.unwrap();
    assert!(until(|| !seen.lock().unwrap().results.is_empty()).await);
    assert!(until(|| tasks.results.lock().unwrap().pending() == 0).await);
    let s = seen.lock().unwrap();
    assert_eq!(s.leases, ["t3"], "leased and run once");
    assert_eq!(s.results.len(), 1);
    assert_eq!(s.results[0].lease_id, "lease-t3");
    assert_eq!(s.results[0].stdout, "once\n");
}

#[tokio::test]
async fn a_result_refused_for_good_is_dropped_with_a_status_line() {
    let state = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen {
        result_status: 409,
        ..Seen::default()
    }));
    let url = controller(script("true"), TaskLimits::default(), seen.clone()).await;
    let tasks = Tasks::start(TaskSettings::default(), state.path());
    tasks.set_link(Some(&crate::stand_in::joined(&url)));
    tasks.notices().send(notice("t4")).await.unwrap();
    assert!(until(|| tasks.results.lock().unwrap().dropped() == 1).await);
    assert_eq!(tasks.results.lock().unwrap().pending(), 0);
    let f = tasks.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].area.as_str(), f[0].what.as_str()),
        ("tasks", "results lost")
    );
    assert_eq!(tasks.status().lost, 1);
    assert!(f[0].since_unix_ms > 0);
}

fn leased(kind: TaskKind, limits: TaskLimits) -> LeasedTask {
    LeasedTask {
        task_id: "t".into(),
        lease_id: "l".into(),
        lease_expires_at_ms: 0,
        deadline_ms: 0,
        kind,
        limits,
    }
}

#[tokio::test]
async fn over_the_limits_is_refused_before_anything_runs() {
    let work = tempfile::tempdir().unwrap();
    let s = exec_on(work.path());
    let over = TaskLimits {
        timeout_secs: 601,
        ..TaskLimits::default()
    };
    let r = execute(&leased(script("touch /tmp/weft-should-not-run"), over), &s).await;
    assert_eq!(r.status, TaskStatus::Refused);
    assert!(
        r.error.as_deref().unwrap().contains("timeout_secs"),
        "{r:?}"
    );
    assert_eq!((r.task_id.as_str(), r.lease_id.as_str()), ("t", "l"));
    assert!(std::fs::read_dir(work.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn a_timed_out_script_says_so_and_its_output_is_capped() {
    let work = tempfile::tempdir().unwrap();
    let s = exec_on(work.path());
    let l = TaskLimits {
        timeout_secs: 1,
        output_cap_bytes: 10,
    };
    let r = execute(&leased(script("echo 0123456789abcdef; sleep 5"), l), &s).await;
    assert_eq!(r.status, TaskStatus::TimedOut, "{r:?}");
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.stdout, "0123456789");
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert!(r.error.as_deref().unwrap().contains("after 1 s"), "{r:?}");
    assert!(r.check(l.output_cap_bytes).is_ok());
}

#[tokio::test]
async fn actions_and_hooks_are_refused_until_they_are_built_in() {
    let s = TaskSettings::default();
    let l = TaskLimits::default();
    let r = execute(&leased(TaskKind::Action(Action::Netcheck), l), &s).await;
    assert_eq!(r.status, TaskStatus::Refused);
    let hook = TaskKind::Hook {
        name: "backup".into(),
        approved_sha256: vec!["a".repeat(64)],
    };
    let r = execute(&leased(hook, l), &s).await;
    assert_eq!(r.status, TaskStatus::Refused);
}

/// A hook task runs the verified bytes of an approved hook (hooks must be
/// root-owned: root only); the same hook edited afterwards is refused, says
/// why, and asks for an integrity report at once.
#[tokio::test]
async fn an_approved_hook_runs_and_an_edited_one_is_refused_with_an_integrity_report() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (hooks must be root-owned): run the tests as root, as CI does"
    );
    let work = tempfile::tempdir().unwrap();
    let hooks = work.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    std::fs::set_permissions(&hooks, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = hooks.join("hello");
    std::fs::write(&file, "#!/bin/sh\necho hooked\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)).unwrap();
    let approved = crate::hooks::sha256_hex(b"#!/bin/sh\necho hooked\n");
    let (report_now, reported) = crate::integrity::ReportNow::for_tests();
    let mut s = exec_on(work.path());
    s.hooks_dir = hooks;
    s.report_now = Some(report_now);
    let hook = TaskKind::Hook {
        name: "hello".into(),
        approved_sha256: vec![approved],
    };
    let r = execute(&leased(hook.clone(), TaskLimits::default()), &s).await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    assert_eq!(r.stdout, "hooked\n");

    std::fs::write(&file, "#!/bin/sh\necho edited\n").unwrap();
    let r = execute(&leased(hook, TaskLimits::default()), &s).await;
    assert_eq!(r.status, TaskStatus::Refused, "{r:?}");
    let e = r.error.as_deref().unwrap();
    assert!(
        e.contains("hook hello changed since it was approved"),
        "{e}"
    );
    tokio::time::timeout(Duration::from_secs(1), reported.notified())
        .await
        .expect("an integrity report was asked for");
}
