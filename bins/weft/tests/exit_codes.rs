//! `weft`'s exit statuses and `--json` errors (README's CLI reference): 1 for
//! errors, 2 for usage, 3 when the answer is no; with `--json` an error is a
//! JSON object on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

#[test]
fn errors_usage_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();

    // No agent: an error, exit 1; with --json, as JSON on stdout.
    for cmd in [
        vec!["status"],
        vec!["down"],
        vec!["why", "db"],
        vec!["ping", "db"],
        vec!["up", "--timeout", "1"],
    ] {
        let mut args = vec!["--socket", sock];
        args.extend_from_slice(&cmd);
        let out = weft(&args);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error: cannot reach"));
        args.push("--json");
        let out = weft(&args);
        assert_eq!(out.status.code(), Some(1), "{cmd:?} --json: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd:?} --json: {e}: {out:?}"));
        assert_eq!(v["error"]["code"], "agent_unreachable", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(sock),
            "{v}"
        );
    }

    // Bad arguments: usage, exit 2 (a route with host bits set is one).
    let out = weft(&["up", "--advertise-routes", "192.168.50.1/24"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // `weft --help` documents the statuses.
    let out = weft(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit status: 0 success; 1 error; 2 usage error"),
        "{help}"
    );

    // identity verify --json: the verdict; exit 3 when rejected.
    let key = dir.path().join("k.key");
    let key = key.to_str().unwrap();
    assert!(
        weft(&["identity", "new", "--difficulty", "8", "--out", key])
            .status
            .success()
    );
    let out = weft(&["identity", "verify", key, "--difficulty", "40", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let out = weft(&["identity", "verify", key, "--difficulty", "8", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}
