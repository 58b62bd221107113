//! Each `weft-lab` subcommand's `--help` describes that subcommand (no root
//! needed: nothing runs but clap).

#![allow(clippy::unwrap_used, reason = "test code")]

use std::process::Command;

fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-lab"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sub} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grid_help_is_grids_and_sweep_help_is_sweeps() {
    let grid = help("grid");
    assert!(grid.starts_with("The NAT traversal matrix"), "{grid}");
    assert!(
        !grid.contains("owner"),
        "grid --help shows sweep's text:\n{grid}"
    );
    let sweep = help("sweep");
    assert!(
        sweep.starts_with("Remove what crashed runs left behind"),
        "{sweep}"
    );
    assert!(sweep.contains("/run/weft-lab/<run id>/owner"), "{sweep}");
    // Every subcommand's first line is its own (no two alike).
    let mut firsts: Vec<String> = ["selftest", "sweep", "grid", "bench-paths", "demo"]
        .iter()
        .map(|s| help(s).lines().next().unwrap_or_default().to_owned())
        .collect();
    let n = firsts.len();
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), n, "{firsts:?}");
}
