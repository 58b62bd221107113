//! The controller on PostgreSQL, against the real binary and a throwaway
//! cluster (these run whatever `WEFT_TEST_DATABASE` says; PostgreSQL must be
//! installed: scripts/install-deps.sh does): `serve --database` refuses what
//! it must, and `migrate-store` moves a SQLite installation with its row
//! counts verified.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use weft_controller::store::testing::fresh_postgres_database;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("WEFT_DATABASE_PASSWORD")
        .env_remove("PGPASSWORD")
        .env_remove("WEFT_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn migrate(from: &Path, to: &str, extra: &[&str]) -> (i32, String, String) {
    let from = format!("sqlite:{}", from.display());
    let mut args = vec!["migrate-store", "--from", &from, "--to", to];
    args.extend_from_slice(extra);
    run(&args)
}

/// The `NAME  N rows  ok` lines of a migrate-store run, as (table, rows).
fn counts(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[2] == "rows" && f[3] == "ok")
                .then(|| (f[0].to_owned(), f[1].parse().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_an_installation_with_verified_counts() {
    sqlite_only();
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let id = identity(0);
        register(&ctl.client(), &token, &id).await.unwrap();
        keys.push(id.node_key().to_string());
    }
    let url = fresh_postgres_database("migrate");

    // A running controller is refused, except for a dry run.
    let (code, _, err) = migrate(dir.path(), &url, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("stop it first"), "{err}");
    let (code, out, err) = migrate(dir.path(), &url, &["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Nothing was written"), "{out}");
    let dry = counts(&out);
    let row = |c: &[(String, u64)], t: &str| c.iter().find(|(n, _)| n == t).map(|(_, r)| *r);
    assert_eq!(row(&dry, "nodes"), Some(3), "{out}");
    assert_eq!(row(&dry, "memberships"), Some(3), "{out}");
    assert_eq!(row(&dry, "networks"), Some(1), "{out}");

    ctl.sigterm(std::time::Duration::from_secs(20));
    let (code, out, err) = migrate(dir.path(), &url, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("every table's count matches"), "{out}");
    let copied = counts(&out);
    assert_eq!(row(&copied, "nodes"), Some(3));
    assert!(
        row(&copied, "audit_log").unwrap_or(0) >= 5,
        "the audit log comes along: {out}"
    );
    // A second copy into the now full database is refused, naming a table.
    let (code, _, err) = migrate(dir.path(), &url, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");

    // The controller on PostgreSQL serves the same state, with the same
    // admin token (its hash moved with the rows).
    let ctl = Controller::start(dir.path(), &["--database", &url]);
    let nodes = match ctl.admin().list_nodes(None).await {
        Ok(n) => n.nodes,
        Err(e) => panic!("{e:?}; log:\n{}", ctl.log()),
    };
    let mut got: Vec<String> = nodes.iter().map(|n| n.node_key.to_string()).collect();
    got.sort();
    keys.sort();
    assert_eq!(got, keys);
    let id = identity(0);
    let r = register(&ctl.client(), &token, &id).await.unwrap();
    assert_eq!(r.addresses.len(), 1, "the token still works");
    assert!(
        ctl.log().contains("state in PostgreSQL"),
        "the log says where the state is"
    );
}

#[test]
fn serve_refuses_a_password_in_the_url_and_an_empty_database_after_a_first_start() {
    sqlite_only();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--database",
        "postgres://weft:hunter2@db.example/weft",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--database-password-file"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is not echoed: {err}"
    );
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--database",
        "postgres://weft@db.example/weft?sslmode=disable",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--database-insecure"), "{err}");

    // A data directory with state, and a database without: refused, with
    // the way to move the SQLite file over.
    let ctl = Controller::start(dir.path(), &[]);
    drop(ctl);
    let url = fresh_postgres_database("empty");
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--database",
        &url,
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("holds no weft schema") && err.contains("migrate-store"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_its_file_or_the_environment() {
    sqlite_only();
    let cluster = weft_controller::store::postgres::cluster::TestCluster::start().unwrap();
    cluster.create_database("pw").unwrap();
    cluster.require_password_over_tcp("s3cret-pw").unwrap();
    let tcp = cluster.tcp_url("pw");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("ctl");
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--database",
        &tcp,
    ]);
    assert_ne!(code, 0, "no password: refused by the server");
    assert!(err.contains("password"), "{err}");
    // (That start made a TLS pair in d: a new directory for the next.)
    let d = dir.path().join("ctl2");
    let file = dir.path().join("db.pass");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ctl = Controller::start(
        &d,
        &[
            "--database",
            &tcp,
            "--database-password-file",
            file.to_str().unwrap(),
        ],
    );
    ctl.admin().list_nodes(None).await.unwrap();
    assert!(
        !ctl.log().contains("s3cret-pw"),
        "the password is never logged"
    );
    drop(ctl);
    // The environment works too (a dry-run copy of a SQLite installation).
    cluster.create_database("pw2").unwrap();
    let src = dir.path().join("sqlite");
    drop(Controller::start(&src, &[]));
    let from = format!("sqlite:{}", src.display());
    let copy = |password: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "migrate-store",
            "--dry-run",
            "--from",
            &from,
            "--to",
            &cluster.tcp_url("pw2"),
        ])
        .env_remove("WEFT_DATABASE_PASSWORD")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.env("WEFT_DATABASE_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = copy(None);
    assert!(!ok && err.contains("password"), "{err}");
    let (ok, err) = copy(Some("s3cret-pw"));
    assert!(ok, "{err}");
}
