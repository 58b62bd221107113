//! Controller-side compile cost of one membership change at 1,000 nodes: a
//! node joins (and leaves again) a network whose members may all reach each
//! other, incrementally ([`LivePolicy`]) and from scratch ([`compile`]), with
//! and without a deny rule that picks every node (the exact, O(n) per node path).
//! Also the cost of replacing the policy (everyone recompiles), and of a join
//! under an `[[ssh]]` rule letting every node log in to every node.
//!
//! `cargo bench -p weft-policy --bench live`

#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weft_policy::{Inventory, LivePolicy, Membership, NodeFacts, Policy, compile, parse};

const N: usize = 1000;

fn node(i: usize) -> NodeFacts {
    NodeFacts {
        services: Vec::new(),
        ssh_port: None,
        name: format!("n{i}"),
        tags: vec!["bench".into()],
        networks: vec![Membership {
            network: "bench".into(),
            addrs: vec![
                IpAddr::V4(Ipv4Addr::from(0x6440_0002 + i as u32)),
                IpAddr::V6(Ipv6Addr::from(
                    0xfd7a_0000_0000_0000_0000_0000_0000_0002 + i as u128,
                )),
            ],
        }],
        routed_subnets: vec![],
    }
}

const MEMBERS: &str =
    "[[rule]]\naction = \"allow\"\nfrom = \"network:bench\"\nto = \"network:bench\"\n";
const DENY: &str = "[[rule]]\naction = \"deny\"\nfrom = \"tag:bench\"\nto = \"tag:bench\"\nproto = \"tcp\"\nports = [23]\n";

fn policy(deny: bool) -> Policy {
    let mut text = MEMBERS.to_owned();
    if deny {
        text.push('\n');
        text.push_str(DENY);
    }
    parse(&text).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("one join at 1,000 nodes");
    g.sample_size(10);
    for deny in [false, true] {
        let label = if deny {
            "with a deny rule"
        } else {
            "allow only"
        };
        let p = policy(deny);
        let mut live = LivePolicy::new(p.clone(), (0..N).map(|i| (i, node(i))));
        g.bench_function(BenchmarkId::new("incremental (join + leave)", label), |b| {
            b.iter(|| {
                live.upsert(N, node(N));
                black_box(live.flush().changed.len());
                live.remove(&N);
                black_box(live.flush().changed.len());
            })
        });
        let inv = Inventory::new((0..=N).map(node).collect()).unwrap();
        g.bench_function(BenchmarkId::new("from scratch (one compile)", label), |b| {
            b.iter(|| black_box(compile(&p, &inv)))
        });
        g.bench_function(BenchmarkId::new("policy replaced", label), |b| {
            b.iter(|| black_box(live.set_policy(p.clone()).changed.len()))
        });
    }
    g.finish();

    // Every node runs an SSH server and everyone may log in everywhere: each
    // server's grants list every other node, so a join changes every node.
    let mut g = c.benchmark_group("one join at 1,000 nodes, [[ssh]] * -> *");
    g.sample_size(10);
    let ssh_node = |i: usize| NodeFacts {
        ssh_port: Some(22),
        ..node(i)
    };
    let p = parse(&format!(
        "{MEMBERS}\n[[ssh]]\nfrom = \"*\"\nto = \"*\"\nusers = \"deploy\"\n"
    ))
    .unwrap();
    let mut live = LivePolicy::new(p.clone(), (0..N).map(|i| (i, ssh_node(i))));
    g.bench_function("incremental (join + leave)", |b| {
        b.iter(|| {
            live.upsert(N, ssh_node(N));
            black_box(live.flush().changed.len());
            live.remove(&N);
            black_box(live.flush().changed.len());
        })
    });
    let inv = Inventory::new((0..=N).map(ssh_node).collect()).unwrap();
    g.bench_function("from scratch (one compile)", |b| {
        b.iter(|| black_box(compile(&p, &inv)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
