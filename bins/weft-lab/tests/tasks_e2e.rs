//! Remote tasks end to end (issue 17): real `weft-controller`, `weftd` and
//! `weft` in lab namespaces, tasks created with `weft admin task create` and
//! read back with `weft admin task show --json`. Needs root and FAILS (never
//! skips) without it. Build the binaries first (`cargo build --bins`).
//!
//! - A script task on three nodes picked by tag: one run per node, each
//!   result carrying its run's lease id, run as `nobody` in a fresh temporary
//!   directory (removed after) with the minimal environment.
//! - A task that sleeps past its timeout is killed with its children and
//!   grandchildren: nothing of its process group is left (`pgrep -g`).
//! - 1 MiB of output is cut to the task's cap and flagged.
//! - A node with exec off refuses a script, and a built-in it does not allow,
//!   and the result says why.
//! - A hook edited after it was approved is refused, and the controller
//!   raises an integrity event for the node.
//!
//! The controller and agent outages are in `tasks_outage_e2e.rs`; the node
//! API's secrets and the logs' hygiene in `node_api_e2e.rs`.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tasks_common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use tasks_common::{
    admin_json, admin_output, create_script_task, create_task, lab, mesh, run_on, runs,
    script_file, show_task, wait_finished, within,
};

const EXEC: &[&str] = &["--allow-exec"];

/// What every script run of these tests prints about where it ran.
const WHERE: &str = r#"echo "lease=$WEFT_TASK_LEASE_ID"
echo "uid=$(id -u)"
echo "pwd=$(pwd)"
echo "home=$HOME"
env | sed 's/^/env:/'
"#;

/// The value of `key=` in a script's output.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {stdout:?}"))
}

#[test]
fn a_script_task_on_three_nodes_by_tag_returns_each_result_with_its_lease_id() {
    const WEB: [&str; 3] = ["web1", "web2", "web3"];
    let lab = lab(&["web1", "web2", "web3", "db"]);
    let mesh = mesh(
        &lab,
        &[("web1", EXEC), ("web2", EXEC), ("web3", EXEC), ("db", EXEC)],
    );
    for n in WEB {
        mesh.admin(&["node", "tag", n, "web"]).unwrap();
    }
    let script = script_file(&lab, "where.sh", WHERE);
    let task = create_script_task(&mesh, &["--tag", "web"], &script, &[]);
    let id = task["id"].as_str().unwrap();
    let nodes: BTreeSet<String> = runs(&task)
        .iter()
        .map(|r| r["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        nodes,
        WEB.iter().map(|s| (*s).to_owned()).collect(),
        "one run per tagged node, none on db: {task:#}"
    );
    assert_eq!(task["limits"]["timeout_secs"], 30, "the default timeout");
    assert_eq!(task["limits"]["output_cap_bytes"], 64 * 1024);

    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let mut leases = BTreeSet::new();
    for n in WEB {
        let run = run_on(&task, n);
        let r = &run["result"];
        assert_eq!(r["status"], "completed", "{n}: {run:#}");
        assert_eq!(r["exit_code"], 0, "{n}: {run:#}");
        assert_eq!(run["leases"], 1, "{n}: {run:#}");
        let lease = run["lease_id"].as_str().unwrap();
        assert!(!lease.is_empty());
        assert_eq!(r["lease_id"], lease, "{n}: the result names its lease");
        assert_eq!(r["task_id"], id);
        let out = r["stdout"].as_str().unwrap();
        assert_eq!(field(out, "lease"), lease, "{n}: WEFT_TASK_LEASE_ID");
        assert_eq!(field(out, "uid"), "65534", "{n}: ran as nobody");
        let pwd = field(out, "pwd");
        assert_eq!(
            field(out, "home"),
            pwd,
            "{n}: HOME is the working directory"
        );
        assert!(
            !std::path::Path::new(pwd).exists(),
            "{n}: the working directory {pwd} is removed"
        );
        // The environment is minimal: what weftd sets, and what sh adds itself.
        let env: BTreeSet<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("env:"))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        for k in &env {
            assert!(
                [
                    "PATH",
                    "HOME",
                    "LANG",
                    "WEFT_TASK_LEASE_ID",
                    "PWD",
                    "SHLVL",
                    "_"
                ]
                .contains(k),
                "{n}: unexpected variable {k} in {out}"
            );
        }
        for k in ["PATH", "HOME", "LANG", "WEFT_TASK_LEASE_ID"] {
            assert!(env.contains(k), "{n}: {k} missing from {out}");
        }
        assert!(!r["stdout_truncated"].as_bool().unwrap());
        leases.insert(lease.to_owned());
    }
    assert_eq!(leases.len(), 3, "a lease per run");
    // The human table too.
    let out = admin_output(&mesh, &["task", "show", id]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for n in WEB {
        assert!(text.contains(n), "{text}");
    }
}

#[test]
fn a_task_that_sleeps_past_its_timeout_is_killed_with_its_children() {
    let lab = lab(&["n1"]);
    let mesh = mesh(&lab, &[("n1", EXEC)]);
    // The shell's process group, a child, a grandchild that left its parent
    // (a daemon-style double fork), then a sleep in the foreground.
    let script = script_file(
        &lab,
        "sleeper.sh",
        r#"echo "pgid=$(cut -d' ' -f5 /proc/$$/stat)"
sleep 300 &
sh -c 'sleep 301 &'
sleep 302
echo "not reached"
"#,
    );
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &["--timeout", "2s"]);
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["limits"]["timeout_secs"], 2);
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let run = run_on(&task, "n1");
    let r = &run["result"];
    assert_eq!(r["status"], "timed_out", "{run:#}");
    assert_eq!(r["signal"], 9, "SIGKILL: {run:#}");
    let ms = r["duration_ms"].as_u64().unwrap();
    assert!(
        (2_000..10_000).contains(&ms),
        "killed at its timeout: {ms} ms"
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("not reached"), "{out}");
    let pgid = field(out, "pgid");
    assert_ne!(pgid, "0");
    // Nothing of its group is left: not running, and (once their parent
    // reaped them) not even a zombie.
    let group = |pgid: &str| {
        let out = Command::new("pgrep").args(["-g", pgid]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let ps = |pgid: &str| {
        let out = Command::new("ps")
            .args(["-o", "pid,ppid,stat,args", "-g", pgid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let alive: Vec<String> = group(pgid)
        .lines()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        })
        .map(str::to_owned)
        .collect();
    assert!(alive.is_empty(), "group {pgid} still runs: {}", ps(pgid));
    let reaped = weft_lab::timed_wait("the group reaped", Duration::from_secs(5), || {
        group(pgid).is_empty()
    });
    assert!(reaped.is_ok(), "group {pgid} left: {}", ps(pgid));
    let sleepers = Command::new("pgrep")
        .args(["-f", "^sleep 30[012]$"])
        .output()
        .unwrap();
    assert!(
        sleepers.stdout.is_empty(),
        "a sleeper outlived the task: {}",
        String::from_utf8_lossy(&sleepers.stdout)
    );
}

#[test]
fn a_megabyte_of_output_is_cut_to_the_cap_and_flagged() {
    const CAP: usize = 256 * 1024;
    let lab = lab(&["n1"]);
    let mesh = mesh(&lab, &[("n1", EXEC)]);
    let script = script_file(
        &lab,
        "flood.sh",
        "head -c 1048576 /dev/zero | tr '\\0' a\necho small >&2\n",
    );
    let cap = CAP.to_string();
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &["--output-cap", &cap]);
    let id = task["id"].as_str().unwrap();
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let run = run_on(&task, "n1");
    let r = &run["result"];
    assert_eq!(r["status"], "completed", "{}", r["error"]);
    assert_eq!(r["exit_code"], 0);
    let out = r["stdout"].as_str().unwrap();
    assert_eq!(out.len(), CAP, "cut to the cap");
    assert!(out.bytes().all(|b| b == b'a'));
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr"], "small\n");
    assert_eq!(r["stderr_truncated"], false);

    // Over the maximum cap: refused at creation, nothing created.
    let over = (CAP + 1).to_string();
    let out = admin_output(
        &mesh,
        &[
            "task",
            "create",
            "--node",
            "n1",
            "--script",
            script.to_str().unwrap(),
            "--interpreter",
            "sh",
            "--output-cap",
            &over,
        ],
    );
    assert!(!out.status.success(), "a cap over 256 KiB is refused");
}

#[test]
fn a_node_with_exec_off_refuses_and_the_result_says_why() {
    let lab = lab(&["n1"]);
    let mesh = mesh(&lab, &[("n1", &[])]);
    let script = script_file(&lab, "touch.sh", "echo ran\n");
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &[]);
    let id = task["id"].as_str().unwrap();
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "refused", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("exec is off") && error.contains("--allow-exec"),
        "{error}"
    );
    assert_eq!(r["stdout"], "", "nothing ran");

    // A built-in that is not read-only is off by default too.
    let task = create_task(&mesh, &["--node", "n1", "--action", "reconcile"]);
    let id = task["id"].as_str().unwrap();
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "refused", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("reconcile") && error.contains("--allow-actions"),
        "{error}"
    );
    // A read-only one runs.
    let task = create_task(&mesh, &["--node", "n1", "--action", "diagnostics"]);
    let id = task["id"].as_str().unwrap();
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "completed", "{r:#}");
}

/// The sha256 of a file, in lowercase hex.
fn sha256_hex(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_hook_edited_after_approval_is_refused_and_raises_an_integrity_event() {
    let lab = lab(&["n1"]);
    let hooks = lab.log_dir().join("n1-hooks");
    std::fs::create_dir(&hooks).unwrap();
    std::fs::set_permissions(&hooks, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hook = hooks.join("check.sh");
    std::fs::write(&hook, "#!/bin/sh\necho hook ok\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hooks_arg = hooks.to_str().unwrap().to_owned();
    let mesh = mesh(
        &lab,
        &[("n1", &["--allow-exec", "--hooks-dir", &hooks_arg])],
    );
    // The weftd the lab runs is the one expected: the node's integrity is ok.
    let weftd = weft_lab::bin_path("weftd").unwrap();
    let version = Command::new(&weftd).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.split_whitespace().nth(1).unwrap();
    mesh.admin(&[
        "integrity",
        "expect",
        "--version",
        version,
        "--sha256",
        &sha256_hex(&weftd),
    ])
    .unwrap();
    let approved = sha256_hex(&hook);
    mesh.admin(&["hook", "approve", "check.sh", &approved])
        .unwrap();
    within("n1's integrity ok", Duration::from_secs(30), || {
        node_integrity(&mesh, "n1") == "ok"
    });

    let task = create_task(&mesh, &["--node", "n1", "--hook", "check.sh"]);
    let task = wait_finished(&mesh, task["id"].as_str().unwrap(), Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "completed", "the approved hook runs: {r:#}");
    assert_eq!(r["stdout"], "hook ok\n");

    // Edited after its approval.
    std::fs::write(&hook, "#!/bin/sh\necho hook ok\necho and more\n").unwrap();
    let task = create_task(&mesh, &["--node", "n1", "--hook", "check.sh"]);
    let task = wait_finished(&mesh, task["id"].as_str().unwrap(), Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "refused", "{r:#}");
    assert_eq!(r["stdout"], "", "nothing ran");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("check.sh"), "{error}");

    // The agent reports the new hash; the controller raises the event and
    // shows the node's integrity as a mismatch.
    within("an integrity event for n1", Duration::from_secs(30), || {
        let v = admin_json(&mesh, &["events", "--node", "n1"]);
        v["events"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e.to_string().contains("integrity")))
    });
    assert_eq!(node_integrity(&mesh, "n1"), "mismatch");

    // While it stands, the node is refused script tasks: the run waits,
    // never leased.
    let script = script_file(&lab, "hello.sh", "echo hello\n");
    let blocked = create_script_task(&mesh, &["--node", "n1"], &script, &[]);
    let id = blocked["id"].as_str().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let run = run_on(&show_task(&mesh, id), "n1");
    assert_eq!(
        (&run["state"], &run["leases"]),
        (&"pending".into(), &0.into()),
        "{run:#}"
    );
    // Approving the hook as it is now resolves it, and the waiting task runs.
    mesh.admin(&["hook", "approve", "check.sh", &sha256_hex(&hook)])
        .unwrap();
    within("n1's integrity ok again", Duration::from_secs(30), || {
        node_integrity(&mesh, "n1") == "ok"
    });
    let task = wait_finished(&mesh, id, Duration::from_secs(60));
    let r = run_on(&task, "n1")["result"].clone();
    assert_eq!(r["status"], "completed", "{r:#}");
}

/// `integrity` of `node` in `weft admin node list --json`.
fn node_integrity(mesh: &weft_lab::mesh::Mesh<'_>, node: &str) -> String {
    let nodes = admin_json(mesh, &["node", "list"]);
    nodes
        .as_array()
        .or_else(|| nodes["nodes"].as_array())
        .and_then(|a| a.iter().find(|n| n["name"] == node).cloned())
        .and_then(|n| n["integrity"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{nodes:#}"))
}
