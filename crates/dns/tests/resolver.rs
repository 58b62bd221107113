//! The full resolver against loopback upstreams: DNS over TLS (a real rustls
//! server with a private CA), fallback past a dead upstream and its health, a
//! certificate for the wrong name refused, TTL bounds as clients see them, and
//! the query log of what was answered from where.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Log, a_records, ask_udp, respond_via};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_dns::{DnsConfig, DnsService, QueryLogConfig, TtlBounds, Upstream};

/// A DoT server on loopback for `name`, answering like the fake upstream;
/// returns its address, what it was asked, and its CA (PEM).
async fn dot_server(name: &str) -> (SocketAddr, Log, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, l) = (acceptor.clone(), l.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                // Several queries on one connection, as DoT clients do.
                while let Ok(len) = s.read_u16().await {
                    let mut buf = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(resp) = respond_via(&buf, "tls", &l) else {
                        return;
                    };
                    let mut framed = u16::try_from(resp.len()).unwrap().to_be_bytes().to_vec();
                    framed.extend_from_slice(&resp);
                    if s.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log, ca.pem())
}

/// A loopback UDP port nobody listens on (ICMP port unreachable: fails fast).
fn dead_udp() -> Upstream {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    drop(s);
    Upstream::Udp(addr)
}

fn config(dir: &std::path::Path, upstreams: Vec<Upstream>, ca: &str) -> DnsConfig {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let mut c = DnsConfig::unmanaged("127.0.0.1:0".parse().unwrap(), upstreams);
    c.tls_ca = Some(ca_file);
    c
}

#[tokio::test]
async fn dot_answers_after_a_dead_upstream_which_is_then_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (dot, log, ca) = dot_server("dot.test").await;
    let tls = Upstream::Tls {
        addr: dot,
        name: Some("dot.test".into()),
    };
    let mut cfg = config(dir.path(), vec![dead_udp(), tls.clone()], &ca);
    cfg.ttl = TtlBounds::new(600, 900).unwrap();
    cfg.query_log = Some(QueryLogConfig::new(dir.path(), 64 * 1024).unwrap());
    let dns = DnsService::start(cfg).await.unwrap();
    let at = dns.local_addr();

    let m = ask_udp(at, 1, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        a_records(&m),
        ["192.0.2.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        m.answers[0].ttl, 600,
        "a 300 s record is raised to the minimum"
    );
    assert_eq!(log.count_via("tls", "www.example.test."), 1);
    let health = dns.upstream_health();
    assert!(!health[0].healthy && health[0].failed == 1, "{health:?}");
    assert!(health[1].healthy && health[1].answered == 1, "{health:?}");
    assert_eq!(health[1].upstream, tls.to_string());

    // The dead one is skipped now (no second failure); the connection is reused.
    let m = ask_udp(at, 2, "nope.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_udp(at, 3, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    let health = dns.upstream_health();
    assert_eq!(health[0].failed, 1, "{health:?}");
    assert_eq!(health[1].answered, 2, "{health:?}");
    assert_eq!(
        log.count_via("tls", "www.example.test."),
        1,
        "answered from the cache"
    );

    // The query log says where each answer came from.
    let (path, dropped) = dns.query_log().unwrap();
    assert_eq!(dropped, 0);
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = weft_dns::querylog::read(&path, 10, None).unwrap();
        if entries.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let got: Vec<(&str, &str, Option<&str>)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.source.as_str(), e.upstream.as_deref()))
        .collect();
    let up = tls.to_string();
    assert_eq!(
        got,
        [
            ("www.example.test", "upstream", Some(up.as_str())),
            ("nope.example.test", "upstream", Some(up.as_str())),
            ("www.example.test", "cache", None),
        ]
    );
    assert_eq!(entries[1].rcode, "NXDomain");
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (dot, log, ca) = dot_server("dot.test").await;
    let wrong = Upstream::Tls {
        addr: dot,
        name: Some("other.test".into()),
    };
    let dns = DnsService::start(config(dir.path(), vec![wrong], &ca))
        .await
        .unwrap();
    let m = ask_udp(dns.local_addr(), 1, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(log.count("www.example.test."), 0, "nothing sent to it");
    let health = dns.upstream_health();
    assert!(!health[0].healthy);
    let error = health[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("TLS connect"), "{error}");
    dns.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_ca_file_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let tls: Upstream = "tls://127.0.0.1:853#dot.test".parse().unwrap();
    let mut cfg = DnsConfig::unmanaged("127.0.0.1:0".parse().unwrap(), vec![tls]);
    cfg.tls_ca = Some(dir.path().join("missing.pem"));
    let e = DnsService::start(cfg.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
    std::fs::write(dir.path().join("missing.pem"), "not a certificate").unwrap();
    let e = DnsService::start(cfg).await.unwrap_err().to_string();
    assert!(e.contains("no certificate"), "{e}");
}
