//! Many networks end to end (issue 7, part 3): the real controller, agents and
//! CLIs in lab namespaces. `hub` joins networks `a` and then `b` (one TUN
//! each); `a1` is only in `a`, `b1` only in `b`. `hub` talks to both; `a1`
//! cannot reach `b1` through `hub` even with IPv4 forwarding on there; when the
//! admin removes `hub` from `b`, exactly its `b` interface, routes and DNS
//! names go. Needs root and FAILS (never skips) without it. Binaries from
//! `WEFT_BIN_DIR` (run `cargo build --workspace --bins`).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(clippy::print_stdout, reason = "measured times are reported")]

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn getent(lab: &Lab, node: &str, name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.netns(node).unwrap()])
        .args(["getent", "hosts", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A token for `networks`, in a 0600 file.
fn token(mesh: &Mesh<'_>, lab: &Lab, name: &str, networks: &[&str]) -> PathBuf {
    let mut args = vec!["token", "create", "--uses", "5", "--json"];
    for n in networks {
        args.extend(["--network", n]);
    }
    let v: serde_json::Value = serde_json::from_str(&mesh.admin(&args).unwrap()).unwrap();
    let path = lab.log_dir().join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(v["token"].as_str().unwrap().as_bytes())
        .unwrap();
    path
}

/// The overlay address of `node` in `network`, from `weft status`.
fn addr_in(mesh: &Mesh<'_>, node: &str, network: &str) -> Option<Ipv4Addr> {
    mesh.try_status(node)?
        .networks
        .into_iter()
        .find(|n| n.name == network)?
        .addresses
        .iter()
        .find_map(|a| a.parse().ok())
}

fn links(lab: &Lab, node: &str) -> Vec<String> {
    let out = lab.run(node, &["ip", "-j", "link", "show"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("weft"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_node_in_two_networks_reaches_both_isolates_them_and_leaves_one() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let topo = Topology::office(&["hub", "a1", "b1"]);
    let lab = Lab::build(&topo).expect("build the lab");
    let mut mesh = Mesh::start(
        &lab,
        "controller",
        NetworkSpec {
            name: "a".into(),
            cidr: "100.64.1.0/24".into(),
            ..NetworkSpec::default()
        },
    )
    .expect("controller");
    mesh.admin(&[
        "network",
        "create",
        "b",
        "--cidr",
        "100.64.2.0/24",
        "--pow-difficulty",
        "12",
    ])
    .unwrap();
    // A network overlapping one that exists is refused with a clear error.
    let err = mesh
        .admin(&["network", "create", "c", "--cidr", "100.64.2.128/25"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("cidr_overlap"), "{err:#}");

    let only_a = token(&mesh, &lab, "token-a", &["a"]);
    let only_b = token(&mesh, &lab, "token-b", &["b"]);
    mesh.start_agent("hub", Some(&only_a)).unwrap();
    mesh.start_agent("a1", Some(&only_a)).unwrap();
    mesh.start_agent("b1", Some(&only_b)).unwrap();
    // hub joins b as well, with b's token: a second interface.
    let out = mesh
        .weft("hub", &["up", "--token-file", only_b.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut ips = Vec::new();
    within("addresses", Duration::from_secs(20), || {
        ips = [("hub", "a"), ("hub", "b"), ("a1", "a"), ("b1", "b")]
            .iter()
            .filter_map(|(n, net)| addr_in(&mesh, n, net))
            .collect();
        ips.len() == 4
    });
    let (hub_a, hub_b, a1, b1) = (ips[0], ips[1], ips[2], ips[3]);
    assert_eq!(links(&lab, "hub").len(), 2, "one TUN per network");

    // hub talks to members of both networks, in both directions.
    for (from, to) in [("hub", a1), ("hub", b1), ("a1", hub_a), ("b1", hub_b)] {
        within(
            &format!("{from} pings {to}"),
            Duration::from_secs(20),
            || lab.ping_once(from, to),
        );
    }
    assert_eq!(
        getent(&lab, "hub", "b1.b.weft.internal"),
        vec![b1.to_string()]
    );
    assert_eq!(
        getent(&lab, "hub", "a1.a.weft.internal"),
        vec![a1.to_string()]
    );

    // a's members cannot reach b's through hub, even with forwarding on there
    // and a route pointing b's CIDR at the overlay.
    lab.run("hub", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    lab.run(
        "a1",
        &["ip", "route", "add", "100.64.2.0/24", "dev", "weft0"],
    )
    .unwrap();
    for target in [b1, hub_b] {
        assert!(!lab.ping_once("a1", target), "a1 reached {target}");
    }
    assert!(!lab.ping_once("b1", hub_a), "b1 reached hub's a address");
    let nft = lab
        .run("hub", &["nft", "list", "table", "inet", "weft"])
        .unwrap();
    assert!(nft.contains("weft:isolate"), "{nft}");
    assert!(getent(&lab, "a1", "b1.b.weft.internal").is_empty());

    // hub leaves b: exactly its b interface, routes and names go.
    let t0 = Instant::now();
    mesh.admin(&["network", "leave", "b", "hub"]).unwrap();
    within("hub's b interface gone", Duration::from_secs(10), || {
        links(&lab, "hub").len() == 1
    });
    within("b names gone on hub", Duration::from_secs(10), || {
        getent(&lab, "hub", "b1.b.weft.internal").is_empty()
    });
    println!("hub left b: interface and names gone in {:?}", t0.elapsed());
    let routes = lab
        .run("hub", &["ip", "route", "show", "proto", "119"])
        .unwrap();
    assert!(!routes.contains("100.64.2."), "{routes}");
    assert!(routes.contains("100.64.1.0/24"), "{routes}");
    assert!(!lab.ping_once("hub", b1));
    assert!(lab.ping_once("hub", a1), "hub still reaches a");
    assert_eq!(
        getent(&lab, "hub", "a1.a.weft.internal"),
        vec![a1.to_string()]
    );
    within("b1 drops hub", Duration::from_secs(10), || {
        mesh.try_status("b1").is_some_and(|s| s.peers.is_empty())
    });
    drop(mesh);
    lab.teardown().unwrap();
}
