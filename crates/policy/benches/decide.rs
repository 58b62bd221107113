//! Per-packet policy cost: the decision for a new flow with 10 and with 10,000
//! rules in the policy (only a few concern the peer; the rest are about other
//! nodes, which the per-peer index must skip), and the conntrack hit of an
//! established flow.
//!
//! `cargo bench -p weft-policy --bench decide`

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "benchmark setup"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weft_policy::{
    ConntrackConfig, Direction, Engine, FiveTuple, Inventory, Membership, NodeFacts, compile, parse,
};

fn node(name: &str, tag: &str, addr: Ipv4Addr) -> NodeFacts {
    NodeFacts {
        services: Vec::new(),
        ssh_port: None,
        name: name.into(),
        tags: vec![tag.into()],
        networks: vec![Membership {
            network: "lab".into(),
            addrs: vec![IpAddr::V4(addr)],
        }],
        routed_subnets: vec![],
    }
}

/// A policy with `rules` rules: web may reach db on 5432, plus `rules - 1`
/// rules between other nodes (each an allow on its own port).
fn engine(rules: usize) -> Engine {
    let others = 200.min(rules);
    let mut nodes = vec![
        node("web", "web", Ipv4Addr::new(100, 64, 0, 2)),
        node("db", "db", Ipv4Addr::new(100, 64, 0, 3)),
    ];
    for i in 0..others {
        let a = Ipv4Addr::new(100, 64, 1 + (i / 250) as u8, (i % 250) as u8 + 2);
        nodes.push(node(&format!("n{i}"), &format!("t{i}"), a));
    }
    let mut text = String::from(
        "[[rule]]\nname = \"web to db\"\naction = \"allow\"\nfrom = [\"tag:web\"]\nto = [\"tag:db\"]\nproto = \"tcp\"\nports = [5432]\n",
    );
    for r in 1..rules {
        let i = r % others.max(1);
        let j = (r * 7 + 1) % others.max(1);
        text.push_str(&format!(
            "[[rule]]\naction = \"allow\"\nfrom = [\"tag:t{i}\"]\nto = [\"tag:t{j}\"]\nproto = \"tcp\"\nports = [{}]\n",
            1000 + (r % 60000)
        ));
    }
    let policy = parse(&text).unwrap();
    let compiled = compile(&policy, &Inventory::new(nodes).unwrap());
    Engine::new(
        compiled.node("db").unwrap().clone(),
        ConntrackConfig::default(),
    )
    .unwrap()
}

fn decide(c: &mut Criterion) {
    let web = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
    let db = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));
    let mut g = c.benchmark_group("policy-decide");
    for rules in [10usize, 10_000] {
        let mut eng = engine(rules);
        let now = Instant::now();
        let mut port = 1024u16;
        g.bench_with_input(BenchmarkId::new("new-flow", rules), &rules, |b, _| {
            b.iter(|| {
                // A fresh source port each time: always a rule lookup, never a hit.
                port = port.wrapping_add(1).max(1024);
                let t = FiveTuple::tcp(web, port, db, 5432, 0x02);
                black_box(eng.decide(Direction::Ingress, &t, now))
            })
        });
    }
    let mut eng = engine(10_000);
    let now = Instant::now();
    let t = FiveTuple::tcp(web, 40000, db, 5432, 0x02);
    eng.decide(Direction::Ingress, &t, now);
    let ack = FiveTuple::tcp(web, 40000, db, 5432, 0x10);
    g.bench_function("established-hit", |b| {
        b.iter(|| black_box(eng.decide(Direction::Ingress, black_box(&ack), now)))
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
