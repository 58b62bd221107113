//! Scrape tests: the exposition parsed by a real Prometheus text parser
//! (`prometheus-parse`), names and types checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use weft_proto::NodeKey;
use weft_tunnel::path::{CandidateStats, PathKind};
use weft_tunnel::{DropCounters, DropReason, PeerStatus};

use super::*;
use crate::dataplane::io_stats::{Batches, IoErrors, IoStats};

fn peer(name: &str, key: u8, path: PathKind) -> PeerStatus {
    let direct: SocketAddr = "192.0.2.7:51820".parse().expect("addr");
    PeerStatus {
        key: NodeKey::from_bytes([key; 32]),
        name: name.into(),
        addresses: vec![],
        path,
        path_age: Some(Duration::from_secs(30)),
        endpoint: None,
        candidates: vec![(
            direct,
            CandidateStats {
                pings: 3,
                pongs: 3,
                last_rtt: Some(Duration::from_micros(1500)),
                learned: false,
            },
        )],
        since_handshake: Some(Duration::from_secs(42)),
        last_heard: None,
        tx_bytes: 1000,
        rx_bytes: 2000,
        tx_packets: 10,
        rx_packets: 20,
        drops: DropCounters::default(),
    }
}

fn live() -> Live {
    let mut drops = DropCounters::default();
    drops.add(DropReason::PolicyDenied);
    drops.add(DropReason::PolicyDenied);
    let mut batches = Batches::default();
    batches.tun_read.record(1);
    batches.tun_read.record(40);
    batches.udp_send.record(40);
    let errors = IoErrors::default();
    errors.add(IoOp::UdpSend, 3);
    Live {
        dataplane: Some(DataplaneStatus {
            peers: vec![
                peer(
                    "db",
                    1,
                    PathKind::Direct("192.0.2.7:51820".parse().expect("addr")),
                ),
                peer("web", 2, PathKind::Relay),
                // A name seen twice must not make two series collide.
                peer("web", 3, PathKind::None),
            ],
            drops,
            io: IoStats::new(&batches, &errors),
        }),
        controller_connected: true,
        map_version: Some(7),
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition")
}

/// (metric, labels) → value, for the counters and gauges of a scrape.
fn values(scrape: &Scrape) -> BTreeMap<(String, String), f64> {
    scrape
        .samples
        .iter()
        .filter_map(|s| {
            let (Value::Counter(v) | Value::Gauge(v)) = s.value else {
                return None;
            };
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            Some(((s.metric.clone(), labels.join(",")), v))
        })
        .collect()
}

fn metrics() -> AgentMetrics {
    let dns = DnsStats::default();
    let m = AgentMetrics::new(dns);
    m.reconciled(0);
    m.reconciled(2);
    m.anomaly("scan");
    m
}

/// The Prometheus text format 0.0.4: every family parses with its type, in
/// base units with `_total` counters, and carries the figures given.
#[test]
fn prometheus_text_parses_with_names_and_types() {
    let text = metrics().render(live(), false).expect("render");
    let scrape = parse(&text);
    let kind = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                Value::Histogram(_) => "histogram",
                Value::Summary(_) => "summary",
                Value::Untyped(_) => "untyped",
            })
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    for counter in [
        "weft_agent_peer_rx_bytes_total",
        "weft_agent_peer_tx_bytes_total",
        "weft_agent_peer_rx_packets_total",
        "weft_agent_peer_tx_packets_total",
        "weft_agent_drops_total",
        "weft_agent_io_errors_total",
        "weft_agent_reconcile_passes_total",
        "weft_agent_reconcile_failures_total",
        "weft_agent_dns_queries_total",
        "weft_agent_dns_cache_hits_total",
        "weft_agent_dns_blocked_total",
        "weft_agent_dns_upstream_failures_total",
        "weft_agent_process_cpu_seconds_total",
        "weft_agent_anomaly_events_total",
    ] {
        assert_eq!(kind(counter), "counter", "{counter}");
    }
    for gauge in [
        "weft_agent_peer_path",
        "weft_agent_peer_handshake_age_seconds",
        "weft_agent_peer_rtt_seconds",
        "weft_agent_peers",
        "weft_agent_dataplane_up",
        "weft_agent_controller_connected",
        "weft_agent_map_version",
        "weft_agent_process_resident_memory_bytes",
    ] {
        assert_eq!(kind(gauge), "gauge", "{gauge}");
    }
    for histogram in [
        "weft_agent_io_batch_packets",
        "weft_agent_dns_upstream_duration_seconds",
    ] {
        assert_eq!(kind(histogram), "histogram", "{histogram}");
    }

    let v = values(&scrape);
    let at = |name: &str, labels: &str| {
        v.get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or_else(|| panic!("{name}{{{labels}}} missing from:\n{text}"))
    };
    assert_eq!(at("weft_agent_peer_rx_bytes_total", "peer=db"), 2000.0);
    assert_eq!(at("weft_agent_peer_tx_packets_total", "peer=db"), 10.0);
    assert_eq!(at("weft_agent_peer_path", "path=direct,peer=db"), 1.0);
    assert_eq!(at("weft_agent_peer_path", "path=relay,peer=db"), 0.0);
    assert_eq!(at("weft_agent_peer_path", "path=relay,peer=web"), 1.0);
    assert_eq!(at("weft_agent_peer_rtt_seconds", "peer=db"), 0.0015);
    assert!(
        !v.contains_key(&("weft_agent_peer_rtt_seconds".into(), "peer=web".into())),
        "no RTT for a relayed peer"
    );
    assert_eq!(
        at("weft_agent_peer_handshake_age_seconds", "peer=web"),
        42.0
    );
    let third = v
        .keys()
        .filter(|(n, l)| n == "weft_agent_peer_rx_bytes_total" && l.starts_with("peer=web~"))
        .count();
    assert_eq!(third, 1, "the second `web` got its own series");
    assert_eq!(at("weft_agent_peers", ""), 3.0);
    assert_eq!(at("weft_agent_drops_total", "reason=policy_denied"), 2.0);
    assert_eq!(at("weft_agent_drops_total", "reason=replay"), 0.0);
    assert_eq!(at("weft_agent_io_errors_total", "op=udp_send"), 3.0);
    assert_eq!(at("weft_agent_reconcile_passes_total", ""), 2.0);
    assert_eq!(at("weft_agent_reconcile_failures_total", ""), 2.0);
    assert_eq!(at("weft_agent_anomaly_events_total", "kind=scan"), 1.0);
    assert_eq!(at("weft_agent_controller_connected", ""), 1.0);
    assert_eq!(at("weft_agent_map_version", ""), 7.0);
    assert!(at("weft_agent_process_resident_memory_bytes", "") > 0.0);

    let batches = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "weft_agent_io_batch_packets" && s.labels.get("op") == Some("tun_read")
        })
        .expect("tun_read batches");
    let Value::Histogram(buckets) = &batches.value else {
        panic!("not a histogram")
    };
    let le = |b: f64| {
        buckets
            .iter()
            .find(|c| c.less_than == b)
            .map(|c| c.count)
            .expect("bucket")
    };
    assert_eq!(
        (le(1.0), le(32.0), le(64.0), le(f64::INFINITY)),
        (1.0, 1.0, 2.0, 2.0)
    );
}

/// OpenMetrics text: ends in `# EOF`, declares units, and parses too.
#[test]
fn openmetrics_text_parses_and_ends_with_eof() {
    let text = metrics().render(live(), true).expect("render");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# UNIT weft_agent_peer_rx_bytes bytes"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE weft_agent_peer_rx_bytes counter"),
        "{text}"
    );
    let scrape = parse(&text);
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "weft_agent_peer_rx_bytes_total",
        "weft_agent_peer_path",
        "weft_agent_drops_total",
        "weft_agent_io_batch_packets",
        "weft_agent_dns_upstream_duration_seconds",
        "weft_agent_process_cpu_seconds_total",
    ] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
}

/// Without a data plane answer only the agent-wide figures are shown, and
/// `weft_agent_dataplane_up` says why.
#[test]
fn a_silent_data_plane_shows_as_down_without_peer_series() {
    let text = metrics().render(Live::default(), false).expect("render");
    let v = values(&parse(&text));
    assert_eq!(
        v.get(&("weft_agent_dataplane_up".into(), String::new())),
        Some(&0.0)
    );
    assert!(!text.contains("weft_agent_peer_"), "{text}");
    assert!(!text.contains("weft_agent_map_version"), "{text}");
}
