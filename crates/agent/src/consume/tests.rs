#![allow(clippy::unwrap_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::netmap::SelfNode;
use weft_proto::service::{Health, ServiceInstance};

use super::*;

fn map(services: Vec<ServiceView>) -> NetworkMap {
    NetworkMap {
        api_version: weft_proto::api::API_VERSION,
        version: 1,
        node: SelfNode {
            node_key: weft_proto::NodeKey::from_bytes([1; 32]),
            name: "web".into(),
            tags: vec![],
        },
        networks: vec![],
        relays: vec![],
        policy: None,
        data: vec![],
        secrets: vec![],
        host_firewall: None,
        dns_blocklist: None,
        services,
        provides: vec![],
        ssh_hosts: vec![],
    }
}

/// `db` on port `port` with one healthy instance on 127.0.0.1.
fn db(port: u16) -> ServiceView {
    let mut v = store::tests::view("db", "prod", &port.to_string());
    v.instances = vec![ServiceInstance {
        node_key: weft_proto::NodeKey::from_bytes([2; 32]),
        node: "db1".into(),
        addr: Ipv4Addr::LOCALHOST,
        health: Health::Healthy,
        checked_ms: None,
    }];
    v
}

fn listen(addr: SocketAddr) -> Consumer {
    Consumer {
        service: "db".into(),
        network: None,
        mode: ConsumeMode::Listen { listen: addr },
        port: None,
    }
}

/// A free port on 127.0.0.1 (bound and released).
async fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An echo server on 127.0.0.1; its port.
async fn echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn round_trip(at: SocketAddr) -> Vec<u8> {
    let mut c = TcpStream::connect(at).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

fn ok_message(r: LocalResponse) -> String {
    match r {
        LocalResponse::Ok { message, .. } => message,
        other => panic!("not ok: {other:?}"),
    }
}

fn error(r: LocalResponse) -> (String, String) {
    match r {
        LocalResponse::Error { code, message } => (code, message),
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test]
async fn a_listener_is_kept_followed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let port = echo().await;
    let at = free_port().await;
    let mut cs = Consumers::start(dir.path()).await;

    // Before any map: refused, nothing kept.
    let (code, _) = error(cs.consume(listen(at)).await);
    assert_eq!(code, "no_map");
    cs.on_map(&map(vec![db(port)])).await;
    // A service the map does not list: refused, nothing kept.
    let mut web = listen(at);
    web.service = "web".into();
    let (code, msg) = error(cs.consume(web).await);
    assert_eq!(code, "not_found");
    assert!(msg.contains("not in this node's map"), "{msg}");
    assert!(!dir.path().join(store::FILE).exists());

    let msg = ok_message(cs.consume(listen(at)).await);
    assert!(
        msg.contains(&format!(
            "listening on {at} for service db (network prod) port {port}"
        )),
        "{msg}"
    );
    assert_eq!(store::load(dir.path()).unwrap(), vec![listen(at)]);
    assert_eq!(round_trip(at).await, b"hello");
    // Again: fine, once.
    assert!(ok_message(cs.consume(listen(at)).await).starts_with("already configured"));
    let st = cs.statuses();
    let mine = &st.by_service[&("prod".to_owned(), "db".to_owned())];
    assert_eq!(mine.len(), 1);
    assert!(mine[0].active);
    assert_eq!(mine[0].streams_total, 1);
    assert!(st.orphans.is_empty());
    assert!(cs.failures().is_empty());

    // The service leaves the map: the listener closes, the consumer is an
    // orphan and a failure in status; it comes back with the service.
    cs.on_map(&map(vec![])).await;
    assert!(TcpStream::connect(at).await.is_err());
    let st = cs.statuses();
    assert_eq!(st.orphans.len(), 1);
    assert!(!st.orphans[0].active);
    let f = cs.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].area.as_str(), f[0].what.as_str()),
        ("consume", &*format!("db listen {at}"))
    );
    assert!(f[0].error.contains("not in this node's map"));
    cs.on_map(&map(vec![db(port)])).await;
    assert_eq!(round_trip(at).await, b"hello");

    // A restart keeps it (the file), starting at the first map.
    cs.teardown().await;
    assert!(TcpStream::connect(at).await.is_err());
    let mut cs = Consumers::start(dir.path()).await;
    cs.on_map(&map(vec![db(port)])).await;
    assert_eq!(round_trip(at).await, b"hello");

    // Another consumer on the same address is refused.
    let mut other = listen(at);
    other.port = Some(port);
    let (code, _) = error(cs.consume(other).await);
    assert_eq!(code, "conflict");

    // Removed: closed and forgotten; removing again fails.
    let msg = ok_message(cs.unconsume(listen(at)).await);
    assert_eq!(msg, format!("removed db listen {at}"));
    assert!(TcpStream::connect(at).await.is_err());
    assert_eq!(store::load(dir.path()).unwrap(), vec![]);
    let (code, _) = error(cs.unconsume(listen(at)).await);
    assert_eq!(code, "not_found");
}

#[tokio::test]
async fn an_address_in_use_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = taken.local_addr().unwrap();
    let mut cs = Consumers::start(dir.path()).await;
    cs.on_map(&map(vec![db(5432)])).await;
    let (code, msg) = error(cs.consume(listen(at)).await);
    assert_eq!(code, "consume_failed");
    assert!(msg.contains(&format!("cannot listen on {at}")), "{msg}");
    assert!(!dir.path().join(store::FILE).exists());
    assert!(cs.statuses().orphans.is_empty());
    assert!(cs.failures().is_empty());
}

#[tokio::test]
async fn a_damaged_file_is_refused_shown_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(store::FILE);
    std::fs::write(&path, b"not json").unwrap();
    let mut cs = Consumers::start(dir.path()).await;
    cs.on_map(&map(vec![db(5432)])).await;
    let f = cs.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].what, store::FILE);
    assert!(f[0].error.contains("is damaged"));
    let at = free_port().await;
    let (code, msg) = error(cs.consume(listen(at)).await);
    assert_eq!(code, "state");
    assert!(msg.contains("move the file aside"), "{msg}");
    let (code, _) = error(cs.unconsume(listen(at)).await);
    assert_eq!(code, "state");
    assert_eq!(std::fs::read(&path).unwrap(), b"not json", "never replaced");
}

#[tokio::test]
async fn a_kept_listener_whose_address_is_taken_fails_in_status_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let port = echo().await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = taken.local_addr().unwrap();
    store::save(dir.path(), &[listen(at)]).unwrap();
    let mut cs = Consumers::start(dir.path()).await;
    cs.on_map(&map(vec![db(port)])).await;
    let f = cs.failures();
    assert_eq!(f.len(), 1);
    assert!(
        f[0].error.contains(&format!("cannot listen on {at}")),
        "{f:?}"
    );
    let st = cs.statuses();
    let mine = &st.by_service[&("prod".to_owned(), "db".to_owned())];
    assert!(!mine[0].active && mine[0].error.is_some());
    // The address frees up: the next retry listens.
    drop(taken);
    cs.retry().await;
    assert!(cs.failures().is_empty());
    assert_eq!(round_trip(at).await, b"hello");
}
