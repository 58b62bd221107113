//! Issue 14 items 2 and 8, against the real binary: lost state is refused (named,
//! with the way out) instead of silently replaced; `--init` replaces it
//! deliberately; the admin token is only in its 0600 file; the data directory is
//! 0700, the database 0600, looser modes are warned about, and one controller
//! at a time holds a data directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and wait on the real clock"
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Runs `serve` on `dir` and expects it to exit on its own (within 20 s):
/// returns exit code and stderr.
fn serve_expecting_exit(dir: &Path, extra: &[&str]) -> (i32, String) {
    let stderr = dir.join("refused.log");
    let mut child = serve_command(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not exit: it started on damaged state");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&stderr).unwrap();
    let _ = std::fs::remove_file(&stderr);
    (status.code().unwrap_or(-1), text)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A controller that ran once (TLS, database, admin token) and was stopped.
fn ran_once(dir: &Path) -> (String, String) {
    let mut ctl = Controller::start(dir, &[]);
    let fp = ctl
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
        .unwrap()
        .to_owned();
    let token = ctl.admin_token.clone();
    // Served a request: the signal handlers are installed.
    assert_eq!(raw_tls_health(&ctl), 200);
    assert!(ctl.sigterm(Duration::from_secs(10)).success());
    (fp, token)
}

fn assert_refused(code: i32, err: &str, names: &str) {
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(names), "does not name {names}: {err}");
    assert!(err.contains("--init"), "no way out: {err}");
    assert!(err.contains("backup"), "no way out: {err}");
}

#[test]
fn a_deleted_tls_key_or_certificate_is_refused_and_init_replaces_it() {
    sqlite_only();
    for lost in ["key.pem", "cert.pem"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (fp, token) = ran_once(&dir);
        std::fs::remove_file(dir.join("tls").join(lost)).unwrap();
        let (code, err) = serve_expecting_exit(&dir, &[]);
        assert_refused(code, &err, &format!("tls/{lost} is missing"));
        assert!(err.contains("re-pinned"), "{err}");
        assert!(!dir.join("tls").join(lost).exists(), "nothing generated");

        // --init: a new pair, deliberately; the database (and its token) stay.
        let ctl = Controller::start(&dir, &["--init"]);
        let new_fp = ctl
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
            .unwrap();
        assert_ne!(new_fp, fp);
        assert_eq!(ctl.admin_token, token, "the database was kept");
    }
}

#[test]
fn a_truncated_or_missing_database_is_refused_and_init_replaces_it() {
    sqlite_only();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (_, token) = ran_once(&dir);
    let db = dir.join("controller.db");
    std::fs::File::create(&db).unwrap(); // truncated to 0 bytes
    let (code, err) = serve_expecting_exit(&dir, &[]);
    assert_refused(code, &err, "controller.db is empty (0 bytes)");
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim(),
        token,
        "no new admin token"
    );

    std::fs::write(&db, b"this is not a database, just some bytes").unwrap();
    let (code, err) = serve_expecting_exit(&dir, &[]);
    assert_refused(code, &err, "controller.db is not a SQLite database");

    // Missing while the TLS pair is there.
    std::fs::remove_file(&db).unwrap();
    let (code, err) = serve_expecting_exit(&dir, &[]);
    assert_refused(code, &err, "controller.db is missing");
    assert!(!db.exists(), "nothing created");

    // --init creates an empty database and a new admin token.
    std::fs::write(&db, b"").unwrap();
    let ctl = Controller::start(&dir, &["--init"]);
    assert_ne!(ctl.admin_token, token);
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("controller.db.replaced-")
        });
    assert!(aside, "the broken file was moved aside, not deleted");
}

#[test]
fn first_start_creates_state_privately_and_prints_only_the_token_path() {
    sqlite_only();
    let tmp = tempfile::tempdir().unwrap();
    // Not created by the harness: the binary creates it.
    let dir = tmp.path().join("new").join("data");
    let log = tmp.path().join("ctl.log");
    let out = tmp.path().join("stdout.txt");
    let mut child = serve_command(&dir)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("controller.url").exists() {
        assert!(child.try_wait().unwrap().is_none(), "exited");
        assert!(start.elapsed() < Duration::from_secs(20), "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = std::fs::read_to_string(&out).unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let token = token.trim();
    assert!(token.starts_with("weft_admin_"));
    assert!(
        !stdout.contains(token),
        "the admin token went to stdout:\n{stdout}"
    );
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(token),
        "the admin token is in the log"
    );
    assert!(
        stdout.contains(&format!(
            "Admin token created: {}",
            dir.join("admin.token").display()
        )),
        "{stdout}"
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tls")), 0o700);
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    assert_eq!(mode(&dir.join("tls/key.pem")), 0o600);
    for f in ["controller.db", "controller.db-wal", "controller.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_second_controller_on_the_same_data_dir_is_refused() {
    sqlite_only();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let ctl = Controller::start(&dir, &[]);
    let (code, err) = serve_expecting_exit(&dir, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{} is in use", dir.display())),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", ctl.pid())), "{err}");
    // The first one still serves.
    assert_eq!(raw_tls_health(&ctl), 200);
}

fn raw_tls_health(ctl: &Controller) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { ctl.client().health().await.map(|_| 200).unwrap_or(0) })
}

#[test]
fn looser_modes_are_warned_about_at_start() {
    sqlite_only();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    ran_once(&dir);
    std::fs::remove_file(dir.join("controller.log")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("controller.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let ctl = Controller::start(&dir, &[]);
    let log = ctl.log();
    let warned = |what: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    assert_eq!(warned("0755"), 1, "{log}");
    assert_eq!(warned("0644"), 1, "{log}");
}
