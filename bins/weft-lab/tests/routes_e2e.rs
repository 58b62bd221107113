//! Subnet gateways end to end (issue 7, part 2): the real controller, agents
//! and CLIs in lab namespaces. A LAN host that runs no agent, behind gateway
//! `gw1`, is reached by its LAN address (ping and TCP) from a remote node;
//! withdrawing the route removes it from the peers and the masquerade from the
//! gateway; killing the gateway moves traffic to a second one (`gw2`), and the
//! test prints how long that took. Needs root and FAILS (never skips) without
//! it. Binaries from `WEFT_BIN_DIR` (run `cargo build --workspace --bins`).

#![allow(clippy::disallowed_methods, reason = "tests wait on the real clock")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(
    clippy::print_stdout,
    reason = "the measured failover time is reported"
)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::mesh::{Mesh, NetworkSpec};
use weft_lab::scripts::ECHO_SERVER;
use weft_lab::{Lab, Nat, Net, Topology};

const ECHO_PORT: u16 = 7007;

fn connects(lab: &Lab, node: &str, ip: Ipv4Addr) -> bool {
    lab.tcp_echoes(node, ip, ECHO_PORT)
}

fn within(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    weft_lab::timed_wait(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip route show <prefix>` in `node`: the route lines for exactly that prefix.
fn route_lines(lab: &Lab, node: &str, prefix: &str) -> String {
    lab.run(node, &["ip", "-4", "route", "show", "exact", prefix])
        .unwrap_or_default()
}

/// The `weft:` comments in `node`'s nftables table `inet weft` (empty: no table).
fn nft_rules(lab: &Lab, node: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.netns(node).unwrap()])
        .args(["nft", "list", "table", "inet", "weft"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets counted by gw's masquerade rule (one per new connection).
fn masq_packets(lab: &Lab, node: &str) -> u64 {
    nft_rules(lab, node)
        .lines()
        .filter(|l| l.contains("masquerade"))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

fn routes_json(mesh: &Mesh<'_>) -> serde_json::Value {
    serde_json::from_str(&mesh.admin(&["route", "list", "--json"]).unwrap()).unwrap()
}

fn route_state(mesh: &Mesh<'_>, node: &str, prefix: &str) -> Option<(String, bool)> {
    routes_json(mesh)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == node && r["prefix"] == prefix)
        .map(|r| {
            (
                r["state"].as_str().unwrap_or_default().to_owned(),
                r["primary"].as_bool().unwrap_or(false),
            )
        })
}

fn policy(subnet: &str) -> String {
    format!(
        r#"[[rule]]
name = "members of lab may reach each other"
action = "allow"
from = "network:lab"
to = "network:lab"

[[rule]]
name = "remote pings the site LAN"
action = "allow"
from = "node:remote"
to = "subnet:{subnet}"
proto = "icmp"

[[rule]]
name = "remote reaches the echo service on the site LAN"
action = "allow"
from = "node:remote"
to = "subnet:{subnet}"
proto = "tcp"
ports = [{ECHO_PORT}]
"#
    )
}

/// The controller in `controller`, network `lab` (100.64.0.0/24), with
/// [`policy`] for `subnet` set.
fn start_mesh<'l>(lab: &'l Lab, subnet: &str) -> Mesh<'l> {
    let mesh = Mesh::start(
        lab,
        "controller",
        NetworkSpec {
            name: "lab".into(),
            cidr: "100.64.0.0/24".into(),
            ..NetworkSpec::default()
        },
    )
    .expect("controller");
    let path = lab.log_dir().join("policy.toml");
    std::fs::write(&path, policy(subnet)).unwrap();
    mesh.admin(&["policy", "set", path.to_str().unwrap()])
        .unwrap();
    mesh
}

#[test]
fn a_lan_host_behind_a_gateway_is_reachable_withdrawn_and_fails_over() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let topo = Topology::new()
        .host("controller", Net::Internet)
        .host("remote", Net::Internet)
        .host("other", Net::Internet)
        .router("site", Net::Internet, Nat::Easy)
        .host("gw1", Net::lan("site"))
        .host("gw2", Net::lan("site"))
        .host("server", Net::lan("site"));
    let lab = Lab::build(&topo).expect("build the lab");
    let server = lab.addr("server").unwrap();
    let o = server.octets();
    let subnet = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);

    // The LAN host runs no agent: only a TCP echo server.
    let mut echo = Command::new("python3");
    echo.args(["-c", ECHO_SERVER, &ECHO_PORT.to_string()]);
    let _echo = lab.spawn("server", "echo", &echo).unwrap();
    lab.wait_for_tcp_port("server", ECHO_PORT, Duration::from_secs(10))
        .unwrap();
    // Without the overlay the remote node cannot reach the LAN.
    assert!(
        !lab.ping_once("remote", server),
        "{server} reachable without weft"
    );

    let mut mesh = start_mesh(&lab, &subnet);
    let token = mesh.token_file(10).unwrap();
    for n in ["gw1", "remote", "other"] {
        mesh.start_agent(n, Some(&token)).unwrap();
    }
    mesh.wait_full_mesh(&["gw1", "remote", "other"], Duration::from_secs(20))
        .unwrap();

    // gw1 offers the subnet: refused until it carries the tag `gateway` (the
    // agent logs the refusal), then pending until approved.
    mesh.admin(&["node", "tag", "gw1", "gateway"]).unwrap();
    let out = mesh
        .weft("gw1", &["up", "--advertise-routes", &subnet])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    within("gw1's route is pending", Duration::from_secs(10), || {
        route_state(&mesh, "gw1", &subnet).is_some_and(|(s, _)| s == "pending")
    });
    assert!(route_lines(&lab, "remote", &subnet).is_empty());
    mesh.admin(&["route", "approve", "gw1", &subnet]).unwrap();

    // The remote node reaches the LAN host by its LAN address, ping and TCP.
    let t = within("remote pings the LAN host", Duration::from_secs(15), || {
        lab.ping_once("remote", server)
    });
    println!("route approved -> remote pings {server} through gw1 in {t:?}");
    assert!(
        connects(&lab, "remote", server),
        "TCP to {server}:{ECHO_PORT}"
    );
    // The policy applies to the routed destination: another port of the same
    // LAN host is refused (and counted) on the remote node.
    let mut other_port = Command::new("python3");
    other_port.args(["-c", ECHO_SERVER, &(ECHO_PORT + 1).to_string()]);
    let _other_port = lab.spawn("server", "echo2", &other_port).unwrap();
    lab.wait_for_tcp_port("server", ECHO_PORT + 1, Duration::from_secs(10))
        .unwrap();
    let drops = || {
        mesh.status("remote")
            .unwrap()
            .peers
            .iter()
            .find(|p| p.name == "gw1")
            .and_then(|p| p.drops.get("policy_no_rule").copied())
            .unwrap_or(0)
    };
    let before = drops();
    assert!(
        !lab.tcp_echoes("remote", server, ECHO_PORT + 1),
        "port {} was reachable",
        ECHO_PORT + 1
    );
    assert!(drops() > before, "no policy drop counted");
    assert!(route_lines(&lab, "remote", &subnet).contains("weft0"));
    let st = mesh.status("remote").unwrap();
    assert_eq!(st.networks[0].routes, vec![format!("{subnet} via gw1")]);
    let st = mesh.status("gw1").unwrap();
    assert_eq!(st.networks[0].serves, vec![subnet.clone()]);
    // `other` may reach gw1 but not the subnet: no route, no packets, even
    // when it points the subnet at the overlay itself.
    assert!(route_lines(&lab, "other", &subnet).is_empty());
    lab.run("other", &["ip", "route", "add", &subnet, "dev", "weft0"])
        .unwrap();
    assert!(!lab.ping_once("other", server), "other reached {server}");
    assert!(
        !connects(&lab, "other", server),
        "other reached TCP {server}"
    );
    lab.run("other", &["ip", "route", "del", &subnet, "dev", "weft0"])
        .unwrap();
    let rules = nft_rules(&lab, "gw1");
    assert!(rules.contains("masquerade"), "gw1 table: {rules}");
    assert_eq!(
        lab.run("gw1", &["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    // gw1 installs no route to its own LAN through the overlay.
    assert!(!route_lines(&lab, "gw1", &subnet).contains("weft"));

    // Withdraw: the route leaves the remote node, the masquerade leaves gw1.
    mesh.admin(&["route", "withdraw", "gw1", &subnet]).unwrap();
    let t = within("withdrawn route gone", Duration::from_secs(10), || {
        route_lines(&lab, "remote", &subnet).is_empty()
            && !nft_rules(&lab, "gw1").contains("masquerade")
    });
    println!("route withdrawn -> removed on remote and gw1 in {t:?}");
    assert!(!lab.ping_once("remote", server));
    assert_eq!(
        lab.run("gw1", &["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "0"
    );

    // Two gateways: gw1 (approved first) carries the subnet, gw2 stands by.
    mesh.admin(&["route", "add", "gw1", &subnet]).unwrap();
    mesh.start_agent("gw2", Some(&token)).unwrap();
    mesh.admin(&["node", "tag", "gw2", "gateway"]).unwrap();
    assert!(
        mesh.weft("gw2", &["up", "--advertise-routes", &subnet])
            .unwrap()
            .status
            .success()
    );
    within("gw2's route is pending", Duration::from_secs(10), || {
        route_state(&mesh, "gw2", &subnet).is_some()
    });
    mesh.admin(&["route", "approve", "gw2", &subnet]).unwrap();
    assert_eq!(
        route_state(&mesh, "gw1", &subnet),
        Some(("approved".into(), true))
    );
    assert_eq!(
        route_state(&mesh, "gw2", &subnet),
        Some(("approved".into(), false))
    );
    within(
        "remote pings the LAN host via gw1",
        Duration::from_secs(15),
        || lab.ping_once("remote", server),
    );
    within("gw2 is ready (masquerade)", Duration::from_secs(10), || {
        nft_rules(&lab, "gw2").contains("masquerade")
    });

    mesh.kill_agent("gw1").unwrap();
    let killed = Instant::now();
    within("traffic moves to gw2", Duration::from_secs(10), || {
        lab.ping_once("remote", server)
    });
    let took = killed.elapsed();
    println!("gw1 killed -> remote pings {server} through gw2 after {took:?}");
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    assert!(connects(&lab, "remote", server), "TCP through gw2");
    // The controller follows once gw1 has been offline for its presence grace
    // period (15 s by default): agents did not wait for it.
    let primary = within(
        "the controller makes gw2 primary",
        Duration::from_secs(25),
        || route_state(&mesh, "gw2", &subnet) == Some(("approved".into(), true)),
    );
    println!("gw1 killed -> controller made gw2 primary {primary:?} later");

    // gw1 comes back: it is the primary again. Then its path dies without its
    // controller stream ending (uplink down: no FIN, the controller still
    // thinks it is online); the remote node's agent moves the subnet to gw2 on
    // its own.
    mesh.start_agent("gw1", None).unwrap();
    within("gw1 is primary again", Duration::from_secs(15), || {
        route_state(&mesh, "gw1", &subnet) == Some(("approved".into(), true))
    });
    within(
        "remote talks to gw1 directly",
        Duration::from_secs(15),
        || {
            mesh.path("remote", "gw1")
                .is_some_and(|p| p.starts_with("direct"))
        },
    );
    within("traffic goes through gw1", Duration::from_secs(15), || {
        let before = masq_packets(&lab, "gw1");
        lab.ping_once("remote", server) && masq_packets(&lab, "gw1") > before
    });
    lab.run("gw1", &["ip", "link", "set", "eth0", "down"])
        .unwrap();
    let cut = Instant::now();
    within(
        "traffic moves to gw2 after gw1's path died",
        Duration::from_secs(10),
        || lab.ping_once("remote", server),
    );
    let took = cut.elapsed();
    println!(
        "gw1's path cut -> remote pings {server} through gw2 after {took:?} (controller still sees gw1 online)"
    );
    assert!(
        took < Duration::from_secs(10),
        "path failover took {took:?}"
    );
    assert!(connects(&lab, "remote", server), "TCP through gw2");

    // Every route change is audited.
    let audit = mesh.admin(&["audit", "--json", "--limit", "200"]).unwrap();
    for action in [
        "route.advertise",
        "route.approve",
        "route.withdraw",
        "route.add",
    ] {
        assert!(audit.contains(action), "audit lacks {action}");
    }
    drop(mesh);
    lab.teardown().unwrap();
}

/// A gateway killed with SIGKILL (nothing cleaned up) and started again still
/// knows that weft turned IPv4 forwarding on: when its route is withdrawn,
/// forwarding goes back off, as it does without the crash.
#[test]
fn forwarding_weft_turned_on_goes_off_after_a_crash_and_restart() {
    if let Err(e) = weft_lab::require_root() {
        panic!("{e}");
    }
    let topo = Topology::new()
        .host("controller", Net::Internet)
        .router("site", Net::Internet, Nat::Easy)
        .host("gw1", Net::lan("site"));
    let lab = Lab::build(&topo).expect("build the lab");
    let o = lab.addr("gw1").unwrap().octets();
    let subnet = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    let forwarding = || {
        lab.run("gw1", &["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(forwarding(), "0", "a fresh namespace does not forward");

    let mut mesh = start_mesh(&lab, &subnet);
    let token = mesh.token_file(2).unwrap();
    mesh.start_agent("gw1", Some(&token)).unwrap();
    mesh.admin(&["node", "tag", "gw1", "gateway"]).unwrap();
    let out = mesh
        .weft("gw1", &["up", "--advertise-routes", &subnet])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    within("gw1's route is pending", Duration::from_secs(10), || {
        route_state(&mesh, "gw1", &subnet).is_some()
    });
    mesh.admin(&["route", "approve", "gw1", &subnet]).unwrap();
    within("gw1 forwards", Duration::from_secs(10), || {
        forwarding() == "1"
    });

    mesh.kill_agent("gw1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    mesh.start_agent("gw1", None).unwrap();
    within(
        "gw1 is back as the gateway",
        Duration::from_secs(15),
        || route_state(&mesh, "gw1", &subnet) == Some(("approved".into(), true)),
    );
    assert_eq!(forwarding(), "1", "still a gateway after the restart");
    mesh.admin(&["route", "withdraw", "gw1", &subnet]).unwrap();
    let t = within(
        "forwarding off after the route is withdrawn",
        Duration::from_secs(10),
        || forwarding() == "0",
    );
    println!("route withdrawn after a crash and restart -> forwarding off in {t:?}");
    drop(mesh);
    lab.teardown().unwrap();
}
