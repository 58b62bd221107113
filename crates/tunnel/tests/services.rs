//! Service VIPs between two real nodes (WireGuard sessions, a compiled access
//! policy): the policy judges the real addresses, the node's own timers end
//! idle flows, and a configuration change ends the flows of a backend that left.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(
    clippy::disallowed_methods,
    reason = "the harness needs one real Instant to start virtual time from"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_proto::service::{Health, ServicePort, ServiceProto};
use weft_tunnel::ip::{IpView, checksum};
use weft_tunnel::{
    Backend, DropReason, NetOutcome, NetworkConfig, Node, NodeConfig, PeerConfig, ServiceNat,
    TunOutcome,
};

const VIP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 1);
const C: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const P: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// The consumer `c` may open TCP to `p` on 5432 and 6000 only (the service
/// has 5432 and 6001).
const POLICY: &str = r#"
[[rule]]
name = "c to p"
action = "allow"
from = ["tag:c"]
to = ["tag:p"]
proto = "tcp"
ports = [5432, 6000]
"#;

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

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = 6;
    pseudo[11] = 20;
    let c = checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

struct Pair {
    c: Node,
    p: Node,
    c_addr: SocketAddr,
    p_addr: SocketAddr,
    now: Instant,
    c_cfg: NodeConfig,
}

fn service(backends: Vec<Backend>) -> ServiceNat {
    ServiceNat {
        name: "db".into(),
        net: 0,
        vip: VIP,
        ports: [5432, 6001]
            .map(|port| ServicePort {
                port,
                proto: ServiceProto::Tcp,
            })
            .to_vec(),
        backends,
    }
}

fn pair() -> Pair {
    let (ic, ip) = (identity(), identity());
    let now = Instant::now();
    let c_addr = SocketAddr::from(([192, 0, 2, 1], 51820));
    let p_addr = SocketAddr::from(([192, 0, 2, 2], 51820));
    let compiled = {
        let facts = |name: &str, ip: Ipv4Addr| weft_policy::NodeFacts {
            services: Vec::new(),
            ssh_port: None,
            name: name.into(),
            tags: vec![name.into()],
            networks: vec![weft_policy::Membership {
                network: "n".into(),
                addrs: vec![IpAddr::V4(ip)],
            }],
            routed_subnets: vec![],
        };
        let inv = weft_policy::Inventory::new(vec![facts("c", C), facts("p", P)]).unwrap();
        weft_policy::compile(&weft_policy::parse(POLICY).unwrap(), &inv)
    };
    let cfg = |me: Ipv4Addr, name: &str, peer: &Identity, addr: Ipv4Addr, ep| NodeConfig {
        networks: vec![NetworkConfig {
            local_addresses: vec![IpAddr::V4(me)],
            serves: vec![],
        }],
        peers: vec![PeerConfig {
            key: peer.node_key(),
            name: "peer".into(),
            addresses: vec![(0, IpAddr::V4(addr))],
            endpoints: vec![ep],
            routes: vec![],
        }],
        policy: compiled.node(name).cloned(),
        services: Vec::new(),
    };
    let mut c_cfg = cfg(C, "c", &ip, P, p_addr);
    c_cfg.services = vec![service(vec![Backend {
        addr: P,
        health: Health::Healthy,
    }])];
    let mut pr = Pair {
        c: Node::new(ic.node_key(), *ic.x25519_secret(), [1; 32], now),
        p: Node::new(ip.node_key(), *ip.x25519_secret(), [2; 32], now),
        c_addr,
        p_addr,
        now,
        c_cfg,
    };
    pr.c.apply_config(now, &pr.c_cfg);
    pr.p.apply_config(now, &cfg(P, "p", &ic, C, c_addr));
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        while let Some(t) = pr.c.poll_transmit() {
            pr.p.handle_datagram(now, c_addr, &t.payload, &mut buf);
        }
        while let Some(t) = pr.p.poll_transmit() {
            pr.c.handle_datagram(now, p_addr, &t.payload, &mut buf);
        }
    }
    pr
}

/// What the other side's TUN gets for `packet` from `from`'s TUN (None: it
/// did not get there); an ICMP reply to the sender is an `Err`.
fn send(pr: &mut Pair, from_c: bool, packet: &[u8]) -> Result<Option<Vec<u8>>, Vec<u8>> {
    let now = pr.now;
    let (a, b, a_addr) = if from_c {
        (&mut pr.c, &mut pr.p, pr.c_addr)
    } else {
        (&mut pr.p, &mut pr.c, pr.p_addr)
    };
    let mut out = vec![0u8; 2048];
    let d = match a.handle_tun_packet(now, 0, packet, &mut out) {
        TunOutcome::Send { datagram, .. } => datagram.to_vec(),
        TunOutcome::Reply(icmp) => return Err(icmp.to_vec()),
        _ => return Ok(None),
    };
    let mut plain = vec![0u8; 2048];
    Ok(match b.handle_datagram(now, a_addr, &d, &mut plain) {
        NetOutcome::WriteTun { packet, .. } => Some(packet.to_vec()),
        _ => None,
    })
}

fn addrs(p: &[u8]) -> (IpAddr, IpAddr) {
    let v = IpView::parse(p).unwrap();
    (v.src, v.dst)
}

#[test]
fn the_policy_judges_the_real_addresses_and_replies_pass_back_from_the_vip() {
    let mut pr = pair();
    // Allowed: c → p tcp/5432, through the VIP.
    let got = send(&mut pr, true, &tcp(C, VIP, 40000, 5432, 0x02))
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&got), (IpAddr::V4(C), IpAddr::V4(P)));
    // The reply passes p's policy (conntrack) and c's, and comes from the VIP.
    let back = send(&mut pr, false, &tcp(P, C, 5432, 40000, 0x12))
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&back), (IpAddr::V4(VIP), IpAddr::V4(C)));

    // A service port the policy does not open (6001): refused by the policy on
    // the real address, the ICMP error quoting the packet as sent (to the VIP).
    let icmp = send(&mut pr, true, &tcp(C, VIP, 40001, 6001, 0x02)).unwrap_err();
    assert_eq!((icmp[20], icmp[21]), (3, 13), "administratively prohibited");
    assert_eq!(&icmp[28 + 16..28 + 20], &VIP.octets());
    assert_eq!(pr.c.drops().get(DropReason::PolicyNoRule), 1);
    // A port the policy opens but the service lacks (6000): not the service's.
    let icmp = send(&mut pr, true, &tcp(C, VIP, 40002, 6000, 0x02)).unwrap_err();
    assert_eq!((icmp[20], icmp[21]), (3, 3), "port unreachable");
    assert_eq!(pr.c.drops().get(DropReason::ServicePort), 1);

    let st = pr.c.service_status();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].name.as_str(), st[0].vip), ("db", Some(VIP)));
    assert_eq!(
        (st[0].flows_opened, st[0].packets_out, st[0].packets_in),
        (2, 2, 1)
    );
    assert_eq!(st[0].drops_port, 1);
}

#[test]
fn the_nodes_timers_end_idle_flows_and_a_backend_that_leaves_ends_its_flows() {
    let mut pr = pair();
    send(&mut pr, true, &tcp(C, VIP, 40000, 5432, 0x02))
        .unwrap()
        .unwrap();
    // Unanswered: gone 30 s later, on the node's own timer.
    let (due, _) = pr.c.poll_timeout().unwrap();
    assert!(due <= pr.now + Duration::from_secs(30));
    let mut t = pr.now;
    while t < pr.now + Duration::from_secs(31) {
        t += Duration::from_secs(1);
        pr.c.handle_timeout(t);
    }
    assert_eq!(pr.c.service_status()[0].flows, 0);

    // A new flow, answered; then the backend leaves the configuration (the
    // map no longer lists it): its flow ends, the reply is not rewritten.
    pr.now = t;
    send(&mut pr, true, &tcp(C, VIP, 40001, 5432, 0x02))
        .unwrap()
        .unwrap();
    let back = send(&mut pr, false, &tcp(P, C, 5432, 40001, 0x12))
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&back).0, IpAddr::V4(VIP));
    assert_eq!(pr.c.service_status()[0].flows, 1);
    let mut cfg = pr.c_cfg.clone();
    cfg.services = vec![service(vec![])];
    pr.c.apply_config(pr.now, &cfg);
    assert_eq!(pr.c.service_status()[0].flows, 0);
    let back = send(&mut pr, false, &tcp(P, C, 5432, 40001, 0x10))
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&back).0, IpAddr::V4(P), "no flow: left as it is");
    // And new flows find no instance: host unreachable from this node.
    let icmp = send(&mut pr, true, &tcp(C, VIP, 40002, 5432, 0x02)).unwrap_err();
    assert_eq!((icmp[20], icmp[21]), (3, 1));
    assert_eq!(pr.c.drops().get(DropReason::ServiceNoInstance), 1);
}
