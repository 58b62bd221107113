//! The VIP table on its own: picks, stickiness, expiry, bounds, checksums.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use weft_proto::service::{Health, ServicePort, ServiceProto};

use super::*;
use crate::ip::{IpView, checksum, proto};

/// A real Instant to start virtual time from.
#[expect(clippy::disallowed_methods, reason = "a real Instant to start from")]
fn start() -> Instant {
    Instant::now()
}

const VIP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 1);
const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const B1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const B2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 12);
const B3: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 13);

fn svc(backends: &[(Ipv4Addr, Health)]) -> ServiceNat {
    ServiceNat {
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
        backends: backends
            .iter()
            .map(|(addr, health)| Backend {
                addr: *addr,
                health: *health,
            })
            .collect(),
    }
}

/// An IPv4 TCP segment with valid checksums.
pub(crate) fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20 + payload.len()];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&7u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..].copy_from_slice(payload);
    finish(src, dst, proto::TCP, t)
}

/// An IPv4 UDP datagram; `csum`: with a checksum (else 0, none).
pub(crate) fn udp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    csum: bool,
) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    let ulen = u.len() as u16;
    u[4..6].copy_from_slice(&ulen.to_be_bytes());
    u[8..].copy_from_slice(payload);
    let mut p = finish(src, dst, proto::UDP, u);
    if !csum {
        p[26..28].fill(0);
    }
    p
}

fn finish(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, transport: Vec<u8>) -> Vec<u8> {
    let mut p = ip::tests::ipv4(src.octets(), dst.octets(), protocol, &transport);
    let c = transport_checksum(&p);
    let at = 20 + if protocol == proto::TCP { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// The TCP/UDP checksum the packet should carry (computed from scratch with
/// its checksum field zeroed).
pub(crate) fn transport_checksum(p: &[u8]) -> u16 {
    let v = IpView::parse(p).expect("ipv4");
    let t = v.transport_offset;
    let mut seg = p[t..v.total_len].to_vec();
    let at = if v.protocol == proto::TCP { 16 } else { 6 };
    seg[at..at + 2].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&p[12..16]);
    pseudo[4..8].copy_from_slice(&p[16..20]);
    pseudo[9] = v.protocol;
    pseudo[10..12].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    let c = checksum(&[&pseudo, &seg]);
    if v.protocol == proto::UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Both checksums of an IPv4 TCP/UDP packet are right (a UDP checksum of 0
/// is "none").
pub(crate) fn checksums_ok(p: &[u8]) -> bool {
    let v = IpView::parse(p).expect("ipv4");
    let at = v.transport_offset + if v.protocol == proto::TCP { 16 } else { 6 };
    let carried = u16::from_be_bytes([p[at], p[at + 1]]);
    let udp_none = v.protocol == proto::UDP && carried == 0;
    checksum(&[&p[..20]]) == 0 && (udp_none || carried == transport_checksum(p))
}

fn out(s: &mut Services, now: Instant, p: &[u8]) -> (Outbound, Vec<u8>) {
    let v = IpView::parse(p).expect("ipv4");
    let o = s.outbound(now, 0, p, &v);
    let mut buf = Vec::new();
    if let Outbound::Rewritten { rewrite, .. } = o {
        buf = p[..v.total_len].to_vec();
        rewrite.apply(&mut buf);
    }
    (o, buf)
}

fn dst(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

fn src(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

fn reply(s: &mut Services, now: Instant, p: &mut [u8]) {
    let v = IpView::parse(p).expect("ipv4");
    s.inbound(now, 0, &v, p);
}

#[test]
fn nat_both_ways_with_correct_checksums() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy)])]);
    let syn = tcp(ME, 40000, VIP, 5432, TCP_SYN, b"");
    let (o, p) = out(&mut s, now, &syn);
    assert!(
        matches!(o, Outbound::Rewritten { backend: B1, .. }),
        "{o:?}"
    );
    assert_eq!((src(&p), dst(&p)), (ME, B1));
    assert!(checksums_ok(&p), "rewritten SYN checksums");

    let mut answer = tcp(B1, 5432, ME, 40000, TCP_SYN | TCP_ACK, b"hello");
    reply(&mut s, now, &mut answer);
    assert_eq!((src(&answer), dst(&answer)), (VIP, ME));
    assert!(checksums_ok(&answer), "reply checksums");

    // UDP with and without a checksum.
    let q = udp(ME, 5353, VIP, 53, b"query", true);
    let (_, p) = out(&mut s, now, &q);
    assert_eq!(dst(&p), B1);
    assert!(checksums_ok(&p));
    let q = udp(ME, 5354, VIP, 53, b"query", false);
    let (_, p) = out(&mut s, now, &q);
    assert_eq!(dst(&p), B1);
    assert_eq!(&p[26..28], &[0, 0], "no UDP checksum stays none");
    assert!(checksums_ok(&p));

    // A packet from the backend that answers no flow is left alone.
    let mut other = tcp(B1, 5432, ME, 40001, TCP_ACK, b"");
    let before = other.clone();
    reply(&mut s, now, &mut other);
    assert_eq!(other, before);
    let st = &s.status()[0];
    assert_eq!((st.flows, st.packets_out, st.packets_in), (3, 3, 1));
}

#[test]
fn incremental_checksums_match_a_full_recompute_for_many_packets() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy), (B3, Health::Healthy)])]);
    for i in 0..2000u16 {
        let payload: Vec<u8> = (0..(i % 97))
            .map(|b| (b as u8).wrapping_mul(31) ^ i as u8)
            .collect();
        let p = if i % 3 == 0 {
            udp(ME, 1024 + i, VIP, 53, &payload, true)
        } else {
            tcp(ME, 1024 + i, VIP, 5432, TCP_ACK, &payload)
        };
        let (_, q) = out(&mut s, now, &p);
        assert!(checksums_ok(&q), "packet {i}");
        // And back: the reply from whichever backend the flow took.
        let mut r = if i % 3 == 0 {
            udp(dst(&q), 53, ME, 1024 + i, &payload, true)
        } else {
            tcp(dst(&q), 5432, ME, 1024 + i, TCP_ACK, &payload)
        };
        reply(&mut s, now, &mut r);
        assert_eq!(src(&r), VIP);
        assert!(checksums_ok(&r), "reply {i}");
    }
}

#[test]
fn a_flow_is_sticky_and_new_flows_spread_over_healthy_backends() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy), (B2, Health::Healthy)])]);
    let mut per_backend = BTreeMap::new();
    for port in 30000..30200u16 {
        let (_, p) = out(&mut s, now, &tcp(ME, port, VIP, 5432, TCP_SYN, b""));
        *per_backend.entry(dst(&p)).or_insert(0u32) += 1;
        // Every later packet of the flow goes to the same backend.
        for _ in 0..3 {
            let (_, q) = out(&mut s, now, &tcp(ME, port, VIP, 5432, TCP_ACK, b"x"));
            assert_eq!(dst(&q), dst(&p));
        }
    }
    assert_eq!(per_backend.len(), 2, "{per_backend:?}");
    assert!(
        per_backend.values().all(|n| *n >= 60),
        "spread: {per_backend:?}"
    );
}

#[test]
fn unhealthy_never_unknown_only_without_healthy_and_health_changes_only_new_flows() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[
        (B1, Health::Unhealthy),
        (B2, Health::Unknown),
        (B3, Health::Healthy),
    ])]);
    for port in 1000..1100u16 {
        let (_, p) = out(&mut s, now, &tcp(ME, port, VIP, 5432, TCP_SYN, b""));
        assert_eq!(dst(&p), B3, "only the healthy one");
    }
    // B3 turns unhealthy: its flows stay, new flows go to the unknown B2.
    s.apply(&[svc(&[
        (B1, Health::Unhealthy),
        (B2, Health::Unknown),
        (B3, Health::Unhealthy),
    ])]);
    let (_, p) = out(&mut s, now, &tcp(ME, 1000, VIP, 5432, TCP_ACK, b""));
    assert_eq!(dst(&p), B3, "an open flow keeps its backend");
    for port in 2000..2100u16 {
        let (_, p) = out(&mut s, now, &tcp(ME, port, VIP, 5432, TCP_SYN, b""));
        assert_eq!(dst(&p), B2, "unknown only when none is healthy");
    }
    // Nothing usable: refused, host unreachable, counted.
    s.apply(&[svc(&[(B1, Health::Unhealthy)])]);
    let (o, _) = out(&mut s, now, &tcp(ME, 3000, VIP, 5432, TCP_SYN, b""));
    assert_eq!(
        o,
        Outbound::Refused(DropReason::ServiceNoInstance, ip::Unreachable::Host)
    );
    // B3 left the configuration: its flows ended with it.
    assert_eq!(s.backend_of(0, proto::TCP, (ME, 1000), (VIP, 5432)), None);
    assert_eq!(s.status()[0].drops_no_instance, 1);
    assert_eq!(s.status()[0].flows, 0);
}

#[test]
fn other_ports_protocols_and_fragments_are_refused_as_port_unreachable() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy)])]);
    let refused = Outbound::Refused(DropReason::ServicePort, ip::Unreachable::Port);
    assert_eq!(
        out(&mut s, now, &tcp(ME, 1, VIP, 22, TCP_SYN, b"")).0,
        refused
    );
    assert_eq!(
        out(&mut s, now, &udp(ME, 1, VIP, 5432, b"", true)).0,
        refused
    );
    let ping = ip::tests::ipv4(
        ME.octets(),
        VIP.octets(),
        proto::ICMP,
        &[8, 0, 0, 0, 0, 1, 0, 1],
    );
    assert_eq!(out(&mut s, now, &ping).0, refused);
    let mut frag = udp(ME, 5353, VIP, 53, &[0; 64], true);
    frag[6..8].copy_from_slice(&8u16.to_be_bytes()); // offset 64 bytes
    assert_eq!(out(&mut s, now, &frag).0, refused);
    assert_eq!(s.status()[0].drops_port, 4);
    // Not a VIP at all.
    assert_eq!(
        out(&mut s, now, &tcp(ME, 1, B1, 5432, TCP_SYN, b"")).0,
        Outbound::NotVip
    );
}

#[test]
fn idle_flows_expire_and_fin_shortens_the_wait() {
    let t0 = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy), (B2, Health::Healthy)])]);
    let key = |port| (0, proto::TCP, (ME, port), (VIP, 5432));
    let has = |s: &Services, port| {
        let (n, p, c, v) = key(port);
        s.backend_of(n, p, c, v).is_some()
    };
    // Unanswered: 30 s.
    out(&mut s, t0, &tcp(ME, 1, VIP, 5432, TCP_SYN, b""));
    // Answered: 2 h 4 min.
    out(&mut s, t0, &tcp(ME, 2, VIP, 5432, TCP_SYN, b""));
    let b = s
        .backend_of(0, proto::TCP, (ME, 2), (VIP, 5432))
        .expect("flow");
    reply(&mut s, t0, &mut tcp(b, 5432, ME, 2, TCP_SYN | TCP_ACK, b""));
    // Answered, then closed by a FIN: 4 min.
    out(&mut s, t0, &tcp(ME, 3, VIP, 5432, TCP_SYN, b""));
    let b3 = s
        .backend_of(0, proto::TCP, (ME, 3), (VIP, 5432))
        .expect("flow");
    reply(
        &mut s,
        t0,
        &mut tcp(b3, 5432, ME, 3, TCP_SYN | TCP_ACK, b""),
    );
    out(&mut s, t0, &tcp(ME, 3, VIP, 5432, TCP_FIN | TCP_ACK, b""));
    // UDP answered: 2 min.
    out(&mut s, t0, &udp(ME, 4, VIP, 53, b"q", true));
    let b4 = s
        .backend_of(0, proto::UDP, (ME, 4), (VIP, 53))
        .expect("flow");
    let v = IpView::parse(&udp(b4, 53, ME, 4, b"a", true)).expect("v");
    s.inbound(t0, 0, &v, &mut udp(b4, 53, ME, 4, b"a", true));
    assert_eq!(s.len(), 4);
    assert!(s.next_deadline().expect("deadline") <= t0 + Duration::from_secs(30));

    s.expire(t0 + Duration::from_secs(31));
    assert!(!has(&s, 1) && has(&s, 2) && has(&s, 3));
    assert_eq!(s.len(), 3);
    s.expire(t0 + Duration::from_secs(121));
    assert_eq!(s.len(), 2, "UDP gone after 2 min");
    s.expire(t0 + Duration::from_secs(241));
    assert!(has(&s, 2) && !has(&s, 3), "FIN: 4 min");
    s.expire(t0 + Duration::from_secs(2 * 3600 + 4 * 60 + 1));
    assert_eq!(s.len(), 0);
    assert_eq!(s.status()[0].flows, 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_new_syn_on_a_closed_flow_picks_again_and_traffic_keeps_a_flow_alive() {
    let t0 = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy), (B2, Health::Healthy)])]);
    out(&mut s, t0, &tcp(ME, 7, VIP, 5432, TCP_SYN, b""));
    let b = s
        .backend_of(0, proto::TCP, (ME, 7), (VIP, 5432))
        .expect("flow");
    // Traffic every 20 s keeps an unanswered flow past its 30 s.
    for i in 1..10 {
        let t = t0 + Duration::from_secs(20 * i);
        out(&mut s, t, &tcp(ME, 7, VIP, 5432, TCP_ACK, b""));
        s.expire(t);
    }
    assert_eq!(s.len(), 1);
    // RST, then B fails; a new SYN with the same ports takes the other one.
    let t = t0 + Duration::from_secs(200);
    out(&mut s, t, &tcp(ME, 7, VIP, 5432, TCP_RST, b""));
    let other = if b == B1 { B2 } else { B1 };
    s.apply(&[svc(&[(b, Health::Unhealthy), (other, Health::Healthy)])]);
    let (_, p) = out(&mut s, t, &tcp(ME, 7, VIP, 5432, TCP_SYN, b""));
    assert_eq!(dst(&p), other);
}

#[test]
fn the_table_is_bounded_and_makes_room_from_the_flow_closest_to_expiry() {
    let t0 = start();
    let mut s = Services::with_capacity(8);
    s.apply(&[svc(&[(B1, Health::Healthy)])]);
    for port in 0..8u16 {
        let t = t0 + Duration::from_millis(u64::from(port));
        out(&mut s, t, &tcp(ME, 100 + port, VIP, 5432, TCP_SYN, b""));
    }
    // Refresh the oldest so it is no longer the closest to expiry.
    out(
        &mut s,
        t0 + Duration::from_secs(1),
        &tcp(ME, 100, VIP, 5432, TCP_ACK, b""),
    );
    out(
        &mut s,
        t0 + Duration::from_secs(1),
        &tcp(ME, 200, VIP, 5432, TCP_SYN, b""),
    );
    assert_eq!(s.len(), 8);
    assert_eq!(s.evicted, 1);
    assert!(
        s.backend_of(0, proto::TCP, (ME, 100), (VIP, 5432))
            .is_some()
    );
    assert!(
        s.backend_of(0, proto::TCP, (ME, 101), (VIP, 5432))
            .is_none()
    );
    assert!(
        s.backend_of(0, proto::TCP, (ME, 200), (VIP, 5432))
            .is_some()
    );
    assert_eq!(s.status()[0].flows, 8);
}

#[test]
fn partial_checksum_update_is_the_inverse_of_the_full_one() {
    // A partial checksum is the folded pseudo-header sum (not complemented):
    // rewriting an address in it must give the pseudo-header sum of the new
    // addresses.
    let sum = |a: Ipv4Addr, b: Ipv4Addr| {
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&a.octets());
        pseudo[4..8].copy_from_slice(&b.octets());
        pseudo[9] = proto::TCP;
        pseudo[10..12].copy_from_slice(&1480u16.to_be_bytes());
        !checksum(&[&pseudo])
    };
    let partial = sum(ME, VIP);
    let updated = !ip::checksum_replace4(!partial, VIP.octets(), B1.octets());
    assert_eq!(updated, sum(ME, B1));
    // The full-checksum update applied to a partial one would be wrong.
    assert_ne!(
        ip::checksum_replace4(partial, VIP.octets(), B1.octets()),
        sum(ME, B1)
    );
}

#[test]
fn ipv6_and_short_packets_never_panic_or_match() {
    let now = start();
    let mut s = Services::default();
    s.apply(&[svc(&[(B1, Health::Healthy)])]);
    assert!(!s.is_vip(0, IpAddr::V6("fd00::1".parse().expect("v6"))));
    assert!(!s.is_vip(1, IpAddr::V4(VIP)), "another network");
    // A TCP header cut before its checksum.
    let mut p = tcp(ME, 1, VIP, 5432, TCP_SYN, b"");
    p.truncate(20 + 14);
    p[2..4].copy_from_slice(&34u16.to_be_bytes());
    let c = checksum(&[&{
        let mut h = p[..20].to_vec();
        h[10..12].fill(0);
        h
    }]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    if let Ok(v) = IpView::parse(&p) {
        let _ = s.outbound(now, 0, &p, &v);
    }
}
