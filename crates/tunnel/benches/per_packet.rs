//! Per-packet cost of the data-plane core, to guard against regressions (issue 8):
//!
//! - `encrypt`: a 1380-byte TCP segment from the TUN through routing, egress
//!   policy (an established flow: the conntrack hit) and WireGuard encryption;
//! - `decrypt`: the datagram back through authentication, anti-spoofing, ingress
//!   policy and decryption;
//! - `encrypt_batch_44`: the 44 segments of one 64 KiB offload read through
//!   `handle_tun_batch` (per-batch cost; divide by 44);
//! - each with the policy enforced (`policy_on`); built with
//!   `--features unenforced-benchmark-only` the same cases run without
//!   enforcement (`policy_off`), so the price of enforcement shows. Without the
//!   feature nothing turns enforcement off: a node with no policy drops everything.
//!
//! `cargo bench -p weft-tunnel --bench per_packet`
//! (`-- --features unenforced-benchmark-only` for `policy_off`)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "benchmark setup; one real Instant to start from"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_proto::service::{Health, ServicePort, ServiceProto};
use weft_tunnel::batch::{DatagramBatch, PacketBatch};
use weft_tunnel::{
    Backend, NetOutcome, NetworkConfig, Node, NodeConfig, PeerConfig, ServiceNat, TunOutcome,
};

const POLICY: &str = r#"
[[rule]]
name = "a to b"
action = "allow"
from = ["tag:a"]
to = ["tag:b"]
proto = "tcp"
ports = [5201]
"#;

struct Pair {
    a: Node,
    b: Node,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    a_ip: IpAddr,
    b_ip: IpAddr,
}

fn identity() -> Identity {
    Identity::mint(
        &mut rand_core::OsRng,
        Difficulty::new(0).unwrap(),
        &SearchOptions::default(),
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap()
}

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, len: usize) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    let c = weft_tunnel::ip::checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

/// The VIP of [`pair_with`]'s service, whose one instance is `b`.
const VIP: [u8; 4] = [100, 127, 255, 1];

/// Two nodes with an established session and flow.
fn pair() -> Pair {
    pair_with(false)
}

/// [`pair`], `a` consuming a service at [`VIP`] (5201/tcp) served by `b`
/// when `vip`.
fn pair_with(vip: bool) -> Pair {
    let (ia, ib) = (identity(), identity());
    let now = Instant::now();
    let mut p = Pair {
        a: Node::new(ia.node_key(), *ia.x25519_secret(), [1; 32], now),
        b: Node::new(ib.node_key(), *ib.x25519_secret(), [2; 32], now),
        a_addr: SocketAddr::from(([192, 0, 2, 1], 51820)),
        b_addr: SocketAddr::from(([192, 0, 2, 2], 51820)),
        a_ip: IpAddr::from([100, 64, 0, 1]),
        b_ip: IpAddr::from([100, 64, 0, 2]),
    };
    let peers = vec![
        PeerConfig {
            key: ia.node_key(),
            name: "a".into(),
            addresses: vec![(0, p.a_ip)],
            endpoints: vec![p.a_addr],
            routes: vec![],
        },
        PeerConfig {
            key: ib.node_key(),
            name: "b".into(),
            addresses: vec![(0, p.b_ip)],
            endpoints: vec![p.b_addr],
            routes: vec![],
        },
    ];
    let compiled = {
        let facts = |name: &str, ip| weft_policy::NodeFacts {
            services: Vec::new(),
            ssh_port: None,
            name: name.into(),
            tags: vec![name.into()],
            networks: vec![weft_policy::Membership {
                network: "bench".into(),
                addrs: vec![ip],
            }],
            routed_subnets: vec![],
        };
        let inv =
            weft_policy::Inventory::new(vec![facts("a", p.a_ip), facts("b", p.b_ip)]).unwrap();
        weft_policy::compile(&weft_policy::parse(POLICY).unwrap(), &inv)
    };
    for (node, ip, name) in [(&mut p.a, p.a_ip, "a"), (&mut p.b, p.b_ip, "b")] {
        node.apply_config(
            now,
            &NodeConfig {
                networks: vec![NetworkConfig {
                    local_addresses: vec![ip],
                    serves: vec![],
                }],
                peers: peers.clone(),
                policy: compiled.node(name).cloned(),
                services: if vip && name == "a" {
                    vec![ServiceNat {
                        name: "perf".into(),
                        net: 0,
                        vip: VIP.into(),
                        ports: vec![ServicePort {
                            port: 5201,
                            proto: ServiceProto::Tcp,
                        }],
                        backends: vec![Backend {
                            addr: Ipv4Addr::new(100, 64, 0, 2),
                            health: Health::Healthy,
                        }],
                    }]
                } else {
                    Vec::new()
                },
            },
        );
    }
    // Handshake: shuttle control datagrams until quiet, then open the flow.
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        while let Some(t) = p.a.poll_transmit() {
            p.b.handle_datagram(now, p.a_addr, &t.payload, &mut buf);
        }
        while let Some(t) = p.b.poll_transmit() {
            p.a.handle_datagram(now, p.b_addr, &t.payload, &mut buf);
        }
    }
    let syn = tcp(p.a_ip, p.b_ip, 40000, 5201, 0x02, 40);
    let synack = tcp(p.b_ip, p.a_ip, 5201, 40000, 0x12, 40);
    for _ in 0..3 {
        let d = match p.a.handle_tun_packet(now, 0, &syn, &mut buf) {
            TunOutcome::Send { datagram, .. } => Some(datagram.to_vec()),
            _ => None,
        };
        if let Some(d) = d {
            p.b.handle_datagram(now, p.a_addr, &d, &mut vec![0u8; 4096]);
        }
        while let Some(t) = p.a.poll_transmit() {
            p.b.handle_datagram(now, p.a_addr, &t.payload, &mut buf);
        }
        while let Some(t) = p.b.poll_transmit() {
            p.a.handle_datagram(now, p.b_addr, &t.payload, &mut buf);
        }
    }
    let d = match p.b.handle_tun_packet(now, 0, &synack, &mut buf) {
        TunOutcome::Send { datagram, .. } => datagram.to_vec(),
        other => panic!("session not up: {other:?}"),
    };
    assert!(matches!(
        p.a.handle_datagram(now, p.b_addr, &d, &mut vec![0u8; 4096]),
        NetOutcome::WriteTun { .. }
    ));
    p
}

fn per_packet(c: &mut Criterion) {
    {
        let tag = if cfg!(feature = "unenforced-benchmark-only") {
            "policy_off"
        } else {
            "policy_on"
        };
        let mut p = pair();
        let now = Instant::now();
        let seg = tcp(p.a_ip, p.b_ip, 40000, 5201, 0x10, 1380);
        let mut out = vec![0u8; 2048];
        c.bench_function(&format!("encrypt/{tag}"), |bench| {
            bench.iter(|| {
                let r = p.a.handle_tun_packet(now, 0, black_box(&seg), &mut out);
                assert!(matches!(r, TunOutcome::Send { .. }));
            })
        });
        let mut plain = vec![0u8; 2048];
        let (a, b) = (&mut p.a, &mut p.b);
        c.bench_function(&format!("decrypt/{tag}"), |bench| {
            bench.iter_batched_ref(
                || match a.handle_tun_packet(now, 0, &seg, &mut out) {
                    TunOutcome::Send { datagram, .. } => datagram.to_vec(),
                    other => panic!("{other:?}"),
                },
                |d| {
                    let r = b.handle_datagram(now, p.a_addr, black_box(d), &mut plain);
                    assert!(matches!(r, NetOutcome::WriteTun { .. }));
                },
                BatchSize::SmallInput,
            )
        });
        let segs: Vec<Vec<u8>> = (0..44).map(|_| seg.clone()).collect();
        let mut batch = DatagramBatch::new(1500, 64);
        let mut replies = PacketBatch::new(12, 4);
        c.bench_function(&format!("encrypt_batch_44/{tag}"), |bench| {
            bench.iter(|| {
                batch.clear();
                a.handle_tun_batch(
                    now,
                    0,
                    segs.iter().map(Vec::as_slice),
                    &mut batch,
                    &mut replies,
                );
                assert_eq!(batch.runs().map(|(r, _)| r.count()).sum::<usize>(), 44);
            })
        });
    }
}

/// The same encryption with the destination a service VIP: the price of the
/// per-flow lookup and the rewrite (copy + incremental checksums).
fn per_packet_vip(c: &mut Criterion) {
    let mut p = pair_with(true);
    let now = Instant::now();
    let direct = tcp(p.a_ip, p.b_ip, 40000, 5201, 0x10, 1380);
    let vip = tcp(p.a_ip, IpAddr::from(VIP), 40000, 5201, 0x10, 1380);
    let mut out = vec![0u8; 2048];
    for (name, seg) in [("direct", &direct), ("vip", &vip)] {
        c.bench_function(&format!("encrypt_service/{name}"), |bench| {
            bench.iter(|| {
                let r = p.a.handle_tun_packet(now, 0, black_box(seg), &mut out);
                assert!(matches!(r, TunOutcome::Send { .. }), "{r:?}");
            })
        });
    }
}

criterion_group!(benches, per_packet, per_packet_vip);
criterion_main!(benches);
