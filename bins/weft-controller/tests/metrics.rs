//! `GET /metrics` on the real controller binary: behind the admin token on the
//! API port, without it on `--metrics-listen`; scraped after real work and
//! parsed with a Prometheus text parser (`prometheus-parse`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "the test waits on a real controller's clock"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};
use weft_proto::api::UpdateNodeRequest;
use weft_proto::netmap::MapEvent;

const T: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "content-type: text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` on `addr` with `headers`: status, head, body.
async fn get_metrics(addr: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    raw_from("127.0.0.1", addr, "GET", "/metrics", headers, b"").await
}

fn parse(head: &str, body: &str) -> Scrape {
    assert!(head.to_ascii_lowercase().contains(CONTENT_TYPE), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The sample of `name` whose labels include every pair of `labels`.
fn sample<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Value {
    &s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("{name} {labels:?} not in the scrape"))
        .value
}

fn gauge(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(s, name, labels) {
        Value::Gauge(v) => *v,
        v => panic!("{name} is not a gauge: {v:?}"),
    }
}

fn counter(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(s, name, labels) {
        Value::Counter(v) => *v,
        v => panic!("{name} is not a counter: {v:?}"),
    }
}

/// Observations of histogram `name` (its `+Inf` bucket).
fn observations(s: &Scrape, name: &str) -> f64 {
    match sample(s, name, &[]) {
        Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
        v => panic!("{name} is not a histogram: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_on_the_api_port_and_count_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(
        dir.path(),
        &[
            "--plain-http",
            "--metrics-listen",
            "127.0.0.1:0",
            "--online-after-ms",
            "0",
        ],
    );
    let metrics_addr = std::fs::read_to_string(dir.path().join("metrics.addr"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        ctl.stdout
            .contains(&format!("metrics on http://{metrics_addr}/metrics")),
        "{}",
        ctl.stdout
    );

    // The API port: no token, a wrong one, a node's: 401, as the admin API.
    expect_error(
        {
            let (st, _, body) = get_metrics(&ctl.addr, &[]).await;
            (st, body)
        },
        401,
        "unauthorized",
    );
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let client = ctl.client();
    let (a_id, b_id) = (identity(0), identity(0));
    let a = register(&client, &tok, &a_id).await.unwrap();
    let node_auth = format!("Bearer {}", a.credential);
    let (st, _, _) = get_metrics(&ctl.addr, &[("Authorization", &node_auth)]).await;
    assert_eq!(st, 401, "a node credential is not the admin token");
    let (st, _, _) = get_metrics(&ctl.addr, &[("Authorization", "Bearer weft_admin_nope")]).await;
    assert_eq!(st, 401);
    // A refused registration, counted by its error code.
    assert!(register(&client, "weft_join_nope", &b_id).await.is_err());

    // a holds its map stream (online at once: --online-after-ms 0); b joins,
    // which pushes a delta to a; b is disabled.
    let ca = client.with_bearer(&a.credential).unwrap();
    let mut stream = ca.map_stream(None, T).await.unwrap();
    let first = tokio::time::timeout(T, stream.next_map())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, MapEvent::Snapshot(_)));
    let b = register(&client, &tok, &b_id).await.unwrap();
    tokio::time::timeout(T, stream.next_map())
        .await
        .expect("a delta for b's join")
        .unwrap()
        .unwrap();
    admin
        .update_node(
            &b.name,
            &UpdateNodeRequest {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // An unknown path: counted as `unmatched`, the path itself never a label.
    let (st, _, _) = raw_from("127.0.0.1", &ctl.addr, "GET", "/no/such/thing", &[], b"").await;
    assert_eq!(st, 404);

    let admin_auth = format!("Bearer {}", ctl.admin_token);
    let start = Instant::now();
    let (s, text) = loop {
        let (st, head, body) = get_metrics(&ctl.addr, &[("Authorization", &admin_auth)]).await;
        assert_eq!(st, 200, "{body}");
        let s = parse(&head, &body);
        if gauge(&s, "weft_controller_nodes", &[("state", "online")]) == 1.0 {
            break (s, body);
        }
        assert!(start.elapsed() < T, "a never counted online:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        gauge(&s, "weft_controller_nodes", &[("state", "disabled")]),
        1.0
    );
    assert_eq!(
        gauge(&s, "weft_controller_nodes", &[("state", "offline")]),
        0.0
    );
    assert_eq!(gauge(&s, "weft_controller_map_streams", &[]), 1.0);
    let version = ctl.client().health().await.unwrap().map_version;
    assert_eq!(
        gauge(&s, "weft_controller_map_version", &[]),
        version as f64
    );
    assert_eq!(
        counter(
            &s,
            "weft_controller_registrations_total",
            &[("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        counter(
            &s,
            "weft_controller_registrations_total",
            &[("result", "invalid_token")]
        ),
        1.0
    );
    assert!(counter(&s, "weft_controller_map_versions_published_total", &[]) >= 2.0);
    assert!(
        counter(
            &s,
            "weft_controller_map_frames_queued_total",
            &[("kind", "delta")]
        ) >= 1.0
    );
    assert!(
        counter(
            &s,
            "weft_controller_store_commits_total",
            &[("result", "ok")]
        ) >= 3.0
    );
    assert!(observations(&s, "weft_controller_store_commit_seconds") >= 3.0);
    assert!(observations(&s, "weft_controller_fanout_seconds") >= 2.0);
    let http = |route: &str, method: &str, status: &str| {
        counter(
            &s,
            "weft_controller_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(http("/v1/register", "POST", "200"), 2.0);
    assert_eq!(http("/v1/register", "POST", "401"), 1.0);
    assert_eq!(http("/metrics", "GET", "401"), 3.0);
    assert_eq!(http("/v1/admin/nodes/:node", "PATCH", "200"), 1.0);
    assert!(http("unmatched", "GET", "404") >= 1.0);
    assert!(!text.contains("/no/such/thing"));
    for secret in [&a.credential, &ctl.admin_token] {
        assert!(!text.contains(secret.as_str()));
    }
    for key in [a_id.node_key().to_string(), b_id.node_key().to_string()] {
        assert!(!text.contains(&key), "a node key is a label value");
    }

    // --metrics-listen: the same families, no token needed; nothing else there.
    let (st, head, body) = get_metrics(&metrics_addr, &[]).await;
    assert_eq!(st, 200, "{body}");
    let p = parse(&head, &body);
    assert_eq!(gauge(&p, "weft_controller_map_streams", &[]), 1.0);
    let (st, _, _) = raw_from(
        "127.0.0.1",
        &metrics_addr,
        "GET",
        "/v1/admin/nodes",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 404);
    drop(stream);
}

#[test]
fn metrics_listen_refuses_a_non_loopback_address_without_the_public_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let out = serve_command(&data)
        .args(["--metrics-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing --metrics-listen 0.0.0.0:0")
            && err.contains("--metrics-listen-public"),
        "{err}"
    );
    assert!(
        !data.exists(),
        "the refusal comes before the data directory"
    );

    // With the flag it serves (on every address; scraped here over loopback).
    let ctl = Controller::start(
        &data,
        &["--metrics-listen", "0.0.0.0:0", "--metrics-listen-public"],
    );
    let addr = std::fs::read_to_string(data.join("metrics.addr")).unwrap();
    let port = addr.trim().rsplit(':').next().unwrap();
    let (st, _) = raw(&format!("127.0.0.1:{port}"), "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert!(
        ctl.log()
            .contains("serving metrics without authentication on a non-loopback address")
    );
}
