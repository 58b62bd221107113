//! The fault suite as CI runs it: the real `weft-lab faults` binary (which runs
//! the real controller, relay, agents and CLI in lab namespaces), every case, and
//! every case must pass. Needs root and FAILS (never skips) without it. Binaries
//! from `WEFT_BIN_DIR` or next to this test (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;

#[test]
fn every_fault_case_passes() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let bin = weft_lab::bin_path("weft-lab").unwrap();
    let out = Command::new(&bin).arg("faults").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let progress = String::from_utf8_lossy(&out.stderr);
    eprintln!("{progress}");
    eprintln!("{table}");
    assert!(
        out.status.success(),
        "weft-lab faults failed:\n{table}\n{progress}"
    );
    // Every case ran and passed (the table has one row per case).
    for name in weft_lab::faults::case_names() {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.split_whitespace().nth(1) == Some("PASS")),
            "{name} did not pass:\n{table}"
        );
    }
    assert!(!table.contains("FAIL"), "{table}");
}
