//! One iperf3 run seen by all three of weft's traffic figures (issue 16, "Done
//! when": iperf3 traffic in the agent's metrics, in the forwarded history and
//! in `admin usage`, within 5% of the bytes iperf3 reports). Real
//! `weft-controller`, `weftd` and `weft` in lab namespaces; needs root and
//! FAILS (never skips) without it. Build the binaries first (`cargo build
//! --bins`).
//!
//! What is compared with what: iperf3 counts TCP payload: `sum_sent`, the
//! bytes its client wrote, and `sum_received`, the bytes its server read
//! before its own clock stopped the test. weft counts the IP packets inside
//! the tunnel, so each figure carries the IPv4 and TCP headers of every
//! segment on top (52 bytes with timestamps, about 3.8% of a full 1368-byte
//! segment at the overlay's MTU of 1420), and a figure that counts both
//! directions also carries the receiver's ACK stream (small: the receiving
//! kernel gets the segments coalesced through the TUN device's offloads and
//! acknowledges them together). Every figure is compared with `sum_sent`,
//! within 5%: the server's `sum_received` stops short by the bytes still in
//! flight when its clock ran out, which the tunnel delivers (and weft counts)
//! after, so the server's rx equals the client's tx, not iperf3's received
//! count. No figure may be below `sum_received`: that payload crossed the
//! tunnel inside packets weft counted. The usage row of iperf3's port is
//! fleet-wide: its tx is the client's data plus the server's ACKs, its rx the
//! server's data plus the client's ACKs. The test prints every figure, its
//! ratios and the header bytes per packet it measured, so a drift shows
//! before it fails.
//!
//! The agents sample their metrics for forwarding and upload their usage every
//! second here (`WEFT_METRICS_FORWARD_INTERVAL_MS`, `WEFT_USAGE_INTERVAL_MS`),
//! not every 30 s.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const CLIENT: &str = "client";
const SERVER: &str = "server";
const INTERVAL_MS: u64 = 1000;
const IPERF_PORT: u16 = 5201;

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// One peer's counters in `weft metrics`.
#[derive(Debug, Clone, Copy)]
struct PeerCounters {
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
}

/// `weft metrics` on `node`: its counters for `peer`.
fn metrics(mesh: &Mesh<'_>, node: &str, peer: &str) -> PeerCounters {
    let out = mesh.weft(node, &["metrics"]).unwrap();
    assert!(
        out.status.success(),
        "weft metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{text}"));
    let value = |metric: &str| -> u64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("peer") == Some(peer))
            .unwrap_or_else(|| panic!("{metric}{{peer={peer:?}}} missing on {node}:\n{text}"));
        match s.value {
            Value::Counter(v) | Value::Untyped(v) => v as u64,
            _ => panic!("{metric} is not a counter"),
        }
    };
    PeerCounters {
        tx_bytes: value("weft_agent_peer_tx_bytes_total"),
        rx_bytes: value("weft_agent_peer_rx_bytes_total"),
        tx_packets: value("weft_agent_peer_tx_packets_total"),
        rx_packets: value("weft_agent_peer_rx_packets_total"),
    }
}

/// A node's forwarded history, summed over every point.
#[derive(Debug, Clone, Copy)]
struct History {
    last_seq: u64,
    tx_bytes: u64,
    rx_bytes: u64,
}

/// `weft admin node metrics NODE --since 1h --json` (`None`: no sample yet).
fn history(mesh: &Mesh<'_>, node: &str) -> Option<History> {
    let out = mesh
        .admin(&["node", "metrics", node, "--since", "1h", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["missing"], 0, "samples lost on the way: {v:#}");
    let points = v["points"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| points.iter().filter_map(|p| p[k].as_u64()).sum::<u64>();
    Some(History {
        last_seq: v["last_seq"].as_u64()?,
        tx_bytes: sum("tx_bytes"),
        rx_bytes: sum("rx_bytes"),
    })
}

/// `node`'s history once it holds sample `after_seq + 2`, `after_seq` being
/// the last the controller had when the caller looked: the agent takes a
/// sample only after the previous upload finished, and `after_seq + 1` was not
/// uploaded when the caller looked, so `after_seq + 2` counts everything the
/// data plane had counted by then.
fn history_after(mesh: &Mesh<'_>, node: &str, after_seq: u64) -> History {
    let mut h = None;
    within(
        &format!("{node}'s samples after #{after_seq} in the forwarded history"),
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(INTERVAL_MS / 4));
            h = history(mesh, node);
            h.is_some_and(|h| h.last_seq >= after_seq + 2)
        },
    );
    h.unwrap()
}

/// The `tcp/IPERF_PORT` row of `weft admin usage --by port --json` (zeros
/// without one): (tx_bytes, rx_bytes, flows).
fn port_usage(mesh: &Mesh<'_>) -> (u64, u64, u64) {
    let out = mesh
        .admin(&["usage", "--by", "port", "--since", "1h", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["by"], "port", "{v:#}");
    v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["proto"] == "tcp" && r["port"] == IPERF_PORT)
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            (n("tx_bytes"), n("rx_bytes"), n("flows"))
        })
        .unwrap_or_default()
}

/// `figure / sent` (iperf3's payload bytes), printed with `figure /
/// received`, and asserted within 5%; never below `received` (that payload
/// crossed the tunnel inside packets weft counted).
fn check_ratio(what: &str, figure: u64, sent: u64, received: u64) {
    let ratio = figure as f64 / sent as f64;
    eprintln!(
        "  {what}: {figure} B = {ratio:.4} x iperf3's sent bytes ({:.4} x received)",
        figure as f64 / received as f64
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{what}: {figure} B is {ratio:.4} x the {sent} B iperf3 sent, not within 5%"
    );
    assert!(
        figure >= received,
        "{what}: {figure} B is less than the {received} B of payload iperf3's server read"
    );
}

#[test]
fn iperf3_bytes_show_in_metrics_forwarded_history_and_usage_within_five_percent() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let lab = Lab::build(&Topology::office(&[CLIENT, SERVER])).expect("build the lab");
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(2).unwrap();
    let interval = INTERVAL_MS.to_string();
    let env = [
        ("WEFT_METRICS_FORWARD_INTERVAL_MS", interval.as_str()),
        ("WEFT_USAGE_INTERVAL_MS", interval.as_str()),
    ];
    for node in [CLIENT, SERVER] {
        mesh.start_agent_with_env(node, Some(&token), &env).unwrap();
    }
    mesh.wait_full_mesh(&[CLIENT, SERVER], Duration::from_secs(30))
        .unwrap();
    let server_ip = mesh.overlay_ip(SERVER).unwrap().to_string();

    // Before: both agents' counters, and their histories up to a sample taken
    // after those counters were read (nothing else crosses the tunnel in
    // between: keepalives are not counted as data).
    let client0 = metrics(&mesh, CLIENT, SERVER);
    let server0 = metrics(&mesh, SERVER, CLIENT);
    let seq0 = |node| {
        let mut seq = 0;
        within(
            &format!("{node}'s first forwarded sample"),
            Duration::from_secs(30),
            || {
                std::thread::sleep(Duration::from_millis(INTERVAL_MS / 4));
                seq = history(&mesh, node).map_or(0, |h| h.last_seq);
                seq > 0
            },
        );
        seq
    };
    let (client_seq, server_seq) = (seq0(CLIENT), seq0(SERVER));
    let client_h0 = history_after(&mesh, CLIENT, client_seq);
    let server_h0 = history_after(&mesh, SERVER, server_seq);
    assert_eq!(port_usage(&mesh).0, 0, "tcp/{IPERF_PORT} before iperf3 ran");

    // iperf3 for 5 s, client -> server, through the tunnel.
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-B", &server_ip, "-p", &IPERF_PORT.to_string()]);
    let mut iperf_server = lab.spawn(SERVER, "iperf3-server", &srv).unwrap();
    iperf_server
        .wait_for_tcp_listen(IPERF_PORT, Duration::from_secs(10))
        .unwrap();
    let mut cli = Command::new("iperf3");
    cli.args(["-c", &server_ip, "-p", &IPERF_PORT.to_string()])
        .args(["-t", "5", "-J"]);
    let out = lab.exec(CLIENT, &cli).unwrap();
    assert!(
        out.status.success(),
        "iperf3: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    assert!(sent > 1_000_000, "iperf3 sent only {sent} bytes");
    iperf_server.wait_exit(Duration::from_secs(10)).unwrap();

    // 1. The agents' metrics, read locally: the counters' growth across the run.
    let client1 = metrics(&mesh, CLIENT, SERVER);
    let server1 = metrics(&mesh, SERVER, CLIENT);
    let client_tx = client1.tx_bytes - client0.tx_bytes;
    let client_tx_packets = client1.tx_packets - client0.tx_packets;
    let server_rx = server1.rx_bytes - server0.rx_bytes;
    let server_rx_packets = server1.rx_packets - server0.rx_packets;
    let server_tx = server1.tx_bytes - server0.tx_bytes;
    let server_tx_packets = server1.tx_packets - server0.tx_packets;
    let client_rx = client1.rx_bytes - client0.rx_bytes;
    let client_rx_packets = client1.rx_packets - client0.rx_packets;

    // 2. The forwarded history, up to a sample taken after those reads.
    let client_seq = history(&mesh, CLIENT).unwrap().last_seq;
    let server_seq = history(&mesh, SERVER).unwrap().last_seq;
    let client_h1 = history_after(&mesh, CLIENT, client_seq);
    let server_h1 = history_after(&mesh, SERVER, server_seq);
    let history_tx = client_h1.tx_bytes - client_h0.tx_bytes;
    let history_rx = server_h1.rx_bytes - server_h0.rx_bytes;

    // 3. Usage by port, once the uploads settled (the same value twice, more
    // than two uploads apart).
    let (mut usage, mut last) = ((0, 0, 0), (0, 0, 0));
    within(
        &format!("tcp/{IPERF_PORT} to settle in weft admin usage"),
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(INTERVAL_MS * 5 / 2));
            usage = port_usage(&mesh);
            let done = usage.0 > 0 && usage == last;
            last = usage;
            done
        },
    );
    let (port_tx, port_rx, port_flows) = usage;

    let per_packet = |bytes: u64, payload: u64, packets: u64| {
        bytes.saturating_sub(payload) as f64 / packets.max(1) as f64
    };
    eprintln!(
        "iperf3: {sent} B sent, {received} B received (TCP payload), {retransmits} retransmits"
    );
    eprintln!(
        "weft metrics: client tx {client_tx} B in {client_tx_packets} packets ({:.1} B of headers \
         per packet over iperf3's sent bytes); server rx {server_rx} B in \
         {server_rx_packets} packets; reverse (ACKs, iperf3's control connection): server tx \
         {server_tx} B in {server_tx_packets} packets, client rx {client_rx} B in {client_rx_packets} \
         packets",
        per_packet(client_tx, sent, client_tx_packets)
    );
    eprintln!(
        "forwarded history: client tx {history_tx} B, server rx {history_rx} B; admin usage \
         tcp/{IPERF_PORT}: tx {port_tx} B, rx {port_rx} B, {port_flows} flows"
    );
    for (what, figure) in [
        ("metrics, client tx to the server", client_tx),
        ("metrics, server rx from the client", server_rx),
        ("forwarded history, client tx", history_tx),
        ("forwarded history, server rx", history_rx),
        ("admin usage, iperf3's port, tx (both nodes)", port_tx),
        ("admin usage, iperf3's port, rx (both nodes)", port_rx),
    ] {
        check_ratio(what, figure, sent, received);
    }
}
