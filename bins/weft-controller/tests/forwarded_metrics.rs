//! Forwarded metrics against the real controller binary: `POST /v1/node/metrics`
//! (node auth, validation, duplicates) and `GET /v1/admin/nodes/{node}/metrics`
//! (admin auth, `since`, gone with the node).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test helpers fail loudly; samples are stamped with the real clock"
)]

mod common;

use common::*;
use weft_proto::samples::{
    MAX_UPLOAD_SAMPLES, MetricsUpload, SAMPLE_INTERVAL_MS, SAMPLE_VERSION, Sample,
};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn samples(start: u64, seqs: std::ops::RangeInclusive<u64>) -> Vec<Sample> {
    seqs.map(|seq| Sample {
        v: SAMPLE_VERSION,
        at_ms: start + seq * SAMPLE_INTERVAL_MS,
        seq,
        agent_start_ms: start,
        interval_ms: SAMPLE_INTERVAL_MS,
        rx_bytes: 1_000 * seq,
        tx_bytes: 2_000,
        drops: 1,
        drops_policy: 1,
        peers_direct: 1,
        rtt_median_us: Some(900),
        rtt_max_us: Some(1_500),
        control_rtt_us: Some(2_000),
        ..Sample::default()
    })
    .collect()
}

fn upload(samples: Vec<Sample>, dropped: u64) -> MetricsUpload {
    MetricsUpload {
        api_version: None,
        samples,
        outbox_dropped: dropped,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_go_in_and_history_comes_out() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let id = identity(8);
    let reg = register(&ctl.client(), &token, &id).await.unwrap();
    let node = ctl.client().with_bearer(&reg.credential).unwrap();

    // Ten minutes of samples, ending a minute ago, in two uploads; the
    // second repeats the first one's last sample (a retried upload).
    let start = now_ms() - 11 * 60_000;
    let got = node
        .upload_metrics(&upload(samples(start, 1..=10), 0))
        .await
        .unwrap();
    assert_eq!((got.accepted, got.duplicates), (10, 0));
    let got = node
        .upload_metrics(&upload(samples(start, 10..=20), 3))
        .await
        .unwrap();
    assert_eq!((got.accepted, got.duplicates), (10, 1));

    // By key and by name.
    let h = admin.node_metrics(&reg.name, None).await.unwrap();
    assert_eq!(h.node_key, id.node_key());
    assert_eq!((h.received, h.missing, h.duplicates), (20, 0, 1));
    assert_eq!((h.last_seq, h.agent_start_ms), (Some(20), Some(start)));
    assert_eq!(h.outbox_dropped, 3);
    assert_eq!(h.resolution_ms, 60_000);
    assert_eq!(h.window_ms, 24 * 3_600_000);
    assert_eq!(h.points.iter().map(|p| p.samples).sum::<u32>(), 20);
    let rx: u64 = h.points.iter().map(|p| p.rx_bytes).sum();
    assert_eq!(rx, (1..=20).map(|s| 1_000 * s).sum::<u64>());
    assert!(h.points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert!(h.points.iter().all(|p| p.rtt_max_us == Some(1_500)));
    let by_key = admin
        .node_metrics(&id.node_key().to_string(), None)
        .await
        .unwrap();
    assert_eq!(by_key.points, h.points);

    // `since` keeps the later minutes only.
    let since = start + 15 * SAMPLE_INTERVAL_MS;
    let later = admin.node_metrics(&reg.name, Some(since)).await.unwrap();
    assert!(!later.points.is_empty() && later.points.len() < h.points.len());
    assert!(later.points.iter().all(|p| p.at_ms + 60_000 > since));

    // A gap is counted as missing.
    node.upload_metrics(&upload(samples(start, 22..=22), 3))
        .await
        .unwrap();
    let h = admin.node_metrics(&reg.name, None).await.unwrap();
    assert_eq!(h.missing, 1);

    // Removing the node drops its history; a new node of the same name starts empty.
    admin.remove_node(&reg.name).await.unwrap();
    let (status, code, _) = refused(admin.node_metrics(&reg.name, None).await);
    assert_eq!((status, code.as_str()), (404, "node_not_found"));
    let again = register(&ctl.client(), &token, &id).await.unwrap();
    let h = admin.node_metrics(&again.name, None).await.unwrap();
    assert_eq!((h.received, h.points.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_check_auth_and_input() {
    let dir = tempfile::tempdir().unwrap();
    // Plain HTTP on loopback, for the raw requests.
    let ctl = Controller::start(dir.path(), &["--plain-http"]);
    let admin = ctl.admin();
    let token = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let reg = register(&ctl.client(), &token, &identity(8)).await.unwrap();
    let node = ctl.client().with_bearer(&reg.credential).unwrap();
    let start = now_ms() - 60_000;

    // Uploads need a node credential; the history needs the admin token.
    let (status, ..) = refused(
        ctl.client()
            .upload_metrics(&upload(samples(start, 1..=1), 0))
            .await,
    );
    assert_eq!(status, 401);
    let (status, ..) = refused(
        admin
            .upload_metrics(&upload(samples(start, 1..=1), 0))
            .await,
    );
    assert_eq!(status, 401);
    let (status, ..) = refused(node.node_metrics(&reg.name, None).await);
    assert_eq!(status, 401);
    let (status, ..) = refused(ctl.client().node_metrics(&reg.name, None).await);
    assert_eq!(status, 401);

    // Bad input is a 400 with a code.
    let bad = |f: fn(&mut Sample)| {
        let mut s = samples(start, 1..=1);
        f(&mut s[0]);
        upload(s, 0)
    };
    for (req, code) in [
        (upload(vec![], 0), "invalid_samples"),
        (
            upload(samples(start, 1..=(MAX_UPLOAD_SAMPLES as u64 + 1)), 0),
            "invalid_samples",
        ),
        (bad(|s| s.v = 99), "unsupported_sample_version"),
        (bad(|s| s.seq = 0), "invalid_samples"),
        (bad(|s| s.drops_auth = 5), "invalid_samples"),
        (bad(|s| s.rtt_max_us = Some(u64::MAX)), "invalid_samples"),
        (bad(|s| s.agent_start_ms = s.at_ms + 1), "invalid_samples"),
    ] {
        let (status, got, msg) = refused(node.upload_metrics(&req).await);
        assert_eq!((status, got.as_str()), (400, code), "{msg}");
    }
    let node_auth = format!("Bearer {}", reg.credential);
    let post = |body: &[u8]| {
        raw(
            &ctl.addr,
            "POST",
            "/v1/node/metrics",
            &[
                ("content-type", "application/json"),
                ("authorization", &node_auth),
            ],
            body,
        )
    };
    expect_error(post(b"{\"samples\": 3}"), 400, "invalid_body");
    expect_error(post(b"not json"), 400, "malformed_json");
    expect_error(post(&vec![b' '; 70 * 1024]), 413, "payload_too_large");
    let (status, code, _) = refused(admin.node_metrics("nobody", None).await);
    assert_eq!((status, code.as_str()), (404, "node_not_found"));
    let admin_auth = format!("Bearer {}", ctl.admin_token);
    let get = |query: &str| {
        raw(
            &ctl.addr,
            "GET",
            &format!("/v1/admin/nodes/{}/metrics{query}", reg.name),
            &[("authorization", &admin_auth)],
            b"",
        )
    };
    expect_error(get("?since=yesterday"), 400, "invalid_query");
    expect_error(get("?since=-1"), 400, "invalid_query");
    assert_eq!(get("?since=0").0, 200);
    // Nothing was stored by the refused uploads.
    let h = admin.node_metrics(&reg.name, None).await.unwrap();
    assert_eq!(h.received, 0);
}
