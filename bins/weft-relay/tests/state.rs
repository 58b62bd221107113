//! Issue 14 items 2 and 8 for the relay, against the real binaries: a lost TLS
//! key or certificate is refused (named, with the way out) instead of silently
//! replaced, `--init` replaces it deliberately, the data directory is created
//! 0700 and one relay at a time holds it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and wait on the real clock"
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn args(data_dir: &Path, token_file: &Path, ctl: &Controller) -> Vec<String> {
    serve_args(data_dir, ctl, "127.0.0.1:0", token_file)
}

/// A temporary directory with a controller in `ctl/` that knows the relay of
/// `relay/` (its token in `relay/relay.token`): the directory, the relay's data
/// directory, the controller and the token file.
async fn with_controller() -> (tempfile::TempDir, PathBuf, Controller, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let relay_dir = tmp.path().join("relay");
    let (ctl, _) = setup(&tmp.path().join("ctl"), &relay_dir).await;
    let token = relay_dir.join("relay.token");
    (tmp, relay_dir, ctl, token)
}

fn spawn(args: &[String], extra: &[&str], stderr: &Path) -> Child {
    Command::new(RELAY_BIN)
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(stderr).unwrap()))
        .spawn()
        .unwrap()
}

/// Runs the relay and expects it to exit on its own: exit code and stderr.
fn expect_exit(args: &[String], extra: &[&str], stderr: &Path) -> (i32, String) {
    let mut child = spawn(args, extra, stderr);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the relay did not exit: it started on damaged state");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(stderr).unwrap(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_relay_key_or_certificate_is_refused_and_init_replaces_it() {
    let (tmp, relay_dir, ctl, token) = with_controller().await;
    let err_log = tmp.path().join("stderr.txt");
    let mut relay = Relay::start(&relay_dir, &ctl, "127.0.0.1:0", &[]);
    let first_fp = relay.fingerprint_text.clone();
    relay.kill9();

    for lost in ["key.pem", "cert.pem"] {
        let path = relay_dir.join("tls").join(lost);
        let kept = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (code, err) = expect_exit(&args(&relay_dir, &token, &ctl), &[], &err_log);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("tls/{lost} is missing")), "{err}");
        assert!(err.contains("--init") && err.contains("backup"), "{err}");
        assert!(!path.exists(), "nothing generated");
        std::fs::write(&path, kept).unwrap(); // restored from the "backup"
    }
    // Both gone while the directory shows the relay ran before.
    std::fs::remove_dir_all(relay_dir.join("tls")).unwrap();
    let (code, err) = expect_exit(&args(&relay_dir, &token, &ctl), &[], &err_log);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tls/key.pem is missing (and so is the certificate"),
        "{err}"
    );

    // --init: a new pair, deliberately.
    let relay = Relay::start(&relay_dir, &ctl, "127.0.0.1:0", &["--init"]);
    assert_ne!(relay.fingerprint_text, first_fp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_data_dir_is_private_and_held_by_one_relay() {
    let (tmp, _, ctl, token) = with_controller().await;
    // A data directory the relay creates itself.
    let data = tmp.path().join("new").join("data");
    let a = args(&data, &token, &ctl);
    let mut first = spawn(&a, &[], &tmp.path().join("first.txt"));
    let start = Instant::now();
    while !data.join("listen.addr").exists() {
        assert!(first.try_wait().unwrap().is_none(), "the relay exited");
        assert!(start.elapsed() < Duration::from_secs(20), "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tls")), 0o700);
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600);

    let (code, err) = expect_exit(&a, &[], &tmp.path().join("second.txt"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{} is in use", data.display())),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first relay still runs"
    );
    let _ = first.kill();
    let _ = first.wait();

    // A looser mode is warned about once at start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = tmp.path().join("third.txt");
    std::fs::remove_file(data.join("listen.addr")).unwrap();
    let mut third = spawn(&a, &["--log", "warn"], &log);
    let start = Instant::now();
    while !data.join("listen.addr").exists() {
        assert!(third.try_wait().unwrap().is_none(), "the relay exited");
        assert!(start.elapsed() < Duration::from_secs(20), "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains("0755"))
            .count(),
        1,
        "{text}"
    );
    let _ = third.kill();
    let _ = third.wait();
}

/// Issue 14 item 13 (relay): a wrong or missing pin is not retried forever; the
/// relay exits non-zero saying which fingerprint the controller presented and
/// what to pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_wrong_or_missing_pin_exits_saying_what_to_pass() {
    let (tmp, relay_dir, ctl, token) = with_controller().await;
    let seen = ctl.fingerprint_text();
    let good = args(&relay_dir, &token, &ctl);
    let pin = good.iter().position(|a| a == "--pin-sha256").unwrap();

    let mut wrong = good.clone();
    wrong[pin + 1] = format!("sha256:{}", "ab".repeat(32));
    let mut missing = good.clone();
    missing.drain(pin..pin + 2);
    for (what, a) in [("wrong pin", wrong), ("no pin", missing)] {
        let start = Instant::now();
        let (code, err) = expect_exit(&a, &[], &tmp.path().join("stderr.txt"));
        assert_eq!(code, 1, "{what}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: took {:?}",
            start.elapsed()
        );
        if err.contains("no system CA certificates found") {
            // A machine without system roots refuses before connecting.
            assert_eq!(what, "no pin", "{err}");
            continue;
        }
        assert!(
            err.contains(&format!("pass --pin-sha256 {seen}")),
            "{what}: does not name the fingerprint seen: {err}"
        );
        assert!(err.contains("--ca-file"), "{what}: {err}");
    }
}
