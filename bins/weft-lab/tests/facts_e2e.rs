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
}
