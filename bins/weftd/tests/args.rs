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
