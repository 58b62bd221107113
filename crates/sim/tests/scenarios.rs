//! Short scenarios: the simulator carries real WireGuard between nodes over
//! relay, direct paths and NATs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use weft_sim::packet::Proto;
use weft_sim::{Filtering, HostSpec, Mapping, NatConfig, Sim, SimConfig};
use weft_tunnel::path::PathKind;

const ALLOW_ALL: &str = "[[rule]]\naction = \"allow\"\nfrom = [\"*\"]\nto = [\"*\"]\n";

fn nat(mapping: Mapping, filtering: Filtering) -> HostSpec {
    HostSpec {
        nat: Some(NatConfig {
            mapping,
            filtering,
            timeout: Duration::from_secs(120),
        }),
        ..HostSpec::default()
    }
}

fn open(sim: &mut Sim) {
    sim.control.policy = ALLOW_ALL.into();
    sim.apply_maps().unwrap();
    sim.set_relay(true);
}

#[test]
fn packets_cross_between_public_hosts_and_go_direct() {
    let mut sim = Sim::new(&SimConfig::new(1, 3));
    open(&mut sim);
    sim.run_for(Duration::from_secs(2));
    let (id, p) = sim.packet(0, None, 2, Proto::Udp, 53);
    sim.send(0, &p);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.hosts[2].tun.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![Some(id)]
    );
    assert!(
        matches!(sim.path(0, 2), PathKind::Direct(_)),
        "{}",
        sim.trace.text()
    );
}

#[test]
fn nat_behaviours_decide_whether_a_direct_path_is_found() {
    use Filtering as F;
    use Mapping as M;
    // (host 0, host 1, direct expected)
    let cases = [
        (
            nat(M::EndpointIndependent, F::EndpointIndependent),
            nat(M::EndpointIndependent, F::AddressAndPortDependent),
            true,
        ),
        (
            nat(M::EndpointIndependent, F::AddressAndPortDependent),
            nat(M::EndpointIndependent, F::AddressAndPortDependent),
            true,
        ),
        (
            HostSpec::default(),
            nat(M::AddressAndPortDependent, F::AddressAndPortDependent),
            true,
        ),
        (
            nat(M::AddressAndPortDependent, F::AddressAndPortDependent),
            nat(M::AddressAndPortDependent, F::AddressAndPortDependent),
            false,
        ),
        (
            nat(M::EndpointIndependent, F::AddressAndPortDependent),
            nat(M::AddressAndPortDependent, F::AddressAndPortDependent),
            false,
        ),
    ];
    for (n, (a, b, direct)) in cases.into_iter().enumerate() {
        let mut cfg = SimConfig::new(10 + n as u64, 2);
        cfg.hosts = vec![a, b];
        let mut sim = Sim::new(&cfg);
        open(&mut sim);
        sim.run_for(Duration::from_secs(15));
        let (id, p) = sim.packet(0, None, 1, Proto::Tcp, 22);
        sim.send(0, &p);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(
            sim.hosts[1].tun.last().and_then(|a| a.id),
            Some(id),
            "case {n}"
        );
        let got = sim.path(0, 1);
        assert_eq!(
            matches!(got, PathKind::Direct(_)),
            direct,
            "case {n}: {got:?}\n{}",
            sim.trace.text()
        );
    }
}

#[test]
fn a_rogue_nodes_spoofed_and_unauthorized_packets_leave_it_and_stop_at_the_receiver() {
    let mut sim = Sim::new(&SimConfig::new(5, 3));
    // Only n0 -> n1 TCP/22 is allowed; n2 lies: its policy allows everything,
    // from any node's address.
    sim.control.policy =
        "[[rule]]\naction = \"allow\"\nfrom = [\"node:n2\"]\nto = [\"node:n1\"]\nproto = \"tcp\"\nports = [22]\n".into();
    sim.control.rogue.insert(2);
    sim.apply_maps().unwrap();
    sim.run_for(Duration::from_secs(2));
    let n0 = sim.hosts[0].overlay;
    let (spoofed, p) = sim.packet(2, Some(n0), 1, Proto::Tcp, 22);
    sim.send(2, &p);
    let (denied, p) = sim.packet(2, None, 1, Proto::Udp, 53);
    sim.send(2, &p);
    let (allowed, p) = sim.packet(2, None, 1, Proto::Tcp, 22);
    sim.send(2, &p);
    sim.run_for(Duration::from_secs(2));
    let got: Vec<_> = sim.hosts[1].tun.iter().map(|a| a.id).collect();
    assert_eq!(got, vec![Some(allowed)], "{}", sim.trace.text());
    let t = sim.trace.text();
    assert!(
        t.contains(&format!("tun n2 pkt#{spoofed} sent")),
        "the rogue let it out"
    );
    assert!(
        t.contains(&format!("tun n2 pkt#{denied} sent")),
        "the rogue let it out"
    );
    assert!(t.contains("dropped spoofed_source"), "{t}");
    assert!(t.contains("dropped policy_no_rule"), "{t}");
}

#[test]
#[ignore = "prints a trace for reading"]
fn print_trace() {
    let mut sim = Sim::new(&SimConfig::new(1, 2));
    open(&mut sim);
    sim.run_for(Duration::from_secs(2));
    let (_, p) = sim.packet(0, None, 1, Proto::Udp, 53);
    sim.send(0, &p);
    sim.run_for(Duration::from_secs(1));
    print!("{}", sim.trace.text());
}
