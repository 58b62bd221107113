//! `weftd --advertise-routes` refuses a prefix the controller would refuse,
//! before doing anything (it used to start and have the refusal logged every
//! 30 s).

#![allow(clippy::unwrap_used, reason = "test code")]

use std::process::Command;

#[test]
fn bad_advertised_routes_stop_weftd_at_start() {
    for bad in ["192.168.50.1/24", "0.0.0.0/0", "127.0.0.0/8"] {
        let out = Command::new(env!("CARGO_BIN_EXE_weftd"))
            .args(["--state-dir", "/nonexistent/weftd-args-test"])
            .args(["--advertise-routes", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--advertise-routes"), "{stderr}");
    }
}

#[test]
fn node_api_flags_are_checked_before_anything_starts() {
    for (args, want) in [
        (
            &["--node-api-group", "no-such-group-weftd-test"][..],
            "no such group",
        ),
        (&["--node-api-secret-uids", "0"], "--node-api-group"),
        (
            &[
                "--node-api-group",
                "root",
                "--node-api-secret-uids",
                "no-such-user-weftd",
            ],
            "neither a uid nor a user name",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weftd"))
            .args(["--state-dir", "/nonexistent/weftd-args-test"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
