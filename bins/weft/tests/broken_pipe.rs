//! Output into a closed pipe (`weft ... | head -1`) ends `weft` quietly, with
//! no panic and no backtrace, in every command (they all print with the same
//! machinery; `identity show` needs no agent).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::{Command, Stdio};

#[test]
fn a_closed_pipe_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["identity", "new", "--difficulty", "8", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // The reading end is closed before weft writes its first line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["identity", "show"])
        .arg(&key)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    // Ended by SIGPIPE, as `cat` or `grep` would be.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(13),
        "{:?}",
        out.status
    );
}
