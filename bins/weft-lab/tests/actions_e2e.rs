//! Built-in task actions end to end (issue 17): real `weft-controller`,
//! `weftd` and `weft` in lab namespaces, each action run through `weft admin
//! task create --action` on a node that allows it, then checked on the node
//! itself: `ping` and `diagnostics` report, `restart-dataplane` and
//! `rotate-key` leave the node reachable (with a new key the peer and the
//! controller both know), and a node that does not allow an action refuses it.
//! Needs root and FAILS (never skips) without it. Build the binaries first
//! (`cargo build --bins`).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tasks_common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use serde_json::Value;
use tasks_common::{admin_json, create_task, lab, mesh, run_on, wait_finished, within};
use weft_lab::mesh::Mesh;

const ALL: &[&str] = &[
    "--allow-actions",
    "ping,netcheck,diagnostics,reconcile,restart-dataplane,flush-dns,rotate-key",
];

/// Runs `action` (with its argument) on `node`; the node's result.
fn act(mesh: &Mesh<'_>, node: &str, action: &[&str]) -> Value {
    let mut args = vec!["--node", node, "--action"];
    args.extend_from_slice(action);
    let task = create_task(mesh, &args);
    let task = wait_finished(mesh, task["id"].as_str().unwrap(), Duration::from_secs(90));
    run_on(&task, node)["result"].clone()
}

/// `weft ping PEER -c 1` from `node` succeeds within 20 s.
fn reaches(mesh: &Mesh<'_>, node: &str, peer: &str) {
    within(
        &format!("{node} pings {peer}"),
        Duration::from_secs(20),
        || {
            mesh.weft(node, &["ping", peer, "-c", "1", "-W", "1"])
                .is_ok_and(|o| o.status.success())
        },
    );
}

#[test]
fn built_in_actions_run_and_a_rotated_key_keeps_the_node_reachable() {
    let lab = lab(&["a", "b"]);
    let mesh = mesh(&lab, &[("a", ALL), ("b", &[])]);
    reaches(&mesh, "a", "b");

    // ping: three echoes through the tunnel.
    let r = act(&mesh, "a", &["ping", "b"]);
    assert_eq!(r["status"], "completed", "{r:#}");
    let out: Value = serde_json::from_str(r["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(out["peer"], "b");
    assert_eq!(out["received"], 3, "{out:#}");

    // diagnostics: every part, within the cap.
    let r = act(&mesh, "a", &["diagnostics", "--output-cap", "65536"]);
    assert_eq!(r["status"], "completed", "{r:#}");
    let text = r["stdout"].as_str().unwrap();
    assert!(text.len() <= 65536);
    for part in [
        "== weft status ==",
        "== agent log (last ",
        "== ip route show table all ==",
        "== nft list table inet weft ==",
    ] {
        assert!(text.contains(part), "{part} missing: {text:.2000}");
    }
    assert!(
        text.contains("applied network map"),
        "the agent's own log lines"
    );

    // reconcile and flush-dns report what they did.
    let r = act(&mesh, "a", &["reconcile"]);
    assert_eq!(r["status"], "completed", "{r:#}");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains("the system matches the map")
    );
    let r = act(&mesh, "a", &["flush-dns"]);
    assert!(
        r["status"] == "completed" || r["error"].as_str().is_some_and(|e| e.contains("DNS")),
        "{r:#}"
    );

    // restart-dataplane: a fresh core, the peer reached again.
    let r = act(&mesh, "a", &["restart-dataplane"]);
    assert_eq!(r["status"], "completed", "{r:#}");
    reaches(&mesh, "a", "b");
    reaches(&mesh, "b", "a");

    // rotate-key: the node, the controller and the peer all use the new key.
    let old = mesh.status("a").unwrap().node_key;
    let key_before = std::fs::read(lab.log_dir().join("a-state/identity.key")).unwrap();
    let r = act(&mesh, "a", &["rotate-key"]);
    assert_eq!(r["status"], "completed", "{r:#}");
    let new = mesh.status("a").unwrap().node_key;
    assert_ne!(new, old, "weft status shows the new key");
    assert!(r["stdout"].as_str().unwrap().contains(&new.to_string()));
    let shown = admin_json(&mesh, &["node", "show", "a"]);
    assert_eq!(shown["node_key"], new.to_string(), "{shown:#}");
    within("b knows a's new key", Duration::from_secs(20), || {
        mesh.try_status("b")
            .is_some_and(|s| s.peers.iter().any(|p| p.name == "a" && p.node_key == new))
    });
    reaches(&mesh, "a", "b");
    reaches(&mesh, "b", "a");
    let state = lab.log_dir().join("a-state");
    assert_ne!(
        std::fs::read(state.join("identity.key")).unwrap(),
        key_before,
        "identity.key holds the new key"
    );
    let mode = std::fs::metadata(state.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!state.join("identity.next").exists());

    // A node that does not allow an action refuses it, saying why.
    let r = act(&mesh, "b", &["rotate-key"]);
    assert_eq!(r["status"], "refused", "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("not allowed here"),
        "{r:#}"
    );
}
