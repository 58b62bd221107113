//! The anomaly event log and per-network thresholds against the real
//! controller binary: a node uploads events (validated, bounded, idempotent),
//! the admin reads them by node and time, and thresholds set on a network
//! reach its members' maps.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_proto::events::{
    AnomalyEvent, AnomalyKind, AnomalyThresholds, Baseline, MAX_EVENTS_PER_UPLOAD,
    NodeEventsRequest, SetAnomalyRequest,
};

fn scan(id: u64, target: &str) -> AnomalyEvent {
    AnomalyEvent {
        id,
        at_ms: 1_700_000_000_000 + id,
        kind: AnomalyKind::Scan,
        peer: Some(target.into()),
        peer_key: None,
        target: Some(format!("{target} (100.64.0.9)")),
        observed: 200.0,
        unit: "distinct ports".into(),
        baseline: Baseline::Threshold {
            threshold: 20.0,
            ratio: 10.0,
        },
        window_secs: 10,
        details: [("direction".to_owned(), "egress".to_owned())].into(),
        summary: format!("a scan of {target}"),
    }
}

fn upload(events: Vec<AnomalyEvent>) -> NodeEventsRequest {
    NodeEventsRequest {
        api_version: None,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_validated_kept_once_and_listed_by_node_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let client = ctl.client();
    let a = register(&client, &tok, &identity(8)).await.unwrap();
    let b = register(&client, &tok, &identity(8)).await.unwrap();
    let ac = client.with_bearer(&a.credential).unwrap();
    let bc = client.with_bearer(&b.credential).unwrap();

    ac.upload_events(&upload(vec![scan(1, "b"), scan(2, "c")]))
        .await
        .unwrap();
    // A retried upload (same ids) adds nothing; a new event is appended.
    ac.upload_events(&upload(vec![scan(2, "c"), scan(3, "d")]))
        .await
        .unwrap();
    bc.upload_events(&upload(vec![scan(1, "a")])).await.unwrap();

    let all = admin.events(None, None, None).await.unwrap();
    let seen: Vec<(String, u64)> = all
        .events
        .iter()
        .map(|e| (e.node.clone(), e.event.id))
        .collect();
    assert_eq!(
        seen,
        vec![
            (a.name.clone(), 1),
            (a.name.clone(), 2),
            (a.name.clone(), 3),
            (b.name.clone(), 1)
        ]
    );
    assert_eq!(all.events[0].event, scan(1, "b"));
    assert_eq!(all.events[0].node_key, a.node_key);
    let only_b = admin.events(Some(&b.name), None, None).await.unwrap();
    assert_eq!(only_b.events.len(), 1);
    assert_eq!(
        only_b.events[0].event.target.as_deref(),
        Some("a (100.64.0.9)")
    );
    let future = admin.events(None, Some(u64::MAX / 2), None).await.unwrap();
    assert!(future.events.is_empty());
    let newest = admin.events(None, None, Some(2)).await.unwrap();
    assert_eq!(newest.events.len(), 2);
    assert_eq!(newest.events[1].node, b.name);

    // Refusals: a bad event, too many events, no credential, bad queries.
    let bad = AnomalyEvent {
        observed: -1.0,
        ..scan(9, "x")
    };
    let (status, code, msg) = refused(ac.upload_events(&upload(vec![bad])).await);
    assert_eq!((status, code.as_str()), (400, "invalid_event"), "{msg}");
    let spoof = AnomalyEvent {
        summary: "fine\u{202e}txt.exe".into(),
        ..scan(9, "x")
    };
    let (status, code, _) = refused(ac.upload_events(&upload(vec![spoof])).await);
    assert_eq!((status, code.as_str()), (400, "invalid_event"));
    let many = (0..=MAX_EVENTS_PER_UPLOAD as u64)
        .map(|i| scan(100 + i, "x"))
        .collect();
    let (status, code, _) = refused(ac.upload_events(&upload(many)).await);
    assert_eq!((status, code.as_str()), (400, "too_many_events"));
    let (status, _, _) = refused(client.upload_events(&upload(vec![scan(5, "x")])).await);
    assert_eq!(status, 401);
    // A node cannot read the log.
    let (status, _, _) = refused(ac.events(None, None, None).await);
    assert_eq!(status, 401);
    let (status, code, _) = refused(admin.events(Some("nobody"), None, None).await);
    assert_eq!((status, code.as_str()), (404, "node_not_found"));
    let (status, code, _) = refused(admin.events(None, None, Some(0)).await);
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    // Nothing refused was stored.
    assert_eq!(
        admin.events(None, None, None).await.unwrap().events.len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_thresholds_are_checked_stored_and_carried_in_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let node = register(&ctl.client(), &tok, &identity(8)).await.unwrap();
    let nc = ctl.client().with_bearer(&node.credential).unwrap();
    assert_eq!(nc.map().await.unwrap().networks[0].anomaly, None);

    let set = |t: AnomalyThresholds| SetAnomalyRequest {
        api_version: None,
        thresholds: t,
    };
    let t = AnomalyThresholds {
        scan_ports: Some(5),
        cooldown_secs: Some(60),
        ..AnomalyThresholds::default()
    };
    let net = admin.set_network_anomaly("lab", &set(t)).await.unwrap();
    assert_eq!(net.anomaly, Some(t));
    assert_eq!(nc.map().await.unwrap().networks[0].anomaly, Some(t));

    let bad = AnomalyThresholds {
        window_secs: Some(0),
        ..AnomalyThresholds::default()
    };
    let (status, code, msg) = refused(admin.set_network_anomaly("lab", &set(bad)).await);
    assert_eq!((status, code.as_str()), (400, "invalid_thresholds"));
    assert!(msg.contains("window_secs"), "{msg}");
    let (status, code, _) = refused(
        admin
            .set_network_anomaly("nope", &set(AnomalyThresholds::default()))
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "network_not_found"));

    // Kept across a restart; an empty set means the defaults again.
    ctl.sigterm(std::time::Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    assert_eq!(admin.show_network("lab").await.unwrap().anomaly, Some(t));
    let net = admin
        .set_network_anomaly("lab", &set(AnomalyThresholds::default()))
        .await
        .unwrap();
    assert_eq!(net.anomaly, None);
    let nc = ctl.client().with_bearer(&node.credential).unwrap();
    assert_eq!(nc.map().await.unwrap().networks[0].anomaly, None);
}
