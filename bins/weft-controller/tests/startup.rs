//! Start-up of replicas on the real binary: two replicas starting together
//! on an empty PostgreSQL database create exactly one admin token (the other
//! says where it is), and a start whose database connection fails leaves
//! nothing that makes the next start refuse. These run on PostgreSQL
//! whatever `WEFT_TEST_DATABASE` says (several processes starting on one
//! empty database is a PostgreSQL deployment), except the next start after
//! a failed one, which runs on the driver under test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "the test waits for real processes"
)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_controller::store::testing::fresh_postgres_database;

/// `serve` on `dir` with `--database url`, stdout and stderr to files in
/// `dir`.
fn spawn(dir: &Path, url: &str) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database",
            url,
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("stdout.txt")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("controller.log")).unwrap(),
        ))
        .spawn()
        .unwrap()
}

/// Waits until the controller on `dir` serves; returns its client.
fn serving(child: &mut Child, dir: &Path) -> Client {
    let until = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(dir.join("controller.url")) {
            break u.trim().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "controller exited ({status}); log:\n{}",
                std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < until, "controller did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
    let fp = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
        .map(|fp| parse_fingerprint(fp).unwrap())
        .unwrap();
    Client::new(ClientConfig {
        trust: Trust::Fingerprint(fp),
        ..ClientConfig::new(url)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_on_an_empty_database_create_one_admin_token() {
    let url = fresh_postgres_database("together");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dirs = [d1.path(), d2.path()];
    let mut children: Vec<Child> = dirs.iter().map(|d| spawn(d, &url)).collect();
    let clients: Vec<Client> = children
        .iter_mut()
        .zip(dirs)
        .map(|(c, d)| serving(c, d))
        .collect();
    let tokens: Vec<Option<String>> = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("admin.token")).ok())
        .collect();
    let made: Vec<usize> = (0..2).filter(|i| tokens[*i].is_some()).collect();
    assert_eq!(made.len(), 1, "exactly one admin token file: {tokens:?}");
    let (maker, other) = (made[0], 1 - made[0]);
    let token = tokens[maker].clone().unwrap();
    // The other says where the token is.
    let out = std::fs::read_to_string(dirs[other].join("stdout.txt")).unwrap();
    let path = dirs[maker].join("admin.token").display().to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with("Admin token: created by another start") && l.contains(&path)),
        "{out}"
    );
    // That one token is the admin on both replicas.
    for c in &clients {
        let admin = c.with_bearer(token.trim()).unwrap();
        admin.list_nodes(None).await.expect("the admin token works");
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_database_is_unreachable_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = spawn(
        dir.path(),
        &format!("postgres://weft@127.0.0.1:{port}/weft?sslmode=disable"),
    );
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the start did not give up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap();
    assert!(
        log.contains(&port.to_string()) || log.contains("unavailable"),
        "{log}"
    );
    for f in weft_controller::serve::STATE_FILES {
        assert!(
            !dir.path().join(f).exists(),
            "{f} was left by the failed start"
        );
    }
    // The next start, with a database it can reach (the driver under test),
    // is a first start.
    std::fs::remove_file(dir.path().join("stdout.txt")).unwrap();
    let c = Controller::start(dir.path(), &[]);
    c.admin()
        .list_nodes(None)
        .await
        .expect("the next start serves");
    assert!(c.stdout.contains("Admin token created"), "{}", c.stdout);
}
