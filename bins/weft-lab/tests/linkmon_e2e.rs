//! Link monitoring end to end (issue 18): a node with two underlay links, its
//! default route on the first; the first goes down and the default route moves
//! to the second. A peer pinging the node over the overlay the whole time
//! reaches it again within 3 s (measured from the change to the first echo
//! reply after the outage, and printed), over a direct path to the node's new
//! address, with no relay to fall back on. Root only; FAILS without root.
//! Binaries from `WEFT_BIN_DIR` or next to this test.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code"
)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Nat, Net, Topology};

/// The bound the issue sets.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);
/// The peer's ping interval (root may go below 200 ms).
const PING_INTERVAL_MS: u64 = 20;

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The echo replies in `ping -D` output: (receive time in Unix seconds,
/// icmp_seq).
fn replies(log: &str) -> Vec<(f64, u64)> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))?
                .parse()
                .ok()?;
            Some((ts, seq))
        })
        .collect()
}

/// Seconds from `changed_at` to the first reply after the outage the change
/// caused (the first reply after `changed_at` that follows a gap of more than
/// five ping intervals), and how many requests went unanswered; `None`: no
/// reply after the change at all.
fn recovery(replies: &[(f64, u64)], changed_at: f64) -> Option<(f64, u64)> {
    let gap = 5.0 * PING_INTERVAL_MS as f64 / 1000.0;
    let mut last: Option<(f64, u64)> = None;
    for &(ts, seq) in replies {
        if ts > changed_at {
            let prev = last.unwrap_or((changed_at, seq));
            if ts - prev.0 > gap || ts - changed_at > gap {
                let lost = seq.saturating_sub(prev.1 + 1);
                return Some((ts - changed_at, lost));
            }
        }
        last = Some((ts, seq));
    }
    None
}

#[test]
fn recovery_is_measured_from_the_gap_after_the_change() {
    let r = [(10.0, 1), (10.02, 2), (10.04, 3), (10.50, 26), (10.52, 27)];
    let (secs, lost) = recovery(&r, 10.03).unwrap();
    assert!((secs - 0.47).abs() < 1e-9, "{secs}");
    assert_eq!(lost, 22);
    assert_eq!(recovery(&r[..3], 10.05), None);
}

#[test]
fn peers_reach_the_node_again_within_3s_after_its_default_route_moves() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    // infra (controller) and the peer p on the internet; the node n behind
    // the open router ra (its first link, eth0, default route); the open
    // router rb's LAN is where n's second link goes.
    let lab = Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .host("p", Net::Internet)
            .router("ra", Net::Internet, Nat::Open)
            .router("rb", Net::Internet, Nat::Open)
            .host("n", Net::lan("ra")),
    )
    .unwrap();
    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default()).unwrap();
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent("n", Some(&token)).unwrap();
    mesh.start_agent("p", Some(&token)).unwrap();
    mesh.wait_full_mesh(&["n", "p"], Duration::from_secs(20))
        .unwrap();
    let addr_a = lab.addr("n").unwrap();
    within(
        "p reaches n directly at its first address",
        Duration::from_secs(10),
        || {
            mesh.path("p", "n")
                .is_some_and(|p| p.starts_with(&format!("direct {addr_a}:")))
        },
    );
    let st = mesh.status("n").unwrap();
    let underlay = st.underlay.expect("weft status shows the underlay");
    assert_eq!(
        underlay.default_route_v4.as_deref(),
        Some("eth0"),
        "{underlay:?}"
    );
    assert!(
        underlay.interfaces.iter().any(|i| i.name == "eth0" && i.up),
        "{underlay:?}"
    );

    // The second link: a veth from n into rb's LAN switch, with an address
    // of that LAN (no default route yet).
    let rb_lan = lab.plan().segment("rb").unwrap().clone();
    let switch_ns = weft_lab::names::netns_name(lab.run_id(), &rb_lan.netns_suffix);
    let addr_b: Ipv4Addr = rb_lan.subnet.nth(200);
    let gw_b = lab.node("rb").unwrap().lan_iface().unwrap().addr;
    lab.run(
        "n",
        &[
            "ip", "link", "add", "name", "eth1", "type", "veth", "peer", "name", "pn1", "netns",
            &switch_ns,
        ],
    )
    .unwrap();
    for argv in [
        ["ip", "link", "set", "pn1", "master", "br0"].as_slice(),
        ["ip", "link", "set", "pn1", "up"].as_slice(),
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &switch_ns])
            .args(argv)
            .output()
            .unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
    }
    let with_prefix = format!("{addr_b}/{}", rb_lan.subnet.prefix);
    lab.run("n", &["ip", "addr", "add", &with_prefix, "dev", "eth1"])
        .unwrap();
    lab.run("n", &["ip", "link", "set", "eth1", "up"]).unwrap();
    within(
        "n's status shows eth1 up with its address",
        Duration::from_secs(5),
        || {
            mesh.try_status("n")
                .and_then(|s| s.underlay)
                .is_some_and(|u| {
                    u.interfaces
                        .iter()
                        .any(|i| i.name == "eth1" && i.up && i.addresses.contains(&with_prefix))
                })
        },
    );
    assert!(
        mesh.path("p", "n")
            .is_some_and(|p| p.starts_with(&format!("direct {addr_a}:"))),
        "a new link without the default route changes no path"
    );

    // The peer pings n's overlay address every 20 ms throughout.
    let ip_n = mesh.overlay_ip("n").unwrap();
    let mut ping = Command::new("ping");
    ping.args([
        "-D",
        "-n",
        "-i",
        &format!("{:.3}", PING_INTERVAL_MS as f64 / 1000.0),
        "-w",
        "10",
        &ip_n.to_string(),
    ]);
    let mut pinger = lab.spawn("p", "ping-n", &ping).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // The change: eth0 down (its routes go with it), default route via eth1.
    let changed_at = unix_secs();
    lab.run("n", &["ip", "link", "set", "eth0", "down"])
        .unwrap();
    lab.run(
        "n",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &gw_b.to_string(),
            "dev",
            "eth1",
        ],
    )
    .unwrap();

    // The node re-reported its endpoints at once: the controller's record no
    // longer lists the first address, and lists the second.
    let endpoints = || -> Vec<String> {
        let out = mesh
            .admin(&["node", "show", "n", "--json"])
            .unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| {
                v["endpoints"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    within(
        "the controller has n's new endpoints",
        Duration::from_secs(5),
        || {
            let eps = endpoints();
            eps.iter().any(|e| e.starts_with(&format!("{addr_b}:")))
                && !eps.iter().any(|e| e.starts_with(&format!("{addr_a}:")))
        },
    );
    println!(
        "link monitoring: the controller had the node's new endpoints {:.1} s after the change",
        unix_secs() - changed_at
    );

    pinger.wait_exit(Duration::from_secs(15)).unwrap();
    let log = pinger.log().unwrap();
    let replies = replies(&log);
    let Some((secs, lost)) = recovery(&replies, changed_at) else {
        panic!(
            "p never reached n again after the change\nping:\n{log}\nn: {}\np: {}",
            mesh.agent_log_tail("n"),
            mesh.agent_log_tail("p")
        );
    };
    println!(
        "link monitoring: eth0 down + default route via eth1 -> peer reaches the node again \
         after {:.0} ms ({lost} echo requests lost at one per {PING_INTERVAL_MS} ms; bound {} s)",
        secs * 1000.0,
        RECOVERY_BOUND.as_secs()
    );
    assert!(
        secs < RECOVERY_BOUND.as_secs_f64(),
        "recovered after {secs:.3} s, over the {RECOVERY_BOUND:?} bound\nn: {}\np: {}",
        mesh.agent_log_tail("n"),
        mesh.agent_log_tail("p")
    );

    // Over a direct path to the new address (there is no relay).
    let path = mesh.path("p", "n").unwrap_or_default();
    assert!(
        path.starts_with(&format!("direct {addr_b}:")),
        "p's path to n: {path}"
    );
    // The node's status names the change and the new default route.
    let underlay = mesh.status("n").unwrap().underlay.unwrap();
    assert_eq!(
        underlay.default_route_v4.as_deref(),
        Some("eth1"),
        "{underlay:?}"
    );
    assert!(underlay.changes >= 2, "{underlay:?}");
    assert!(
        underlay
            .interfaces
            .iter()
            .any(|i| i.name == "eth0" && !i.up),
        "{underlay:?}"
    );
    let text = mesh.weft("n", &["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("underlay  default route via eth1"), "{text}");
    // It was link monitoring that acted (not a timer), and the controller
    // connection made over eth0 was replaced at once.
    let n_log = mesh.agents["n"].process.as_ref().unwrap().log().unwrap();
    assert!(n_log.contains("underlay changed"), "{n_log}");
    assert!(n_log.contains("reconnecting now"), "{n_log}");
}
