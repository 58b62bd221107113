//! End-to-end tests of weft itself: the real `weft-controller`, `weftd` and `weft`
//! binaries in lab namespaces. They need root and FAIL (never skip) without it.
//! The binaries come from `WEFT_BIN_DIR` or next to this test executable: run
//! `cargo build --workspace --bins` first (scripts/test.sh does).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn lab() -> Lab {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let topo = Topology::office(&NODES);
    Lab::build(&topo).expect("build the lab")
}

fn mesh(lab: &Lab) -> Mesh<'_> {
    let mut mesh = Mesh::start(lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&NODES, Duration::from_secs(20))
        .unwrap();
    mesh
}

/// Waits until `check` holds, failing with `what` after `timeout`; returns how long
/// it took.
fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn ip_json(lab: &Lab, node: &str, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = lab.run(node, &argv).unwrap();
    serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap()
}

/// Overlay addresses on weft0 and weft-owned routes (protocol 119) in `node`.
fn weft_objects(lab: &Lab, node: &str) -> (Vec<String>, Vec<String>) {
    let links = ip_json(lab, node, &["addr", "show"]);
    let mut addrs = Vec::new();
    for l in links.as_array().unwrap() {
        let name = l["ifname"].as_str().unwrap_or_default();
        if name.starts_with("weft") {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                if a["scope"] != "link" {
                    addrs.push(format!(
                        "{name} {}/{}",
                        a["local"].as_str().unwrap(),
                        a["prefixlen"]
                    ));
                }
            }
        }
    }
    let routes = ip_json(lab, node, &["route", "show", "proto", "119"]);
    let routes = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} dev {}",
                r["dst"].as_str().unwrap_or("?"),
                r["dev"].as_str().unwrap_or("?")
            )
        })
        .collect();
    (addrs, routes)
}

fn weft_links(lab: &Lab, node: &str) -> Vec<String> {
    ip_json(lab, node, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .filter(|n| n.starts_with("weft"))
        .collect()
}

#[test]
fn three_nodes_ping_each_other_and_carry_tcp() {
    let lab = lab();
    let mesh = mesh(&lab);
    let ip2 = mesh.overlay_ip("node2").unwrap();

    // `weft ping` by name goes through the tunnel and reports the RTT.
    let out = mesh.weft("node1", &["ping", "node2", "-c", "2"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft ping: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("reply from node2") && text.contains("time="),
        "{text}"
    );

    // A TCP transfer over the overlay with iperf3.
    let (bytes, _) = lab.iperf3_bytes("node1", "node2", ip2, 2).unwrap();
    assert!(bytes > 1_000_000.0, "iperf3 moved only {bytes} bytes");

    // Status shows every peer with an endpoint and traffic.
    let st = mesh.status("node1").unwrap();
    assert_eq!(st.peers.len(), 2);
    for p in &st.peers {
        assert!(p.endpoint.is_some(), "{p:?}");
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
        assert!(p.last_handshake_secs.is_some());
    }
    let c = st.controller.unwrap();
    assert!(c.connected && c.map_version.is_some());
    // The pings and the transfer dropped nothing (a ping sent before a peer was in
    // the map is answered with ICMP unreachable and counted as no_route).
    // Both sides handshaking at once leaves harmless stale_handshake counts.
    assert!(
        st.drops
            .keys()
            .all(|k| k == "no_route" || k == "stale_handshake"),
        "{:?}",
        st.drops
    );
}

/// The data plane's fallbacks carry traffic too: node1 runs without TUN
/// offloads and UDP GSO/GRO (`WEFTD_OFFLOAD=0`: one packet per syscall) and
/// with the hand-off workers forced on, node2 with offloads and without the
/// workers (`WEFTD_PIPELINE=0`: everything on the I/O thread). Pings and a TCP
/// transfer cross between them in both directions, with nothing dropped.
#[test]
fn offload_and_thread_fallbacks_carry_ping_and_tcp() {
    let lab = lab();
    let mut mesh = Mesh::start(&lab, "controller", NetworkSpec::default()).expect("controller");
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent_with_env(
        "node1",
        Some(&token),
        &[("WEFTD_OFFLOAD", "0"), ("WEFTD_PIPELINE", "1")],
    )
    .unwrap();
    mesh.start_agent_with_env("node2", Some(&token), &[("WEFTD_PIPELINE", "0")])
        .unwrap();
    mesh.wait_full_mesh(&["node1", "node2"], Duration::from_secs(20))
        .unwrap();
    // The fallbacks really ran.
    let log = |n: &str| {
        let agent = &mesh.agents[n];
        agent.process.as_ref().unwrap().log().unwrap()
    };
    let (log1, log2) = (log("node1"), log("node2"));
    assert!(
        log1.contains("UDP GSO/GRO disabled by configuration"),
        "{log1}"
    );
    assert!(
        log1.contains("offloads=false") && log1.contains("pipelined=true"),
        "{log1}"
    );
    assert!(
        log2.contains("offloads=true") && log2.contains("pipelined=false"),
        "{log2}"
    );
    for (from, to) in [("node1", "node2"), ("node2", "node1")] {
        let ip = mesh.overlay_ip(to).unwrap();
        let out = lab
            .run(
                from,
                &["ping", "-c", "3", "-i", "0.2", "-W", "2", &ip.to_string()],
            )
            .unwrap();
        assert!(out.contains(" 0% packet loss"), "{from} -> {to}: {out}");
        let (bytes, _) = lab.iperf3_bytes(from, to, ip, 2).unwrap();
        assert!(
            bytes > 1_000_000.0,
            "{from} -> {to}: iperf3 moved only {bytes} bytes"
        );
    }
    for n in ["node1", "node2"] {
        let st = mesh.status(n).unwrap();
        assert!(
            st.drops
                .keys()
                .all(|k| k == "no_route" || k == "stale_handshake"),
            "{n}: {:?}",
            st.drops
        );
    }
}

#[test]
fn removed_node_is_cut_off_within_two_seconds() {
    let lab = lab();
    let mesh = mesh(&lab);
    let ip3 = mesh.overlay_ip("node3").unwrap();
    assert!(lab.ping("node1", ip3).unwrap());

    mesh.admin(&["node", "remove", "node3"]).unwrap();
    let took = within(
        "node3 gone from node1's status",
        Duration::from_secs(2),
        || {
            mesh.status("node1")
                .map(|s| s.peers.iter().all(|p| p.name != "node3"))
                .unwrap_or(false)
        },
    );
    eprintln!("removal reached node1 in {took:?}");
    // Its traffic is dropped: no ping gets through in either direction.
    assert!(!lab.ping("node1", ip3).unwrap());
    let ip1 = mesh.overlay_ip("node1").unwrap();
    assert!(!lab.ping("node3", ip1).unwrap());
    // The others still talk.
    assert!(
        lab.ping("node1", mesh.overlay_ip("node2").unwrap())
            .unwrap()
    );
}

#[test]
fn controller_outage_offline_restart_and_resume() {
    let lab = lab();
    let mut mesh = mesh(&lab);
    let ip1 = mesh.overlay_ip("node1").unwrap();
    let ip2 = mesh.overlay_ip("node2").unwrap();
    let version_before = mesh
        .status("node1")
        .unwrap()
        .controller
        .unwrap()
        .map_version
        .unwrap();

    mesh.kill_controller().unwrap();
    // Existing peers keep working.
    assert!(lab.ping("node1", ip2).unwrap());
    assert!(lab.ping("node2", ip1).unwrap());

    // An agent restarted while the controller is down comes back from its cache.
    mesh.stop_agent("node2").unwrap();
    mesh.start_agent("node2", None).unwrap();
    let took = within(
        "node1 pings node2 after node2's restart",
        Duration::from_secs(5),
        || lab.ping("node1", ip2).unwrap_or(false),
    );
    eprintln!("restarted agent reachable after {took:?}");
    let st = mesh.status("node2").unwrap();
    let c = st.controller.unwrap();
    assert!(c.from_cache && !c.connected, "{c:?}");

    // Controller back: agents reconnect and resume from their version.
    mesh.restart_controller().unwrap();
    within("node2 reconnects", Duration::from_secs(40), || {
        mesh.status("node2")
            .is_ok_and(|s| s.controller.is_some_and(|c| c.connected && !c.from_cache))
    });
    within("node1 reconnects", Duration::from_secs(40), || {
        mesh.status("node1")
            .is_ok_and(|s| s.controller.is_some_and(|c| c.connected))
    });
    let log = mesh.agent_log_tail("node1");
    let full =
        std::fs::read_to_string(mesh.agents["node1"].process.as_ref().unwrap().log_path()).unwrap();
    assert!(
        full.contains(&format!("resume_from=Some({version_before})"))
            || full.contains("resume_from=Some("),
        "node1 did not resume from its version: {log}"
    );
    assert!(lab.ping("node1", ip2).unwrap());
}

#[test]
fn drift_is_repaired_and_down_removes_everything() {
    let lab = lab();
    let mut mesh = mesh(&lab);
    let before = weft_objects(&lab, "node1");
    assert_eq!(before.0.len(), 1, "{before:?}");
    assert_eq!(before.1.len(), 1, "{before:?}");

    // Someone deletes the overlay route, then the address.
    let (addr, route) = (before.0[0].clone(), before.1[0].clone());
    let cidr = addr.split_whitespace().nth(1).unwrap();
    lab.run(
        "node1",
        &[
            "ip",
            "route",
            "del",
            route.split_whitespace().next().unwrap(),
            "dev",
            "weft0",
            "proto",
            "119",
        ],
    )
    .unwrap();
    let took = within("route restored", Duration::from_secs(5), || {
        weft_objects(&lab, "node1") == before
    });
    eprintln!("route restored after {took:?}");
    lab.run("node1", &["ip", "addr", "del", cidr, "dev", "weft0"])
        .unwrap();
    let took = within("address restored", Duration::from_secs(5), || {
        weft_objects(&lab, "node1") == before
    });
    eprintln!("address restored after {took:?}");
    assert!(
        lab.ping("node1", mesh.overlay_ip("node2").unwrap())
            .unwrap()
    );

    // kill -9 and restart: converges without duplicates.
    mesh.kill_agent("node1").unwrap();
    mesh.start_agent("node1", None).unwrap();
    within("node1 back after kill -9", Duration::from_secs(10), || {
        weft_objects(&lab, "node1") == before
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        weft_objects(&lab, "node1"),
        before,
        "duplicates after restart"
    );

    // `weft down` leaves no weft interface, address or route behind.
    let out = mesh.weft("node1", &["down"]).unwrap();
    assert!(out.status.success());
    assert!(
        weft_links(&lab, "node1").is_empty(),
        "{:?}",
        weft_links(&lab, "node1")
    );
    assert_eq!(weft_objects(&lab, "node1"), (vec![], vec![]));
    assert_eq!(mesh.status("node1").unwrap().state, "down");
    // `weft up` brings it back.
    let out = mesh.weft("node1", &["up"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within("node1 up again", Duration::from_secs(10), || {
        lab.ping("node1", mesh.overlay_ip("node2").unwrap())
            .unwrap_or(false)
    });

    // SIGTERM also cleans up.
    mesh.stop_agent("node1").unwrap();
    assert!(weft_links(&lab, "node1").is_empty());
    assert_eq!(weft_objects(&lab, "node1"), (vec![], vec![]));
}

#[test]
fn unauthenticated_datagrams_are_counted_and_harmless() {
    let lab = lab();
    let mesh = mesh(&lab);
    let node2 = lab.addr("node2").ok();
    // node2's LAN address (what node1 reaches directly).
    let lan2 = mesh
        .status("node1")
        .unwrap()
        .peers
        .iter()
        .find(|p| p.name == "node2")
        .and_then(|p| p.endpoint.clone())
        .unwrap();
    let _ = node2;
    let before = mesh.status("node2").unwrap().drops.values().sum::<u64>();
    let bin = weft_lab::bin_path("weft-lab").unwrap();
    let out = lab
        .run(
            "node1",
            &[
                bin.to_str().unwrap(),
                "__udp-send",
                "--to",
                &lan2,
                "--count",
                "20",
                "--interval-ms",
                "5",
            ],
        )
        .unwrap();
    let _ = out;
    within("garbage counted", Duration::from_secs(5), || {
        mesh.status("node2")
            .is_ok_and(|s| s.drops.values().sum::<u64>() >= before + 20)
    });
    let st = mesh.status("node2").unwrap();
    assert!(
        st.drops.get("not_wireguard").copied().unwrap_or(0) >= 20,
        "{:?}",
        st.drops
    );
    // Still alive and still forwarding.
    assert!(
        lab.ping("node1", mesh.overlay_ip("node2").unwrap())
            .unwrap()
    );
}

/// An idle node drops nothing: the kernel's own IPv6 traffic on an IPv4-only
/// overlay interface (router solicitations and MLD reports from the link-local
/// address it would make when the link comes up) used to be counted as
/// `no_route` drops. The reconciler turns IPv6 off on such links before they go
/// up, so the kernel has nothing to send.
#[test]
fn an_idle_node_counts_no_drops() {
    let lab = lab();
    let mesh = mesh(&lab);
    // Router solicitations go out about 1, 5 and 9 s after the link comes up;
    // MLD reports at once and again within a few seconds.
    std::thread::sleep(Duration::from_secs(12));
    for n in NODES {
        let st = mesh.status(n).unwrap();
        assert_eq!(
            st.drops.get("no_route").copied().unwrap_or(0),
            0,
            "{n} counted drops while idle: {:?}",
            st.drops
        );
        let addrs = lab
            .run(n, &["ip", "-6", "address", "show", "dev", "weft0"])
            .unwrap();
        assert!(addrs.trim().is_empty(), "{n}: IPv6 on weft0: {addrs}");
    }
}
