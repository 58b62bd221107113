//! The agent's Prometheus metrics end to end: real `weftd`s in lab namespaces,
//! scraped with `weft metrics` (local API) and over `weftd --metrics-listen`
//! (curl in the node's namespace, and from the peer through the tunnel), each
//! exposition parsed by a real Prometheus text parser (`prometheus-parse`).
//! Needs root and FAILS (never skips) without it; the binaries come from
//! `WEFT_BIN_DIR` or next to this test executable (`cargo build --workspace
//! --bins` first).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const LOOPBACK_LISTEN: &str = "127.0.0.1:9101";

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{text}"))
}

/// The value of `metric{peer="PEER"}` (counters and gauges).
fn peer_value(scrape: &Scrape, metric: &str, peer: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("peer") == Some(peer))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single value"),
        })
        .unwrap_or_else(|| panic!("{metric}{{peer={peer:?}}} missing"))
}

fn weft_metrics(mesh: &Mesh<'_>, node: &str) -> Scrape {
    let out = mesh.weft(node, &["metrics"]).unwrap();
    assert!(
        out.status.success(),
        "weft metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `curl -sS -D - URL` in `node`: (response headers, body).
fn curl(lab: &Lab, node: &str, url: &str, accept: Option<&str>) -> (String, String) {
    let mut argv = vec!["curl", "-sS", "--max-time", "10", "-D", "-"];
    if let Some(a) = accept {
        argv.extend(["-H", a]);
    }
    argv.push(url);
    let out = lab.run(node, &argv).unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response from {url}: {out}"));
    (head.to_lowercase(), body.to_owned())
}

#[test]
fn ping_traffic_moves_the_per_peer_counters_in_weft_metrics_and_over_the_listener() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let lab = Lab::build(&Topology::office(&["node1", "node2"])).expect("build the lab");
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent_with_env(
        "node1",
        Some(&token),
        &[("WEFT_METRICS_LISTEN", LOOPBACK_LISTEN)],
    )
    .unwrap();
    mesh.start_agent("node2", Some(&token)).unwrap();
    mesh.wait_full_mesh(&["node1", "node2"], Duration::from_secs(30))
        .unwrap();
    let ip2 = mesh.overlay_ip("node2").unwrap().to_string();

    let before = weft_metrics(&mesh, "node1");
    let tx0 = peer_value(&before, "weft_agent_peer_tx_packets_total", "node2");
    let rx0 = peer_value(&before, "weft_agent_peer_rx_packets_total", "node2");
    let txb0 = peer_value(&before, "weft_agent_peer_tx_bytes_total", "node2");
    let pings = 10;
    lab.run(
        "node1",
        &[
            "ping",
            "-c",
            &pings.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &ip2,
        ],
    )
    .unwrap();

    // `weft metrics`: the per-peer counters moved by at least the pings (the
    // replies too), in both directions.
    let after = weft_metrics(&mesh, "node1");
    let tx1 = peer_value(&after, "weft_agent_peer_tx_packets_total", "node2");
    let rx1 = peer_value(&after, "weft_agent_peer_rx_packets_total", "node2");
    let txb1 = peer_value(&after, "weft_agent_peer_tx_bytes_total", "node2");
    assert!(tx1 - tx0 >= f64::from(pings), "tx packets {tx0} -> {tx1}");
    assert!(rx1 - rx0 >= f64::from(pings), "rx packets {rx0} -> {rx1}");
    // An 84-byte ICMP echo (56 bytes of data) per ping at least.
    assert!(
        txb1 - txb0 >= f64::from(pings * 84),
        "tx bytes {txb0} -> {txb1}"
    );
    let direct = after.samples.iter().any(|s| {
        s.metric == "weft_agent_peer_path"
            && s.labels.get("peer") == Some("node2")
            && s.labels.get("path") == Some("direct")
            && matches!(s.value, Value::Gauge(v) if v == 1.0)
    });
    assert!(direct, "node2 is reached directly in the office lab");
    assert!(peer_value(&after, "weft_agent_peer_rtt_seconds", "node2") > 0.0);
    assert!(peer_value(&after, "weft_agent_peer_handshake_age_seconds", "node2") >= 0.0);
    let connected = after
        .samples
        .iter()
        .find(|s| s.metric == "weft_agent_controller_connected")
        .expect("controller_connected");
    assert!(matches!(connected.value, Value::Gauge(v) if v == 1.0));

    // The listener serves the same counters (at least as far along), in the
    // Prometheus text format by default and OpenMetrics when asked.
    let (head, body) = curl(
        &lab,
        "node1",
        &format!("http://{LOOPBACK_LISTEN}/metrics"),
        None,
    );
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let scraped = parse(&body);
    assert!(peer_value(&scraped, "weft_agent_peer_tx_packets_total", "node2") >= tx1);
    assert!(peer_value(&scraped, "weft_agent_peer_rx_packets_total", "node2") >= rx1);
    let (head, body) = curl(
        &lab,
        "node1",
        &format!("http://{LOOPBACK_LISTEN}/metrics"),
        Some("Accept: application/openmetrics-text;version=1.0.0"),
    );
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (head, _) = curl(&lab, "node1", &format!("http://{LOOPBACK_LISTEN}/"), None);
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // node2 restarted with its overlay address as the listener (known from its
    // cached map): bound once weft0 has it, and scraped by node1 through the
    // tunnel.
    mesh.stop_agent("node2").unwrap();
    let listen2 = format!("{ip2}:9102");
    mesh.start_agent_with_env("node2", None, &[("WEFT_METRICS_LISTEN", &listen2)])
        .unwrap();
    let mut body = String::new();
    weft_lab::timed_wait(
        "node2's metrics over the overlay",
        Duration::from_secs(30),
        || {
            let out = lab
                .run(
                    "node1",
                    &[
                        "curl",
                        "-sS",
                        "--max-time",
                        "3",
                        &format!("http://{listen2}/metrics"),
                    ],
                )
                .unwrap_or_default();
            body = out;
            body.contains("weft_agent_peer_rx_packets_total")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", mesh.agent_log_tail("node2")));
    let scraped = parse(&body);
    assert!(peer_value(&scraped, "weft_agent_peer_rx_packets_total", "node1") >= 1.0);

    // Any other address is refused at start, with the way out named.
    let lan = lab
        .run(
            "node2",
            &["ip", "-4", "-o", "addr", "show", "scope", "global"],
        )
        .unwrap();
    let lan_ip = lan
        .lines()
        .filter(|l| !l.contains("weft"))
        .find_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|cidr| cidr.split('/').next())
                .map(str::to_owned)
        })
        .expect("node2's LAN address");
    let scratch = lab.log_dir().join("node2-refused");
    let weftd = weft_lab::bin_path("weftd").unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.netns("node2").unwrap()])
        .arg(&weftd)
        .arg("--state-dir")
        .arg(scratch.join("state"))
        .arg("--socket")
        .arg(scratch.join("weftd.sock"))
        .args(["--dns", "off", "--port", "0"])
        .args(["--metrics-listen", &format!("{lan_ip}:9103")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weftd started: {err}");
    assert!(err.contains("--metrics-listen-public"), "{err}");
}
