//! Operations at scale (issue 20, part 3) against the real controller
//! binary: deleting a network (members' maps, identities kept, tokens,
//! the CLI and a restart), the liveness and readiness probes, per-source
//! rate limits of what needs no credential, and audit retention.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use std::time::Duration;

use common::*;
use weft_proto::netmap::{MapChange, MapEvent};

const IDLE: Duration = Duration::from_secs(10);

/// The next snapshot of a map stream (deltas before it, such as presence,
/// are skipped).
async fn next_snapshot(s: &mut weft_api_client::MapStream) -> weft_proto::netmap::NetworkMap {
    loop {
        if let MapEvent::Snapshot(m) = next_event(s).await {
            return m;
        }
    }
}

/// The networks of a map, by name.
fn names(map: &weft_proto::netmap::NetworkMap) -> Vec<String> {
    map.networks.iter().map(|n| n.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_network_reaches_its_members_and_keeps_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    admin
        .create_network(&network("lab", "100.64.0.0/24", 0))
        .await
        .unwrap();
    admin
        .create_network(&network("keep", "100.65.0.0/24", 0))
        .await
        .unwrap();
    let only_lab = admin
        .create_token(&token_req(&["lab"], None, 3600))
        .await
        .unwrap();
    let both = token_for(&admin, &["lab", "keep"]).await;
    let c = ctl.client();
    let ra = register(&c, &only_lab.token, &identity(0)).await.unwrap();
    let rb = register(&c, &both, &identity(0)).await.unwrap();
    let rc = register(&c, &both, &identity(0)).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();
    let cb = c.with_bearer(&rb.credential).unwrap();
    let mut sa = ca.map_stream(None, IDLE).await.unwrap();
    let mut sb = cb.map_stream(None, IDLE).await.unwrap();
    let a0 = next_snapshot(&mut sa).await;
    let b0 = next_snapshot(&mut sb).await;
    assert_eq!(names(&a0), ["lab"]);
    assert_eq!(names(&b0), ["keep", "lab"]);

    let gone = admin.remove_network("lab").await.unwrap();
    assert_eq!(
        (gone.network.as_str(), gone.members, gone.orphaned),
        ("lab", 3, 1)
    );
    assert_eq!(gone.tokens_revoked, [only_lab.info.id]);
    assert_eq!(gone.tokens_changed.len(), 1);
    assert!(gone.policy_rule_removed);

    // Each member's stream stays open and brings a delta that drops the
    // network (not a snapshot); b still sees c in `keep`.
    let (mut a1, mut b1) = (a0.clone(), b0.clone());
    let drops = |c: &MapChange| {
        matches!(c, MapChange::NetworkRemove { network } if network == "lab").then_some(())
    };
    next_change(&mut sa, &mut a1, IDLE, drops)
        .await
        .expect("a's removal from lab as a delta");
    assert!(a1.networks.is_empty() && a1.version > a0.version, "{a1:?}");
    next_change(&mut sb, &mut b1, IDLE, drops)
        .await
        .expect("b's removal from lab as a delta");
    assert_eq!(names(&b1), ["keep"]);
    let peers: Vec<String> = b1.networks[0]
        .peers
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(peers, std::slice::from_ref(&rc.name));
    // What the deltas made is what a fresh map says.
    let mut fresh = cb.map().await.unwrap();
    fresh.version = b1.version;
    for n in &mut fresh.networks {
        for p in &mut n.peers {
            p.online = false;
            p.last_seen_ms = None;
        }
    }
    for n in &mut b1.networks {
        for p in &mut n.peers {
            p.online = false;
            p.last_seen_ms = None;
        }
    }
    assert_eq!(b1, fresh);

    // a keeps its identity: its credential works, it is listed.
    assert!(ca.map().await.unwrap().networks.is_empty());
    let nodes = admin.list_nodes(None).await.unwrap().nodes;
    assert_eq!(nodes.len(), 3);
    let nets = admin.list_networks().await.unwrap().networks;
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].name, "keep");
    // The token that granted only `lab` is revoked; the other grants `keep`.
    let (status, code, _) = refused(register(&c, &only_lab.token, &identity(0)).await);
    assert!((400..500).contains(&status), "{status} {code}");
    let rd = register(&c, &both, &identity(0)).await.unwrap();
    assert_eq!(rd.addresses.len(), 1);
    let audit = admin.audit(10, None, Some("lab")).await.unwrap();
    let entry = audit
        .entries
        .iter()
        .find(|e| e.action == "network.remove")
        .expect("audited");
    assert_eq!(entry.detail["members"], 3);

    // The CLI: refused without --yes when stdin is not a terminal; deleted
    // with it; an unknown network is an error.
    let (ok, _, err) = ctl.cli(&["network", "remove", "keep"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    assert_eq!(admin.list_networks().await.unwrap().networks.len(), 1);
    let (ok, out, err) = ctl.cli(&["network", "remove", "keep", "--yes"]);
    assert!(ok, "{err}");
    assert!(out.contains("network keep deleted"), "{out}");
    let (ok, out, _) = ctl.cli(&["--json", "network", "remove", "keep", "--yes"]);
    assert!(!ok && out.contains("network_not_found"), "{out}");

    // After a restart: no network, every node, a's credential still works.
    drop((sa, sb));
    assert!(ctl.sigterm(Duration::from_secs(10)).success());
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    assert!(admin.list_networks().await.unwrap().networks.is_empty());
    assert_eq!(admin.list_nodes(None).await.unwrap().nodes.len(), 4);
    let ca = ctl.client().with_bearer(&ra.credential).unwrap();
    assert!(ca.map().await.unwrap().networks.is_empty());
}

/// The `Retry-After` of a 429 answer's head.
fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
        .trim()
        .parse()
        .expect("Retry-After is a number of seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_what_needs_no_credential_is_limited_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(
        dir.path(),
        &[
            "--plain-http",
            "--public-burst",
            "3",
            "--public-per-minute",
            "6",
            "--auth-fail-burst",
            "2",
            "--auth-fail-per-minute",
            "6",
        ],
    );
    let addr = ctl.addr.clone();
    let get = |src: &'static str, path: &'static str, auth: Option<String>| {
        let addr = addr.clone();
        async move {
            let bearer = auth.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("authorization", b)])
                .unwrap_or_default();
            raw_from(src, &addr, "GET", path, &headers, b"").await
        }
    };

    // Readiness and liveness.
    let (s, _, body) = get("127.0.0.2", "/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["reasons"], serde_json::json!([]));
    let (s, _, body) = get("127.0.0.2", "/healthz", None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    // Unknown paths share the probes' budget: the third is a 404, the
    // fourth request from the source is refused.
    let (s, _, body) = get("127.0.0.2", "/no/such/path", None).await;
    assert_eq!(s, 404, "{body}");
    let (s, head, body) = get("127.0.0.2", "/healthz", None).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    assert!((1..=11).contains(&retry_after(&head)), "{head}");
    // Another source is not affected.
    let (s, _, _) = get("127.0.0.3", "/readyz", None).await;
    assert_eq!(s, 200);

    // Failed authentications: two 401s, then 429 for everything from that
    // source, a valid token too; its probes still answer; another source
    // with the admin token is served.
    for _ in 0..2 {
        let (s, _, body) = get(
            "127.0.0.4",
            "/v1/admin/networks",
            Some("weft_admin_x".into()),
        )
        .await;
        assert_eq!(s, 401, "{body}");
    }
    let (s, head, _) = get(
        "127.0.0.4",
        "/v1/admin/networks",
        Some(ctl.admin_token.clone()),
    )
    .await;
    assert_eq!(s, 429);
    assert!((1..=11).contains(&retry_after(&head)), "{head}");
    let (s, _, _) = get("127.0.0.4", "/healthz", None).await;
    assert_eq!(s, 200, "the probes are not locked out");
    let (s, _, body) = get(
        "127.0.0.5",
        "/v1/admin/networks",
        Some(ctl.admin_token.clone()),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // One summary per limit, naming it.
    let log = ctl.log();
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rate limit: refused"))
        .collect();
    assert_eq!(summaries.len(), 2, "{log}");
    assert!(summaries.iter().any(|l| l.contains("public")), "{log}");
    assert!(
        summaries
            .iter()
            .any(|l| l.contains("failed authentication")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_keeps_the_newest_and_audits_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    // admin.token.create, then network.create and policy.update per network:
    // 21 records.
    for i in 0..10 {
        admin
            .create_network(&network(&format!("n{i}"), &format!("100.64.{i}.0/24"), 0))
            .await
            .unwrap();
    }
    assert_eq!(
        admin.audit(100, None, None).await.unwrap().entries.len(),
        21
    );
    assert!(ctl.sigterm(Duration::from_secs(10)).success());

    // The sweep runs at start: the newest 5 stay, and the sweep's record.
    let ctl = Controller::start(dir.path(), &["--audit-retain-count", "5"]);
    let admin = ctl.admin();
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = admin.audit(100, None, None).await.unwrap().entries;
        if entries.iter().any(|e| e.action == "audit.prune") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, [22, 21, 20, 19, 18, 17], "{entries:?}");
    let sweep = &entries[0];
    assert_eq!(
        (sweep.action.as_str(), sweep.actor.as_str()),
        ("audit.prune", "system")
    );
    assert_eq!(sweep.detail["deleted"], 16);
    assert_eq!(sweep.detail["keep"], 5);
    assert!(
        ctl.log()
            .contains("audit retention: deleted old audit records")
    );
}
