//! A tiny upstream DNS server for the tests: answers `www.example.test` (A
//! 192.0.2.10, TTL 300), `big.example.test` (40 A records, truncated over UDP so
//! the client must use TCP), and NXDOMAIN with an SOA for everything else. It
//! counts what it is asked.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each using a part"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the fake upstream was asked: (transport, lowercase name).
#[derive(Debug, Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<(&'static str, String)>>>);

impl Log {
    pub fn count(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| n == name)
            .count()
    }
    pub fn count_via(&self, transport: &str, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, n)| *t == transport && n == name)
            .count()
    }
}

/// Starts the fake upstream on `addr` (UDP and TCP on the same port).
pub async fn fake_upstream(addr: SocketAddr) -> (SocketAddr, Log) {
    let udp = UdpSocket::bind(addr).await.unwrap();
    let local = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(local).await.unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(resp) = respond(&buf[..n], false, &l) {
                let _ = udp.send_to(&resp, from).await;
            }
        }
    });
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let l = l.clone();
            tokio::spawn(async move {
                let Ok(len) = s.read_u16().await else { return };
                let mut buf = vec![0u8; usize::from(len)];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                if let Some(resp) = respond(&buf, true, &l) {
                    let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&resp);
                    let _ = s.write_all(&framed).await;
                }
            });
        }
    });
    (local, log)
}

fn respond(bytes: &[u8], tcp: bool, log: &Log) -> Option<Vec<u8>> {
    respond_via(bytes, if tcp { "tcp" } else { "udp" }, log)
}

/// The fake's answer to `bytes`, logged as asked over `transport` (`udp` gets
/// truncated big answers; `tcp`, `tls` do not).
pub fn respond_via(bytes: &[u8], transport: &'static str, log: &Log) -> Option<Vec<u8>> {
    let tcp = transport != "udp";
    let q = Message::from_vec(bytes).ok()?;
    let question = q.queries.first()?.clone();
    let name = question.name.to_lowercase().to_ascii();
    log.0.lock().unwrap().push((transport, name.clone()));
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    if q.edns.is_some() {
        m.set_edns(Edns::new());
    }
    let a = |ip: Ipv4Addr, ttl| Record::from_rdata(question.name.clone(), ttl, RData::A(A(ip)));
    match (name.as_str(), question.query_type) {
        ("www.example.test.", RecordType::A) => {
            m.add_answer(a(Ipv4Addr::new(192, 0, 2, 10), 300));
        }
        ("www.example.test.", _) => add_soa(&mut m),
        ("big.example.test.", RecordType::A) if !tcp => m.metadata.truncation = true,
        ("big.example.test.", RecordType::A) => {
            for i in 0..40 {
                m.add_answer(a(Ipv4Addr::new(192, 0, 2, i), 300));
            }
        }
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            add_soa(&mut m);
        }
    }
    m.to_vec().ok()
}

fn add_soa(m: &mut Message) {
    let soa = SOA::new(
        Name::from_ascii("ns.example.test.").unwrap(),
        Name::from_ascii("hostmaster.example.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    m.add_authority(Record::from_rdata(
        Name::from_ascii("example.test.").unwrap(),
        60,
        RData::SOA(soa),
    ));
}

/// Builds a query.
pub fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

/// Asks `server` over UDP.
pub async fn ask_udp(server: SocketAddr, id: u16, name: &str, t: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(id, name, t), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(6), s.recv_from(&mut buf))
        .await
        .expect("no answer over UDP")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, id);
    m
}

/// Asks `server` over TCP.
pub async fn ask_tcp(server: SocketAddr, id: u16, name: &str, t: RecordType) -> Message {
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let q = query(id, name, t);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.unwrap();
    let read = async {
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(6), read)
        .await
        .expect("no answer over TCP");
    let m = Message::from_vec(&buf).unwrap();
    assert_eq!(m.metadata.id, id);
    m
}

/// The IPv4 addresses in an answer.
pub fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}
