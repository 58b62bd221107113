//! Metrics forwarding end to end (issue 16, part 3): real `weft-controller`,
//! `weftd` and `weft` in lab namespaces. Needs root and FAILS (never skips)
//! without it. Build the binaries first (`cargo build --bins`).
//!
//! The agents sample every second here (`WEFT_METRICS_FORWARD_INTERVAL_MS=1000`,
//! the test override of the 30 s interval), so the 2-minute outage below
//! queues about 120 samples, well inside the outbox's 480.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const NODES: [&str; 2] = ["node1", "node2"];
const INTERVAL_MS: &str = "1000";
const OUTAGE: Duration = Duration::from_secs(120);

fn lab() -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    Lab::build(&Topology::office(&NODES)).expect("build the lab")
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `weft admin node metrics node1 --since 1h --json`, through the CLI.
fn history(mesh: &Mesh<'_>) -> History {
    let out = mesh
        .admin(&["node", "metrics", "node1", "--since", "1h", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let n = |k: &str| v[k].as_u64();
    let points = v["points"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| points.iter().filter_map(|p| p[k].as_u64()).sum::<u64>();
    History {
        received: n("received").unwrap_or(0),
        missing: n("missing").unwrap_or(u64::MAX),
        duplicates: n("duplicates").unwrap_or(0),
        out_of_window: n("out_of_window").unwrap_or(u64::MAX),
        outbox_dropped: n("outbox_dropped").unwrap_or(u64::MAX),
        last_seq: n("last_seq"),
        agent_start_ms: n("agent_start_ms"),
        samples_in_points: sum("samples"),
        rx_bytes: sum("rx_bytes"),
        tx_bytes: sum("tx_bytes"),
        max_peers: points
            .iter()
            .map(|p| {
                p["peers_direct"].as_u64().unwrap_or(0) + p["peers_relayed"].as_u64().unwrap_or(0)
            })
            .max()
            .unwrap_or(0),
    }
}

/// What the test reads of the controller's answer.
#[derive(Debug)]
struct History {
    received: u64,
    missing: u64,
    duplicates: u64,
    out_of_window: u64,
    outbox_dropped: u64,
    last_seq: Option<u64>,
    agent_start_ms: Option<u64>,
    samples_in_points: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    max_peers: u64,
}

fn last_seq(mesh: &Mesh<'_>) -> u64 {
    mesh.status("node1")
        .unwrap()
        .forwarding
        .expect("status shows forwarding")
        .last_seq
}

#[test]
fn no_sample_is_lost_while_the_controller_is_down_for_two_minutes() {
    let lab = lab();
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).unwrap();
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent_with_env(
            n,
            Some(&token),
            &[("WEFT_METRICS_FORWARD_INTERVAL_MS", INTERVAL_MS)],
        )
        .unwrap();
    }
    mesh.wait_full_mesh(&NODES, Duration::from_secs(30))
        .unwrap();
    let ping = mesh.weft("node1", &["ping", "node2", "-c", "3"]).unwrap();
    assert!(ping.status.success(), "{ping:?}");

    // Samples flow: the controller has every one so far, with the traffic.
    within(
        "ten samples on the controller",
        Duration::from_secs(30),
        || history(&mesh).received >= 10,
    );
    let before = history(&mesh);
    assert_eq!(
        (before.missing, before.outbox_dropped),
        (0, 0),
        "{before:?}"
    );
    assert!(
        before.rx_bytes > 0 && before.tx_bytes > 0,
        "the pings are in the history: {before:?}"
    );
    assert_eq!(before.max_peers, 1, "{before:?}");

    // The controller is down for two minutes: samples pile up in the outbox.
    let seq_at_kill = last_seq(&mesh);
    mesh.kill_controller().unwrap();
    std::thread::sleep(OUTAGE);
    let st = mesh.status("node1").unwrap();
    let fw = st.forwarding.clone().unwrap();
    println!("after the outage: {fw:?}");
    assert!(fw.queued >= 100, "about 120 samples queued: {fw:?}");
    assert_eq!(fw.dropped, 0, "{fw:?}");
    assert!(fw.last_error.is_some(), "{fw:?}");
    let outbox = mesh.agents["node1"].state_dir.join("metrics-outbox.json");
    assert!(
        outbox.exists(),
        "the outbox is on disk while the controller is away"
    );
    assert!(!st.failures.iter().any(|f| f.area == "telemetry"), "{st:?}");
    let seq_at_restart = fw.last_seq;

    // Back: the outbox is replayed in order, and every sample from before the
    // kill onwards is on the restarted controller (its history is in memory,
    // so what the killed one held is gone with it).
    mesh.restart_controller().unwrap();
    let took = within("outbox replayed", Duration::from_secs(60), || {
        mesh.status("node1")
            .ok()
            .and_then(|s| s.forwarding)
            .is_some_and(|f| f.queued == 0 && f.last_error.is_none())
    });
    println!("outbox replayed {took:?} after the controller came back");
    within(
        "the replay is on the controller",
        Duration::from_secs(10),
        || history(&mesh).last_seq.is_some_and(|s| s > seq_at_restart),
    );
    let h = history(&mesh);
    let last = h.last_seq.unwrap();
    let first = last + 1 - h.received;
    println!(
        "controller has seq {first}..={last} ({} received, {} missing, {} duplicates); killed at {seq_at_kill}, restarted at {seq_at_restart}",
        h.received, h.missing, h.duplicates
    );
    assert_eq!(h.missing, 0, "{h:?}");
    assert_eq!(h.out_of_window, 0, "{h:?}");
    assert!(
        first <= seq_at_kill + 1,
        "samples {first}..={seq_at_kill} taken before the kill were forwarded to the old controller; \
         the new one must have everything after: first {first}"
    );
    assert_eq!(h.outbox_dropped, 0);
    // Every received sample is in the history's minutes, and the agent run did
    // not change (no restart).
    assert_eq!(h.samples_in_points, h.received, "{h:?}");
    assert_eq!(h.agent_start_ms, before.agent_start_ms);

    // The people's view: sparklines with figures over the last 10 minutes.
    let text = mesh
        .admin(&["node", "metrics", "node1", "--since", "10m"])
        .unwrap();
    println!("{text}");
    for row in ["rx ", "tx ", "drops", "peer rtt", "ctl rtt"] {
        assert!(text.lines().any(|l| l.starts_with(row)), "{row}: {text}");
    }
    assert!(text.contains('▁') || text.contains('█'), "{text}");
    assert!(text.contains("0 missing"), "{text}");
    // `weft status` shows forwarding with an empty outbox.
    let out = mesh.weft("node1", &["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("metrics   forwarded every 1s") && status.contains("0 queued, 0 dropped"),
        "{status}"
    );
}
