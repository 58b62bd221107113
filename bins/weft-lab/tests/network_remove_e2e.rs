//! Deleting a network end to end (issue 20, part 3): the real controller,
//! agents and CLI in lab namespaces. `hub` is in networks `a` and `b`, `a1`
//! only in `a`, `b1` only in `b`. `weft admin network remove b --yes`: hub's
//! `b` interface goes and its `a` one stays (hub still reaches a1), b1 is
//! left in no network (no interface, still registered, its stream still
//! open), and both learn it from a map delta, not a snapshot. Needs root and
//! FAILS (never skips) without it. Binaries from `WEFT_BIN_DIR` (run `cargo
//! build --workspace --bins`).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(clippy::print_stdout, reason = "measured times are reported")]

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::{Lab, Topology};

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
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

/// The `weft*` interfaces of `node`.
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

/// Snapshots and deltas `node`'s agent received so far.
fn received(mesh: &Mesh<'_>, node: &str) -> (u64, u64) {
    let c = mesh
        .try_status(node)
        .and_then(|s| s.controller)
        .expect("a controller link");
    (c.snapshots, c.deltas)
}

#[test]
fn deleting_a_network_takes_its_interfaces_by_delta_and_keeps_the_rest() {
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
    let only_a = token(&mesh, &lab, "token-a", &["a"]);
    let only_b = token(&mesh, &lab, "token-b", &["b"]);
    mesh.start_agent("hub", Some(&only_a)).unwrap();
    mesh.start_agent("a1", Some(&only_a)).unwrap();
    mesh.start_agent("b1", Some(&only_b)).unwrap();
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
    let (a1, b1) = (ips[2], ips[3]);
    assert_eq!(links(&lab, "hub").len(), 2, "one TUN per network");
    for (from, to) in [("hub", a1), ("hub", b1)] {
        within(
            &format!("{from} pings {to}"),
            Duration::from_secs(20),
            || lab.ping_once(from, to),
        );
    }
    let (hub_snaps, hub_deltas) = received(&mesh, "hub");
    let (b1_snaps, _) = received(&mesh, "b1");

    // Without --yes and without a terminal: refused, nothing deleted.
    assert!(mesh.admin(&["network", "remove", "b"]).is_err());
    assert_eq!(links(&lab, "b1").len(), 1);

    let t0 = Instant::now();
    let out = mesh.admin(&["network", "remove", "b", "--yes"]).unwrap();
    assert!(out.contains("network b deleted"), "{out}");
    within("hub's b interface gone", Duration::from_secs(10), || {
        links(&lab, "hub").len() == 1
    });
    within("b1's interface gone", Duration::from_secs(10), || {
        links(&lab, "b1").is_empty()
    });
    println!("network b deleted: interfaces gone in {:?}", t0.elapsed());
    assert!(lab.ping_once("hub", a1), "hub still reaches a");
    assert!(!lab.ping_once("hub", b1));

    // By delta: no snapshot since; b1 is still connected and registered.
    let (snaps, deltas) = received(&mesh, "hub");
    assert_eq!(snaps, hub_snaps, "hub got a snapshot, not a delta");
    assert!(deltas > hub_deltas);
    assert_eq!(received(&mesh, "b1").0, b1_snaps, "b1 got a snapshot");
    let b1_status = mesh.try_status("b1").unwrap();
    assert!(b1_status.networks.is_empty(), "{b1_status:?}");
    assert!(b1_status.controller.is_some_and(|c| c.connected));
    let nodes = mesh.admin(&["node", "list"]).unwrap();
    assert!(nodes.contains("b1"), "{nodes}");
    let nets = mesh.admin(&["network", "list"]).unwrap();
    assert!(!nets.lines().any(|l| l.starts_with("b ")), "{nets}");
    drop(mesh);
    lab.teardown().unwrap();
}
