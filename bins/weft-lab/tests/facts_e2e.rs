//! Host facts end to end: a real `weftd` joins a real `weft-controller` in lab
//! namespaces, and `weft admin node show --json` carries its facts as the
//! node's own files and binary say: its kernel release, host name, memory,
//! weftd's version and the SHA-256 of the weftd binary that runs. Needs root
//! and FAILS (never skips) without it; the binaries come from `WEFT_BIN_DIR`
//! or next to this test executable (`cargo build --workspace --bins` first).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

/// The first word of `sha256sum FILE`'s output: the hash as coreutils
/// computes it, independent of weft's own hashing.
fn sha256sum(lab: &Lab, node: &str, path: &str) -> String {
    let out = lab.run(node, &["sha256sum", path]).unwrap();
    let hash = out.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hash.len(), 64, "sha256sum {path}: {out:?}");
    hash
}

#[test]
fn a_nodes_host_facts_reach_the_controller() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let lab = Lab::build(&Topology::office(&["node1"])).expect("build the lab");
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(1).unwrap();
    mesh.start_agent("node1", Some(&token)).unwrap();

    // The facts ride on the registration: there as soon as the node is.
    let mut node = serde_json::Value::Null;
    weft_lab::timed_wait(
        "node1's facts on the controller",
        Duration::from_secs(20),
        || {
            let out = mesh
                .admin(&["node", "show", "node1", "--json"])
                .unwrap_or_default();
            node = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
            node["facts"].is_object()
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", mesh.agent_log_tail("node1")));
    let facts = &node["facts"];

    // What node1's own files say.
    let kernel = lab.run("node1", &["uname", "-r"]).unwrap();
    assert_eq!(facts["kernel_version"], kernel.trim(), "{facts:#}");
    let host = lab
        .run("node1", &["cat", "/proc/sys/kernel/hostname"])
        .unwrap();
    assert_eq!(facts["hostname"], host.trim(), "{facts:#}");
    let meminfo = lab.run("node1", &["cat", "/proc/meminfo"]).unwrap();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    assert_eq!(facts["memory_total_bytes"], mem_kb * 1024, "{facts:#}");
    assert!(
        facts["cpu_cores"].as_u64().is_some_and(|n| n > 0),
        "{facts:#}"
    );
    assert_eq!(facts["arch"], std::env::consts::ARCH, "{facts:#}");
    assert!(
        ["container", "vm", "bare-metal"].contains(&facts["virtualization"].as_str().unwrap_or("")),
        "{facts:#}"
    );

    // weftd's version and the hash of the very binary the lab started.
    let weftd = weft_lab::bin_path("weftd").unwrap();
    let weftd = weftd.to_str().unwrap();
    let version = lab.run("node1", &[weftd, "--version"]).unwrap();
    assert_eq!(
        Some(version.trim()),
        facts["weftd_version"]
            .as_str()
            .map(|v| format!("weftd {v}"))
            .as_deref(),
        "{facts:#}"
    );
    assert_eq!(
        facts["weftd_sha256"],
        sha256sum(&lab, "node1", weftd),
        "{facts:#}"
    );

    // The link's first report carries the same facts again: no new audit
    // entry (one, from the registration).
    weft_lab::timed_wait("node1 connected", Duration::from_secs(20), || {
        mesh.try_status("node1")
            .and_then(|s| s.controller)
            .is_some_and(|c| c.connected)
    })
    .unwrap();
    let audit: serde_json::Value =
        serde_json::from_str(&mesh.admin(&["audit", "--json"]).unwrap()).unwrap();
    let facts_entries: Vec<&serde_json::Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "node.facts")
        .collect();
    assert_eq!(facts_entries.len(), 1, "{audit:#}");
    assert_eq!(facts_entries[0]["target"], node["node_key"], "{audit:#}");
    assert_eq!(
        facts_entries[0]["detail"]["changed"]["weftd_sha256"]["to"],
        facts["weftd_sha256"]
    );

    // The list shows OS, version and architecture, in its last columns.
    let list = mesh.admin(&["node", "list"]).unwrap();
    let last3 = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        words[words.len().saturating_sub(3)..]
            .iter()
            .map(|w| (*w).to_owned())
            .collect()
    };
    assert_eq!(
        last3(list.lines().next().unwrap_or_default()),
        ["OS", "VERSION", "ARCH"],
        "{list}"
    );
    let row = list
        .lines()
        .find(|l| l.starts_with("node1 "))
        .unwrap_or_default();
    let os_version = facts["os_version"].as_str().unwrap_or("-");
    assert_eq!(
        last3(row)[1..],
        [
            facts["weftd_version"].as_str().unwrap().to_owned(),
            std::env::consts::ARCH.to_owned()
        ],
        "{list}"
    );
    assert!(row.contains(os_version), "{list}");

    // A new weftd binary (a copy with bytes appended: it runs the same, and
    // hashes differently) restarted on the same state: the link's first
    // report carries the changed facts, and the audit log names the change.
    mesh.stop_agent("node1").unwrap();
    let upgraded = lab.log_dir().join("weftd-upgraded");
    let mut bytes = std::fs::read(weftd).unwrap();
    bytes.extend_from_slice(b"weft facts e2e: a different binary");
    std::fs::write(&upgraded, bytes).unwrap();
    std::fs::set_permissions(
        &upgraded,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let upgraded = upgraded.to_str().unwrap();
    let new_hash = sha256sum(&lab, "node1", upgraded);
    assert_ne!(facts["weftd_sha256"], new_hash.as_str());
    let agent = &mesh.agents["node1"];
    let mut cmd = std::process::Command::new(upgraded);
    cmd.arg("--state-dir")
        .arg(&agent.state_dir)
        .arg("--socket")
        .arg(&agent.socket)
        .args(["--log", "info", "--dns", "off"]);
    let _restarted = lab.spawn("node1", "weftd-upgraded", &cmd).unwrap();
    let mut changed = serde_json::Value::Null;
    weft_lab::timed_wait(
        "the new binary's hash on the controller",
        Duration::from_secs(30),
        || {
            let out = mesh.admin(&["audit", "--json"]).unwrap_or_default();
            let audit: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            changed = audit["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| {
                    e["action"] == "node.facts"
                        && e["detail"]["changed"]["weftd_sha256"]["from"].is_string()
                })
                .map(|e| e["detail"]["changed"].clone())
                .unwrap_or_default();
            changed.is_object()
        },
    )
    .unwrap();
    assert_eq!(
        changed,
        serde_json::json!({"weftd_sha256": {"from": facts["weftd_sha256"], "to": new_hash}}),
        "only the binary changed"
    );
    let out = mesh.admin(&["node", "show", "node1", "--json"]).unwrap();
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["facts"]["weftd_sha256"], new_hash.as_str());
}
