//! Overlay DNS end to end (issue 7): the real `weft-controller`, `weftd` and
//! `weft` in lab namespaces, resolved with the system's own tools (`getent hosts`
//! through glibc, `dig`). Needs root and FAILS (never skips) without it; needs
//! `dnsmasq` (package `dnsmasq-base`, `scripts/install-deps.sh`) for the lab's
//! upstream resolver.
//!
//! Every node has a private `/etc/netns/<netns>/resolv.conf` (the lab's), which
//! `ip netns exec` mounts over `/etc/resolv.conf`: the agents manage that file and
//! the host's `/etc/resolv.conf` must come out byte-identical.

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(
    clippy::print_stdout,
    reason = "the measured rename latency is reported"
)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::resolv::EXAMPLE_TEST_ADDR;
use weft_lab::{Lab, Topology};

const NODES: [&str; 3] = ["db", "web", "app"];

/// The host's resolver configuration: the bytes behind `/etc/resolv.conf` and,
/// if it is a symlink, its target.
fn host_resolv_conf() -> (Vec<u8>, Option<std::path::PathBuf>) {
    (
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        std::fs::read_link("/etc/resolv.conf").ok(),
    )
}

/// `getent hosts NAME` in `node`: the addresses, or empty when it does not resolve.
fn getent(lab: &Lab, node: &str, name: &str) -> Vec<String> {
    let netns = lab.netns(node).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "getent", "hosts", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// `dig +short NAME A` in `node` (through the node's /etc/resolv.conf).
fn dig(lab: &Lab, node: &str, name: &str) -> Vec<String> {
    let netns = lab.netns(node).unwrap();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &netns, "dig", "+short", "+time=1", "+tries=1", name, "A",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `timeout`.
/// Returns how long it took.
fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

fn resolves_to(lab: &Lab, node: &str, name: &str, ip: Ipv4Addr) -> bool {
    getent(lab, node, name) == vec![ip.to_string()]
}

#[test]
fn overlay_names_resolve_follow_renames_and_leave_no_trace() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let host_before = host_resolv_conf();
    let topo = Topology::office(&NODES);
    let lab = Lab::build(&topo).expect("build the lab");
    assert!(
        lab.has_upstream_dns(),
        "dnsmasq is missing: run scripts/install-deps.sh (package dnsmasq-base)"
    );
    let ns_before: Vec<Vec<u8>> = NODES
        .iter()
        .map(|n| {
            assert!(lab.has_private_resolv_conf(n).unwrap());
            std::fs::read(lab.resolv_conf_path(n).unwrap()).unwrap()
        })
        .collect();
    let upstream = EXAMPLE_TEST_ADDR.to_string();
    // The lab's upstream answers before any agent runs.
    assert_eq!(
        getent(&lab, "db", "www.example.test"),
        vec![upstream.clone()]
    );

    let network = NetworkSpec {
        name: "prod".into(),
        cidr: "100.64.0.0/24".into(),
        ..NetworkSpec::default()
    };
    let mut mesh = Mesh::start(&lab, "controller", network).expect("controller");
    let token = mesh.token_file(NODES.len() as u32).unwrap();
    for n in NODES {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    let ips: Vec<Ipv4Addr> = NODES.iter().map(|n| mesh.overlay_ip(n).unwrap()).collect();

    // Every node resolves every node (itself included), long and short form,
    // through glibc and through dig.
    for node in NODES {
        for (peer, ip) in NODES.iter().zip(&ips) {
            let long = format!("{peer}.prod.weft.internal");
            within(
                &format!("{node}: getent hosts {long} = {ip}"),
                Duration::from_secs(10),
                || resolves_to(&lab, node, &long, *ip),
            );
            assert_eq!(
                dig(&lab, node, &long),
                vec![ip.to_string()],
                "{node}: dig {long}"
            );
            let short = format!("{peer}.weft.internal");
            assert!(
                resolves_to(&lab, node, &short, *ip),
                "{node}: getent hosts {short}: {:?}",
                getent(&lab, node, &short)
            );
        }
        // Unknown overlay names do not exist (and are not forwarded).
        assert!(getent(&lab, node, "nope.prod.weft.internal").is_empty());
        // Other names go to the previous upstream.
        assert_eq!(
            getent(&lab, node, "www.example.test"),
            vec![upstream.clone()]
        );
        assert_eq!(dig(&lab, node, "www.example.test"), vec![upstream.clone()]);
    }

    // A rename is visible within 1 s on every other node.
    let issued = Instant::now();
    mesh.admin(&["node", "rename", "web", "frontend"]).unwrap();
    let committed = issued.elapsed();
    for node in ["db", "app"] {
        let took = within(
            &format!("{node} resolves the renamed node"),
            Duration::from_secs(5),
            || resolves_to(&lab, node, "frontend.prod.weft.internal", ips[1]),
        );
        let total = issued.elapsed();
        println!(
            "rename web -> frontend visible on {node}: {took:?} after the admin command returned \
             ({committed:?} for the command itself, {total:?} in all)"
        );
        assert!(
            took < Duration::from_secs(1),
            "rename took {took:?} on {node}"
        );
    }
    assert!(getent(&lab, "db", "web.prod.weft.internal").is_empty());

    // `weft down`: the node's resolv.conf is exactly as before; other names still
    // resolve through the upstream; `weft up` brings overlay DNS back.
    let out = mesh.weft("db", &["down"]).unwrap();
    assert!(out.status.success(), "weft down: {out:?}");
    assert_eq!(
        std::fs::read(lab.resolv_conf_path("db").unwrap()).unwrap(),
        ns_before[0],
        "db's resolv.conf after weft down"
    );
    assert_eq!(
        getent(&lab, "db", "www.example.test"),
        vec![upstream.clone()]
    );
    assert!(getent(&lab, "db", "app.prod.weft.internal").is_empty());
    let out = mesh.weft("db", &["up"]).unwrap();
    assert!(out.status.success(), "weft up: {out:?}");
    within(
        "db resolves again after weft up",
        Duration::from_secs(10),
        || resolves_to(&lab, "db", "app.prod.weft.internal", ips[2]),
    );

    // Drift: another program (a DHCP client, say) rewrites web's resolv.conf.
    // The agent takes it as the new original and writes its own file again on its
    // 2 s tick; overlay names keep resolving; `weft down` restores the new one.
    let web_conf = lab.resolv_conf_path("web").unwrap();
    let rewritten = format!(
        "# rewritten by another program\nnameserver {}\n",
        lab.upstream_dns()
    );
    std::fs::write(&web_conf, &rewritten).unwrap();
    let took = within("web's resolv.conf repaired", Duration::from_secs(5), || {
        std::fs::read_to_string(&web_conf).is_ok_and(|t| t.contains("127.0.2.53"))
    });
    println!("drift on web repaired after {took:?}");
    assert!(resolves_to(&lab, "web", "db.prod.weft.internal", ips[0]));
    assert_eq!(
        getent(&lab, "web", "www.example.test"),
        vec![upstream.clone()]
    );
    let out = mesh.weft("web", &["down"]).unwrap();
    assert!(out.status.success(), "weft down: {out:?}");
    assert_eq!(std::fs::read_to_string(&web_conf).unwrap(), rewritten);

    // SIGTERM: the same.
    mesh.stop_agent("app").unwrap();
    assert_eq!(
        std::fs::read(lab.resolv_conf_path("app").unwrap()).unwrap(),
        ns_before[2],
        "app's resolv.conf after SIGTERM"
    );
    assert_eq!(
        getent(&lab, "app", "www.example.test"),
        vec![upstream.clone()]
    );

    // The host's own resolver configuration was never touched.
    assert_eq!(
        host_resolv_conf(),
        host_before,
        "host /etc/resolv.conf changed"
    );
    let dirs: Vec<_> = NODES
        .iter()
        .map(|n| lab.resolv_conf_path(n).unwrap())
        .collect();
    drop(mesh);
    lab.teardown().unwrap();
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(
        host_resolv_conf(),
        host_before,
        "host /etc/resolv.conf changed"
    );
}
