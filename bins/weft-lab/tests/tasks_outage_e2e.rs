//! Task results across outages (issue 17, items 2 and 7): real
//! `weft-controller`, `weftd` and `weft` in lab namespaces. Needs root and
//! FAILS (never skips) without it. Build the binaries first
//! (`cargo build --bins`).
//!
//! - The controller is killed (SIGKILL) while a task runs: the agent keeps
//!   the result in its outbox (`STATE_DIR/results-outbox.json`) and delivers
//!   it after the controller's restart, exactly once.
//! - The agent is killed (SIGKILL) after the task finished but before it
//!   could send the result (the controller is down, so the result is only in
//!   the outbox): after both restart, the result is delivered exactly once
//!   and the task is not run again.
//!
//! - A node that is down when a task is created for it runs the task when
//!   it is back (its stream opens and the controller offers what waits).
//!
//! "Exactly once": the script ran once (it appends to a file the test reads),
//! the run was leased once, the controller holds one result whose lease id is
//! the run's, and its audit log has one `task.result` for the task.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tasks_common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tasks_common::{
    audit_of, create_script_task, lab, lines, mesh, run_on, script_file, shared_dir, wait_finished,
    within,
};
use weft_lab::mesh::Mesh;

const EXEC: &[&str] = &["--allow-exec"];

/// The task ids of the results waiting in `node`'s outbox.
fn outbox_tasks(mesh: &Mesh<'_>, node: &str) -> Vec<String> {
    let path = mesh.agents[node].state_dir.join("results-outbox.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    v["body"]["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["task_id"].as_str().map(str::to_owned))
        .collect()
}

/// A script that notes its start and end in `dir/runs`, sleeping between.
fn noting_script(lab: &weft_lab::Lab, dir: &Path, secs: u32) -> std::path::PathBuf {
    let runs = dir.join("runs");
    let runs = runs.display();
    script_file(
        lab,
        "noting.sh",
        &format!("echo start >> {runs}\nsleep {secs}\necho finished\necho end >> {runs}\n"),
    )
}

/// Everything that says the task `id` was run and delivered exactly once.
fn assert_delivered_once(mesh: &Mesh<'_>, id: &str, runs_file: &Path) {
    let task = wait_finished(mesh, id, Duration::from_secs(90));
    let run = run_on(&task, "n1");
    let r = &run["result"];
    assert_eq!(r["status"], "completed", "{run:#}");
    assert_eq!(r["stdout"], "finished\n", "{run:#}");
    assert_eq!(run["leases"], 1, "leased once: {run:#}");
    assert_eq!(r["lease_id"], run["lease_id"], "{run:#}");
    assert_eq!(lines(runs_file), ["start", "end"], "the script ran once");
    assert_eq!(
        audit_of(mesh, "task.result", id).len(),
        1,
        "one result applied"
    );
    // The outbox is emptied, and nothing more arrives.
    within("the outbox emptied", Duration::from_secs(30), || {
        outbox_tasks(mesh, "n1").is_empty()
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(audit_of(mesh, "task.result", id).len(), 1);
    let again = run_on(&tasks_common::show_task(mesh, id), "n1");
    assert_eq!(again["result"], run["result"], "the result is unchanged");
    assert_eq!(lines(runs_file), ["start", "end"], "not run again");
}

#[test]
fn the_controller_killed_while_a_task_runs_gets_its_result_once_after_its_restart() {
    let lab = lab(&["n1"]);
    let mut mesh = mesh(&lab, &[("n1", EXEC)]);
    let dir = shared_dir(&lab, "n1-trace");
    let runs_file = dir.join("runs");
    let script = noting_script(&lab, &dir, 6);
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &["--timeout", "60s"]);
    let id = task["id"].as_str().unwrap().to_owned();
    within("the task started", Duration::from_secs(30), || {
        lines(&runs_file) == ["start"]
    });
    mesh.kill_controller().unwrap();
    within("the task finished", Duration::from_secs(30), || {
        lines(&runs_file) == ["start", "end"]
    });
    within(
        "the result kept in the outbox",
        Duration::from_secs(10),
        || outbox_tasks(&mesh, "n1").contains(&id),
    );
    // Let the agent try (and fail) to send it a few times.
    std::thread::sleep(Duration::from_secs(3));
    mesh.restart_controller().unwrap();
    assert_delivered_once(&mesh, &id, &runs_file);
}

#[test]
fn an_agent_killed_after_finishing_but_before_sending_delivers_once_after_restart() {
    let lab = lab(&["n1"]);
    let mut mesh = mesh(&lab, &[("n1", EXEC)]);
    let dir = shared_dir(&lab, "n1-trace");
    let runs_file = dir.join("runs");
    let script = noting_script(&lab, &dir, 3);
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &["--timeout", "60s"]);
    let id = task["id"].as_str().unwrap().to_owned();
    within("the task started", Duration::from_secs(30), || {
        lines(&runs_file) == ["start"]
    });
    // The controller away: the result cannot be sent, only kept.
    mesh.kill_controller().unwrap();
    within("the task finished", Duration::from_secs(30), || {
        lines(&runs_file) == ["start", "end"]
    });
    within(
        "the result kept in the outbox",
        Duration::from_secs(10),
        || outbox_tasks(&mesh, "n1").contains(&id),
    );
    mesh.kill_agent("n1").unwrap();
    assert!(
        outbox_tasks(&mesh, "n1").contains(&id),
        "still on disk after SIGKILL"
    );
    mesh.restart_controller().unwrap();
    mesh.start_agent_with_args("n1", None, &[], EXEC).unwrap();
    assert_delivered_once(&mesh, &id, &runs_file);
}

#[test]
fn a_node_down_when_its_task_was_created_runs_it_when_it_is_back() {
    let lab = lab(&["n1"]);
    let mut mesh = mesh(&lab, &[("n1", EXEC)]);
    let dir = shared_dir(&lab, "n1-trace");
    let runs_file = dir.join("runs");
    let script = noting_script(&lab, &dir, 0);
    mesh.stop_agent("n1").unwrap();
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &[]);
    let id = task["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let run = run_on(&tasks_common::show_task(&mesh, &id), "n1");
    assert_eq!(run["state"], "pending", "{run:#}");
    assert!(lines(&runs_file).is_empty());
    mesh.start_agent_with_args("n1", None, &[], EXEC).unwrap();
    assert_delivered_once(&mesh, &id, &runs_file);
}
