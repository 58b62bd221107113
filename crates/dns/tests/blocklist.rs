//! The blocklist in the running resolver: a blocked name (or a name under a
//! blocked domain) is answered NXDOMAIN or 0.0.0.0/:: per the list's mode,
//! never forwarded and counted; other names are forwarded as before; overlay
//! names are never blocked; swapping the list takes effect at once.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{a_records, ask_udp, fake_upstream};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use weft_dns::{Blocklist, DnsConfig, DnsService, DnsStats, Record, SystemMode, Upstreams, Zone};
use weft_proto::dnsblock::{BlockMode, DnsBlocklist};

fn list(mode: BlockMode, names: &[&str]) -> Blocklist {
    Blocklist::new(&DnsBlocklist {
        version: 1,
        mode,
        domains: names.iter().map(|n| (*n).to_owned()).collect(),
    })
    .unwrap()
}

#[tokio::test]
async fn blocked_names_are_refused_counted_and_never_forwarded() {
    let (up, log) = fake_upstream("127.0.0.1:0".parse().unwrap()).await;
    let stats = DnsStats::default();
    let mut dns = DnsService::start(DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: Upstreams::Static(vec![up.into()]),
        system: SystemMode::Unmanaged,
        stats: stats.clone(),
        ..DnsConfig::new("/nonexistent")
    })
    .await
    .unwrap();
    dns.set_zone(Zone::from_records(vec![Record {
        name: "db".into(),
        network: "prod".into(),
        domain: "weft.internal".into(),
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 2)),
        ipv6: None,
    }]))
    .unwrap();
    let at = dns.local_addr();

    // Before any list: forwarded.
    let m = ask_udp(at, 1, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(log.count("www.example.test."), 1);

    dns.set_blocklist(list(
        BlockMode::Nxdomain,
        &["www.example.test", "weft.internal"],
    ));
    let m = ask_udp(at, 2, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_udp(at, 3, "Beacon.WWW.example.test.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.queries[0].name.to_ascii(), "Beacon.WWW.example.test.");
    // Not under a listed domain: forwarded (the fake upstream says NXDOMAIN).
    let m = ask_udp(at, 4, "example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(log.count("example.test."), 1);
    // Overlay names are answered first, whatever the list says.
    let m = ask_udp(at, 5, "db.prod.weft.internal.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(100, 64, 0, 2)]);
    assert_eq!(
        log.count("www.example.test."),
        1,
        "a blocked name left the host"
    );
    assert_eq!(log.count("beacon.www.example.test."), 0);
    assert_eq!(stats.snapshot().blocked, 2);

    // Zero mode: unspecified addresses, NODATA for other types.
    dns.set_blocklist(list(BlockMode::Zero, &["www.example.test"]));
    let m = ask_udp(at, 6, "x.www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), [Ipv4Addr::UNSPECIFIED]);
    let m = ask_udp(at, 7, "x.www.example.test.", RecordType::AAAA).await;
    assert_eq!(
        m.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
        [RData::AAAA(Ipv6Addr::UNSPECIFIED.into())]
    );
    let m = ask_udp(at, 8, "x.www.example.test.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(stats.snapshot().blocked, 5);

    // Cleared: resolved again (from the cache the first answer filled).
    dns.set_blocklist(Blocklist::default());
    let m = ask_udp(at, 9, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(stats.snapshot().blocked, 5);
    dns.stop().await.unwrap();
}
