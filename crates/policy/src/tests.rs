//! Cross-module tests: precedence, compile per node, the engine and conntrack,
//! checks and tests blocks, and property tests against the reference evaluator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::*;

#[expect(clippy::disallowed_methods, reason = "a test needs some base instant")]
pub(crate) fn t0() -> Instant {
    Instant::now()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, tags: &[&str], nets: &[(&str, &str)], subnets: &[&str]) -> NodeFacts {
    NodeFacts {
        services: Vec::new(),
        ssh_port: None,
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        networks: nets
            .iter()
            .map(|(n, a)| Membership {
                network: n.to_string(),
                addrs: vec![ip(a)],
            })
            .collect(),
        routed_subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// web1, web2 (tag web), db1 (tag db), gw (routes 10.1.0.0/16) in "office";
/// laptop in "office" and "lab"; lone only in "lab".
fn inventory() -> Inventory {
    Inventory::new(vec![
        node("web1", &["web"], &[("office", "100.64.0.1")], &[]),
        node("web2", &["web"], &[("office", "100.64.0.2")], &[]),
        node("db1", &["db"], &[("office", "100.64.0.10")], &[]),
        node(
            "gw",
            &["gw"],
            &[("office", "100.64.0.20")],
            &["10.1.0.0/16"],
        ),
        node(
            "laptop",
            &["admin"],
            &[("office", "100.64.0.30"), ("lab", "100.65.0.30")],
            &[],
        ),
        node("lone", &[], &[("lab", "100.65.0.9")], &[]),
    ])
    .unwrap()
}

fn policy(text: &str) -> Policy {
    match parse(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn engine(p: &Policy, inv: &Inventory, name: &str) -> Engine {
    engine_with(p, inv, name, ConntrackConfig::default())
}

fn engine_with(p: &Policy, inv: &Inventory, name: &str, cfg: ConntrackConfig) -> Engine {
    Engine::new(compile_node(p, inv, name).unwrap(), cfg).unwrap()
}

/// What `policy` says about `service` from node `a` to node `b` (first addresses).
fn verdict(p: &Policy, a: &str, b: &str, service: Service) -> RuleVerdict {
    let inv = inventory();
    let from = inv.get(a).unwrap();
    let to = inv.get(b).unwrap();
    let src = from.overlay_addrs().next().unwrap();
    let dst = to.overlay_addrs().next().unwrap();
    let reference = evaluate(p, from, src, to, dst, &service.transport());
    // The compiled form at both ends must agree.
    let pkt = FiveTuple {
        src,
        dst,
        transport: service.transport(),
    };
    let c = compile(p, &inv);
    for (n, dir) in [(a, Direction::Egress), (b, Direction::Ingress)] {
        let m = Matcher::new(c.node(n).unwrap()).unwrap();
        let got = m.evaluate(dir, &pkt);
        if got.is_allow() || reference.is_allow() {
            assert_eq!(got, reference, "{n} {dir:?}");
        }
    }
    reference
}

const WEB_DB: &str = r#"
[[rule]]
name = "web to db"
action = "allow"
from = "tag:web"
to = "tag:db"
proto = "tcp"
ports = [5432, 22]
"#;

const NO_SSH: &str = r#"
[[rule]]
name = "no ssh"
action = "deny"
from = "*"
to = "tag:db"
proto = "tcp"
ports = 22
"#;

// ---------------------------------------------------------------- precedence

#[test]
fn deny_beats_allow_in_either_order() {
    for text in [format!("{WEB_DB}{NO_SSH}"), format!("{NO_SSH}{WEB_DB}")] {
        let p = policy(&text);
        let deny = p
            .rules
            .iter()
            .position(|r| r.action == Action::Deny)
            .unwrap();
        let allow = 1 - deny;
        assert_eq!(
            verdict(&p, "web1", "db1", Service::Tcp(22)),
            RuleVerdict::Deny(RuleId(deny as u32))
        );
        assert_eq!(
            verdict(&p, "web1", "db1", Service::Tcp(5432)),
            RuleVerdict::Allow(RuleId(allow as u32))
        );
    }
}

#[test]
fn narrow_allow_inside_broad_deny_stays_denied() {
    let p = policy(
        r#"
[[rule]]
name = "nobody reaches db"
action = "deny"
from = "*"
to = "tag:db"

[[rule]]
name = "but web1 on 5432"
action = "allow"
from = "node:web1"
to = "node:db1"
proto = "tcp"
ports = 5432
"#,
    );
    assert_eq!(
        verdict(&p, "web1", "db1", Service::Tcp(5432)),
        RuleVerdict::Deny(RuleId(0))
    );
    let c = compile(&p, &inventory());
    assert!(c.visible_peers("web1").is_empty());
    assert!(c.visible_peers("db1").is_empty());
}

#[test]
fn narrow_deny_carves_a_hole_in_a_broad_allow() {
    let p = policy(&format!(
        "[[rule]]\naction = \"allow\"\nfrom = \"network:office\"\nto = \"network:office\"\n{NO_SSH}"
    ));
    assert!(verdict(&p, "web1", "db1", Service::Tcp(80)).is_allow());
    assert!(verdict(&p, "web1", "db1", Service::Udp(22)).is_allow());
    assert_eq!(
        verdict(&p, "web1", "db1", Service::Tcp(22)),
        RuleVerdict::Deny(RuleId(1))
    );
    assert!(verdict(&p, "db1", "web1", Service::Tcp(22)).is_allow());
}

#[test]
fn default_deny() {
    let empty = Policy::default();
    assert_eq!(
        verdict(&empty, "web1", "db1", Service::Icmp),
        RuleVerdict::NoRule
    );
    let p = policy(WEB_DB);
    assert_eq!(
        verdict(&p, "web1", "db1", Service::Udp(5432)),
        RuleVerdict::NoRule
    );
    assert_eq!(
        verdict(&p, "db1", "web1", Service::Tcp(5432)),
        RuleVerdict::NoRule
    );
    assert_eq!(
        verdict(&p, "web1", "web2", Service::Tcp(5432)),
        RuleVerdict::NoRule
    );
}

#[test]
fn default_network_rule_opens_only_that_network_and_removing_it_closes_all() {
    let p = Policy::default_for_network("office");
    let p = policy(&p.to_text());
    assert!(verdict(&p, "web1", "db1", Service::Tcp(1)).is_allow());
    assert!(verdict(&p, "laptop", "gw", Service::Icmp).is_allow());
    // laptop's lab address is not an office address; lone is not in office.
    let inv = inventory();
    let laptop = inv.get("laptop").unwrap();
    let lone = inv.get("lone").unwrap();
    let t = Service::Icmp.transport();
    assert_eq!(
        evaluate(&p, laptop, ip("100.65.0.30"), lone, ip("100.65.0.9"), &t),
        RuleVerdict::NoRule
    );
    let c = compile(&p, &inv);
    assert_eq!(c.visible_peers("lone"), &[] as &[String]);
    assert_eq!(c.visible_peers("web1"), ["db1", "gw", "laptop", "web2"]);

    let closed = Policy {
        rules: Vec::new(),
        ..p
    };
    let c = compile(&closed, &inv);
    for n in inv.nodes() {
        assert!(c.visible_peers(&n.name).is_empty());
        assert!(c.node(&n.name).unwrap().inbound.is_empty());
    }
}

// ---------------------------------------------------------------- compile

#[test]
fn compiled_rules_only_mention_peers_that_concern_the_node() {
    let p = policy(&format!(
        "{WEB_DB}\n[[rule]]\naction = \"allow\"\nfrom = \"node:laptop\"\nto = \"node:gw\"\n"
    ));
    let c = compile(&p, &inventory());
    let web1 = c.node("web1").unwrap();
    assert_eq!(web1.visible_peers, ["db1"]);
    assert!(web1.inbound.is_empty());
    assert_eq!(web1.outbound.len(), 1);
    assert_eq!(web1.outbound[0].peers, vec![IpNet::from(ip("100.64.0.10"))]);
    assert_eq!(web1.outbound[0].local, vec![IpNet::from(ip("100.64.0.1"))]);
    assert_eq!(web1.rules.len(), 1);
    assert_eq!(web1.rules[0].name.as_deref(), Some("web to db"));

    let db1 = c.node("db1").unwrap();
    assert_eq!(db1.visible_peers, ["web1", "web2"]);
    assert!(db1.outbound.is_empty());
    assert_eq!(
        db1.inbound[0].peers,
        vec![IpNet::from(ip("100.64.0.1")), IpNet::from(ip("100.64.0.2"))]
    );
    // Visibility holds in both directions.
    assert_eq!(c.visible_peers("gw"), ["laptop"]);
    assert_eq!(c.visible_peers("laptop"), ["gw"]);
    // Nobody else learns of anyone.
    assert!(c.visible_peers("lone").is_empty());
    let lone = c.node("lone").unwrap();
    assert!(lone.inbound.is_empty() && lone.outbound.is_empty() && lone.rules.is_empty());
    assert!(c.node("nobody").is_none());
}

#[test]
fn fully_denied_pairs_are_invisible_and_carry_no_rules() {
    let p = policy(&format!(
        "{WEB_DB}\n[[rule]]\naction = \"deny\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tcp\"\nports = \"1-65535\"\n"
    ));
    let c = compile(&p, &inventory());
    // Port 0 is not allowed either: the web rule names 22 and 5432 only.
    assert!(c.visible_peers("web1").is_empty());
    let web1 = c.node("web1").unwrap();
    assert!(web1.outbound.is_empty(), "{web1:?}");
    // A partial deny keeps the pair visible, and its deny rules are shipped.
    let p = policy(&format!("{WEB_DB}{NO_SSH}"));
    let c = compile(&p, &inventory());
    assert_eq!(c.visible_peers("web1"), ["db1"]);
    assert_eq!(c.node("web1").unwrap().outbound.len(), 2);
}

#[test]
fn subnet_rules_reach_through_the_gateway() {
    let p = policy(
        r#"
[[rule]]
action = "allow"
from = "tag:web"
to = "subnet:10.1.2.0/24"
proto = "tcp"
ports = 80
"#,
    );
    let inv = inventory();
    let c = compile(&p, &inv);
    assert_eq!(c.visible_peers("web1"), ["gw"]);
    assert_eq!(c.visible_peers("gw"), ["web1", "web2"]);
    let gw = c.node("gw").unwrap();
    assert_eq!(
        gw.inbound[0].local,
        vec!["10.1.2.0/24".parse::<IpNet>().unwrap()]
    );

    let now = t0();
    let mut web1 = engine(&p, &inv, "web1");
    let mut gw = engine(&p, &inv, "gw");
    let ok = FiveTuple::tcp(ip("100.64.0.1"), 40000, ip("10.1.2.7"), 80, tcp_flags::SYN);
    let off = FiveTuple::tcp(ip("100.64.0.1"), 40000, ip("10.1.3.7"), 80, tcp_flags::SYN);
    assert!(web1.decide(Direction::Egress, &ok, now).is_allow());
    assert!(gw.decide(Direction::Ingress, &ok, now).is_allow());
    assert_eq!(
        web1.decide(Direction::Egress, &off, now),
        Verdict::Drop(DropReason::NoRule)
    );
    // The host behind the gateway answers through it.
    assert!(gw.decide(Direction::Egress, &ok.reversed(), now).is_allow());
}

#[test]
fn groups_nest() {
    let p = policy(
        r#"
[groups]
front = ["tag:web"]
everyone-but-db = ["group:front", "node:laptop"]

[[rule]]
action = "allow"
from = "group:everyone-but-db"
to = "tag:db"
proto = "icmp"
"#,
    );
    assert!(verdict(&p, "web2", "db1", Service::Icmp).is_allow());
    assert!(verdict(&p, "laptop", "db1", Service::Icmp).is_allow());
    assert_eq!(verdict(&p, "gw", "db1", Service::Icmp), RuleVerdict::NoRule);
}

#[test]
fn compiled_policy_serializes_and_rejects_inconsistency() {
    let p = policy(&format!("{WEB_DB}{NO_SSH}"));
    let c = compile_node(&p, &inventory(), "db1").unwrap();
    let json = serde_json::to_string(&c).unwrap();
    assert!(
        json.contains("\"peers\":[\"100.64.0.1/32\",\"100.64.0.2/32\"]"),
        "{json}"
    );
    let back: CompiledPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    assert!(Engine::new(back, ConntrackConfig::default()).is_ok());

    let mut bad = c.clone();
    bad.rules.clear();
    assert_eq!(
        Engine::new(bad, ConntrackConfig::default()).unwrap_err(),
        InvalidPolicy::UnknownRule(0)
    );
    let mut bad = c;
    bad.inbound[0].proto = Proto::Icmp;
    assert!(matches!(
        Engine::new(bad, ConntrackConfig::default()),
        Err(InvalidPolicy::BadPorts(_))
    ));
}

// ---------------------------------------------------------------- engine

fn syn(src: &str, sp: u16, dst: &str, dp: u16) -> FiveTuple {
    FiveTuple::tcp(ip(src), sp, ip(dst), dp, tcp_flags::SYN)
}

#[test]
fn replies_pass_and_unrelated_reverse_flows_do_not() {
    let p = policy(&format!(
        "{WEB_DB}\n[[rule]]\nname = \"db never calls web\"\naction = \"deny\"\nfrom = \"tag:db\"\nto = \"tag:web\"\n"
    ));
    let inv = inventory();
    let now = t0();
    for (name, dir) in [("web1", Direction::Egress), ("db1", Direction::Ingress)] {
        let mut e = engine(&p, &inv, name);
        let open = syn("100.64.0.1", 40000, "100.64.0.10", 5432);
        assert_eq!(
            e.decide(dir, &open, now),
            Verdict::Allow {
                rule: RuleId(0),
                via: Via::New
            }
        );
        // The reply passes although a deny matches db -> web.
        let reply = FiveTuple::tcp(
            ip("100.64.0.10"),
            5432,
            ip("100.64.0.1"),
            40000,
            tcp_flags::SYN | tcp_flags::ACK,
        );
        assert_eq!(
            e.decide(dir.reverse(), &reply, now),
            Verdict::Allow {
                rule: RuleId(0),
                via: Via::Established
            }
        );
        // Later packets of the flow pass as established.
        assert_eq!(
            e.decide(dir, &open, now),
            Verdict::Allow {
                rule: RuleId(0),
                via: Via::Established
            }
        );
        // Same addresses, another port: a new, denied flow.
        let other = syn("100.64.0.10", 5432, "100.64.0.1", 40001);
        assert_eq!(
            e.decide(dir.reverse(), &other, now),
            Verdict::Drop(DropReason::Denied(RuleId(1)))
        );
        // The reply's tuple in the opening direction is not the flow.
        assert!(!e.decide(dir, &reply, now).is_allow());
        let c = e.counters();
        assert_eq!((c.allowed_new, c.allowed_established), (1, 2));
        assert_eq!(c.dropped_denied + c.dropped_no_rule, 2);
        assert_eq!(c.flows_opened, 1);
    }
}

#[test]
fn flows_expire_at_exactly_their_timeout() {
    let p = policy(
        "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\nproto = \"udp\"\n",
    );
    let cfg = ConntrackConfig::default();
    let mut e = engine_with(&p, &inventory(), "web1", cfg.clone());
    let start = t0();
    let out = FiveTuple::udp(ip("100.64.0.1"), 5000, ip("100.64.0.10"), 53);
    assert!(e.decide(Direction::Egress, &out, start).is_allow());
    // Unreplied: the short timeout applies.
    assert_eq!(
        e.poll_timeout(),
        Some((start + cfg.unreplied, "policy: conntrack expiry"))
    );
    let t1 = start + Duration::from_secs(1);
    assert!(e.decide(Direction::Ingress, &out.reversed(), t1).is_allow());
    let deadline = t1 + cfg.udp;

    let mut just_before = e.clone();
    assert_eq!(
        just_before.decide(
            Direction::Ingress,
            &out.reversed(),
            deadline - Duration::from_nanos(1)
        ),
        Verdict::Allow {
            rule: RuleId(0),
            via: Via::Established
        }
    );
    let mut at = e.clone();
    assert_eq!(
        at.decide(Direction::Ingress, &out.reversed(), deadline),
        Verdict::Drop(DropReason::NoRule)
    );
    assert_eq!(at.counters().flows_expired, 1);

    // Driven by the timer: the lazy index first wakes at the old deadline,
    // re-indexes, then wakes at the real one.
    e.handle_timeout(start + cfg.unreplied);
    assert_eq!(e.flow_count(), 1);
    assert_eq!(e.poll_timeout().map(|t| t.0), Some(deadline));
    e.handle_timeout(deadline - Duration::from_nanos(1));
    assert_eq!(e.flow_count(), 1);
    e.handle_timeout(deadline);
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(e.counters().flows_expired, 1);
}

#[test]
fn tcp_close_shortens_the_timeout_and_port_reuse_is_decided_afresh() {
    let p = policy(WEB_DB);
    let cfg = ConntrackConfig::default();
    let mut e = engine_with(&p, &inventory(), "db1", cfg.clone());
    let now = t0();
    let open = syn("100.64.0.1", 40000, "100.64.0.10", 5432);
    assert!(e.decide(Direction::Ingress, &open, now).is_allow());
    let fin = FiveTuple::tcp(
        ip("100.64.0.10"),
        5432,
        ip("100.64.0.1"),
        40000,
        tcp_flags::FIN | tcp_flags::ACK,
    );
    assert!(e.decide(Direction::Egress, &fin, now).is_allow());
    assert_eq!(e.flows().next().unwrap().deadline, now + cfg.tcp_closing);
    // A fresh SYN on the closed tuple is a new flow, checked against the rules.
    assert_eq!(
        e.decide(Direction::Ingress, &open, now),
        Verdict::Allow {
            rule: RuleId(0),
            via: Via::New
        }
    );
    assert!(!e.flows().next().unwrap().closing);
}

#[test]
fn icmp_echo_is_tracked_other_icmp_is_not() {
    let p = policy(
        "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\nproto = \"icmp\"\n",
    );
    let mut e = engine(&p, &inventory(), "db1");
    let now = t0();
    let (w, d) = (ip("100.64.0.1"), ip("100.64.0.10"));
    let req = FiveTuple::icmp(w, d, IcmpKind::EchoRequest, 7);
    assert!(e.decide(Direction::Ingress, &req, now).is_allow());
    assert_eq!(
        e.decide(Direction::Egress, &req.reversed(), now),
        Verdict::Allow {
            rule: RuleId(0),
            via: Via::Established
        }
    );
    // db1 may not ping web1, and an echo reply with another id is no reply.
    let back = FiveTuple::icmp(d, w, IcmpKind::EchoRequest, 7);
    assert!(!e.decide(Direction::Egress, &back, now).is_allow());
    let stray = FiveTuple::icmp(d, w, IcmpKind::EchoReply, 8);
    assert!(!e.decide(Direction::Egress, &stray, now).is_allow());
    // Other ICMP from web passes by the rule and opens nothing.
    let unreach = FiveTuple::icmp(w, d, IcmpKind::Other(3, 3), 0);
    assert_eq!(
        e.decide(Direction::Ingress, &unreach, now),
        Verdict::Allow {
            rule: RuleId(0),
            via: Via::New
        }
    );
    assert_eq!(e.flow_count(), 1);
}

#[test]
fn the_table_is_bounded_and_evictions_are_counted() {
    let p = policy(
        "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\nproto = \"udp\"\n",
    );
    let cfg = ConntrackConfig {
        capacity: 4,
        ..ConntrackConfig::default()
    };
    let mut e = engine_with(&p, &inventory(), "web1", cfg);
    let start = t0();
    let flow = |port| FiveTuple::udp(ip("100.64.0.1"), port, ip("100.64.0.10"), 53);
    for i in 0..6u16 {
        let now = start + Duration::from_millis(u64::from(i));
        assert!(e.decide(Direction::Egress, &flow(1000 + i), now).is_allow());
        assert!(e.flow_count() <= 4);
    }
    assert_eq!(e.flow_count(), 4);
    assert_eq!(e.counters().flows_evicted, 2);
    assert_eq!(e.counters().flows_opened, 6);
    // The two oldest went: their replies are dropped, the newest pass.
    let now = start + Duration::from_secs(1);
    assert!(
        !e.decide(Direction::Ingress, &flow(1000).reversed(), now)
            .is_allow()
    );
    assert!(
        !e.decide(Direction::Ingress, &flow(1001).reversed(), now)
            .is_allow()
    );
    assert!(
        e.decide(Direction::Ingress, &flow(1005).reversed(), now)
            .is_allow()
    );
}

#[test]
fn eviction_prefers_flows_closest_to_expiry() {
    let p = policy(
        "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\nproto = \"udp\"\n",
    );
    let cfg = ConntrackConfig {
        capacity: 2,
        ..ConntrackConfig::default()
    };
    let mut e = engine_with(&p, &inventory(), "web1", cfg);
    let start = t0();
    let flow = |port| FiveTuple::udp(ip("100.64.0.1"), port, ip("100.64.0.10"), 53);
    e.decide(Direction::Egress, &flow(1), start);
    e.decide(Direction::Egress, &flow(2), start);
    // Flow 1 gets a reply (longer timeout); flow 2 stays unreplied.
    e.decide(Direction::Ingress, &flow(1).reversed(), start);
    e.decide(Direction::Egress, &flow(3), start + Duration::from_secs(1));
    let ports: Vec<u16> = e
        .flows()
        .map(|f| match f.opened_by.transport {
            Transport::Udp { src_port, .. } => src_port,
            _ => 0,
        })
        .collect();
    assert_eq!(ports, [1, 3]);
}

#[test]
fn a_policy_change_ends_flows_it_no_longer_allows() {
    let inv = inventory();
    let both = policy(&format!(
        "{WEB_DB}\n[[rule]]\nname = \"icmp\"\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"icmp\"\n"
    ));
    let mut e = engine(&both, &inv, "db1");
    let now = t0();
    let tcp = syn("100.64.0.1", 40000, "100.64.0.10", 5432);
    let ping = FiveTuple::icmp(
        ip("100.64.0.1"),
        ip("100.64.0.10"),
        IcmpKind::EchoRequest,
        1,
    );
    assert!(e.decide(Direction::Ingress, &tcp, now).is_allow());
    assert!(e.decide(Direction::Ingress, &ping, now).is_allow());
    assert_eq!(e.flow_count(), 2);

    // Only the icmp rule remains (now rule 0).
    let icmp_only = Policy {
        rules: vec![both.rules[1].clone()],
        ..Policy::default()
    };
    let ended = e
        .replace_policy(compile_node(&icmp_only, &inv, "db1").unwrap(), now)
        .unwrap();
    assert_eq!(ended, 1);
    assert_eq!(e.counters().flows_ended_by_policy, 1);
    let reply = tcp.reversed();
    assert!(!e.decide(Direction::Egress, &reply, now).is_allow());
    assert_eq!(
        e.decide(Direction::Egress, &ping.reversed(), now),
        Verdict::Allow {
            rule: RuleId(0),
            via: Via::Established
        }
    );
    assert_eq!(e.rule(RuleId(0)).unwrap().name.as_deref(), Some("icmp"));
    // Removing every rule closes everything, tracked flows included.
    e.replace_policy(compile_node(&Policy::default(), &inv, "db1").unwrap(), now)
        .unwrap();
    assert!(
        !e.decide(Direction::Egress, &ping.reversed(), now)
            .is_allow()
    );
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn deny_all_engine_drops_everything() {
    let mut e = Engine::deny_all(ConntrackConfig::default());
    let pkt = syn("100.64.0.1", 1, "100.64.0.2", 2);
    assert_eq!(
        e.decide(Direction::Egress, &pkt, t0()),
        Verdict::Drop(DropReason::NoRule)
    );
    assert_eq!(e.counters().dropped_no_rule, 1);
}

// ---------------------------------------------------------------- explain

#[test]
fn explain_names_the_deciding_rule() {
    let p = policy(&format!("{WEB_DB}{NO_SSH}"));
    let mut e = engine(&p, &inventory(), "db1");
    let now = t0();
    let ssh = syn("100.64.0.1", 40000, "100.64.0.10", 22);
    let x = e.explain(Direction::Ingress, &ssh, now);
    assert_eq!(x.verdict, Verdict::Drop(DropReason::Denied(RuleId(1))));
    assert_eq!(x.matched.len(), 2);
    assert_eq!(
        x.to_string(),
        "inbound tcp 100.64.0.1:40000 -> 100.64.0.10:22: denied by rule \"no ssh\" (line 10); \
         a matching deny beats the matching allow rule \"web to db\" (line 2)"
    );
    let pg = syn("100.64.0.1", 40000, "100.64.0.10", 5432);
    assert_eq!(
        e.explain(Direction::Ingress, &pg, now).to_string(),
        "inbound tcp 100.64.0.1:40000 -> 100.64.0.10:5432: allowed by rule \"web to db\" (line 2)"
    );
    e.decide(Direction::Ingress, &pg, now);
    let x = e.explain(Direction::Egress, &pg.reversed(), now);
    assert!(x.flow.is_some());
    assert_eq!(x.rules_verdict, RuleVerdict::NoRule);
    assert!(
        x.to_string()
            .ends_with("allowed: part of a tracked flow allowed by rule \"web to db\" (line 2)")
    );
    let stranger = syn("100.64.0.30", 1, "100.64.0.10", 5432);
    assert!(
        e.explain(Direction::Ingress, &stranger, now)
            .to_string()
            .ends_with("dropped: no rule allows it (default deny)")
    );
    // explain changed nothing.
    assert_eq!(e.flow_count(), 1);
}

#[test]
fn matching_cost_does_not_grow_with_rules_about_other_peers() {
    // db1 is the target of one rule per peer n0..n999, plus web1's rule.
    let mut nodes: Vec<NodeFacts> = inventory().nodes().to_vec();
    let mut text = String::from(WEB_DB);
    for i in 0..1000u32 {
        let name = format!("n{i}");
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 80, 0, 0)) + i).to_string();
        nodes.push(node(&name, &[], &[("office", &addr)], &[]));
        text.push_str(&format!(
            "\n[[rule]]\naction = \"allow\"\nfrom = \"node:{name}\"\nto = \"node:db1\"\nproto = \"tcp\"\nports = {}\n",
            1000 + i
        ));
    }
    let inv = Inventory::new(nodes).unwrap();
    let big = policy(&text);
    let small = policy(WEB_DB);
    let now = t0();
    let pkt = syn("100.64.0.1", 40000, "100.64.0.10", 5432);
    let e_big = engine(&big, &inv, "db1");
    let e_small = engine(&small, &inv, "db1");
    assert_eq!(e_big.policy().inbound.len(), 1001);
    let x_big = e_big.explain(Direction::Ingress, &pkt, now);
    let x_small = e_small.explain(Direction::Ingress, &pkt, now);
    assert!(x_big.verdict.is_allow());
    assert_eq!(x_big.rules_examined, 1);
    assert_eq!(x_big.rules_examined, x_small.rules_examined);
    // A peer with its own rule: only that rule is examined.
    let n7 = syn("100.80.0.7", 1, "100.64.0.10", 1007);
    let x = e_big.explain(Direction::Ingress, &n7, now);
    assert!(x.verdict.is_allow());
    assert_eq!(x.rules_examined, 1);
}

#[test]
fn subnet_rules_are_found_by_prefix() {
    let p = policy(
        r#"
[[rule]]
action = "allow"
from = "tag:web"
to = ["subnet:10.1.0.0/16"]

[[rule]]
action = "deny"
from = "*"
to = ["subnet:10.1.9.0/24"]
"#,
    );
    let e = engine(&p, &inventory(), "web1");
    let now = t0();
    let ok = syn("100.64.0.1", 1, "10.1.8.1", 80);
    let no = syn("100.64.0.1", 1, "10.1.9.1", 80);
    assert!(e.explain(Direction::Egress, &ok, now).verdict.is_allow());
    let x = e.explain(Direction::Egress, &no, now);
    assert_eq!(x.verdict, Verdict::Drop(DropReason::Denied(RuleId(1))));
    assert_eq!(x.rules_examined, 2);
}

// ---------------------------------------------------------------- check & tests

#[test]
fn check_reports_every_pair_and_its_rule() {
    let p = policy(&format!("{WEB_DB}{NO_SSH}"));
    let inv = inventory();
    let r = p.check(
        &inv,
        &Selector::Tag("web".into()),
        &Selector::parse_or_node("db1").unwrap(),
        Service::Tcp(22),
    );
    assert!(!r.representative);
    assert!(r.all_denied());
    assert_eq!(
        r.to_string(),
        "web1 (100.64.0.1) -> db1 (100.64.0.10): denied by rule \"no ssh\" (line 10)\n\
         web2 (100.64.0.2) -> db1 (100.64.0.10): denied by rule \"no ssh\" (line 10)"
    );
    let r = p.check(
        &inv,
        &Selector::Node("web1".into()),
        &Selector::Node("db1".into()),
        Service::Tcp(5432),
    );
    assert!(r.all_allowed());
}

#[test]
fn policy_tests_pass_fail_and_use_representatives() {
    let text = format!(
        r#"{WEB_DB}{NO_SSH}
[[test]]
name = "web reaches db"
from = "node:web1"
to = "node:db1"
proto = "tcp"
port = 5432
expect = "allow"

[[test]]
name = "db may not reach web"
from = "tag:db"
to = "tag:web"
proto = "tcp"
port = 22
expect = "deny"

[[test]]
name = "ssh to db"
from = "tag:web"
to = "tag:db"
proto = "tcp"
port = 22
expect = "allow"

[[test]]
name = "future api nodes reach db"
from = "tag:api"
to = "tag:db"
proto = "tcp"
port = 5432
expect = "deny"
"#
    );
    let p = policy(&text);
    let failures = p.run_tests(&inventory());
    let shown: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        shown,
        vec![
            "34:1: test \"ssh to db\" failed: expected allow for tag:web -> tag:db tcp/22, but \
             web1 (100.64.0.1) -> db1 (100.64.0.10): denied by rule \"no ssh\" (line 10)",
        ]
    );
    // "tag:api" matches no node: a representative with only that tag stood in,
    // and the test passed (nothing allows it). Symbolic checks need no nodes.
    let r = p.check(
        &Inventory::default(),
        &Selector::Tag("web".into()),
        &Selector::Tag("db".into()),
        Service::Tcp(5432),
    );
    assert!(r.representative);
    assert_eq!(r.pairs.len(), 1);
    assert!(r.all_allowed(), "{r}");
    // Without nodes, `node:web1` stands for a node named web1 and nothing else
    // (no tag web), so "web reaches db" fails too, flagged as representative.
    let failures = p.run_tests(&Inventory::default());
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].name.as_deref(), Some("web reaches db"));
    assert!(failures[0].representative);
    assert_eq!(
        failures[0].to_string(),
        "18:1: test \"web reaches db\" failed: expected allow for node:web1 -> node:db1 tcp/5432, \
         but web1 (192.0.2.1) -> db1 (192.0.2.2): dropped: no rule allows it (default deny) \
         (checked against a representative node)"
    );
}

#[test]
fn representatives_honour_cidr_and_subnet_selectors() {
    let p = policy(
        r#"
[[rule]]
action = "allow"
from = "cidr:100.64.0.0/24"
to = "subnet:10.9.0.0/16"
proto = "udp"

[[rule]]
action = "deny"
from = "*"
to = "subnet:10.9.128.0/17"
"#,
    );
    let inv = Inventory::default();
    let r = p.check(
        &inv,
        &Selector::Cidr("100.64.0.0/24".parse().unwrap()),
        &Selector::Subnet("10.9.0.0/16".parse().unwrap()),
        Service::Udp(53),
    );
    // The destination prefix splits into the allowed and the denied half.
    assert!(!r.all_allowed() && !r.all_denied(), "{r}");
    assert!(r.pairs.iter().any(|p| p.to_addr == ip("10.9.128.0")));
}

// ---------------------------------------------------------------- packets

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ];
    p.extend_from_slice(l4);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

#[test]
fn parses_packets() {
    let mut tcp = vec![0x9c, 0x40, 0x15, 0x38, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02];
    tcp.extend_from_slice(&[0; 6]);
    let t = FiveTuple::parse(&ipv4(6, &tcp)).unwrap();
    assert_eq!(t, syn("100.64.0.1", 40000, "100.64.0.2", 5432));
    assert_eq!(t.to_string(), "tcp 100.64.0.1:40000 -> 100.64.0.2:5432");

    let udp = [0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0];
    assert_eq!(
        FiveTuple::parse(&ipv4(17, &udp)).unwrap(),
        FiveTuple::udp(ip("100.64.0.1"), 5000, ip("100.64.0.2"), 53)
    );
    let echo = [8, 0, 0, 0, 0, 7, 0, 1];
    assert_eq!(
        FiveTuple::parse(&ipv4(1, &echo)).unwrap().transport,
        Transport::Icmp {
            kind: IcmpKind::EchoRequest,
            id: 7
        }
    );
    assert_eq!(
        FiveTuple::parse(&ipv4(1, &[3, 1, 0, 0])).unwrap().transport,
        Transport::Icmp {
            kind: IcmpKind::Other(3, 1),
            id: 0
        }
    );
    // Non-first fragment: no ports.
    let mut frag = ipv4(17, &udp);
    frag[7] = 10;
    assert_eq!(
        FiveTuple::parse(&frag).unwrap().transport,
        Transport::Other(17)
    );
    assert_eq!(
        FiveTuple::parse(&ipv4(6, &[0; 10])),
        Err(PacketError::Truncated)
    );
    assert_eq!(FiveTuple::parse(&[0x55; 30]), Err(PacketError::Version));
    assert_eq!(FiveTuple::parse(&[0x44; 30]), Err(PacketError::Header));
    assert_eq!(FiveTuple::parse(&[]), Err(PacketError::Truncated));

    // IPv6 with a hop-by-hop header before ICMPv6 echo reply.
    let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
    v6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&[58, 0, 0, 0, 0, 0, 0, 0]);
    v6.extend_from_slice(&[129, 0, 0, 0, 0, 9, 0, 1]);
    let t = FiveTuple::parse(&v6).unwrap();
    assert_eq!(
        t,
        FiveTuple::icmp(ip("fd00::1"), ip("fd00::2"), IcmpKind::EchoReply, 9)
    );
    assert_eq!(t.ip_proto(), ip_proto::ICMPV6);
}

// ---------------------------------------------------------------- properties

const NODES: usize = 5;
const TAGS: [&str; 3] = ["a", "b", "c"];
const NETS: [&str; 2] = ["x", "y"];
const PORTS: [u16; 7] = [22, 80, 999, 1000, 1500, 2000, 2001];

/// Service facts a generated node may have: `db` in each network on
/// different ports (one outside every generated rule's ports), `web` in x.
pub(crate) fn service_facts(pick: &[usize]) -> Vec<ServiceFact> {
    use weft_proto::service::{ServicePort, ServiceProto};
    let port = |port, proto| ServicePort { port, proto };
    let all = [
        (
            "db",
            "x",
            vec![port(80, ServiceProto::Tcp), port(1500, ServiceProto::Udp)],
        ),
        ("db", "y", vec![port(2001, ServiceProto::Tcp)]),
        (
            "web",
            "x",
            vec![port(22, ServiceProto::Tcp), port(999, ServiceProto::Udp)],
        ),
    ];
    pick.iter()
        .filter_map(|&i| all.get(i))
        .map(|(name, network, ports)| ServiceFact {
            name: (*name).into(),
            network: (*network).into(),
            ports: ports.clone(),
        })
        .collect()
}

/// An SSH port a generated node may have (both in [`PORTS`]).
fn ssh_port(pick: u8) -> Option<u16> {
    [None, Some(22), Some(2001)][usize::from(pick % 3)]
}

/// Node i: overlay 100.64.j.(i+1) in network j when a member; may route
/// 10.i.0.0/16; may provide services and run an SSH server. Addresses are
/// unique, so every address has one owner.
fn arb_inventory() -> impl Strategy<Value = Inventory> {
    proptest::collection::vec(
        (
            proptest::sample::subsequence(TAGS.to_vec(), 0..=2),
            proptest::sample::subsequence(vec![0usize, 1], 0..=2),
            any::<bool>(),
            proptest::sample::subsequence(vec![0usize, 1, 2], 0..=2),
            0u8..3,
        ),
        NODES,
    )
    .prop_map(|specs| {
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, (tags, nets, routes, services, ssh))| NodeFacts {
                services: service_facts(&services),
                ssh_port: ssh_port(ssh),
                name: format!("n{i}"),
                tags: tags.into_iter().map(String::from).collect(),
                networks: nets
                    .into_iter()
                    .map(|j| Membership {
                        network: NETS[j].into(),
                        addrs: vec![IpAddr::V4(Ipv4Addr::new(100, 64, j as u8, i as u8 + 1))],
                    })
                    .collect(),
                routed_subnets: if routes {
                    vec![format!("10.{i}.0.0/16").parse().unwrap()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Inventory::new(nodes).unwrap()
    })
}

fn arb_selector(groups: bool) -> BoxedStrategy<Selector> {
    let mut options: Vec<BoxedStrategy<Selector>> = vec![
        Just(Selector::Any).boxed(),
        (0..NODES + 1)
            .prop_map(|i| Selector::Node(format!("n{i}")))
            .boxed(),
        proptest::sample::select(TAGS.to_vec())
            .prop_map(|t| Selector::Tag(t.into()))
            .boxed(),
        proptest::sample::select(NETS.to_vec())
            .prop_map(|n| Selector::Network(n.into()))
            .boxed(),
        proptest::sample::select(vec![
            "100.64.0.0/24",
            "100.64.1.0/24",
            "100.64.0.0/30",
            "100.64.0.4/30",
        ])
        .prop_map(|c| Selector::Cidr(c.parse().unwrap()))
        .boxed(),
        proptest::sample::select(vec![
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.2.0.0/24",
            "10.3.128.0/17",
            "10.4.0.0/20",
        ])
        .prop_map(|c| Selector::Subnet(c.parse().unwrap()))
        .boxed(),
    ];
    if groups {
        options.push(
            proptest::sample::select(vec!["g0", "g1"])
                .prop_map(|g| Selector::Group(g.into()))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

/// A `to` selector: any selector, or a `service:`.
fn arb_to_selector() -> BoxedStrategy<Selector> {
    prop_oneof![
        3 => arb_selector(true),
        1 => proptest::sample::select(vec!["db", "web", "none"])
            .prop_map(|s| Selector::Service(s.into())),
    ]
    .boxed()
}

fn arb_ssh_rule() -> impl Strategy<Value = SshRule> {
    (
        proptest::collection::vec(arb_selector(true), 1..=2),
        proptest::collection::vec(arb_selector(true), 1..=2),
        proptest::sample::subsequence(vec!["*", "deploy", "root"], 1..=2),
    )
        .prop_map(|(from, to, users)| SshRule {
            name: None,
            from,
            to,
            users: users.into_iter().map(String::from).collect(),
            line: 0,
        })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    let ports = proptest::sample::subsequence(
        vec![
            PortRange::single(22),
            PortRange::single(80),
            PortRange {
                first: 1000,
                last: 2000,
            },
        ],
        0..=2,
    );
    (
        any::<bool>(),
        proptest::collection::vec(arb_selector(true), 1..=2),
        proptest::collection::vec(arb_to_selector(), 1..=2),
        0..4u8,
        ports,
    )
        .prop_map(|(allow, from, to, proto, ports)| {
            let proto = [Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp][proto as usize];
            Rule {
                name: None,
                action: if allow { Action::Allow } else { Action::Deny },
                from,
                to,
                proto,
                ports: if matches!(proto, Proto::Tcp | Proto::Udp) {
                    ports
                } else {
                    Vec::new()
                },
                line: 0,
            }
        })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        proptest::collection::vec(arb_selector(false), 1..=2),
        proptest::collection::vec(arb_selector(false), 0..=1),
        proptest::collection::vec(arb_rule(), 0..6),
        proptest::collection::vec(arb_ssh_rule(), 0..3),
    )
        .prop_map(|(g0, g1, rules, ssh)| {
            let mut p = Policy {
                rules,
                ssh,
                ..Policy::default()
            };
            p.groups.insert(
                "g0".into(),
                Group {
                    members: g0,
                    line: 0,
                },
            );
            let mut g1 = g1;
            g1.push(Selector::Group("g0".into()));
            p.groups.insert(
                "g1".into(),
                Group {
                    members: g1,
                    line: 0,
                },
            );
            for (i, r) in p.rules.iter_mut().enumerate() {
                if i % 2 == 0 {
                    r.name = Some(format!("rule {i}"));
                }
            }
            for (i, r) in p.ssh.iter_mut().enumerate() {
                if i % 2 == 1 {
                    r.name = Some(format!("ssh {i}"));
                }
            }
            p
        })
}

fn arb_transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        proptest::sample::select(PORTS.to_vec()).prop_map(|p| Transport::Tcp {
            src_port: 40000,
            dst_port: p,
            flags: tcp_flags::SYN
        }),
        proptest::sample::select(PORTS.to_vec()).prop_map(|p| Transport::Udp {
            src_port: 40000,
            dst_port: p
        }),
        Just(Transport::Icmp {
            kind: IcmpKind::EchoRequest,
            id: 1
        }),
        Just(Transport::Other(47)),
    ]
}

/// The addresses node `n` can send from / receive at: its overlay addresses and
/// a few addresses in its routed subnet.
fn addrs_of(n: &NodeFacts) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = n.overlay_addrs().collect();
    for s in &n.routed_subnets {
        if let IpNet::V4(s) = s {
            let base = u32::from(s.network());
            for off in [0u32, 1, 0x8001, 0xffff] {
                v.push(IpAddr::V4((base + off).into()));
            }
        }
    }
    v
}

/// Every (src node, src addr, dst node, dst addr) over distinct nodes.
fn all_pairs(inv: &Inventory) -> Vec<(usize, IpAddr, usize, IpAddr)> {
    let mut out = Vec::new();
    for (i, a) in inv.nodes().iter().enumerate() {
        for (j, b) in inv.nodes().iter().enumerate() {
            if i == j {
                continue;
            }
            for sa in addrs_of(a) {
                for da in addrs_of(b) {
                    out.push((i, sa, j, da));
                }
            }
        }
    }
    out
}

/// The SSH grant of client `c` on server `s`, by the crate docs' definition,
/// rule by rule and address pair by address pair: (rules, client addresses,
/// server addresses, users).
type RefGrant = (Vec<RuleId>, Vec<IpNet>, Vec<IpNet>, Vec<String>);

fn reference_grant(p: &Policy, c: &NodeFacts, s: &NodeFacts) -> Option<RefGrant> {
    use std::collections::BTreeSet;
    let port = s.ssh_port?;
    if c.name == s.name {
        return None;
    }
    let t = Transport::Tcp {
        src_port: 0,
        dst_port: port,
        flags: tcp_flags::SYN,
    };
    let (mut rules, mut ca, mut sa, mut users) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    let sel = |list: &[Selector], n: &NodeFacts, a: IpAddr| {
        list.iter().any(|x| inventory::selects(p, x, n, a, &t, 0))
    };
    for (k, r) in p.ssh.iter().enumerate() {
        for m in &c.networks {
            for n in s.networks.iter().filter(|n| n.network == m.network) {
                for &a in &m.addrs {
                    for &b in &n.addrs {
                        if sel(&r.from, c, a)
                            && sel(&r.to, s, b)
                            && !matches!(evaluate(p, c, a, s, b, &t), RuleVerdict::Deny(_))
                        {
                            rules.insert(RuleId((p.rules.len() + k) as u32));
                            ca.insert(IpNet::from(a));
                            sa.insert(IpNet::from(b));
                            users.extend(r.users.iter().cloned());
                        }
                    }
                }
            }
        }
    }
    (!rules.is_empty()).then(|| {
        (
            rules.into_iter().collect(),
            ca.into_iter().collect(),
            sa.into_iter().collect(),
            users.into_iter().collect(),
        )
    })
}

/// Every node's SSH grants by [`reference_grant`]: (inbound, outbound).
fn reference_grants(
    p: &Policy,
    nodes: &[NodeFacts],
    me: &NodeFacts,
) -> (Vec<SshGrant>, Vec<SshGrant>) {
    let mut sorted: Vec<&NodeFacts> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let grant = |peer: &NodeFacts, g: &RefGrant, addrs: &Vec<IpNet>| SshGrant {
        rules: g.0.clone(),
        peer: peer.name.clone(),
        addrs: addrs.clone(),
        users: g.3.clone(),
    };
    let inbound = sorted
        .iter()
        .filter_map(|c| reference_grant(p, c, me).map(|g| grant(c, &g, &g.1)))
        .collect();
    let outbound = sorted
        .iter()
        .filter_map(|s| reference_grant(p, me, s).map(|g| grant(s, &g, &g.2)))
        .collect();
    (inbound, outbound)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The compiled matchers at both ends agree with the reference evaluator,
    /// and visibility is exactly "some packet is allowed" and symmetric.
    #[test]
    fn compiled_matches_reference(inv in arb_inventory(), p in arb_policy(), ts in proptest::collection::vec(arb_transport(), 1..4)) {
        prop_assert!(p.validate().is_ok());
        let c = compile(&p, &inv);
        let matchers: Vec<Matcher> = inv.nodes().iter().map(|n| Matcher::new(c.node(&n.name).unwrap()).unwrap()).collect();
        for (i, sa, j, da) in all_pairs(&inv) {
            let (a, b) = (&inv.nodes()[i], &inv.nodes()[j]);
            let visible = c.visible_peers(&a.name).contains(&b.name);
            for t in &ts {
                let reference = evaluate(&p, a, sa, b, da, t);
                let pkt = FiveTuple { src: sa, dst: da, transport: *t };
                for got in [matchers[i].evaluate(Direction::Egress, &pkt), matchers[j].evaluate(Direction::Ingress, &pkt)] {
                    if visible {
                        prop_assert_eq!(got, reference, "{} -> {} {:?}", sa, da, t);
                    } else {
                        prop_assert!(!reference.is_allow(), "allowed but invisible: {} -> {} {:?}", sa, da, t);
                        prop_assert_eq!(got, RuleVerdict::NoRule);
                    }
                }
            }
        }
        for a in inv.nodes() {
            for b in c.visible_peers(&a.name) {
                prop_assert!(c.visible_peers(b).contains(&a.name), "{} sees {} but not back", a.name, b);
            }
        }
        // Visible means some packet is allowed: these transports and addresses
        // hit every region the generated rules can tell apart.
        let every: Vec<Transport> = PORTS
            .iter()
            .flat_map(|&p| {
                [
                    Transport::Tcp { src_port: 1, dst_port: p, flags: 0 },
                    Transport::Udp { src_port: 1, dst_port: p },
                ]
            })
            .chain([Transport::Icmp { kind: IcmpKind::EchoRequest, id: 1 }, Transport::Other(47)])
            .collect();
        for (i, a) in inv.nodes().iter().enumerate() {
            for (j, b) in inv.nodes().iter().enumerate() {
                if i == j || !c.visible_peers(&a.name).contains(&b.name) {
                    continue;
                }
                let some = all_pairs(&inv).into_iter().any(|(x, sa, y, da)| {
                    ((x, y) == (i, j) || (x, y) == (j, i))
                        && every.iter().any(|t| {
                            evaluate(&p, &inv.nodes()[x], sa, &inv.nodes()[y], da, t).is_allow()
                        })
                });
                prop_assert!(some, "{} sees {} but nothing is allowed", a.name, b.name);
            }
        }
        // SSH grants are exactly the reference's, on both ends, and name
        // only rules the compiled policy explains.
        for n in inv.nodes() {
            let cp = c.node(&n.name).unwrap();
            let (inb, out) = reference_grants(&p, inv.nodes(), n);
            prop_assert_eq!(&cp.ssh_inbound, &inb, "ssh_inbound of {}", n.name);
            prop_assert_eq!(&cp.ssh_outbound, &out, "ssh_outbound of {}", n.name);
            for g in cp.ssh_inbound.iter().chain(&cp.ssh_outbound) {
                prop_assert!(c.visible_peers(&n.name).contains(&g.peer));
                for id in &g.rules {
                    prop_assert!(cp.rules.iter().any(|r| r.id == *id));
                }
            }
        }
    }

    /// Adding a deny rule anywhere never allows more.
    #[test]
    fn adding_a_deny_never_allows_more(inv in arb_inventory(), p in arb_policy(), mut d in arb_rule(), at in 0usize..8, t in arb_transport()) {
        d.action = Action::Deny;
        d.name = None;
        let mut q = p.clone();
        q.rules.insert(at.min(q.rules.len()), d);
        let (cp, cq) = (compile(&p, &inv), compile(&q, &inv));
        for (i, sa, j, da) in all_pairs(&inv) {
            let (a, b) = (&inv.nodes()[i], &inv.nodes()[j]);
            if evaluate(&q, a, sa, b, da, &t).is_allow() {
                prop_assert!(evaluate(&p, a, sa, b, da, &t).is_allow());
            }
        }
        for n in inv.nodes() {
            for peer in cq.visible_peers(&n.name) {
                prop_assert!(cp.visible_peers(&n.name).contains(peer));
            }
        }
    }

    /// Without rules nothing is allowed and nobody sees anybody.
    #[test]
    fn no_rules_deny_everything(inv in arb_inventory(), mut p in arb_policy(), t in arb_transport()) {
        p.rules.clear();
        p.ssh.clear();
        let c = compile(&p, &inv);
        for n in inv.nodes() {
            prop_assert!(c.visible_peers(&n.name).is_empty());
        }
        for (i, sa, j, da) in all_pairs(&inv) {
            prop_assert_eq!(evaluate(&p, &inv.nodes()[i], sa, &inv.nodes()[j], da, &t), RuleVerdict::NoRule);
        }
    }

    /// The text format round-trips every valid policy.
    #[test]
    fn text_round_trips(p in arb_policy()) {
        let text = p.to_text();
        let q = match parse(&text) {
            Ok(q) => q,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
        };
        prop_assert_eq!(q.to_text(), text);
        let strip = |mut p: Policy| {
            p.groups.values_mut().for_each(|g| g.line = 0);
            p.rules.iter_mut().for_each(|r| r.line = 0);
            p.ssh.iter_mut().for_each(|r| r.line = 0);
            p
        };
        prop_assert_eq!(strip(q), strip(p));
    }

    /// The parser never panics, on noise or on damaged valid text.
    #[test]
    fn parse_never_panics(s in "\\PC{0,200}", p in arb_policy(), cut in any::<proptest::sample::Index>(), junk in "[\\[\\]\"=,:\\n a-z0-9-]{0,8}") {
        let _ = parse(&s);
        let mut text = p.to_text();
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.insert_str(at, &junk);
        match parse(&text) {
            Err(e) => {
                for err in e.errors() {
                    prop_assert!(err.line >= 1 && err.column >= 1, "{err}");
                }
            }
            Ok(q) => prop_assert!(q.validate().is_ok(), "parsed but invalid:\n{text}"),
        }
    }

    /// The packet parser never panics.
    #[test]
    fn packet_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = FiveTuple::parse(&bytes);
    }

    /// Under any sequence of packets and clock steps, the table stays within
    /// capacity; every new allow is the rules' allow; after an empty policy
    /// replaces the current one, nothing passes.
    #[test]
    fn engine_invariants(
        inv in arb_inventory(),
        p in arb_policy(),
        steps in proptest::collection::vec((0usize..NODES, 0usize..NODES, arb_transport(), any::<bool>(), 0u64..40_000, any::<bool>()), 1..60),
    ) {
        let cfg = ConntrackConfig { capacity: 3, ..ConntrackConfig::default() };
        let c = compile(&p, &inv);
        let me = &inv.nodes()[0];
        let mut e = Engine::new(c.node(&me.name).unwrap().clone(), cfg).unwrap();
        let matcher = Matcher::new(c.node(&me.name).unwrap()).unwrap();
        let mut now = t0();
        let mine = addrs_of(me);
        for (a, b, t, egress, dt, timer) in steps {
            now += Duration::from_millis(dt);
            if timer {
                e.handle_timeout(now);
            }
            let peer = addrs_of(&inv.nodes()[b.max(1)]);
            let (Some(&la), Some(&pa)) = (mine.get(a % mine.len().max(1)), peer.first()) else { continue };
            let (dir, pkt) = if egress {
                (Direction::Egress, FiveTuple { src: la, dst: pa, transport: t })
            } else {
                (Direction::Ingress, FiveTuple { src: pa, dst: la, transport: t })
            };
            let pkt = if a % 2 == 0 { pkt } else { FiveTuple { transport: pkt.reversed().transport, ..pkt } };
            let v = e.decide(dir, &pkt, now);
            if let Verdict::Allow { via: Via::New, rule } = v {
                prop_assert_eq!(matcher.evaluate(dir, &pkt), RuleVerdict::Allow(rule));
            }
            prop_assert!(e.flow_count() <= 3);
            if let Some((at, _)) = e.poll_timeout() {
                prop_assert!(e.flows().all(|f| f.deadline >= at));
            }
        }
        let flows: Vec<Flow> = e.flows().cloned().collect();
        e.replace_policy(CompiledPolicy::default(), now).unwrap();
        for f in flows {
            prop_assert!(!e.decide(f.direction.reverse(), &f.opened_by.reversed(), now).is_allow());
        }
    }
}

// ------------------------------------------------------- incremental compile

/// One step of a live policy's life.
#[derive(Debug, Clone)]
enum LiveStep {
    /// Node `i` joins or changes: tags, networks with a host byte (small, so two
    /// nodes may share an address), a routed subnet, and whether it is renamed.
    /// Also the services it provides and its SSH port (picks).
    Upsert(
        usize,
        Vec<&'static str>,
        Vec<(usize, u8)>,
        bool,
        bool,
        Vec<usize>,
        u8,
    ),
    Remove(usize),
    SetPolicy(Policy),
}

fn arb_live_step() -> impl Strategy<Value = LiveStep> {
    prop_oneof![
        6 => (
            0..NODES,
            proptest::sample::subsequence(TAGS.to_vec(), 0..=2),
            proptest::collection::vec((0usize..2, 1u8..6), 0..=2),
            proptest::bool::weighted(0.15),
            proptest::bool::weighted(0.2),
            proptest::sample::subsequence(vec![0usize, 1, 2], 0..=2),
            0u8..3,
        )
            .prop_map(|(i, tags, nets, routes, renamed, services, ssh)| {
                LiveStep::Upsert(i, tags, nets, routes, renamed, services, ssh)
            }),
        2 => (0..NODES).prop_map(LiveStep::Remove),
        1 => arb_policy().prop_map(LiveStep::SetPolicy),
    ]
}

fn live_facts(
    i: usize,
    tags: &[&str],
    nets: &[(usize, u8)],
    routes: bool,
    renamed: bool,
    services: &[usize],
    ssh: u8,
) -> NodeFacts {
    let mut networks: Vec<Membership> = Vec::new();
    for &(j, host) in nets {
        if networks.iter().any(|m| m.network == NETS[j]) {
            continue;
        }
        networks.push(Membership {
            network: NETS[j].into(),
            addrs: vec![
                IpAddr::V4(Ipv4Addr::new(100, 64, j as u8, host)),
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    j as u16,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::from(host),
                )),
            ],
        });
    }
    NodeFacts {
        services: service_facts(services),
        ssh_port: ssh_port(ssh),
        name: if renamed {
            format!("r{i}")
        } else {
            format!("n{i}")
        },
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        networks,
        // Some routes cover other nodes' overlay addresses (a subnet selector or
        // `*` then picks both), so removals from aggregates must check coverage.
        routed_subnets: match (routes, i % 2) {
            (false, _) => Vec::new(),
            (true, 0) => vec!["100.64.0.0/30".parse().unwrap()],
            (true, _) => vec![format!("10.{i}.0.0/16").parse().unwrap()],
        },
    }
}

/// Per node id: the from-scratch compile (visible peers by id) of `facts`.
fn reference(
    policy: &Policy,
    facts: &std::collections::BTreeMap<usize, NodeFacts>,
) -> std::collections::BTreeMap<usize, (CompiledPolicy, Vec<usize>)> {
    let inv = Inventory::new(facts.values().cloned().collect()).unwrap();
    let c = compile(policy, &inv);
    let id_of = |name: &str| {
        facts
            .iter()
            .find(|(_, f)| f.name == name)
            .map(|(i, _)| *i)
            .unwrap()
    };
    facts
        .iter()
        .map(|(i, f)| {
            let mut cp = c.node(&f.name).unwrap().clone();
            let mut vis: Vec<usize> = cp.visible_peers.iter().map(|n| id_of(n)).collect();
            vis.sort_unstable();
            cp.visible_peers = Vec::new();
            (*i, (cp, vis))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After any sequence of joins, changes, removals and policy replacements
    /// (flushed in batches), every node's incrementally compiled policy and
    /// visible peers equal a from-scratch compile; the flush reports exactly the
    /// nodes whose compiled policy changed, and the transition answers
    /// visibility as it was before.
    #[test]
    fn live_policy_equals_a_fresh_compile(
        p in arb_policy(),
        batches in proptest::collection::vec(proptest::collection::vec(arb_live_step(), 1..5), 1..8),
    ) {
        let mut policy = p;
        let mut facts: std::collections::BTreeMap<usize, NodeFacts> = Default::default();
        let mut live: LivePolicy<usize> = LivePolicy::new(policy.clone(), Vec::new());
        let mut prev = reference(&policy, &facts);
        for batch in batches {
            let mut replaced: Option<Transition<usize>> = None;
            let mut changed = std::collections::BTreeSet::new();
            for step in batch {
                match step {
                    LiveStep::Upsert(i, tags, nets, routes, renamed, services, ssh) => {
                        let f = live_facts(i, &tags, &nets, routes, renamed, &services, ssh);
                        facts.insert(i, f.clone());
                        live.upsert(i, f);
                    }
                    LiveStep::Remove(i) => {
                        facts.remove(&i);
                        live.remove(&i);
                    }
                    LiveStep::SetPolicy(np) => {
                        policy = np.clone();
                        let r = live.set_policy(np);
                        changed.extend(r.changed);
                        // The first replacement's transition knows the state before the batch.
                        replaced.get_or_insert(r.transition);
                    }
                }
            }
            let flushed = live.flush();
            changed.extend(flushed.changed);
            let transition = replaced.unwrap_or(flushed.transition);
            let now = reference(&policy, &facts);
            for (i, (cp, vis)) in &now {
                prop_assert_eq!(live.compiled(i).map(|c| &**c), Some(cp), "node {}", i);
                prop_assert_eq!(&live.visible_peers(i), vis, "node {}", i);
                if prev.get(i).map(|p| &p.0) != Some(cp) {
                    prop_assert!(changed.contains(i), "node {} changed but was not reported", i);
                }
            }
            for i in 0..NODES {
                for j in 0..NODES {
                    let before = prev.get(&i).is_some_and(|p| p.1.contains(&j));
                    let after = now.get(&i).is_some_and(|p| p.1.contains(&j));
                    if replaced_is_none(&transition) && before != after {
                        let nodes: Vec<usize> = transition.changed_nodes().unwrap().copied().collect();
                        prop_assert!(nodes.contains(&i) || nodes.contains(&j), "{}-{} flipped unreported", i, j);
                    }
                    prop_assert_eq!(transition.was_visible(&live, &i, &j), before, "before {}-{}", i, j);
                }
            }
            prev = now;
        }
    }
}

fn replaced_is_none(t: &Transition<usize>) -> bool {
    t.changed_nodes().is_some()
}

#[test]
fn a_check_of_proto_any_covers_every_protocol() {
    assert_eq!(
        Service::for_check(Proto::Any, Some(443)),
        Ok(vec![Service::Tcp(443), Service::Udp(443), Service::Icmp])
    );
    assert_eq!(
        Service::for_check(Proto::Any, None),
        Err(PolicyErrorKind::AnyNeedsPort)
    );
    assert_eq!(
        Service::for_check(Proto::Tcp, Some(22)),
        Ok(vec![Service::Tcp(22)])
    );
    assert_eq!(
        Service::for_check(Proto::Icmp, None),
        Ok(vec![Service::Icmp])
    );
    assert_eq!(
        Service::for_check(Proto::Udp, None),
        Err(PolicyErrorKind::MissingPort(Proto::Udp))
    );
    assert_eq!(
        Service::for_check(Proto::Any, Some(0)),
        Err(PolicyErrorKind::BadPort("0".into()))
    );
}
