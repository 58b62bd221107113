//! `weft-relay serve --metrics-listen`: the real relay (with the real
//! controller) is scraped after real work, and the scrape parsed with a
//! Prometheus text parser (`prometheus-parse`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and wait on the real clock"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use weft_proto::stun;

const T: Duration = Duration::from_secs(10);

/// `GET path` over plain HTTP: status, head, body.
fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status, head.to_owned(), body.to_owned())
}

fn scrape(addr: &str) -> Scrape {
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` (with `label`, if given), as a number, checking its type.
fn get(s: &Scrape, name: &str, label: Option<(&str, &str)>, counter: bool) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} not in the scrape"));
    match (&sample.value, counter) {
        (Value::Counter(v), true) | (Value::Gauge(v), false) => *v,
        (v, _) => panic!("{name} has the wrong type: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sessions_forwarded_frames_drops_and_stun() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let (ctl, token) = setup(&dir.path().join("ctl"), &relay_dir).await;
    let relay = Relay::start(
        &relay_dir,
        &ctl,
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = std::fs::read_to_string(relay_dir.join("metrics.addr"))
        .unwrap()
        .trim()
        .to_owned();
    let stdout = std::fs::read_to_string(relay_dir.join("stdout.txt")).unwrap();
    assert!(
        stdout.contains(&format!("metrics on http://{metrics}/metrics")),
        "{stdout}"
    );

    let before = scrape(&metrics);
    for name in [
        "weft_relay_connections",
        "weft_relay_sessions",
        "weft_relay_members",
        "weft_relay_queued_frames",
        "weft_relay_queued_bytes",
        "weft_relay_queue_max_frames",
        "weft_relay_queue_capacity_frames",
    ] {
        get(&before, name, None, false);
    }
    assert_eq!(
        get(&before, "weft_relay_forwarded_frames_total", None, true),
        0.0
    );
    assert_eq!(
        get(&before, "weft_relay_queue_capacity_frames", None, false),
        512.0
    );

    // Two nodes exchange packets through the relay.
    let (a, b) = (identity(), identity());
    register(&ctl, &token, &a).await;
    register(&ctl, &token, &b).await;
    let (ca, mut ea) = client(&relay, &a);
    let (_cb, mut eb) = client(&relay, &b);
    connected(&mut ea).await;
    connected(&mut eb).await;
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;
    // A packet for a key that is no member is dropped and counted (and the
    // sender told: PeerGone).
    ca.send(identity().node_key(), b"nobody").unwrap();
    // One STUN Binding request, answered; one datagram that is not STUN.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = Vec::new();
    stun::encode_binding_request(&[7; 12], true, &mut req);
    sock.send_to(&req, &relay.stun_addr).await.unwrap();
    let mut buf = [0u8; 512];
    tokio::time::timeout(T, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    sock.send_to(b"not stun", &relay.stun_addr).await.unwrap();

    // The counters move (the drop and the garbage datagram may take a moment).
    let start = std::time::Instant::now();
    let s = loop {
        let s = scrape(&metrics);
        let dropped = get(
            &s,
            "weft_relay_dropped_frames_total",
            Some(("reason", "not_member")),
            true,
        );
        let malformed = get(
            &s,
            "weft_relay_stun_requests_total",
            Some(("result", "malformed")),
            true,
        );
        if dropped >= 1.0 && malformed >= 1.0 {
            break s;
        }
        assert!(start.elapsed() < T, "drop or malformed STUN never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(get(&s, "weft_relay_sessions", None, false), 2.0);
    assert_eq!(get(&s, "weft_relay_connections", None, false), 2.0);
    assert_eq!(get(&s, "weft_relay_members", None, false), 2.0);
    assert_eq!(
        get(&s, "weft_relay_membership", Some(("state", "known")), false),
        1.0
    );
    assert!(get(&s, "weft_relay_forwarded_frames_total", None, true) >= 1.0);
    // The probe's payload is 5 bytes.
    assert!(get(&s, "weft_relay_forwarded_bytes_total", None, true) >= 5.0);
    assert!(get(&s, "weft_relay_connections_accepted_total", None, true) >= 2.0);
    assert!(get(&s, "weft_relay_peer_gone_notices_total", None, true) >= 1.0);
    assert!(get(&s, "weft_relay_logins_total", Some(("result", "ok")), true) >= 2.0);
    assert_eq!(
        get(
            &s,
            "weft_relay_stun_requests_total",
            Some(("result", "answered")),
            true
        ),
        1.0
    );
    // No node key or address is a label value anywhere.
    let (_, _, text) = http_get(&metrics, "/metrics");
    for key in [a.node_key().to_string(), b.node_key().to_string()] {
        assert!(!text.contains(&key));
    }
    assert!(!text.contains("127.0.0.1"));

    // Only /metrics, only GET.
    assert_eq!(http_get(&metrics, "/").0, 404);
    let mut s = std::net::TcpStream::connect(&metrics).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
}

#[test]
fn metrics_on_a_non_loopback_address_need_the_public_flag() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("relay.token");
    std::fs::write(&token, "weft_relay_x").unwrap();
    let out = Command::new(RELAY_BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stun-listen",
            "127.0.0.1:0",
            "--controller",
            "https://127.0.0.1:1",
            "--relay-token-file",
        ])
        .arg(&token)
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
    // Nothing was created: the refusal comes before the data directory.
    assert!(!dir.path().join("relay").exists());
}
