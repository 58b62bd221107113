//! Node data and sealed secrets against the real controller and `weft admin`:
//! a change reaches exactly the nodes it affects as a map delta, a secret is
//! sealed by the CLI so that only its node opens it and neither the
//! controller's database, its log, the CLI's output nor the audit log holds
//! the value, and a restart keeps both.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use weft_proto::netmap::{MapChange, MapEvent, NetworkMap};

const IDLE: Duration = Duration::from_secs(10);

/// The next delta that carries a data change, applied to `map`.
async fn next_data(s: &mut weft_api_client::MapStream, map: &mut NetworkMap) {
    loop {
        let MapEvent::Delta(d) = next_event(s).await else {
            panic!("expected a delta")
        };
        map.apply(&d).unwrap();
        if d.changes
            .iter()
            .any(|c| matches!(c, MapChange::Data { .. }))
        {
            return;
        }
    }
}

/// Whether a data change arrives on `s` within `wait`.
async fn data_within(s: &mut weft_api_client::MapStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(ev) = tokio::time::timeout_at(deadline, s.next_map()).await else {
            return false;
        };
        if let Some(Ok(MapEvent::Delta(d))) = ev
            && d.changes
                .iter()
                .any(|c| matches!(c, MapChange::Data { .. }))
        {
            return true;
        }
    }
}

/// `weft admin secret set ARGS`, the value piped on standard input.
fn secret_set(ctl: &Controller, args: &[&str], value: &[u8]) -> (bool, String, String) {
    let mut child = weft_admin(&ctl.dir)
        .args(["secret", "set"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_secrets_reach_exactly_their_nodes_sealed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    admin
        .create_network(&network("lab", "100.64.0.0/24", 8))
        .await
        .unwrap();
    let mut web = token_req(&["lab"], None, 3600);
    web.tags = vec!["web".into()];
    let web_tok = admin.create_token(&web).await.unwrap().token;
    let plain_tok = token_for(&admin, &["lab"]).await;
    let c = ctl.client();
    let (a, b, x) = (identity(8), identity(8), identity(8));
    let ra = register(&c, &web_tok, &a).await.unwrap();
    let rb = register(&c, &web_tok, &b).await.unwrap();
    let rx = register(&c, &plain_tok, &x).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();
    let cb = c.with_bearer(&rb.credential).unwrap();
    let cx = c.with_bearer(&rx.credential).unwrap();
    let mut sa = ca.map_stream(None, IDLE).await.unwrap();
    let mut sb = cb.map_stream(None, IDLE).await.unwrap();
    let mut sx = cx.map_stream(None, IDLE).await.unwrap();
    let mut maps = Vec::new();
    for s in [&mut sa, &mut sb, &mut sx] {
        let MapEvent::Snapshot(m) = next_event(s).await else {
            panic!("first event must be a snapshot")
        };
        assert!(m.data.is_empty() && m.secrets.is_empty());
        maps.push(m);
    }
    let (mut ma, mut mb) = (maps[0].clone(), maps[1].clone());

    // Data for the tag reaches a and b as a delta, not x.
    let (ok, out, err) = ctl.cli(&["data", "set", "--tag", "web", "motd", "hello web"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 nodes' maps changed"), "{out}");
    next_data(&mut sa, &mut ma).await;
    next_data(&mut sb, &mut mb).await;
    assert_eq!(ma.data_value("motd").unwrap().value, "hello web");
    assert_eq!(mb.data_value("motd").unwrap().value, "hello web");
    assert!(ma.data_value("motd").unwrap().version > maps[0].version);
    assert!(!data_within(&mut sx, Duration::from_millis(500)).await);

    // A secret for the tag, sealed by the CLI to each node's key.
    let value = b"s3cret-p4ss";
    let (ok, out, err) = secret_set(&ctl, &["--tag", "web", "db.password"], value);
    assert!(ok, "{err}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    next_data(&mut sa, &mut ma).await;
    next_data(&mut sb, &mut mb).await;
    let sealed_a = ma.secret("db.password").unwrap().sealed_bytes().unwrap();
    let sealed_b = mb.secret("db.password").unwrap().sealed_bytes().unwrap();
    let open = weft_identity::sealed::open;
    assert_eq!(open(&a.x25519_secret(), &sealed_a).unwrap(), value);
    assert_eq!(open(&b.x25519_secret(), &sealed_b).unwrap(), value);
    assert!(
        open(&b.x25519_secret(), &sealed_a).is_err(),
        "sealed to a only"
    );
    assert!(open(&x.x25519_secret(), &sealed_a).is_err());
    assert!(!data_within(&mut sx, Duration::from_millis(300)).await);

    // A secret is never on the command line.
    let (ok, _, _) = ctl.cli(&["secret", "set", "--node", "x", "k", "on-argv"]);
    assert!(!ok);

    // The list shows keys and sizes, never values; the audit log the same.
    let (ok, out, err) = ctl.cli(&["secret", "list", "--tag", "web"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("db.password").count(), 2, "{out}");
    let audit = admin.audit(100, None, None).await.unwrap().entries;
    let sets: Vec<_> = audit.iter().filter(|e| e.action == "secret.set").collect();
    assert_eq!(sets.len(), 2);
    assert!(audit.iter().any(|e| e.action == "data.set"));
    for e in &audit {
        assert!(!e.detail.to_string().contains("s3cret"));
    }

    // Restart: data and secrets are kept; the controller never had the value.
    ctl.sigterm(Duration::from_secs(10));
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value),
                "{} holds the secret",
                p.display()
            );
        }
    }
    let ctl = Controller::start(dir.path(), &[]);
    let c = ctl.client();
    let ma = c.with_bearer(&ra.credential).unwrap().map().await.unwrap();
    assert_eq!(ma.data_value("motd").unwrap().value, "hello web");
    let sealed = ma.secret("db.password").unwrap().sealed_bytes().unwrap();
    assert_eq!(open(&a.x25519_secret(), &sealed).unwrap(), value);
    let mx = c.with_bearer(&rx.credential).unwrap().map().await.unwrap();
    assert!(mx.data.is_empty() && mx.secrets.is_empty());
    let (ok, out, err) = ctl.cli(&["data", "list", "--node", &ra.name, "--resolved"]);
    assert!(ok, "{err}");
    assert!(out.contains("motd") && out.contains("hello web"), "{out}");

    // Unset: the secret and the data leave the maps.
    let (ok, _, err) = ctl.cli(&["secret", "unset", "--node", &ra.name, "db.password"]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl.cli(&["data", "unset", "--tag", "web", "motd"]);
    assert!(ok, "{err}");
    let ma = c.with_bearer(&ra.credential).unwrap().map().await.unwrap();
    assert!(ma.data.is_empty() && ma.secrets.is_empty());
    let (ok, _, err) = ctl.cli(&["data", "unset", "--tag", "web", "motd"]);
    assert!(!ok && err.contains("no data key"), "{err}");
    assert!(!ctl.log().contains("s3cret"));
}
