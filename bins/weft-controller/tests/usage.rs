//! Usage accounting against the real controller binary: `POST /v1/node/usage`
//! (node auth, validation, monotonic rollup with resets) and
//! `GET /v1/admin/usage` (admin auth, grouping, names).

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_proto::NodeKey;
use weft_proto::usage::{
    FlowUsage, MAX_UPLOAD_SERIES, SidecarUsage, UsageBy, UsageCounters, UsageUpload,
};

const RUN1: &str = "0123456789abcdef0123456789abcdef";
const RUN2: &str = "fedcba9876543210fedcba9876543210";

fn upload(run: &str, peer: NodeKey, tx: u64, rx: u64, alice: Option<(u64, u64)>) -> UsageUpload {
    UsageUpload {
        run_id: run.into(),
        started_at_ms: 1,
        at_ms: 2,
        flows: vec![
            FlowUsage {
                peer: Some(peer),
                port: 5201,
                proto: 6,
                other: false,
                counters: UsageCounters {
                    tx_bytes: tx,
                    rx_bytes: rx,
                    tx_packets: 10,
                    rx_packets: 10,
                    flows: 1,
                },
            },
            FlowUsage {
                peer: None,
                port: 0,
                proto: 0,
                other: true,
                counters: UsageCounters {
                    tx_bytes: 1,
                    ..UsageCounters::default()
                },
            },
        ],
        sidecar: alice.map(|(uptime, bytes)| SidecarUsage {
            core_uptime_sec: uptime,
            user_bytes: [("alice".to_string(), bytes)].into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rolls_up_monotonic_counters_with_resets_and_groups_them() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let (web_id, db_id) = (identity(8), identity(8));
    let web = register(&ctl.client(), &token, &web_id).await.unwrap();
    let db = register(&ctl.client(), &token, &db_id).await.unwrap();
    let node = ctl.client().with_bearer(&web.credential).unwrap();
    let db_key = db_id.node_key();

    // 1000 out, then 1500 (adds 500); the agent restarts (new run) and says
    // 200: counted from zero (adds 200, never -1300); then 250 (adds 50).
    for (run, tx, alice) in [
        (RUN1, 1000, Some((10, 300))),
        (RUN1, 1500, Some((40, 400))),
        (RUN2, 200, Some((70, 450))),
        // The sidecar restarted (uptime went down): alice counts from zero.
        (RUN2, 250, Some((5, 20))),
    ] {
        node.upload_usage(&upload(run, db_key, tx, tx / 10, alice))
            .await
            .unwrap();
    }
    let by_node = admin.usage(UsageBy::Node, None).await.unwrap();
    assert_eq!(by_node.by, UsageBy::Node);
    assert_eq!(by_node.rows.len(), 1, "{by_node:?}");
    let row = &by_node.rows[0];
    assert_eq!(row.node.as_deref(), Some(web.name.as_str()));
    // 1000 + 500 + 200 + 50 on the flow, plus the overflow bucket's 1 byte
    // counted once per run (1, then 1 again after the restart).
    assert_eq!(row.counters.tx_bytes, 1750 + 2);
    assert_eq!(row.counters.rx_bytes, 100 + 50 + 20 + 5);

    let by_peer = admin.usage(UsageBy::Peer, None).await.unwrap();
    let peers: Vec<_> = by_peer
        .rows
        .iter()
        .map(|r| (r.peer.clone().unwrap(), r.counters.tx_bytes))
        .collect();
    assert_eq!(peers, [(db.name.clone(), 1750), ("(other)".into(), 2)]);

    let by_port = admin.usage(UsageBy::Port, None).await.unwrap();
    assert_eq!(by_port.rows[0].proto.as_deref(), Some("tcp"));
    assert_eq!(by_port.rows[0].port, Some(5201));
    assert_eq!(by_port.rows[0].counters.flows, 2, "one flow per run");

    let by_user = admin.usage(UsageBy::User, None).await.unwrap();
    assert_eq!(by_user.rows.len(), 1);
    assert_eq!(by_user.rows[0].user.as_deref(), Some("alice"));
    // 300, +100, +50 (an agent restart does not reset the sidecar), then 20.
    assert_eq!(by_user.rows[0].bytes, Some(470));

    // A window that starts after the traffic is empty.
    let later = by_node.since_ms + 48 * 3_600_000;
    let (status, code, _) = refused(admin.usage(UsageBy::Node, Some(later)).await);
    assert_eq!(
        (status, code.as_str()),
        (400, "invalid_query"),
        "future since"
    );
    let now_bucket = admin.usage(UsageBy::Node, None).await.unwrap();
    assert!(now_bucket.since_ms % now_bucket.bucket_ms == 0);

    // A removed peer shows as its key.
    admin.remove_node(&db.name).await.unwrap();
    let by_peer = admin.usage(UsageBy::Peer, None).await.unwrap();
    assert_eq!(
        by_peer.rows[0].peer.as_deref(),
        Some(db_key.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_endpoints_check_auth_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let reg = register(&ctl.client(), &token, &identity(8)).await.unwrap();
    let node = ctl.client().with_bearer(&reg.credential).unwrap();
    let key = identity(8).node_key();

    // Uploads need a node credential, the query the admin token.
    let ok = upload(RUN1, key, 1, 1, None);
    let (status, ..) = refused(ctl.client().upload_usage(&ok).await);
    assert_eq!(status, 401);
    let (status, ..) = refused(admin.upload_usage(&ok).await);
    assert_eq!(status, 401);
    let (status, ..) = refused(node.usage(UsageBy::Node, None).await);
    assert_eq!(status, 401);

    // Bad input: 400 invalid_usage, nothing stored.
    let mut bad_run = ok.clone();
    bad_run.run_id = "not-hex".into();
    let mut named_other = ok.clone();
    named_other.flows[1].peer = Some(key);
    let mut empty_user = ok.clone();
    empty_user.sidecar = Some(SidecarUsage {
        core_uptime_sec: 1,
        user_bytes: [(String::new(), 5)].into(),
    });
    let mut too_many = ok.clone();
    too_many.flows = vec![ok.flows[0]; MAX_UPLOAD_SERIES + 1];
    for (what, req) in [
        ("run id", bad_run),
        ("named overflow", named_other),
        ("empty user", empty_user),
        ("too many series", too_many),
    ] {
        let (status, code, msg) = refused(node.upload_usage(&req).await);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_usage"),
            "{what}: {msg}"
        );
    }
    assert!(
        admin
            .usage(UsageBy::Node, None)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    node.upload_usage(&ok).await.unwrap();
    assert_eq!(
        admin.usage(UsageBy::Node, None).await.unwrap().rows.len(),
        1
    );
}
