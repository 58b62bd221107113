//! Usage accounting from the connection table: both directions, folding when
//! flows leave the table, the bound and its `other` bucket, hand-over between
//! engines.

use std::net::IpAddr;
use std::time::Duration;

use crate::tests::t0;
use crate::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An engine on "db" (100.64.0.10) that lets "web" (100.64.0.1) reach TCP
/// 5432 and 22, and anyone ping anyone.
fn db_engine(cfg: ConntrackConfig) -> Engine {
    let facts = |name: &str, tag: &str, addr: &str| NodeFacts {
        services: Vec::new(),
        ssh_port: None,
        name: name.into(),
        tags: vec![tag.into()],
        networks: vec![Membership {
            network: "office".into(),
            addrs: vec![ip(addr)],
        }],
        routed_subnets: vec![],
    };
    let inv = Inventory::new(vec![
        facts("web", "web", "100.64.0.1"),
        facts("db", "db", "100.64.0.10"),
    ])
    .unwrap();
    let p = parse(
        "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\nproto = \"tcp\"\nports = [5432, 22]\n\
         [[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"icmp\"\n",
    )
    .unwrap();
    Engine::new(compile_node(&p, &inv, "db").unwrap(), cfg).unwrap()
}

fn tcp(sp: u16, dp: u16, flags: u8) -> FiveTuple {
    FiveTuple::tcp(ip("100.64.0.1"), sp, ip("100.64.0.10"), dp, flags)
}

fn key(peer: u32, port: u16) -> UsageKey {
    UsageKey {
        peer,
        port,
        proto: ip_proto::TCP,
    }
}

#[test]
fn a_flow_counts_bytes_and_packets_in_both_directions_under_its_service_port() {
    let mut e = db_engine(ConntrackConfig::default());
    let now = t0();
    let open = tcp(40000, 5432, tcp_flags::SYN);
    assert!(
        e.decide_metered(Direction::Ingress, &open, 60, now, || 7)
            .is_allow()
    );
    // The reply leaves db (tx), more data arrives (rx); the peer closure is not
    // asked again for packets of a flow it already opened.
    let reply = open.reversed();
    for _ in 0..3 {
        assert!(
            e.decide_metered(Direction::Egress, &reply, 1500, now, || unreachable!())
                .is_allow()
        );
    }
    let data = tcp(40000, 5432, tcp_flags::ACK);
    assert!(
        e.decide_metered(Direction::Ingress, &data, 100, now, || unreachable!())
            .is_allow()
    );
    let u = e.usage();
    assert_eq!(
        u.buckets.get(&key(7, 5432)),
        Some(&UsageCounters {
            tx_bytes: 4500,
            rx_bytes: 160,
            tx_packets: 3,
            rx_packets: 2,
            flows: 1,
        })
    );
    assert_eq!(u.other, UsageCounters::default());
    // A dropped packet counts nowhere.
    let denied = tcp(40001, 80, tcp_flags::SYN);
    assert!(
        !e.decide_metered(Direction::Ingress, &denied, 1000, now, || 7)
            .is_allow()
    );
    assert_eq!(e.usage(), u);
}

#[test]
fn an_expired_flow_folds_into_the_totals_and_usage_never_goes_down() {
    let mut e = db_engine(ConntrackConfig::default());
    let start = t0();
    let open = tcp(40000, 5432, tcp_flags::SYN);
    e.decide_metered(Direction::Ingress, &open, 60, start, || 1);
    e.decide_metered(Direction::Egress, &open.reversed(), 40, start, || 1);
    let live = e.usage();
    // Expiry by timer: the flow is gone, its counts are not.
    let later = start + Duration::from_secs(3 * 3600);
    e.handle_timeout(later);
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.usage(), live);
    // A second flow to the same service adds to the same bucket; a flow that
    // a packet finds dead folds too (and the packet, allowed afresh by the
    // rule, opens a third).
    let second = tcp(40001, 5432, tcp_flags::SYN);
    e.decide_metered(Direction::Ingress, &second, 60, later, || 1);
    let much_later = later + Duration::from_secs(60);
    let ack = tcp(40001, 5432, tcp_flags::ACK);
    assert!(
        e.decide_metered(Direction::Ingress, &ack, 999, much_later, || 1)
            .is_allow()
    );
    let b = e.usage().buckets[&key(1, 5432)];
    assert_eq!((b.rx_bytes, b.tx_bytes, b.flows), (60 + 60 + 999, 40, 3));
    assert_eq!(e.counters().flows_expired, 2);
}

#[test]
fn evicted_flows_and_flows_a_policy_change_ends_fold_too() {
    let cfg = ConntrackConfig {
        capacity: 2,
        ..ConntrackConfig::default()
    };
    let mut e = db_engine(cfg);
    let now = t0();
    for sp in 1..=5u16 {
        e.decide_metered(
            Direction::Ingress,
            &tcp(sp, 22, tcp_flags::SYN),
            100,
            now,
            || 3,
        );
    }
    assert_eq!(e.counters().flows_evicted, 3);
    let b = e.usage().buckets[&key(3, 22)];
    assert_eq!((b.rx_bytes, b.rx_packets, b.flows), (500, 5, 5));
    // A policy without the rule ends the live flows: counts stay.
    let empty = CompiledPolicy::default();
    assert_eq!(e.replace_policy(empty, now).unwrap(), 2);
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.usage().buckets[&key(3, 22)], b);
}

#[test]
fn the_bucket_table_is_bounded_and_overflow_counts_in_other() {
    let cfg = ConntrackConfig {
        usage_capacity: 2,
        ..ConntrackConfig::default()
    };
    let mut e = db_engine(cfg);
    let now = t0();
    // Three peers: the third finds the table full and counts in `other`, for
    // its whole life (also after it folds), so no key's counters ever move.
    for (peer, sp) in [(1u32, 1000u16), (2, 1001), (3, 1002)] {
        e.decide_metered(
            Direction::Ingress,
            &tcp(sp, 22, tcp_flags::SYN),
            10,
            now,
            || peer,
        );
        e.decide_metered(
            Direction::Egress,
            &tcp(sp, 22, 0).reversed(),
            20,
            now,
            || unreachable!(),
        );
    }
    let u = e.usage();
    assert_eq!(u.buckets.len(), 2);
    assert!(u.buckets.contains_key(&key(1, 22)) && u.buckets.contains_key(&key(2, 22)));
    let other = UsageCounters {
        tx_bytes: 20,
        rx_bytes: 10,
        tx_packets: 1,
        rx_packets: 1,
        flows: 1,
    };
    assert_eq!(u.other, other);
    e.handle_timeout(now + Duration::from_secs(24 * 3600));
    assert_eq!(e.usage(), u);
    // A known key still has room after the table filled.
    e.decide_metered(
        Direction::Ingress,
        &tcp(2000, 22, tcp_flags::SYN),
        5,
        now + Duration::from_secs(24 * 3600),
        || 1,
    );
    assert_eq!(e.usage().buckets[&key(1, 22)].flows, 2);
    assert_eq!(e.usage().other, other);
}

#[test]
fn a_replacing_engine_takes_over_the_totals_and_live_flows() {
    let mut old = db_engine(ConntrackConfig::default());
    let now = t0();
    old.decide_metered(
        Direction::Ingress,
        &tcp(1, 5432, tcp_flags::SYN),
        100,
        now,
        || 4,
    );
    let before = old.usage();
    let mut new = Engine::deny_all(ConntrackConfig::default());
    new.absorb_usage(old.take_usage());
    assert_eq!(old.flow_count(), 0);
    assert_eq!(old.usage(), Usage::default());
    assert_eq!(new.usage(), before);
}

#[test]
fn icmp_echo_counts_under_port_zero() {
    let mut e = db_engine(ConntrackConfig::default());
    let now = t0();
    let req = FiveTuple::icmp(
        ip("100.64.0.1"),
        ip("100.64.0.10"),
        IcmpKind::EchoRequest,
        9,
    );
    e.decide_metered(Direction::Ingress, &req, 84, now, || 1);
    let rep = FiveTuple::icmp(ip("100.64.0.10"), ip("100.64.0.1"), IcmpKind::EchoReply, 9);
    e.decide_metered(Direction::Egress, &rep, 84, now, || 1);
    let k = UsageKey {
        peer: 1,
        port: 0,
        proto: ip_proto::ICMP,
    };
    let b = e.usage().buckets[&k];
    assert_eq!((b.rx_bytes, b.tx_bytes, b.flows), (84, 84, 1));
}
