//! `service:` selectors and `[[ssh]]` rules: compile, explanations, checks
//! and tests, and the live compile's dependencies on services and SSH ports.

use std::net::IpAddr;

use weft_proto::service::{ServicePort, ServiceProto};

use crate::tests::t0;
use crate::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, tags: &[&str], nets: &[(&str, &str)]) -> NodeFacts {
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
        routed_subnets: Vec::new(),
    }
}

fn provides(
    mut n: NodeFacts,
    name: &str,
    network: &str,
    ports: &[(u16, ServiceProto)],
) -> NodeFacts {
    n.services.push(ServiceFact {
        name: name.into(),
        network: network.into(),
        ports: ports
            .iter()
            .map(|&(port, proto)| ServicePort { port, proto })
            .collect(),
    });
    n
}

/// web1 (prod); db1, db2 in prod and staging, providing db in prod on
/// 5432/tcp and 9187/tcp (db2 also in staging on 3306/tcp); laptop (tag ops)
/// in prod, SSH server on db1 (port 22) only.
fn nodes() -> Vec<NodeFacts> {
    let db = |name, a, b| {
        let n = node(name, &["db"], &[("prod", a), ("staging", b)]);
        provides(
            n,
            "db",
            "prod",
            &[(5432, ServiceProto::Tcp), (9187, ServiceProto::Tcp)],
        )
    };
    let mut db1 = db("db1", "100.64.0.10", "100.65.0.10");
    db1.ssh_port = Some(22);
    let db2 = provides(
        db("db2", "100.64.0.11", "100.65.0.11"),
        "db",
        "staging",
        &[(3306, ServiceProto::Tcp)],
    );
    vec![
        node("web1", &["web"], &[("prod", "100.64.0.1")]),
        db1,
        db2,
        node("cache", &[], &[("prod", "100.64.0.20")]),
        node("laptop", &["ops"], &[("prod", "100.64.0.30")]),
    ]
}

fn policy(text: &str) -> Policy {
    match parse(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn compiled(text: &str) -> Compiled {
    compile(&policy(text), &Inventory::new(nodes()).unwrap())
}

fn syn(src: &str, dst: &str, port: u16) -> FiveTuple {
    FiveTuple::tcp(ip(src), 40000, ip(dst), port, tcp_flags::SYN)
}

const WEB_DB: &str = r#"
[[rule]]
name = "web uses db"
action = "allow"
from = "tag:web"
to = "service:db"
"#;

#[test]
fn a_service_selector_opens_only_the_providers_on_the_services_ports() {
    let c = compiled(WEB_DB);
    let web = Matcher::new(c.node("web1").unwrap()).unwrap();
    let db1 = Matcher::new(c.node("db1").unwrap()).unwrap();
    for port in [5432, 9187] {
        let p = syn("100.64.0.1", "100.64.0.10", port);
        assert!(web.evaluate(Direction::Egress, &p).is_allow(), "{port}");
        assert!(db1.evaluate(Direction::Ingress, &p).is_allow(), "{port}");
    }
    // Not another port, not UDP, not the provider's address in another network.
    for p in [
        syn("100.64.0.1", "100.64.0.10", 22),
        FiveTuple::udp(ip("100.64.0.1"), 40000, ip("100.64.0.10"), 5432),
        syn("100.64.0.1", "100.65.0.10", 5432),
    ] {
        assert!(!web.evaluate(Direction::Egress, &p).is_allow(), "{p}");
    }
    // db2's staging instance is on 3306, in staging: web1 (prod only) has no
    // address there, but the flow rule still names it for that port only.
    assert!(
        web.evaluate(Direction::Egress, &syn("100.64.0.1", "100.65.0.11", 3306))
            .is_allow()
    );
    assert!(
        !web.evaluate(Direction::Egress, &syn("100.64.0.1", "100.64.0.11", 3306))
            .is_allow()
    );
    assert_eq!(c.visible_peers("web1"), ["db1", "db2"]);
    assert!(c.visible_peers("cache").is_empty());
    assert_eq!(c.visible_peers("db1"), ["web1"]);
}

#[test]
fn a_rules_own_ports_narrow_a_service_and_an_empty_intersection_opens_nothing() {
    let c = compiled(&format!(
        "{WEB_DB}proto = \"tcp\"\nports = [\"5000-6000\"]\n"
    ));
    let web = Matcher::new(c.node("web1").unwrap()).unwrap();
    assert!(
        web.evaluate(Direction::Egress, &syn("100.64.0.1", "100.64.0.10", 5432))
            .is_allow()
    );
    assert!(
        !web.evaluate(Direction::Egress, &syn("100.64.0.1", "100.64.0.10", 9187))
            .is_allow()
    );
    let c = compiled(&format!("{WEB_DB}proto = \"udp\"\n"));
    assert!(c.visible_peers("web1").is_empty());
    assert!(c.node("web1").unwrap().outbound.is_empty());
}

const SSH: &str = r#"
[[rule]]
action = "allow"
from = "tag:web"
to = "tag:web"

[[ssh]]
name = "ops"
from = "tag:ops"
to = "tag:db"
users = ["deploy", "postgres"]

[[ssh]]
from = "*"
to = "node:db1"
users = "*"
"#;

#[test]
fn ssh_rules_grant_logins_and_open_the_ssh_port_both_ways() {
    let c = compiled(SSH);
    let db1 = c.node("db1").unwrap();
    // laptop gets both rules' users, merged; web1 and cache the second's.
    let peers: Vec<&str> = db1.ssh_inbound.iter().map(|g| g.peer.as_str()).collect();
    assert_eq!(peers, ["cache", "db2", "laptop", "web1"]);
    let laptop = db1.ssh_inbound.iter().find(|g| g.peer == "laptop").unwrap();
    assert_eq!(laptop.users, ["*", "deploy", "postgres"]);
    assert_eq!(laptop.rules, [RuleId(1), RuleId(2)]);
    assert_eq!(laptop.addrs, [IpNet::from(ip("100.64.0.30"))]);
    let out = &c.node("laptop").unwrap().ssh_outbound;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].peer, "db1");
    assert_eq!(out[0].addrs, [IpNet::from(ip("100.64.0.10"))]);
    // db2 runs no SSH server: nothing towards it, nothing opened.
    assert!(c.node("db2").unwrap().ssh_inbound.is_empty());
    assert!(!c.visible_peers("laptop").contains(&"db2".to_string()));
    // The packet permission, explained by the ssh rule and its line.
    let mut e = Engine::new(db1.clone(), ConntrackConfig::default()).unwrap();
    let p = syn("100.64.0.30", "100.64.0.10", 22);
    let x = e.explain(Direction::Ingress, &p, t0());
    assert_eq!(x.rules_verdict, RuleVerdict::Allow(RuleId(1)));
    let shown = x.to_string();
    assert!(shown.contains("rule \"ssh: ops\" (line 7)"), "{shown}");
    assert!(e.decide(Direction::Ingress, &p, t0()).is_allow());
    assert!(
        !e.decide(
            Direction::Ingress,
            &syn("100.64.0.30", "100.64.0.10", 23),
            t0()
        )
        .is_allow()
    );
    let unnamed = db1.rules.iter().find(|r| r.id == RuleId(2)).unwrap();
    assert_eq!(unnamed.to_string(), "rule \"ssh #2\" (line 13)");
}

#[test]
fn a_deny_on_the_ssh_port_drops_the_grant_and_the_packets() {
    let text = format!(
        "{SSH}\n[[rule]]\nname = \"no ssh from laptop\"\naction = \"deny\"\n\
         from = \"node:laptop\"\nto = \"*\"\nproto = \"tcp\"\nports = [22]\n"
    );
    let c = compiled(&text);
    let db1 = c.node("db1").unwrap();
    assert!(db1.ssh_inbound.iter().all(|g| g.peer != "laptop"));
    assert!(c.node("laptop").unwrap().ssh_outbound.is_empty());
    assert!(db1.ssh_inbound.iter().any(|g| g.peer == "web1"));
    let m = Matcher::new(db1).unwrap();
    // Nothing else relates them: they do not even see each other.
    assert!(
        !m.evaluate(Direction::Ingress, &syn("100.64.0.30", "100.64.0.10", 22))
            .is_allow()
    );
    assert!(!c.visible_peers("db1").contains(&"laptop".to_string()));
}

#[test]
fn checks_and_tests_understand_service_and_ssh() {
    let text = format!(
        "{WEB_DB}{SSH}\n[[test]]\nfrom = \"node:web1\"\nto = \"service:db\"\nproto = \"tcp\"\n\
         port = 5432\nexpect = \"allow\"\n\n[[test]]\nfrom = \"node:cache\"\nto = \"service:db\"\n\
         proto = \"tcp\"\nport = 5432\nexpect = \"deny\"\n\n[[test]]\nfrom = \"node:web1\"\n\
         to = \"service:db\"\nproto = \"tcp\"\nport = 22\nexpect = \"allow\"\n"
    );
    let p = policy(&text);
    let inv = Inventory::new(nodes()).unwrap();
    let failures = p.run_tests(&inv);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = failures[0].to_string();
    assert!(f.contains("service:db tcp/22"), "{f}");
    let r = p.check(
        &inv,
        &Selector::Node("laptop".into()),
        &Selector::Node("db1".into()),
        Service::Tcp(22),
    );
    assert!(r.all_allowed(), "{r}");
    assert!(
        r.to_string().contains("allowed by rule \"ssh: ops\""),
        "{r}"
    );
    // No provider of "cache": a representative provides it.
    let r = p.check(
        &inv,
        &Selector::Tag("web".into()),
        &Selector::Service("cache".into()),
        Service::Tcp(6379),
    );
    assert!(r.representative && r.all_denied(), "{r}");
}

#[test]
fn live_recompiles_the_dependents_of_a_service_or_an_ssh_port() {
    let p = policy(&format!("{WEB_DB}{SSH}"));
    let ids: Vec<(usize, NodeFacts)> = nodes().into_iter().enumerate().collect();
    let mut live = LivePolicy::new(p.clone(), ids.clone());
    // cache starts providing db: web1 may now reach it.
    let cache = provides(ids[3].1.clone(), "db", "prod", &[(5432, ServiceProto::Tcp)]);
    live.upsert(3, cache.clone());
    let f = live.flush();
    assert!(
        f.changed.contains(&0) && f.changed.contains(&3),
        "{:?}",
        f.changed
    );
    assert!(live.is_visible(&0, &3));
    // db2 starts an SSH server: laptop gets a grant towards it.
    let mut db2 = ids[2].1.clone();
    db2.ssh_port = Some(2222);
    live.upsert(2, db2.clone());
    let f = live.flush();
    assert!(f.changed.contains(&4), "{:?}", f.changed);
    let laptop = live.compiled(&4).unwrap();
    assert!(laptop.ssh_outbound.iter().any(|g| g.peer == "db2"));
    // And all of it equals a fresh compile.
    let mut all: Vec<NodeFacts> = ids.into_iter().map(|(_, n)| n).collect();
    all[3] = cache;
    all[2] = db2;
    let fresh = compile(&p, &Inventory::new(all.clone()).unwrap());
    for (i, n) in all.iter().enumerate() {
        let mut want = fresh.node(&n.name).unwrap().clone();
        want.visible_peers.clear();
        assert_eq!(**live.compiled(&i).unwrap(), want, "{}", n.name);
    }
}
