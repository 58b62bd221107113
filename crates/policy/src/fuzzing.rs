//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. No function here may panic on any input; the
//! assertions inside are the properties being fuzzed.

use std::time::{Duration, Instant};

use crate::{
    ConntrackConfig, Direction, Engine, FiveTuple, Inventory, Matcher, Membership, NodeFacts,
    Policy, RuleVerdict, Verdict, compile, parse, render_rule,
};

/// A small inventory: two networks, tags, a gateway with a routed subnet, IPv4
/// and IPv6 addresses, a service provider, SSH servers.
fn inventory() -> Inventory {
    let node = |name: &str, tags: &[&str], nets: &[(&str, &str)], subnets: &[&str]| NodeFacts {
        services: Vec::new(),
        ssh_port: None,
        name: name.into(),
        tags: tags.iter().map(|t| (*t).to_string()).collect(),
        networks: nets
            .iter()
            .map(|(n, a)| Membership {
                network: (*n).to_string(),
                addrs: a.split(',').filter_map(|a| a.parse().ok()).collect(),
            })
            .collect(),
        routed_subnets: subnets.iter().filter_map(|s| s.parse().ok()).collect(),
    };
    // db1 provides `db` (and runs an SSH server), laptop runs one too.
    let mut db1 = node("db1", &["db"], &[("office", "100.64.0.10")], &[]);
    db1.services.push(crate::ServiceFact {
        name: "db".into(),
        network: "office".into(),
        ports: ["5432/tcp", "53/udp"]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
    });
    db1.ssh_port = Some(22);
    let mut laptop = node(
        "laptop",
        &["admin"],
        &[("office", "100.64.0.30"), ("lab", "100.65.0.30")],
        &[],
    );
    laptop.ssh_port = Some(2222);
    Inventory::new(vec![
        node("web1", &["web"], &[("office", "100.64.0.1,fd7a::1")], &[]),
        db1,
        node(
            "gw",
            &["gw"],
            &[("office", "100.64.0.20,fd7a::20")],
            &["10.1.0.0/16", "fd00:1::/64"],
        ),
        laptop,
        node("lone", &[], &[("lab", "100.65.0.9")], &[]),
    ])
    .unwrap_or_default()
}

/// Policy text: parse; errors render; what parses validates, renders rules that
/// parse again, compiles for every node into policies the packet matcher and the
/// engine accept, and runs its tests.
pub fn policy_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let policy = match parse(&text) {
        Ok(p) => p,
        Err(errors) => {
            assert!(!errors.errors().is_empty());
            let _ = errors.with_source("policy.toml");
            let _ = errors.first().to_string();
            return;
        }
    };
    let _ = policy.validate();
    for rule in &policy.rules {
        let rendered = render_rule(rule);
        assert!(!rendered.is_empty());
    }
    let inv = inventory();
    let compiled = compile(&policy, &inv);
    for node in inv.nodes() {
        let _ = compiled.visible_peers(&node.name);
        if let Some(cp) = compiled.node(&node.name) {
            let m = Matcher::new(cp);
            assert!(m.is_ok(), "{}: compiled policy refused: {m:?}", node.name);
            for g in cp.ssh_inbound.iter().chain(&cp.ssh_outbound) {
                assert!(
                    compiled.visible_peers(&node.name).contains(&g.peer),
                    "{}: ssh grant towards invisible {}",
                    node.name,
                    g.peer
                );
                assert!(!g.users.is_empty() && !g.addrs.is_empty() && !g.rules.is_empty());
            }
            let e = Engine::new(cp.clone(), ConntrackConfig::default());
            assert!(e.is_ok());
        }
    }
    let _ = policy.run_tests(&inv);
}

/// The engine for node "gw" under a fixed policy with allows, denies, ports,
/// ICMP and a routed subnet.
fn engine() -> Option<Engine> {
    const POLICY: &str = r#"
[groups]
servers = ["tag:db", "node:gw"]

[[rule]]
name = "web to servers"
action = "allow"
from = ["tag:web"]
to = ["group:servers"]
proto = "tcp"
ports = [22, 5432, "8000-8100"]

[[rule]]
name = "admins"
action = "allow"
from = "tag:admin"
to = "*"

[[rule]]
name = "no telnet"
action = "deny"
from = "*"
to = "*"
proto = "tcp"
ports = [23]

[[rule]]
name = "ping"
action = "allow"
from = "network:office"
to = "network:office"
proto = "icmp"

[[rule]]
name = "dns to subnet"
action = "allow"
from = "cidr:100.64.0.0/10"
to = "subnet:10.1.0.0/24"
proto = "udp"
ports = [53]
"#;
    let policy: Policy = parse(POLICY).ok()?;
    let compiled = compile(&policy, &inventory());
    let cp = compiled.node("gw")?.clone();
    Engine::new(
        cp,
        ConntrackConfig {
            capacity: 16,
            ..ConntrackConfig::default()
        },
    )
    .ok()
}

/// The packet parser and the stateful matcher: `data` is a sequence of
/// `op, len (1 byte), packet` records; op's low bit picks the direction, the
/// next bits let time pass. Every parsed packet is decided and explained, and
/// its reverse decided too; the verdict never contradicts the explanation made
/// just before, and a stateless rule allow is always an engine allow.
pub fn policy_match(data: &[u8]) {
    // A fixed policy: if it stops parsing or compiling, the harness is broken
    // (every corpus replay then fails, so CI notices).
    let Some(mut engine) = engine() else {
        panic!("the fixed fuzzing policy no longer compiles");
    };
    let Ok(matcher) = Matcher::new(engine.policy()) else {
        panic!("the compiled fixed policy is refused by the matcher");
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the fuzz harness needs some base instant"
    )]
    let mut now = Instant::now();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        let dir = if op & 1 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        now += Duration::from_secs(u64::from(op >> 1) * 10);
        if op >> 1 == 0x7f {
            engine.handle_timeout(now);
        }
        let _ = engine.poll_timeout();
        let Ok(tuple) = FiveTuple::parse(pkt) else {
            continue;
        };
        let _ = tuple.to_string();
        let _ = tuple.ip_proto();
        let stateless = matcher.evaluate(dir, &tuple);
        let explained = engine.explain(dir, &tuple, now);
        let verdict = engine.decide(dir, &tuple, now);
        assert_eq!(
            explained.verdict, verdict,
            "{tuple}: explain and decide differ"
        );
        assert_eq!(explained.rules_verdict, stateless);
        if let RuleVerdict::Allow(_) = stateless {
            assert!(
                verdict.is_allow(),
                "{tuple}: rules allow, engine {verdict:?}"
            );
        }
        if let Verdict::Allow { .. } = verdict {
            // Its reply belongs to the flow just opened or continued.
            let back = tuple.reversed();
            let _ = engine.decide(dir.reverse(), &back, now);
        }
        let _ = engine.counters();
        let _ = engine.flow_count();
        let _ = engine.flows().count();
        assert!(engine.flow_count() <= 16);
    }
}

/// Host firewall text: parse; errors render with their lines; what parses
/// compiles, for nodes each profile form selects and one nobody selects, into
/// specs that pass the map's own check, declared rules first with ids
/// `line:N` of lines the text has, dynamic rules after them.
pub fn hostfw_parse(data: &[u8]) {
    use weft_proto::hostfw::{Direction, HostRule, Proto, RuleAction};

    use crate::hostfw::{compile_firewall, parse_firewall};

    let text = String::from_utf8_lossy(data);
    let file = match parse_firewall(&text) {
        Ok(f) => f,
        Err(errors) => {
            assert!(!errors.errors().is_empty());
            let _ = errors.render("firewall.toml", &text);
            return;
        }
    };
    let lines = u32::try_from(text.lines().count()).unwrap_or(u32::MAX);
    let dynamic = vec![HostRule {
        id: "dyn:1".into(),
        direction: Direction::In,
        action: RuleAction::Accept,
        proto: Proto::Tcp,
        ports: vec![weft_proto::hostfw::PortRange { start: 80, end: 80 }],
        peers: vec![],
        comment: String::new(),
        expires_at_ms: Some(1),
    }];
    let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for (name, tags) in [
        ("web1", tags(&["web"])),
        ("db1", tags(&["db", "web"])),
        ("node", tags(&[])),
        ("zz-nobody-selects-this-0", tags(&["zz-nobody"])),
    ] {
        let profile = file.profile_for(name, &tags);
        let Some(spec) = compile_firewall(&file, name, &tags, &dynamic, 7) else {
            assert!(profile.is_none(), "{name}: a profile but no spec");
            continue;
        };
        let Some(profile) = profile else {
            panic!("{name}: a spec without a profile");
        };
        assert!(profile.line >= 1 && profile.line <= lines);
        assert_eq!(spec.version, 7);
        assert!(spec.check().is_ok(), "{name}: {:?}", spec.check());
        let Some((last, declared)) = spec.rules.split_last() else {
            panic!("{name}: the dynamic rule is missing");
        };
        assert_eq!(last.id, "dyn:1");
        for r in declared {
            let Some(n) =
                r.id.strip_prefix("line:")
                    .and_then(|n| n.parse::<u32>().ok())
            else {
                panic!("declared rule id {:?} is not line:N", r.id);
            };
            assert!(n >= 1 && n <= lines, "{}: line {n} of {lines}", r.id);
        }
    }
}
