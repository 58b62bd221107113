//! Service VIPs through the TUN offload paths, with real packet bytes: a
//! TSO/USO super-packet as the kernel hands it over (virtio-net header, partial
//! checksum) is split by tun-rs's own `gso_split` exactly as
//! `TunDevice::recv_multiple` does, goes through a consumer node's VIP
//! translation and real WireGuard to the provider node, and the provider's
//! super-packet replies come back the same way. Every packet that reaches a
//! TUN must carry complete, valid checksums for its rewritten addresses: the
//! GRO coalescer on the TUN write path only merges packets whose checksums are
//! valid, and writes the merged packet's pseudo-header sum from the addresses
//! the packets then carry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr, gso_split};
use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_proto::service::{Health, ServicePort, ServiceProto};
use weft_tunnel::batch::{DatagramBatch, PacketBatch};
use weft_tunnel::ip::{IpView, checksum, proto};
use weft_tunnel::{
    Backend, DropReason, NetworkConfig, Node, NodeConfig, PeerConfig, ServiceNat, TunOutcome,
};

use super::HDR;
use crate::clock;

const VIP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 1);
const C: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const P: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const GSO: u16 = 1360;

fn identity() -> Identity {
    Identity::mint(
        &mut rand_core::OsRng,
        Difficulty::new(0).expect("difficulty 0"),
        &SearchOptions::default(),
        &AtomicBool::new(false),
        |_| {},
    )
    .expect("mint")
}

struct Pair {
    c: Node,
    p: Node,
    c_addr: SocketAddr,
    p_addr: SocketAddr,
    now: Instant,
}

/// A consumer `c` using the service `db` (VIP 5432/tcp and 53/udp) whose one
/// instance is `p`, both allowing everything, with a WireGuard session up.
fn pair() -> Pair {
    let (ci, pi) = (identity(), identity());
    let now = clock::now();
    let mut pr = Pair {
        c: Node::new(ci.node_key(), *ci.x25519_secret(), [1; 32], now),
        p: Node::new(pi.node_key(), *pi.x25519_secret(), [2; 32], now),
        c_addr: SocketAddr::from(([192, 0, 2, 1], 51820)),
        p_addr: SocketAddr::from(([192, 0, 2, 2], 51820)),
        now,
    };
    let cfg = |me: Ipv4Addr, peer: &Identity, addr: Ipv4Addr, ep, services| NodeConfig {
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
        policy: Some(weft_policy::allow_all("test")),
        services,
    };
    let db = ServiceNat {
        name: "db".into(),
        net: 0,
        vip: VIP,
        ports: vec![
            ServicePort {
                port: 5432,
                proto: ServiceProto::Tcp,
            },
            ServicePort {
                port: 53,
                proto: ServiceProto::Udp,
            },
        ],
        backends: vec![Backend {
            addr: P,
            health: Health::Healthy,
        }],
    };
    pr.c.apply_config(now, &cfg(C, &pi, P, pr.p_addr, vec![db]));
    pr.p.apply_config(now, &cfg(P, &ci, C, pr.c_addr, vec![]));
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        while let Some(t) = pr.c.poll_transmit() {
            pr.p.handle_datagram(now, pr.c_addr, &t.payload, &mut buf);
        }
        while let Some(t) = pr.p.poll_transmit() {
            pr.c.handle_datagram(now, pr.p_addr, &t.payload, &mut buf);
        }
    }
    pr
}

/// A TSO (`tcp`) or USO super-packet from `src:sport` to `dst:dport` as the
/// kernel writes it to a TUN with offloads: one IP header, `segments` ×
/// [`GSO`] bytes of payload, the transport checksum field holding only the
/// pseudo-header sum (`NEEDS_CSUM`).
fn super_packet(
    tcp: bool,
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    segments: usize,
) -> (VirtioNetHdr, Vec<u8>, Vec<u8>) {
    let th = if tcp { 20 } else { 8 };
    let payload: Vec<u8> = (0..segments * usize::from(GSO))
        .map(|i| (i % 251) as u8)
        .collect();
    let total = 20 + th + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = if tcp { proto::TCP } else { proto::UDP };
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    if tcp {
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x18; // PSH ACK
        p[34..36].copy_from_slice(&501u16.to_be_bytes());
    } else {
        let l = u16::try_from(th + usize::from(GSO)).expect("fits");
        p[24..26].copy_from_slice(&l.to_be_bytes());
    }
    p[20 + th..].copy_from_slice(&payload);
    // The partial checksum: the folded pseudo-header sum, not complemented.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = p[9];
    let partial = !checksum(&[&pseudo]);
    let at = 20 + if tcp { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: if tcp {
            VIRTIO_NET_HDR_GSO_TCPV4
        } else {
            VIRTIO_NET_HDR_GSO_UDP_L4
        },
        hdr_len: u16::try_from(20 + th).expect("fits"),
        gso_size: GSO,
        csum_start: 20,
        csum_offset: if tcp { 16 } else { 6 },
    };
    (hdr, p, payload)
}

/// Splits a super-packet as `TunDevice::recv_multiple` does (tun-rs's
/// `gso_split`: a full checksum per segment).
fn split(hdr: VirtioNetHdr, mut raw: Vec<u8>) -> Vec<Vec<u8>> {
    let mut segs = vec![vec![0u8; 1600]; 128];
    let mut sizes = vec![0usize; 128];
    let n = gso_split(&mut raw, hdr, &mut segs, &mut sizes, 0, false).expect("split");
    segs.truncate(n);
    for (s, len) in segs.iter_mut().zip(&sizes) {
        s.truncate(*len);
    }
    segs
}

/// The transport checksum computed from scratch (the field zeroed).
fn transport_checksum(p: &[u8]) -> u16 {
    let v = IpView::parse(p).expect("ip");
    let at = if v.protocol == proto::TCP { 16 } else { 6 };
    let mut seg = p[v.transport_offset..v.total_len].to_vec();
    seg[at..at + 2].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = v.protocol;
    pseudo[10..12].copy_from_slice(&u16::try_from(seg.len()).expect("fits").to_be_bytes());
    match checksum(&[&pseudo, &seg]) {
        0 if v.protocol == proto::UDP => 0xffff,
        c => c,
    }
}

/// Asserts `p` goes `src → dst` with valid IPv4 and TCP/UDP checksums;
/// returns its payload.
fn check(p: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let v = IpView::parse(p).expect("ip");
    assert_eq!((v.src, v.dst), (IpAddr::V4(src), IpAddr::V4(dst)));
    assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
    let at = v.transport_offset + if v.protocol == proto::TCP { 16 } else { 6 };
    let carried = u16::from_be_bytes([p[at], p[at + 1]]);
    assert_eq!(carried, transport_checksum(p), "transport checksum");
    let th = if v.protocol == proto::TCP { 20 } else { 8 };
    p[v.transport_offset + th..v.total_len].to_vec()
}

/// `from`'s TUN read of `segs` → encrypted → `to`'s UDP read → its TUN.
fn cross(
    from: &mut Node,
    to: &mut Node,
    from_addr: SocketAddr,
    now: Instant,
    segs: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut out = DatagramBatch::new(1600 + 64, 128);
    let mut replies = PacketBatch::new(HDR, 4);
    from.handle_tun_batch(
        now,
        0,
        segs.iter().map(Vec::as_slice),
        &mut out,
        &mut replies,
    );
    assert!(replies.is_empty(), "no ICMP error");
    let mut tun = PacketBatch::with_room(HDR, 128, 65_536);
    let datagrams: Vec<Vec<u8>> = out.datagrams().map(|(_, d)| d.to_vec()).collect();
    assert_eq!(datagrams.len(), segs.len(), "every segment encrypted");
    to.handle_datagram_batch(
        now,
        from_addr,
        datagrams.iter().map(Vec::as_slice),
        &mut tun,
    );
    tun.packets().map(|(_, p)| p.to_vec()).collect()
}

#[test]
fn tso_and_uso_super_packets_to_a_vip_and_their_replies_keep_valid_checksums() {
    let mut pr = pair();
    let now = pr.now;
    for tcp in [true, false] {
        let port = if tcp { 5432 } else { 53 };
        // Consumer → VIP: split, rewritten to the instance, delivered there.
        let (hdr, raw, payload) = super_packet(tcp, (C, 40000), (VIP, port), 8);
        let segs = split(hdr, raw);
        assert_eq!(segs.len(), 8);
        let got = cross(&mut pr.c, &mut pr.p, pr.c_addr, now, &segs);
        assert_eq!(got.len(), 8, "tcp={tcp}");
        let data: Vec<u8> = got.iter().flat_map(|p| check(p, C, P)).collect();
        assert_eq!(data, payload);
        // Instance → consumer: its own super-packet reply, back from the VIP.
        let (hdr, raw, payload) = super_packet(tcp, (P, port), (C, 40000), 6);
        let segs = split(hdr, raw);
        let got = cross(&mut pr.p, &mut pr.c, pr.p_addr, now, &segs);
        assert_eq!(got.len(), 6, "tcp={tcp}");
        let data: Vec<u8> = got.iter().flat_map(|p| check(p, VIP, C)).collect();
        assert_eq!(data, payload);
    }
    let st = pr.c.service_status();
    assert_eq!(
        (st[0].flows, st[0].packets_out, st[0].packets_in),
        (2, 16, 12)
    );
}

#[test]
fn a_vip_port_the_service_lacks_gets_port_unreachable_from_the_vip() {
    let mut pr = pair();
    let (hdr, raw, _) = super_packet(true, (C, 40001), (VIP, 22), 1);
    let seg = split(hdr, raw).remove(0);
    let mut out = vec![0u8; 2048];
    match pr.c.handle_tun_packet(pr.now, 0, &seg, &mut out) {
        TunOutcome::Reply(icmp) => {
            let v = IpView::parse(icmp).expect("ip");
            assert_eq!((v.src, v.dst), (IpAddr::V4(VIP), IpAddr::V4(C)));
            assert_eq!((icmp[20], icmp[21]), (3, 3), "port unreachable");
            // It quotes the packet as the sender wrote it (to the VIP).
            assert_eq!(&icmp[28 + 16..28 + 20], &VIP.octets());
        }
        other => panic!("expected an ICMP reply, got {other:?}"),
    }
    assert_eq!(pr.c.drops().get(DropReason::ServicePort), 1);
}
