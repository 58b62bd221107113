//! What the remote operations e2e tests (issue 17) share: a lab with a
//! controller, agents started with extra `weftd` flags, and `weft admin task`
//! driven through the CLI with `--json`, exactly as an operator would.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

/// A lab of `nodes` behind one office NAT, and the controller's host.
pub(crate) fn lab(nodes: &[&str]) -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    Lab::build(&Topology::office(nodes)).expect("build the lab")
}

/// Waits for `check`, or fails naming `what`.
pub(crate) fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// A controller and `nodes`, each joined and started with `args` (its
/// extra `weftd` flags; `{node}` in an argument is the node's name).
pub(crate) fn mesh<'l>(lab: &'l Lab, nodes: &[(&str, &[&str])]) -> Mesh<'l> {
    let mut mesh = Mesh::start(lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(nodes.len() as u32).unwrap();
    for (node, args) in nodes {
        let args: Vec<String> = args.iter().map(|a| a.replace("{node}", node)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mesh.start_agent_with_args(node, Some(&token), &[], &args)
            .unwrap_or_else(|e| panic!("{node}: {e:#}"));
    }
    for (node, _) in nodes {
        within(
            &format!("{node} connected"),
            Duration::from_secs(30),
            || {
                mesh.try_status(node)
                    .and_then(|s| s.controller)
                    .is_some_and(|c| c.connected)
            },
        );
    }
    mesh
}

/// `weft admin --data-dir DIR ARGS...` next to the controller, whatever its
/// exit status.
pub(crate) fn admin_output(mesh: &Mesh<'_>, args: &[&str]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &mesh.lab().netns(&mesh.controller.node).unwrap(),
    ])
    .arg(weft_lab::bin_path("weft").unwrap())
    .arg("admin")
    .arg("--data-dir")
    .arg(&mesh.controller.data_dir)
    .args(args);
    cmd.output().unwrap()
}

/// `weft admin ARGS... --json`, which must succeed: its JSON.
pub(crate) fn admin_json(mesh: &Mesh<'_>, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = admin_output(mesh, &all);
    assert!(
        out.status.success(),
        "weft admin {}: {}{}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weft admin {}: {e}: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Writes a script body to a file in the lab's log directory.
pub(crate) fn script_file(lab: &Lab, name: &str, body: &str) -> PathBuf {
    let path = lab.log_dir().join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// `weft admin task create TARGET... ARGS...`: the task (`TaskView`).
pub(crate) fn create_task(mesh: &Mesh<'_>, args: &[&str]) -> Value {
    let mut all = vec!["task", "create"];
    all.extend_from_slice(args);
    let task = admin_json(mesh, &all);
    assert!(task["id"].is_string(), "{task:#}");
    task
}

/// A script task: `sh` running the file `script` on `target` (`--node N`,
/// `--tag T`), with more `args` (`--timeout`, `--output-cap`).
pub(crate) fn create_script_task(
    mesh: &Mesh<'_>,
    target: &[&str],
    script: &Path,
    args: &[&str],
) -> Value {
    let mut all = target.to_vec();
    all.extend_from_slice(&["--script", script.to_str().unwrap(), "--interpreter", "sh"]);
    all.extend_from_slice(args);
    create_task(mesh, &all)
}

/// `weft admin task show ID --json`.
pub(crate) fn show_task(mesh: &Mesh<'_>, id: &str) -> Value {
    admin_json(mesh, &["task", "show", id])
}

/// The task's runs.
pub(crate) fn runs(task: &Value) -> Vec<Value> {
    task["runs"].as_array().cloned().unwrap_or_default()
}

/// Whether every run of the task is final (done, cancelled, expired).
pub(crate) fn finished(task: &Value) -> bool {
    let runs = runs(task);
    !runs.is_empty()
        && runs
            .iter()
            .all(|r| matches!(r["state"].as_str(), Some("done" | "cancelled" | "expired")))
}

/// Waits until every run of task `id` is final; the task then.
pub(crate) fn wait_finished(mesh: &Mesh<'_>, id: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let r = weft_lab::timed_wait(&format!("task {id} finished"), timeout, || {
        last = show_task(mesh, id);
        finished(&last)
    });
    if let Err(e) = r {
        panic!("{e}: {last:#}");
    }
    last
}

/// The run of `task` on `node`.
pub(crate) fn run_on(task: &Value, node: &str) -> Value {
    runs(task)
        .into_iter()
        .find(|r| r["node"] == node)
        .unwrap_or_else(|| panic!("no run on {node}: {task:#}"))
}

/// Audit entries with `action` that are about task `id` (its target or
/// details name it).
pub(crate) fn audit_of(mesh: &Mesh<'_>, action: &str, id: &str) -> Vec<Value> {
    let v = admin_json(mesh, &["audit", "--limit", "1000"]);
    v["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["action"] == action)
        .filter(|e| {
            e["target"].as_str().is_some_and(|t| t.contains(id))
                || e["detail"].to_string().contains(id)
        })
        .collect()
}

/// A directory every user may write (task scripts run as `nobody` and leave
/// traces there for the test to count).
pub(crate) fn shared_dir(lab: &Lab, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = lab.log_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// The lines of a file (none when it is missing).
pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
