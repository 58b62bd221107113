//! `weft identity` end to end: the real binary, real files.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn new_show_verify_and_permission_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let k = key.to_str().unwrap();

    let out = weft(&[
        "identity",
        "new",
        "--difficulty",
        "12",
        "--out",
        k,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node_key = json["node_key"].as_str().unwrap().to_owned();
    assert_eq!(node_key.len(), 43);
    assert!(json["difficulty"].as_u64().unwrap() >= 12);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The secret never reaches stdout or stderr.
    let file = std::fs::read_to_string(&key).unwrap();
    let secret = file
        .lines()
        .find_map(|l| l.strip_prefix("secret-key: "))
        .unwrap();
    assert!(!text(&out.stdout).contains(secret) && !text(&out.stderr).contains(secret));

    let out = weft(&["identity", "show", k]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(&node_key));
    assert!(!text(&out.stdout).contains(secret));

    // A proof minted at 12 is rejected where far more is required.
    let out = weft(&["identity", "verify", k, "--difficulty", "40"]);
    assert_eq!(out.status.code(), Some(3), "the answer is no: exit 3");
    assert!(
        text(&out.stderr).contains("too weak"),
        "{}",
        text(&out.stderr)
    );
    let out = weft(&["identity", "verify", k, "--difficulty", "12"]);
    assert!(out.status.success());

    // Refuses to clobber.
    let out = weft(&["identity", "new", "--difficulty", "1", "--out", k]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already exists"));

    // Group/world readable: refused with the fix in the message.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = weft(&["identity", "show", k]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("chmod 600") && err.contains(k), "{err}");
}

#[test]
fn corrupt_and_truncated_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let k = key.to_str().unwrap();
    assert!(
        weft(&["identity", "new", "-d", "4", "--out", k])
            .status
            .success()
    );
    let full = std::fs::read(&key).unwrap();

    std::fs::write(&key, &full[..full.len() / 2]).unwrap();
    let out = weft(&["identity", "show", k]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("truncated"),
        "{}",
        text(&out.stderr)
    );

    let mut bad = full.clone();
    let i = bad.len() - 30;
    bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
    std::fs::write(&key, &bad).unwrap();
    let out = weft(&["identity", "show", k]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("corrupt"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_arguments_are_explained() {
    let out = weft(&[
        "identity",
        "new",
        "--difficulty",
        "99",
        "--out",
        "/tmp/never",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("accepted is 0 to 40"));
    let out = weft(&["identity", "new", "--out", "/nonexistent-dir/k"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
}
