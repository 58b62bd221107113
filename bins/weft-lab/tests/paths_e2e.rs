//! End-to-end connectivity tests with a real relay: the NAT grid, failover of a
//! live TCP stream between direct and relayed paths, and relay restarts. Root
//! only; they FAIL without root. Binaries from `WEFT_BIN_DIR` or next to this test.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test code"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Impairment, Lab, Nat, Net, Topology};

fn require_root() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn nat_grid_every_pair_connects_and_goes_direct_where_possible() {
    require_root();
    let report = weft_lab::grid::run(&weft_lab::grid::PROFILES, Duration::from_secs(20)).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
}

/// Two nodes behind easy NATs (direct possible), a controller and a relay.
fn pair(lab: &Lab) -> Mesh<'_> {
    let mut mesh = Mesh::start(lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent("a", Some(&token)).unwrap();
    mesh.start_agent("b", Some(&token)).unwrap();
    mesh.wait_full_mesh(&["a", "b"], Duration::from_secs(20))
        .unwrap();
    within("a-b direct", Duration::from_secs(10), || {
        mesh.path("a", "b").is_some_and(|p| p.starts_with("direct"))
    });
    mesh
}

fn pair_lab() -> Lab {
    require_root();
    Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .router("ra", Net::Internet, Nat::Easy)
            .router("rb", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("b", Net::lan("rb")),
    )
    .unwrap()
}

#[test]
fn tcp_stream_survives_direct_to_relay_and_back() {
    let lab = pair_lab();
    let mesh = pair(&lab);
    let ip_b = mesh.overlay_ip("b").unwrap();
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1", "-B", &ip_b.to_string(), "-p", "5201"]);
    let mut srv = lab.spawn("b", "iperf3-server", &server).unwrap();
    srv.wait_for_tcp_listen(5201, Duration::from_secs(10))
        .unwrap();
    // A 12 s stream, rate-limited so the relay path keeps up.
    let mut client = Command::new("iperf3");
    client.args([
        "-c",
        &ip_b.to_string(),
        "-p",
        "5201",
        "-t",
        "12",
        "-b",
        "20M",
        "-J",
    ]);
    let mut cli = lab.spawn("a", "iperf3-client", &client).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // Cut direct UDP between the two sites at a's router (the relay is TCP).
    lab.run("ra", &["nft", "add", "table", "ip", "cut"])
        .unwrap();
    lab.run(
        "ra",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "cut",
            "block",
            "{ type filter hook forward priority -10 ; }",
        ],
    )
    .unwrap();
    lab.run(
        "ra",
        &[
            "nft", "add", "rule", "ip", "cut", "block", "udp", "dport", "51820", "drop",
        ],
    )
    .unwrap();
    lab.run(
        "ra",
        &[
            "nft", "add", "rule", "ip", "cut", "block", "udp", "sport", "51820", "drop",
        ],
    )
    .unwrap();
    let took = within("a moves to the relay", Duration::from_secs(5), || {
        mesh.path("a", "b").as_deref() == Some("relay")
    });
    println!("direct -> relay in {took:?}");
    std::thread::sleep(Duration::from_secs(2));

    // Restore: it moves back to direct.
    lab.run("ra", &["nft", "delete", "table", "ip", "cut"])
        .unwrap();
    let took = within("a moves back to direct", Duration::from_secs(10), || {
        mesh.path("a", "b").is_some_and(|p| p.starts_with("direct"))
    });
    println!("relay -> direct in {took:?}");

    let status = cli.wait_exit(Duration::from_secs(30)).unwrap();
    let log = cli.log().unwrap();
    assert!(status.success(), "iperf3 failed: {log}");
    let start = log.find('{').unwrap();
    let v: serde_json::Value = serde_json::from_str(&log[start..]).unwrap();
    assert!(v.get("error").is_none(), "{log}");
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes > 10_000_000.0, "stream moved only {bytes} bytes");
}

#[test]
fn relayed_peers_recover_after_relay_restart_and_direct_peers_do_not_notice() {
    require_root();
    let lab = Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .router("ra", Net::Internet, Nat::Easy)
            .router("rh", Net::Internet, Nat::Hard)
            .router("rb", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("h", Net::lan("rh"))
            .host("b", Net::lan("rb")),
    )
    .unwrap();
    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(3).unwrap();
    for n in ["a", "h", "b"] {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&["a", "h", "b"], Duration::from_secs(20))
        .unwrap();
    within("a-b direct", Duration::from_secs(10), || {
        mesh.path("a", "b").is_some_and(|p| p.starts_with("direct"))
    });
    assert_eq!(
        mesh.path("a", "h").as_deref(),
        Some("relay"),
        "hard NAT pair is relayed"
    );
    let ip_h = mesh.overlay_ip("h").unwrap();
    let ip_b = mesh.overlay_ip("b").unwrap();

    mesh.kill_relay().unwrap();
    // The direct pair keeps working while the relay is gone.
    assert!(lab.ping("a", ip_b).unwrap());
    mesh.restart_relay().unwrap();
    let took = within("relayed pair recovers", Duration::from_secs(10), || {
        lab.ping("a", ip_h).unwrap_or(false)
    });
    println!("relayed pair recovered {took:?} after the relay restarted");
    assert!(mesh.path("a", "b").is_some_and(|p| p.starts_with("direct")));
}

/// The slow-link case: 100 ms each way and 1 % loss on both routers'
/// uplinks (the userspace wire where the kernel has no netem), so a direct
/// round trip between a and b takes about 400 ms. The pair must be direct
/// within 3 s of both agents having the other in their map.
#[test]
fn easy_pair_goes_direct_within_3s_over_delayed_lossy_links() {
    let lab = pair_lab();
    let slow = Impairment::delay(Duration::from_millis(100)).with_loss(1.0);
    lab.impair("ra", slow).unwrap();
    lab.impair("rb", slow).unwrap();
    // Warm the neighbour caches, then measure: a -> rb crosses both wires.
    let rb = lab.addr("rb").unwrap();
    within("a reaches rb", Duration::from_secs(10), || {
        lab.ping("a", rb).unwrap_or(false)
    });
    let out = lab
        .run(
            "a",
            &["ping", "-c", "3", "-i", "0.3", "-n", "-q", &rb.to_string()],
        )
        .unwrap();
    println!(
        "underlay a -> rb: {}",
        out.lines().last().unwrap_or_default()
    );

    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent("a", Some(&token)).unwrap();
    mesh.start_agent("b", Some(&token)).unwrap();

    let start = Instant::now();
    let mut in_map: Option<Instant> = None;
    let direct = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no direct path within 60 s (peer in both maps after {:?})\n{}",
            in_map.map(|t| t - start),
            mesh.status_table()
        );
        let (Some(sa), Some(sb)) = (mesh.try_status("a"), mesh.try_status("b")) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let now = Instant::now();
        let pa = sa
            .peers
            .iter()
            .find(|p| p.name == "b")
            .map(|p| p.path.clone());
        let pb = sb
            .peers
            .iter()
            .find(|p| p.name == "a")
            .map(|p| p.path.clone());
        if in_map.is_none() && pa.is_some() && pb.is_some() {
            in_map = Some(now);
        }
        if let (Some(pa), Some(pb)) = (&pa, &pb)
            && pa.starts_with("direct")
            && pb.starts_with("direct")
        {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let in_map = in_map.unwrap();
    let took = direct - in_map;
    println!(
        "100 ms each way + 1 % loss on both uplinks: peer in both maps after {:?}, direct {took:?} later",
        in_map - start
    );
    assert!(
        took <= Duration::from_secs(3),
        "direct after {took:?} (> 3 s)"
    );
    // The overlay works over the slow direct path (RTT about 400 ms).
    let ip_b = mesh.overlay_ip("b").unwrap();
    within("a pings b", Duration::from_secs(10), || {
        lab.ping("a", ip_b).unwrap_or(false)
    });
    assert!(mesh.path("a", "b").is_some_and(|p| p.starts_with("direct")));
    let stats = lab.wire_stats("ra", "eth0");
    println!("wire on ra: {stats:?}");
}

/// Reply timestamps (`ping -D`) in a ping log, in seconds.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The longest silence between consecutive replies after `from` (Unix seconds).
fn longest_gap_after(times: &[f64], from: f64) -> f64 {
    times
        .windows(2)
        .filter(|w| w[1] >= from)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

/// Roaming: a's router gets a new WAN address (the ISP renumbers it) while
/// pings flow to a from a public host and from a host behind another NAT.
/// Nobody restarts: the public peer follows a's authenticated packets to the new
/// address at once; the NATed peer keeps reaching a (over the relay while the
/// old direct path is dead) and goes direct to the new address once a's agent
/// has learned and published its new reflexive address.
#[test]
fn peers_heal_when_a_nodes_underlay_address_changes() {
    require_root();
    let lab = Lab::build(
        &Topology::new()
            .host("infra", Net::Internet)
            .host("o", Net::Internet)
            .router("ra", Net::Internet, Nat::Easy)
            .router("rb", Net::Internet, Nat::Easy)
            .host("a", Net::lan("ra"))
            .host("b", Net::lan("rb")),
    )
    .unwrap();
    let mut mesh = Mesh::start(&lab, "infra", NetworkSpec::default()).unwrap();
    mesh.start_relay("infra").unwrap();
    let token = mesh.token_file(3).unwrap();
    for n in ["a", "o", "b"] {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&["a", "o", "b"], Duration::from_secs(20))
        .unwrap();
    let old_wan = lab.addr("ra").unwrap();
    for peer in ["o", "b"] {
        within(&format!("{peer}-a direct"), Duration::from_secs(10), || {
            mesh.path(peer, "a")
                .is_some_and(|p| p.starts_with(&format!("direct {old_wan}:")))
        });
    }
    let ip_a = mesh.overlay_ip("a").unwrap();
    let flow = |from: &str| {
        let mut ping = Command::new("ping");
        ping.args(["-D", "-n", "-i", "0.1", &ip_a.to_string()]);
        lab.spawn(from, "ping-a", &ping).unwrap()
    };
    let mut from_o = flow("o");
    let mut from_b = flow("b");
    std::thread::sleep(Duration::from_secs(1));

    // Renumber ra's WAN side: the old address (and every NAT mapping on it) goes.
    let new_wan = "198.18.0.200";
    // Delete first: an address added next to it would be a secondary one, and
    // deleting the primary takes secondaries with it.
    let script = format!("ip addr del {old_wan}/16 dev eth0 && ip addr add {new_wan}/16 dev eth0");
    lab.run("ra", &["sh", "-c", &script]).unwrap();
    let renumbered = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = Instant::now();

    let took = within(
        "o follows a to its new address",
        Duration::from_secs(10),
        || {
            mesh.path("o", "a")
                .is_some_and(|p| p.starts_with(&format!("direct {new_wan}:")))
        },
    );
    println!("public peer: direct to the new address {took:?} after the renumbering");
    within(
        "b goes direct to a's new address",
        Duration::from_secs(15),
        || {
            mesh.path("b", "a")
                .is_some_and(|p| p.starts_with(&format!("direct {new_wan}:")))
        },
    );
    println!(
        "NATed peer: direct to the new address {:?} after the renumbering",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let elapsed = start.elapsed().as_secs_f64();
    for (name, p) in [("o", &mut from_o), ("b", &mut from_b)] {
        p.kill().unwrap();
        let times = reply_times(&p.log().unwrap());
        let gap = longest_gap_after(&times, renumbered);
        let last = times.last().copied().unwrap_or(0.0);
        println!(
            "ping {name} -> a: {} replies, longest silence after the renumbering {gap:.2} s",
            times.len()
        );
        assert!(
            last >= renumbered + elapsed - 1.0,
            "{name}'s flow to a stopped (last reply {:.1} s after the renumbering)",
            last - renumbered
        );
        assert!(gap < 6.0, "{name}'s flow to a was silent for {gap:.2} s");
    }
}
