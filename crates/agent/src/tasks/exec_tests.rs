//! Tests of bounded execution. They run real processes as `nobody` (the
//! test process is root, as weftd is).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::*;

/// A base directory `nobody` can traverse (a fresh tempdir is 0700).
fn base() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn nobody() -> ExecUser {
    ExecUser::lookup("nobody").unwrap()
}

fn sh(base: &Path, body: &str, timeout: Duration, cap: usize) -> ExecRequest {
    ExecRequest {
        program: Program::Script {
            interpreter: "sh".into(),
            body: body.as_bytes().to_vec(),
        },
        user: nobody(),
        base_dir: base.to_owned(),
        lease_id: "lease-1".into(),
        timeout,
        output_cap: cap,
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

/// Waits (up to 5 s: init reaps the killed orphans) until neither /proc
/// nor `pgrep -g PGID` finds a process in the group; false if they still do.
async fn group_gone(pgid: u32) -> bool {
    for _ in 0..500 {
        if group_members(pgid).is_empty() && pgrep_finds_none(pgid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("still in group {pgid}: {:?}", group_members(pgid));
    false
}

/// `pgrep -g PGID` finds nothing (exit 1).
fn pgrep_finds_none(pgid: u32) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-g", &pgid.to_string()])
        .output()
        .unwrap();
    out.status.code() == Some(1) && out.stdout.is_empty()
}

/// No live (not zombie) process in the group.
fn none_alive(pgid: u32) -> bool {
    group_members(pgid)
        .iter()
        .all(|(_, s)| *s == 'Z' || *s == 'X')
}

#[tokio::test]
async fn the_environment_is_exactly_path_home_lang_and_the_lease_id() {
    let b = base();
    // The shell's own environment as execve gave it (sh adds PWD to what
    // `env` would print).
    let f = run(&sh(
        b.path(),
        "tr '\\0' '\\n' < /proc/$$/environ",
        10 * SECOND,
        4096,
    ))
    .await
    .unwrap();
    assert_eq!(f.exit_code, Some(0), "{f:?}");
    let got: BTreeSet<String> = f.stdout.text.lines().map(str::to_owned).collect();
    let want: BTreeSet<String> = [
        format!("PATH={PATH}"),
        format!("HOME={}", f.workdir.display()),
        "LANG=C.UTF-8".to_owned(),
        "WEFT_TASK_LEASE_ID=lease-1".to_owned(),
    ]
    .into();
    assert_eq!(got, want);
    assert!(f.workdir.starts_with(b.path()));
}

#[tokio::test]
async fn it_runs_as_the_exec_user_without_groups_in_its_own_0700_directory() {
    let b = base();
    let f = run(&sh(
        b.path(),
        "id -u; id -g; grep '^Groups:' /proc/$$/status; stat -c '%u %g %a' \"$HOME\"; pwd; \
         stat -c '%u %a' \"$0\"",
        10 * SECOND,
        4096,
    ))
    .await
    .unwrap();
    let u = nobody();
    let lines: Vec<&str> = f.stdout.text.lines().collect();
    assert_eq!(lines[0], u.uid.to_string(), "{f:?}");
    assert_eq!(lines[1], u.gid.to_string());
    assert_eq!(lines[2].trim_end(), "Groups:", "no supplementary groups");
    assert_eq!(lines[3], format!("{} {} 700", u.uid, u.gid));
    assert_eq!(lines[4], f.workdir.display().to_string());
    // The script file: the user's, read-only.
    assert_eq!(lines[5], format!("{} 400", u.uid));
    assert_ne!(u.uid, 0);
}

#[tokio::test]
async fn the_working_directory_is_removed_after_success_failure_timeout_and_start_failure() {
    let b = base();
    for (body, timeout) in [
        ("echo x > file; mkdir -p d/e; ln -s / d/root", 10 * SECOND),
        ("exit 3", 10 * SECOND),
        ("echo x > file; sleep 30", Duration::from_millis(300)),
    ] {
        let f = run(&sh(b.path(), body, timeout, 1024)).await.unwrap();
        assert!(!f.workdir.exists(), "{body}: {f:?}");
        assert!(empty(b.path()), "{body}");
    }
    // The interpreter is not installed: an error, nothing left behind.
    let mut req = sh(b.path(), "true", SECOND, 1024);
    req.program = Program::Script {
        interpreter: "no-such-interpreter".into(),
        body: b"x".to_vec(),
    };
    let e = run(&req).await.unwrap_err().to_string();
    assert!(e.contains("not installed"), "{e}");
    assert!(empty(b.path()));
}

#[tokio::test]
async fn at_the_timeout_the_whole_group_is_killed_grandchildren_too() {
    let b = base();
    // A child, a grandchild that left its parent (double fork), and the
    // script itself, all holding stdout open.
    let f = run(&sh(
        b.path(),
        "sleep 300 & (sleep 301 &) ; echo started; sleep 302",
        Duration::from_millis(800),
        1024,
    ))
    .await
    .unwrap();
    assert!(f.timed_out, "{f:?}");
    assert_eq!(f.signal, Some(9));
    assert_eq!(f.exit_code, None);
    assert_eq!(f.stdout.text, "started\n");
    assert!(f.duration >= Duration::from_millis(800), "{f:?}");
    assert!(f.duration < 3 * SECOND, "{f:?}");
    assert!(none_alive(f.pgid), "{:?}", group_members(f.pgid));
    assert!(group_gone(f.pgid).await);
    assert!(!f.workdir.exists());
}

#[tokio::test]
async fn what_a_finished_program_left_in_its_group_is_killed_at_once() {
    let b = base();
    let f = run(&sh(b.path(), "sleep 300 & echo done", 30 * SECOND, 1024))
        .await
        .unwrap();
    assert!(!f.timed_out);
    assert_eq!(f.exit_code, Some(0));
    assert_eq!(f.stdout.text, "done\n");
    // It did not wait for the background sleep (which held stdout).
    assert!(f.duration < 3 * SECOND, "{f:?}");
    assert!(none_alive(f.pgid), "{:?}", group_members(f.pgid));
    assert!(group_gone(f.pgid).await);
}

#[tokio::test]
async fn a_run_just_under_its_timeout_completes_and_one_over_is_killed() {
    let b = base();
    let under = run(&sh(b.path(), "sleep 0.4; echo ok", SECOND, 64))
        .await
        .unwrap();
    assert!(!under.timed_out);
    assert_eq!(
        (under.exit_code, under.stdout.text.as_str()),
        (Some(0), "ok\n")
    );
    let over = run(&sh(b.path(), "sleep 1.6; echo late", SECOND, 64))
        .await
        .unwrap();
    assert!(over.timed_out);
    assert_eq!(over.stdout.text, "");
    assert!(over.duration >= SECOND && over.duration < 1500 * Duration::from_millis(1));
}

#[tokio::test]
async fn output_at_under_and_over_the_cap() {
    let b = base();
    let cap = 1000;
    for (n, truncated) in [(999, false), (1000, false), (1001, true)] {
        let body =
            format!("head -c {n} /dev/zero | tr '\\0' a; head -c {n} /dev/zero | tr '\\0' b >&2");
        let f = run(&sh(b.path(), &body, 10 * SECOND, cap)).await.unwrap();
        for (o, c) in [(&f.stdout, 'a'), (&f.stderr, 'b')] {
            assert_eq!(o.text.len(), n.min(cap), "{n}");
            assert!(o.text.chars().all(|x| x == c));
            assert_eq!(o.truncated, truncated, "{n}");
            assert_eq!(o.total_bytes, n as u64);
        }
    }
}

#[tokio::test]
async fn one_mib_on_both_streams_is_cut_to_the_cap_and_flagged_without_blocking() {
    let b = base();
    let cap = 256 * 1024;
    let f = run(&sh(
        b.path(),
        "head -c 1048576 /dev/zero | tr '\\0' x; head -c 1048576 /dev/zero | tr '\\0' y >&2; \
         echo end",
        30 * SECOND,
        cap,
    ))
    .await
    .unwrap();
    assert_eq!(f.exit_code, Some(0), "{:?}", f.stderr.text.get(..100));
    assert!(!f.timed_out);
    assert_eq!(f.stdout.text.len(), cap);
    assert_eq!(f.stderr.text.len(), cap);
    assert!(f.stdout.truncated && f.stderr.truncated);
    // The program wrote everything (it was drained past the cap).
    assert_eq!(f.stdout.total_bytes, 1024 * 1024 + 4);
    assert_eq!(f.stderr.total_bytes, 1024 * 1024);
}

#[test]
fn text_is_cut_at_a_character_boundary_after_lossy_conversion() {
    // "é" is two bytes: a cap in its middle keeps the character before it.
    assert_eq!(cut_text("aé".as_bytes(), 2), ("a".into(), true));
    assert_eq!(cut_text("aé".as_bytes(), 3), ("aé".into(), false));
    // An invalid byte becomes U+FFFD (3 bytes), which then counts.
    assert_eq!(cut_text(b"a\xffb", 5), ("a\u{fffd}b".into(), false));
    assert_eq!(cut_text(b"a\xffb", 4), ("a\u{fffd}".into(), true));
    assert_eq!(cut_text(b"a\xffb", 3), ("a".into(), true));
    assert_eq!(cut_text(b"", 0), (String::new(), false));
}

#[tokio::test]
async fn an_executable_runs_by_its_own_interpreter_line() {
    let b = base();
    let mut req = sh(b.path(), "", 10 * SECOND, 1024);
    req.program = Program::Executable {
        body: b"#!/bin/sh\necho \"hook $WEFT_TASK_LEASE_ID\"; exit 7\n".to_vec(),
    };
    let f = run(&req).await.unwrap();
    assert_eq!(f.exit_code, Some(7));
    assert_eq!(f.stdout.text, "hook lease-1\n");
    assert!(empty(b.path()));
}

#[tokio::test]
async fn python3_scripts_run_and_a_signal_is_reported() {
    let b = base();
    let mut req = sh(b.path(), "", 10 * SECOND, 1024);
    req.program = Program::Script {
        interpreter: "python3".into(),
        body: b"import os, signal\nprint('py', os.getuid(), flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n"
            .to_vec(),
    };
    let f = run(&req).await.unwrap();
    assert_eq!(f.stdout.text, format!("py {}\n", nobody().uid));
    assert_eq!(
        (f.exit_code, f.signal, f.timed_out),
        (None, Some(15), false)
    );
}

#[test]
fn the_exec_user_is_looked_up() {
    let u = nobody();
    assert_eq!(u.name, "nobody");
    let meta = fs::metadata("/").unwrap();
    assert_ne!(u.uid, meta.uid());
    let e = ExecUser::lookup("no-such-user-weft")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not exist") && e.contains("--exec-user"),
        "{e}"
    );
}
