//! Anomaly detection end to end (issue 16, part 5): real `weft-controller`,
//! `weftd` and `weft` in lab namespaces. Needs root and FAILS (never skips)
//! without it. Build the binaries first (`cargo build --bins`).
//!
//! - A sweep of 200 TCP ports from one node to another whose policy refuses
//!   all but one raises one scan event within 30 s: the scanning node's own
//!   egress policy refuses the packets (weft agents enforce on both ends), so
//!   that agent sees the refusals and names the target. It shows in `weft
//!   events` there, in `weft admin events` and in the agent's metrics.
//! - Events raised while the controller is down are kept by the agent and
//!   reach the controller's log once it is back.
//! - Steady iperf3 (50 Mbit/s) and ping traffic raises no event at all, for
//!   `WEFT_ANOMALY_STEADY_SECS` seconds (default 600, the issue's 10 minutes).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::scripts::ECHO_SERVER;
use weft_lab::{Lab, Topology};

fn lab(nodes: &[&str]) -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    Lab::build(&Topology::office(nodes)).expect("build the lab")
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `weft events --json` on `node`: the events array.
fn local_events(mesh: &Mesh<'_>, node: &str) -> Vec<serde_json::Value> {
    local_events_pending(mesh, node).0
}

/// `weft events --json` on `node`: the events and how many wait for the
/// controller.
fn local_events_pending(mesh: &Mesh<'_>, node: &str) -> (Vec<serde_json::Value>, u64) {
    let out = mesh.weft(node, &["events", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "weft events in {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["events"].as_array().cloned().unwrap_or_default(),
        v["pending_upload"].as_u64().unwrap_or(u64::MAX),
    )
}

/// `weft admin events --json`: the log's entries.
fn admin_events(mesh: &Mesh<'_>, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let out = mesh.admin(&all).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Tries TCP connections from the node to argv[1], ports argv[2]..argv[3]
/// (each given up after 0.1 s), the way a port scanner does.
const SWEEP: &str = r#"
import socket, sys
for port in range(int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket()
    s.settimeout(0.1)
    try:
        s.connect((sys.argv[1], port))
    except OSError:
        pass
    s.close()
"#;

const SCAN_NODES: [&str; 2] = ["scanner", "target"];

const ONLY_SSH: &str = r#"# scanner may reach target on tcp/22 only.
[[rule]]
name = "scanner to target ssh"
action = "allow"
from = "tag:scanner"
to = "tag:target"
proto = "tcp"
ports = [22]
"#;

/// A scanner and a target whose policy lets the scanner reach tcp/22 only
/// (an echo server listens there), in force on the scanner; no event yet.
fn scan_lab(lab: &Lab) -> (Mesh<'_>, Ipv4Addr, weft_lab::Process) {
    let mut mesh = Mesh::start(lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(SCAN_NODES.len() as u32).unwrap();
    for n in SCAN_NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&SCAN_NODES, Duration::from_secs(30))
        .unwrap();
    mesh.admin(&["node", "tag", "scanner", "scanner"]).unwrap();
    mesh.admin(&["node", "tag", "target", "target"]).unwrap();
    let path = lab.log_dir().join("only-ssh.toml");
    std::fs::write(&path, ONLY_SSH).unwrap();
    mesh.admin(&["policy", "set", path.to_str().unwrap()])
        .unwrap();
    let target_ip: Ipv4Addr = mesh.overlay_ip("target").unwrap();
    let mut ssh = Command::new("python3");
    ssh.args(["-c", ECHO_SERVER, "22"]);
    let mut server = lab.spawn("target", "echo-22", &ssh).unwrap();
    server
        .wait_for_tcp_listen(22, Duration::from_secs(10))
        .unwrap();
    // The new policy is in force on the scanner before it sweeps (else the
    // target, already refusing, could see the first ports as an ingress scan).
    within(
        "the scanner's policy refuses port 80",
        Duration::from_secs(20),
        || {
            mesh.weft(
                "scanner",
                &["why-blocked", "target", "--proto", "tcp", "--port", "80"],
            )
            .is_ok_and(|o| o.status.code() == Some(3))
        },
    );
    assert!(lab.tcp_echoes("scanner", target_ip, 22));
    assert!(local_events(&mesh, "scanner").is_empty());
    (mesh, target_ip, server)
}

/// Starts the 200-port sweep from the scanner.
fn sweep(lab: &Lab, target_ip: Ipv4Addr) -> weft_lab::Process {
    let mut sweep = Command::new("python3");
    sweep.args(["-c", SWEEP, &target_ip.to_string(), "1", "201"]);
    lab.spawn("scanner", "sweep", &sweep).unwrap()
}

#[test]
fn a_port_sweep_raises_one_scan_event_naming_its_target() {
    let lab = lab(&SCAN_NODES);
    let (mesh, target_ip, _server) = scan_lab(&lab);

    let started = Instant::now();
    let mut sweeper = sweep(&lab, target_ip);
    // Within 30 s of the sweep's start.
    let left = Duration::from_secs(30).saturating_sub(started.elapsed());
    within("a scan event on the scanner", left, || {
        !local_events(&mesh, "scanner").is_empty()
    });
    eprintln!("scan event {:?} after the sweep started", started.elapsed());
    sweeper.wait_exit(Duration::from_secs(60)).unwrap();

    let events = local_events(&mesh, "scanner");
    assert_eq!(events.len(), 1, "one incident, one event: {events:#?}");
    let e = &events[0];
    assert_eq!(e["kind"], "scan", "{e:#}");
    assert_eq!(e["peer"], "target", "{e:#}");
    let target = e["target"].as_str().unwrap();
    assert!(
        target.starts_with("target (") && target.contains(&target_ip.to_string()),
        "{target}"
    );
    assert_eq!(e["details"]["direction"], "egress", "{e:#}");
    assert_eq!(e["unit"], "distinct ports", "{e:#}");
    assert_eq!(e["baseline"]["type"], "threshold", "{e:#}");
    assert_eq!(e["baseline"]["threshold"], 20.0, "{e:#}");
    assert!(e["observed"].as_f64().unwrap() >= 20.0, "{e:#}");
    assert!(
        e["summary"].as_str().unwrap().contains("on target ("),
        "{e:#}"
    );
    // The target's agent never saw the packets.
    assert!(local_events(&mesh, "target").is_empty());

    // In the controller's log, by node and in all.
    within(
        "the scan event on the controller",
        Duration::from_secs(30),
        || !admin_events(&mesh, &[]).is_empty(),
    );
    let logged = admin_events(&mesh, &["--node", "scanner"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(logged[0]["node"], "scanner");
    assert_eq!(logged[0]["event"]["id"], e["id"]);
    assert_eq!(logged[0]["event"]["target"], e["target"]);
    assert!(admin_events(&mesh, &["--node", "target"]).is_empty());
    let human = mesh.admin(&["events", "--since", "1h"]).unwrap();
    assert!(human.contains("scan  node scanner  peer target"), "{human}");

    // And in the agent's metrics.
    let m = mesh.weft("scanner", &["metrics"]).unwrap();
    let text = String::from_utf8_lossy(&m.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("weft_agent_anomaly_events_total{kind=\"scan\"} 1")),
        "{text}"
    );
}

#[test]
fn events_raised_while_the_controller_is_away_reach_it_when_it_is_back() {
    let lab = lab(&SCAN_NODES);
    let (mut mesh, target_ip, _server) = scan_lab(&lab);
    mesh.kill_controller().unwrap();
    let mut sweeper = sweep(&lab, target_ip);
    within(
        "a scan event on the scanner",
        Duration::from_secs(30),
        || !local_events(&mesh, "scanner").is_empty(),
    );
    sweeper.wait_exit(Duration::from_secs(60)).unwrap();
    let (events, pending) = local_events_pending(&mesh, "scanner");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(pending, 1, "kept for the controller");
    mesh.restart_controller().unwrap();
    within(
        "the kept event on the controller",
        Duration::from_secs(60),
        || !admin_events(&mesh, &[]).is_empty(),
    );
    let logged = admin_events(&mesh, &[]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(logged[0]["event"]["id"], events[0]["id"]);
    assert_eq!(logged[0]["node"], "scanner");
    within("nothing left to upload", Duration::from_secs(20), || {
        local_events_pending(&mesh, "scanner").1 == 0
    });
}

#[test]
fn steady_iperf3_and_ping_traffic_raise_no_event() {
    const NODES: [&str; 2] = ["client", "server"];
    let secs: u64 = std::env::var("WEFT_ANOMALY_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let lab = lab(&NODES);
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&NODES, Duration::from_secs(30))
        .unwrap();
    // The outbound-volume floor down to 1 MiB: only the baseline and its
    // z-score can keep 60 MiB per window from alarming.
    mesh.admin(&["network", "anomaly", "lab", "--volume-min-mib", "1"])
        .unwrap();
    let server_ip = mesh.overlay_ip("server").unwrap();
    let client_ip = mesh.overlay_ip("client").unwrap();

    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-B", &server_ip.to_string(), "-p", "5201"]);
    let mut iperf_server = lab.spawn("server", "iperf3-server", &srv).unwrap();
    iperf_server
        .wait_for_tcp_listen(5201, Duration::from_secs(10))
        .unwrap();
    let mut cli = Command::new("iperf3");
    cli.args([
        "-c",
        &server_ip.to_string(),
        "-p",
        "5201",
        "-b",
        "50M",
        "-t",
        &secs.to_string(),
    ]);
    let mut iperf = lab.spawn("client", "iperf3-client", &cli).unwrap();
    let mut pings = Vec::new();
    for (from, to) in [("client", server_ip), ("server", client_ip)] {
        let mut p = Command::new("ping");
        p.args(["-i", "0.2", "-n", "-q", &to.to_string()]);
        pings.push(lab.spawn(from, &format!("ping-{from}"), &p).unwrap());
    }

    let start = Instant::now();
    let total = Duration::from_secs(secs);
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(30).min(total.saturating_sub(start.elapsed())));
        for n in NODES {
            let ev = local_events(&mesh, n);
            assert!(ev.is_empty(), "{n} after {:?}: {ev:#?}", start.elapsed());
        }
        if start.elapsed() + Duration::from_secs(5) < total {
            assert!(
                iperf.try_wait().unwrap().is_none(),
                "iperf3 ended early: {}",
                iperf.log_tail()
            );
        }
    }
    // The traffic was real: at least half of 50 Mbit/s went to the server.
    let st = mesh.status("client").unwrap();
    let tx = st
        .peers
        .iter()
        .find(|p| p.name == "server")
        .map_or(0, |p| p.tx_bytes);
    assert!(
        tx as f64 >= 0.5 * 50e6 / 8.0 * secs as f64,
        "only {tx} bytes sent in {secs} s"
    );
    for n in NODES {
        assert!(local_events(&mesh, n).is_empty());
    }
    assert!(admin_events(&mesh, &[]).is_empty());
}
