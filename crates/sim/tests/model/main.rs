//! Property test in the style of a reference model: random topologies and
//! random sequences of map changes (members joining and leaving, advertised
//! endpoints, policy), packets (allowed, denied, spoofed), path failures
//! (links, cut pairs, the relay, NAT rebinding) and time jumps, run on real
//! `Node`s in the simulator; the reference model (`reference.rs`) judges
//! every packet sent and every packet delivered, and no node's
//! `poll_timeout` may stay due after two `handle_timeout` calls at one
//! instant (the drive contract).
//!
//! `WEFT_SIM_CASES` sets the number of cases (default 1,000).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod reference;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use weft_sim::packet::Proto;
use weft_sim::{Advertised, Filtering, HostSpec, Link, Mapping, NatConfig, Sim, SimConfig};

use reference::{FLIGHT, Record, Rule, Sel, Sent, State, toml};

/// An address that belongs to no node.
const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 9, 9));
const PORTS: [u16; 3] = [22, 80, 443];

/// A packet's inner source.
#[derive(Debug, Clone, Copy)]
enum Spoof {
    /// The sender's own address.
    No,
    /// Another node's address (index taken modulo the hosts).
    Node(usize),
    /// An address of no node.
    Stranger,
}

/// One step of a scenario (host indices are taken modulo the hosts).
#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Leave(usize),
    Advertise(usize, Advertised),
    Policy(Vec<Rule>),
    Send {
        from: usize,
        to: usize,
        proto: Proto,
        port: u16,
        spoof: Spoof,
    },
    Link(usize, bool),
    Cut(usize, usize, bool),
    Relay(bool),
    RelayConn(usize, bool),
    Rebind(usize),
    Wait(Duration),
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    hosts: Vec<HostSpec>,
    rogue: Option<usize>,
    relay: bool,
    rules: Vec<Rule>,
    ops: Vec<Op>,
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Udp), Just(Proto::Tcp)]
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![1 => Just(Sel::Any), 2 => (0..4usize).prop_map(Sel::Node)]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::bool::weighted(0.8),
        sel(),
        sel(),
        prop::option::weighted(0.7, proto()),
        prop::option::of(prop::sample::select(PORTS.to_vec())),
    )
        .prop_map(|(allow, from, to, proto, port)| Rule {
            allow,
            from,
            to,
            proto,
            port: port.filter(|_| proto.is_some()),
        })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    let open = Rule {
        allow: true,
        from: Sel::Any,
        to: Sel::Any,
        proto: None,
        port: None,
    };
    (
        prop::bool::weighted(0.7),
        prop::collection::vec(rule(), 0..4),
    )
        .prop_map(move |(o, mut r)| {
            if o {
                r.insert(0, open.clone());
            }
            r
        })
}

fn host() -> impl Strategy<Value = HostSpec> {
    let mapping = prop_oneof![
        Just(Mapping::EndpointIndependent),
        Just(Mapping::AddressDependent),
        Just(Mapping::AddressAndPortDependent)
    ];
    let filtering = prop_oneof![
        Just(Filtering::EndpointIndependent),
        Just(Filtering::AddressDependent),
        Just(Filtering::AddressAndPortDependent)
    ];
    let nat = prop::option::weighted(0.5, (mapping, filtering, 30..=120u64)).prop_map(|n| {
        n.map(|(mapping, filtering, secs)| NatConfig {
            mapping,
            filtering,
            timeout: Duration::from_secs(secs),
        })
    });
    // Lossy links in one host of twelve: the whole scenario is then judged
    // on safety only.
    let loss = prop_oneof![11 => Just(0u32), 1 => 10_000..50_000u32];
    (nat, 5..=40u64, 0..=30u64, loss).prop_map(|(nat, latency, jitter, loss_ppm)| HostSpec {
        nat,
        link: Link {
            latency: Duration::from_millis(latency),
            jitter: Duration::from_millis(jitter),
            loss_ppm,
        },
    })
}

fn wait() -> impl Strategy<Value = Duration> {
    prop_oneof![
        14 => (0..3_000u64).prop_map(Duration::from_millis),
        5 => (3..40u64).prop_map(Duration::from_secs),
        1 => (40..200u64).prop_map(Duration::from_secs),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let h = || 0..4usize;
    let spoof = prop_oneof![
        8 => Just(Spoof::No),
        1 => h().prop_map(Spoof::Node),
        1 => Just(Spoof::Stranger),
    ];
    let advertised = prop_oneof![
        Just(Advertised::Reported),
        Just(Advertised::LocalOnly),
        Just(Advertised::WithBogus)
    ];
    prop_oneof![
        12 => (h(), h(), proto(), prop::sample::select(PORTS.to_vec()), spoof)
            .prop_map(|(from, to, proto, port, spoof)| Op::Send { from, to, proto, port, spoof }),
        8 => wait().prop_map(Op::Wait),
        1 => h().prop_map(Op::Join),
        1 => h().prop_map(Op::Leave),
        1 => (h(), advertised).prop_map(|(i, a)| Op::Advertise(i, a)),
        2 => rules().prop_map(Op::Policy),
        1 => (h(), any::<bool>()).prop_map(|(i, up)| Op::Link(i, up)),
        1 => (h(), h(), any::<bool>()).prop_map(|(i, j, c)| Op::Cut(i, j, c)),
        1 => any::<bool>().prop_map(Op::Relay),
        1 => (h(), any::<bool>()).prop_map(|(i, c)| Op::RelayConn(i, c)),
        1 => h().prop_map(Op::Rebind),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        prop::collection::vec(host(), 2..=4),
        prop::option::weighted(0.15, 0..4usize),
        prop::bool::weighted(0.9),
        rules(),
        prop::collection::vec(op(), 1..22),
    )
        .prop_map(|(seed, hosts, rogue, relay, rules, ops)| Scenario {
            seed,
            rogue: rogue.map(|r| r % hosts.len()),
            hosts,
            relay,
            rules,
            ops,
        })
}

fn snapshot(sim: &Sim, rec: &mut Record, rules: &[Rule]) {
    let n = sim.hosts.len();
    let mut in_map = BTreeSet::new();
    for a in 0..n {
        for b in sim.peers_of(a) {
            in_map.insert((a, b));
        }
    }
    let mut cut = BTreeSet::new();
    for a in 0..n {
        for b in a + 1..n {
            if sim.is_cut(a, b) {
                cut.insert((a, b));
            }
        }
    }
    rec.states.push(State {
        at: sim.now(),
        rules: rules.to_vec(),
        in_map,
        link: sim.hosts.iter().map(|h| h.up).collect(),
        relay: (0..n).map(|i| sim.relay_connected(i)).collect(),
        cut,
    });
}

/// Runs a scenario; returns what the model needs and the simulation.
fn run(sc: &Scenario, trace: bool) -> (Record, Sim) {
    let n = sc.hosts.len();
    let mut cfg = SimConfig::new(sc.seed, n);
    cfg.hosts.clone_from(&sc.hosts);
    cfg.trace = trace;
    let mut sim = Sim::new(&cfg);
    let mut rules = sc.rules.clone();
    sim.control.rogue = sc.rogue.into_iter().collect();
    sim.control.rogue_claims = vec![STRANGER];
    sim.control.policy = toml(&rules);
    sim.apply_maps().expect("generated policies are valid");
    sim.set_relay(sc.relay);
    let mut rec = Record {
        public: sc.hosts.iter().map(|h| h.nat.is_none()).collect(),
        nats: sc
            .hosts
            .iter()
            .map(|h| h.nat.map(|n| (n.mapping, n.filtering)))
            .collect(),
        rogue: sc.rogue,
        lossless: sc.hosts.iter().all(|h| h.link.loss_ppm == 0),
        ..Record::default()
    };
    snapshot(&sim, &mut rec, &rules);
    sim.run_for(Duration::from_secs(6));
    snapshot(&sim, &mut rec, &rules);
    for op in &sc.ops {
        match op.clone() {
            Op::Join(i) => {
                sim.control.members.insert(i % n);
                sim.apply_maps().expect("valid");
            }
            Op::Leave(i) => {
                sim.control.members.remove(&(i % n));
                sim.apply_maps().expect("valid");
            }
            Op::Advertise(i, a) => {
                sim.control.advertised[i % n] = a;
                sim.apply_maps().expect("valid");
            }
            Op::Policy(r) => {
                rules = r;
                sim.control.policy = toml(&rules);
                sim.apply_maps().expect("generated policies are valid");
            }
            Op::Send {
                from,
                to,
                proto,
                port,
                spoof,
            } => {
                // Any other host (or, rarely, itself: the node's own address
                // is not a peer's, so nothing may arrive).
                let from = from % n;
                let to = if to == 3 && from == 0 {
                    from
                } else {
                    (from + 1 + to % (n - 1)) % n
                };
                let src = match spoof {
                    Spoof::No => None,
                    Spoof::Node(c) if c % n != from => Some(sim.hosts[c % n].overlay),
                    Spoof::Node(_) | Spoof::Stranger => Some(STRANGER),
                };
                let (id, bytes) = sim.packet(from, src, to, proto, port);
                rec.sent.insert(
                    id,
                    Sent {
                        at: sim.now(),
                        from,
                        to,
                        proto,
                        port,
                        spoofed: src.is_some(),
                        bytes: bytes.clone(),
                    },
                );
                sim.send(from, &bytes);
            }
            Op::Link(i, up) => sim.set_link(i % n, up),
            Op::Cut(i, j, c) => {
                if i % n != j % n {
                    sim.set_cut(i % n, j % n, c);
                }
            }
            Op::Relay(up) => sim.set_relay(up),
            Op::RelayConn(i, c) => sim.set_relay_wanted(i % n, c),
            Op::Rebind(i) => sim.rebind_nat(i % n),
            Op::Wait(d) => sim.run_for(d),
        }
        snapshot(&sim, &mut rec, &rules);
    }
    sim.run_for(FLIGHT + Duration::from_secs(1));
    rec.events = sim.path_events.iter().map(|e| (e.at, e.host)).collect();
    for (j, h) in sim.hosts.iter().enumerate() {
        for a in &h.tun {
            rec.delivered.push((j, a.clone()));
        }
    }
    (rec, sim)
}

fn cases() -> u32 {
    std::env::var("WEFT_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

#[test]
fn nodes_agree_with_the_reference_model() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    // One fixed stream of cases, so CI runs are reproducible; WEFT_SIM_SEED
    // explores others.
    let seed: u64 = std::env::var("WEFT_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let tally = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let result = runner.run(&scenario(), |sc| {
        let (rec, sim) = run(&sc, false);
        let mut v = rec.violations();
        if sim.stale_timers > 0 {
            v.push(format!(
                "poll_timeout stayed due after handle_timeout {} times",
                sim.stale_timers
            ));
        }
        if !v.is_empty() {
            // Again with the trace, for the report.
            let (_, sim) = run(&sc, true);
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("weft-sim-model-failure.trace");
            let _ = std::fs::write(&path, sim.trace.text());
            return Err(TestCaseError::fail(format!(
                "{}\ntrace: {}",
                v.join("\n"),
                path.display()
            )));
        }
        rec.tally(&mut tally.borrow_mut());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner();
    let required = tally.get("required").copied().unwrap_or(0);
    let sent: usize = tally.values().sum();
    eprintln!("{} cases (seed {seed}): {sent} packets: {tally:?}", cases());
    // The oracle is not vacuous: a fair share of the packets had to arrive
    // (with the default seed, 613 of 4,469 in 1,000 cases).
    assert!(
        required * 12 > sent && required as u32 >= cases() / 2,
        "only {required} of {sent} packets were required to arrive"
    );
}
