//! The resolver on loopback against a fake upstream: overlay names answered
//! locally, other names forwarded and cached, zone swaps visible at once, TCP,
//! truncation fallback, failover.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{a_records, ask_tcp, ask_udp, fake_upstream};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use weft_dns::{DnsConfig, DnsService, Record, SystemMode, Upstreams, Zone};

fn rec(name: &str, network: &str, last: u8) -> Record {
    Record {
        name: name.into(),
        network: network.into(),
        domain: "weft.internal".into(),
        ipv4: Some(Ipv4Addr::new(100, 64, 0, last)),
        ipv6: Some(format!("fd00::{last}").parse().unwrap()),
    }
}

async fn start(upstreams: Vec<SocketAddr>) -> DnsService {
    let mut dns = DnsService::start(DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: Upstreams::Static(upstreams.into_iter().map(Into::into).collect()),
        system: SystemMode::Unmanaged,
        stats: Default::default(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap();
    dns.set_zone(Zone::from_records(vec![
        rec("db", "prod", 2),
        rec("web", "prod", 3),
    ]))
    .unwrap();
    dns
}

#[tokio::test]
async fn overlay_names_are_answered_locally_and_never_forwarded() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![up]).await;
    let at = dns.local_addr();

    let m = ask_udp(at, 1, "db.prod.weft.internal.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(100, 64, 0, 2)]);
    assert!(m.metadata.authoritative);
    let m = ask_udp(at, 2, "DB.weft.internal.", RecordType::AAAA).await;
    assert_eq!(m.answers.len(), 1);
    let m = ask_udp(at, 3, "nope.prod.weft.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    assert!(
        log.0.lock().unwrap().is_empty(),
        "{:?}",
        log.0.lock().unwrap()
    );
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn other_names_are_forwarded_and_cached() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![up]).await;
    let at = dns.local_addr();

    let m = ask_udp(at, 10, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    assert!(!m.metadata.authoritative && m.metadata.recursion_available);
    let m = ask_udp(at, 11, "WWW.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(m.queries[0].name.to_ascii(), "WWW.example.test.");
    assert_eq!(
        log.count("www.example.test."),
        1,
        "the second answer came from the cache"
    );

    // Negative answers are cached too.
    for id in [12, 13] {
        let m = ask_udp(at, id, "missing.example.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(log.count("missing.example.test."), 1);
    dns.stop().await.unwrap();
}

/// The stats handle given in the configuration counts every query, the cache
/// hits and the forwarded queries' latency (what the agent's metrics show).
#[tokio::test]
async fn stats_count_queries_cache_hits_and_upstream_latency() {
    let (up, _log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let stats = weft_dns::DnsStats::default();
    let mut dns = DnsService::start(DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: Upstreams::Static(vec![up.into()]),
        system: SystemMode::Unmanaged,
        stats: stats.clone(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap();
    dns.set_zone(Zone::from_records(vec![rec("db", "prod", 2)]))
        .unwrap();
    let at = dns.local_addr();
    ask_udp(at, 1, "db.prod.weft.internal.", RecordType::A).await;
    ask_udp(at, 2, "www.example.test.", RecordType::A).await;
    ask_udp(at, 3, "www.example.test.", RecordType::A).await;
    let snap = stats.snapshot();
    assert_eq!(snap.queries, 3);
    assert_eq!(snap.cache_hits, 1, "the second www query");
    assert_eq!(snap.upstream_count, 1, "only the first www query went out");
    assert_eq!(snap.upstream_failures, 0);
    assert_eq!(snap.upstream_buckets.iter().map(|(_, n)| n).sum::<u64>(), 1);
    assert!(snap.upstream_seconds > 0.0 && snap.upstream_seconds < 2.0);
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn a_rename_is_visible_right_after_the_zone_swap() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let mut dns = start(vec![up]).await;
    let at = dns.local_addr();
    assert_eq!(
        a_records(&ask_udp(at, 1, "db.prod.weft.internal.", RecordType::A).await).len(),
        1
    );

    dns.set_zone(Zone::from_records(vec![
        rec("database", "prod", 2),
        rec("web", "prod", 3),
    ]))
    .unwrap();
    let m = ask_udp(at, 2, "database.prod.weft.internal.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(100, 64, 0, 2)]);
    let m = ask_udp(at, 3, "db.prod.weft.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(log.0.lock().unwrap().is_empty());
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_serves_overlay_and_forwarded_names() {
    let (up, _log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![up]).await;
    let at = dns.local_addr();
    let m = ask_tcp(at, 20, "web.prod.weft.internal.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(100, 64, 0, 3)]);
    let m = ask_tcp(at, 21, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![up]).await;
    // 40 records do not fit the client's 512-octet EDNS size: it gets TC and
    // asks again over TCP, where the cached full answer is waiting.
    let m = ask_udp(dns.local_addr(), 30, "big.example.test.", RecordType::A).await;
    assert!(m.metadata.truncation);
    let m = ask_tcp(dns.local_addr(), 31, "big.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 40);
    assert_eq!(log.count_via("udp", "big.example.test."), 1);
    assert_eq!(log.count_via("tcp", "big.example.test."), 1);
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_upstream_is_skipped() {
    // A port nobody listens on: the kernel answers "port unreachable".
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![dead, up]).await;
    let m = ask_udp(dns.local_addr(), 40, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(log.count("www.example.test."), 1);
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn no_upstream_is_servfail_for_other_names_only() {
    let dns = start(vec![]).await;
    let m = ask_udp(dns.local_addr(), 50, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = ask_udp(
        dns.local_addr(),
        51,
        "db.prod.weft.internal.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&m).len(), 1);
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn listen_address_must_be_loopback() {
    let err = DnsService::start(DnsConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        upstreams: Upstreams::Static(vec![]),
        system: SystemMode::Unmanaged,
        stats: Default::default(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
}

#[tokio::test]
async fn stop_then_start_again_on_the_same_port() {
    let (up, _log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = start(vec![up]).await;
    let at = dns.local_addr();
    // A forward in flight when the service stops.
    let pending = tokio::spawn(ask_udp_raw(at, "www.example.test."));
    dns.stop().await.unwrap();
    let _ = pending.await;
    let mut again = DnsService::start(DnsConfig {
        listen: at,
        upstreams: Upstreams::Static(vec![up.into()]),
        system: SystemMode::Unmanaged,
        stats: Default::default(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap();
    again
        .set_zone(Zone::from_records(vec![rec("db", "prod", 2)]))
        .unwrap();
    let m = ask_udp(at, 60, "db.prod.weft.internal.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    again.stop().await.unwrap();
}

/// Sends a query without waiting for the answer.
async fn ask_udp_raw(server: SocketAddr, name: &str) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _ = s
        .send_to(&common::query(61, name, RecordType::A), server)
        .await;
}

#[tokio::test]
async fn before_the_first_map_overlay_names_do_not_leak() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let dns = DnsService::start(DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: Upstreams::Static(vec![up.into()]),
        system: SystemMode::Unmanaged,
        stats: Default::default(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap();
    let m = ask_udp(
        dns.local_addr(),
        70,
        "db.prod.weft.internal.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(log.0.lock().unwrap().is_empty());
    dns.stop().await.unwrap();
}
