//! The node API's secrets and the remote operations' hygiene (issue 17):
//! real `weft-controller`, `weftd` and `weft` in lab namespaces. Needs root
//! and FAILS (never skips) without it. Build the binaries first
//! (`cargo build --bins`).
//!
//! - A secret the admin CLI sealed to the node is readable by root with
//!   `weft node get secret KEY`, and refused to another uid (`nobody`, which
//!   may still read the metadata as a member of `--node-api-group`).
//! - No admin token, join token, node credential or secret value appears in
//!   the controller's or the agents' logs after tasks ran and a secret was
//!   set and read; and what a node receives when it leases a task holds the
//!   execution fields only: no admin identity, no token.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tasks_common;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tasks_common::{
    admin_json, create_script_task, lab, mesh, run_on, script_file, wait_finished, within,
};
use weft_lab::mesh::Mesh;

/// The node API's socket of `node` in the lab.
fn node_api_socket(lab: &weft_lab::Lab, node: &str) -> String {
    lab.log_dir()
        .join(format!("{node}-node.sock"))
        .display()
        .to_string()
}

/// `weft node get ARGS...` in `node`, as `uid` (0: root).
fn node_get(mesh: &Mesh<'_>, node: &str, uid: u32, args: &[&str]) -> Output {
    let lab = mesh.lab();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.netns(node).unwrap()]);
    if uid != 0 {
        let id = uid.to_string();
        cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
    }
    cmd.arg(weft_lab::bin_path("weft").unwrap())
        .args([
            "node",
            "--node-api-socket",
            &node_api_socket(lab, node),
            "get",
        ])
        .args(args);
    cmd.output().unwrap()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sets secret `key` of `node` to `value` with the admin CLI (from a file).
fn set_secret(mesh: &Mesh<'_>, node: &str, key: &str, value: &str) {
    let file = mesh.lab().log_dir().join(format!("secret-{key}"));
    std::fs::write(&file, value).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    mesh.admin(&[
        "secret",
        "set",
        "--node",
        node,
        key,
        "--value-file",
        file.to_str().unwrap(),
    ])
    .unwrap();
    std::fs::remove_file(&file).unwrap();
}

/// Waits until root on `node` reads `value` as secret `key`.
fn wait_secret(mesh: &Mesh<'_>, node: &str, key: &str, value: &str) {
    within(
        &format!("secret {key} readable on {node}"),
        Duration::from_secs(30),
        || {
            let out = node_get(mesh, node, 0, &["secret", key]);
            out.status.success() && out.stdout == value.as_bytes()
        },
    );
}

/// The node API on: its socket in the lab, metadata and data for `nogroup`.
fn node_api_args(lab: &weft_lab::Lab, node: &str) -> Vec<String> {
    vec![
        "--node-api-socket".into(),
        node_api_socket(lab, node),
        "--node-api-group".into(),
        "nogroup".into(),
    ]
}

#[test]
fn a_secret_is_readable_by_root_and_refused_to_another_uid() {
    const NOBODY: u32 = 65534;
    let lab = lab(&["n1"]);
    let api = node_api_args(&lab, "n1");
    let api: Vec<&str> = api.iter().map(String::as_str).collect();
    let mesh = mesh(&lab, &[("n1", &api)]);
    let value = format!("e2e-secret-{}", random_hex(16));
    set_secret(&mesh, "n1", "db-password", &value);
    // The controller keeps no plaintext: the admin's list names the key only.
    let list = admin_json(&mesh, &["secret", "list", "--node", "n1"]);
    assert!(list.to_string().contains("db-password"), "{list:#}");
    assert!(!list.to_string().contains(&value), "{list:#}");

    wait_secret(&mesh, "n1", "db-password", &value);

    // nobody reaches the API (its group is nogroup) and reads the metadata...
    let meta = node_get(&mesh, "n1", NOBODY, &["metadata", "--json"]);
    assert!(
        meta.status.success(),
        "nobody reads the metadata: {}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let meta: Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(meta["name"], "n1", "{meta:#}");
    // ...but not the secret.
    let out = node_get(&mesh, "n1", NOBODY, &["secret", "db-password"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(&value) && !stderr.contains(&value));
    assert!(
        stderr.contains("forbidden") || stderr.contains("refused") || stderr.contains("403"),
        "the refusal says so: {stderr}"
    );
    // An unknown key is an error too, for root.
    let out = node_get(&mesh, "n1", 0, &["secret", "no-such-key"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// Every log file of the lab, by name.
fn logs(lab: &weft_lab::Lab) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(lab.log_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            v.push((
                p.display().to_string(),
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
            ));
        }
    }
    v
}

/// The node credential in `node`'s state directory.
fn credential(mesh: &Mesh<'_>, node: &str) -> String {
    let path = mesh.agents[node].state_dir.join("credential.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["credential"].as_str().unwrap().to_owned()
}

/// `POST /v1/node/tasks/lease {"task_id": id}` with `node`'s credential,
/// with curl in `node` (the header from a 0600 file, not the command line):
/// the HTTP status and the body.
fn lease_as(mesh: &Mesh<'_>, node: &str, id: &str) -> (u16, String) {
    let lab = mesh.lab();
    let header = lab.log_dir().join(format!("{node}-auth-header"));
    std::fs::write(
        &header,
        format!("Authorization: Bearer {}\n", credential(mesh, node)),
    )
    .unwrap();
    std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-w", "\n%{http_code}", "-X", "POST"])
        .arg("-H")
        .arg(format!("@{}", header.display()))
        .args(["-H", "content-type: application/json"])
        .args(["-d", &format!("{{\"task_id\":\"{id}\"}}")])
        .arg(format!("{}/v1/node/tasks/lease", mesh.controller.url));
    let out = lab.exec(node, &cmd).unwrap();
    std::fs::remove_file(&header).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn no_token_credential_or_secret_in_the_logs_and_the_lease_holds_no_admin_identity() {
    let lab = lab(&["n1", "n2"]);
    let mut n1 = vec!["--allow-exec".to_owned()];
    n1.extend(node_api_args(&lab, "n1"));
    let n1: Vec<&str> = n1.iter().map(String::as_str).collect();
    let mut mesh = mesh(&lab, &[("n1", &n1), ("n2", &[])]);
    let value = format!("e2e-secret-{}", random_hex(16));
    set_secret(&mesh, "n1", "api-key", &value);
    wait_secret(&mesh, "n1", "api-key", &value);
    let script = script_file(&lab, "hello.sh", "echo hello\n");
    let task = create_script_task(&mesh, &["--node", "n1"], &script, &[]);
    let task = wait_finished(&mesh, task["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(run_on(&task, "n1")["result"]["status"], "completed");

    // What a node receives when it leases: n2 is stopped, and the test
    // leases its task with n2's credential.
    mesh.stop_agent("n2").unwrap();
    let task = create_script_task(&mesh, &["--node", "n2"], &script, &[]);
    let id = task["id"].as_str().unwrap();
    let (code, body) = lease_as(&mesh, "n2", id);
    assert_eq!(code, 200, "{body}");
    let leased: Value = serde_json::from_str(&body).unwrap();
    let keys: BTreeSet<&str> = leased
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let execution: BTreeSet<&str> = [
        "task_id",
        "lease_id",
        "lease_expires_at_ms",
        "deadline_ms",
        "kind",
        "limits",
    ]
    .into();
    assert_eq!(keys, execution, "execution fields only: {body}");
    let admin_token =
        std::fs::read_to_string(mesh.controller.data_dir.join("admin.token")).unwrap();
    let admin_token = admin_token.trim();
    assert!(admin_token.starts_with("weft_admin_"));
    for bad in [
        "admin",
        "created_by",
        "weft_admin_",
        "weft_node_",
        admin_token,
    ] {
        assert!(!body.contains(bad), "{bad} in the leased task: {body}");
    }
    // Leasing again under the live lease is the same lease.
    let (code, again) = lease_as(&mesh, "n2", id);
    assert_eq!(code, 200, "{again}");
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["lease_id"], leased["lease_id"]);
    // Another node's task is not n2's to lease.
    let other = create_script_task(&mesh, &["--node", "n1"], &script, &[]);
    let other_id = other["id"].as_str().unwrap();
    let (code, body) = lease_as(&mesh, "n2", other_id);
    assert_eq!(code, 409, "{body}");
    wait_finished(&mesh, other_id, Duration::from_secs(60));

    // No secret in any log of the lab: the controller's, both agents'.
    let mut secrets = vec![
        ("the admin token", admin_token.to_owned()),
        ("n1's credential", credential(&mesh, "n1")),
        ("n2's credential", credential(&mesh, "n2")),
        ("the secret's value", value.clone()),
    ];
    for e in std::fs::read_dir(lab.log_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("token-"))
        {
            secrets.push(("a join token", std::fs::read_to_string(&p).unwrap()));
        }
    }
    let logs = logs(&lab);
    assert!(
        logs.iter().any(|(n, _)| n.contains("controller"))
            && logs.iter().filter(|(n, _)| n.contains("weftd")).count() >= 2,
        "the controller's and agents' logs are there: {:?}",
        logs.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (what, s) in &secrets {
        let s = s.trim();
        assert!(s.len() >= 16, "{what} is a real value");
        for (name, text) in &logs {
            assert!(!text.contains(s), "{what} is in {name}");
        }
    }
    // Nor any token-looking string at all.
    for (name, text) in &logs {
        for prefix in ["weft_admin_", "weft_node_", "weft_join_"] {
            assert!(!text.contains(prefix), "{prefix}… in {name}");
        }
    }
}
