//! `weftd --update-nft-domain-set`, case by case: the real binary in a
//! throwaway network namespace with its own nftables table, asking a fake DNS
//! server on that namespace's loopback (`--dns-server`).
//!
//! Needs root (network namespaces, nft); without it every test fails saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nix::sched::{CloneFlags, setns};

/// What the fake server answers for one name.
#[derive(Clone, Default)]
struct Answer {
    /// Addresses with their TTLs, in this order (duplicates kept).
    addrs: Vec<(IpAddr, u32)>,
    /// A CNAME in front of the addresses, with its TTL.
    cname: Option<(&'static str, u32)>,
    /// NXDOMAIN / SERVFAIL instead of NOERROR.
    rcode: Option<ResponseCode>,
    /// Over UDP, an empty answer with the TC bit (the client must retry over TCP).
    truncate: bool,
}

/// A network namespace with the table `inet t` holding sets `s4` and `s6`,
/// and a fake DNS server on its loopback.
struct Lab {
    ns: String,
    dns_port: u16,
    queries: Arc<AtomicUsize>,
}

impl Lab {
    fn new(zone: Vec<(&'static str, Answer)>) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need root: they create a network namespace and nftables sets"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "wds-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &ns]);
        let mut lab = Self {
            dns_port: 0,
            queries: Arc::new(AtomicUsize::new(0)),
            ns,
        };
        lab.exec(&["ip", "link", "set", "lo", "up"]);
        lab.nft(
            "add table inet t\n\
             add set inet t s4 { type ipv4_addr; }\n\
             add set inet t s6 { type ipv6_addr; }\n\
             add element inet t s4 { 198.51.100.1 }\n\
             add element inet t s6 { 2001:db8::99 }\n",
        );
        let zone: BTreeMap<String, Answer> = zone
            .into_iter()
            .map(|(n, a)| (format!("{n}."), a))
            .collect();
        let (udp, tcp) = in_ns(&lab.ns, || {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
            (udp, tcp)
        });
        let port = udp.local_addr().unwrap().port();
        let (z, q) = (zone.clone(), lab.queries.clone());
        std::thread::spawn(move || serve_udp(&udp, &z, &q));
        let q = lab.queries.clone();
        std::thread::spawn(move || serve_tcp(&tcp, &zone, &q));
        lab.dns_port = port;
        lab
    }

    fn exec(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        out
    }

    fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{script}");
    }

    /// The addresses in set `name` of `inet t`.
    fn set(&self, name: &str) -> BTreeSet<IpAddr> {
        let out = self.exec(&["nft", "-j", "list", "set", "inet", "t", name]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("set"))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| e.as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Runs `weftd --update-nft-domain-set --host HOST --family inet --table
    /// t` with `extra` in the namespace.
    fn update(&self, host: &str, extra: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_weftd")])
            .args([
                "--update-nft-domain-set",
                "--host",
                host,
                "--family",
                "inet",
            ])
            .args(["--table", "t"])
            .args(["--dns-server", &format!("127.0.0.1:{}", self.dns_port)])
            .args(["--state-dir", "/nonexistent/weft-domain-set-test"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        setns(File::open(path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn respond(query: &Message, zone: &BTreeMap<String, Answer>, udp: bool) -> Message {
    let q = &query.queries[0];
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    let Some(answer) = zone.get(&q.name.to_ascii()) else {
        m.metadata.response_code = ResponseCode::NXDomain;
        return m;
    };
    if let Some(rcode) = answer.rcode {
        m.metadata.response_code = rcode;
        return m;
    }
    if udp && answer.truncate {
        m.metadata.truncation = true;
        return m;
    }
    let mut owner = q.name.clone();
    if let Some((target, ttl)) = answer.cname {
        let target = Name::from_ascii(format!("{target}.")).unwrap();
        m.add_answer(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::CNAME(CNAME(target.clone())),
        ));
        owner = target;
    }
    for (ip, ttl) in &answer.addrs {
        let data = match (ip, q.query_type) {
            (IpAddr::V4(a), RecordType::A) => RData::A(A(*a)),
            (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
            _ => continue,
        };
        m.add_answer(Record::from_rdata(owner.clone(), *ttl, data));
    }
    m
}

fn serve_udp(socket: &UdpSocket, zone: &BTreeMap<String, Answer>, queries: &AtomicUsize) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        queries.fetch_add(1, Ordering::SeqCst);
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let reply = respond(&query, zone, true).to_vec().unwrap();
        let _ = socket.send_to(&reply, from);
    }
}

fn serve_tcp(listener: &TcpListener, zone: &BTreeMap<String, Answer>, queries: &AtomicUsize) {
    for mut s in listener.incoming().flatten() {
        queries.fetch_add(1, Ordering::SeqCst);
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            continue;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut buf).is_err() {
            continue;
        }
        let query = Message::from_vec(&buf).unwrap();
        let reply = respond(&query, zone, false).to_vec().unwrap();
        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        let _ = s.write_all(&framed);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn addrs(list: &[(&str, u32)]) -> Vec<(IpAddr, u32)> {
    list.iter().map(|(a, t)| (ip(a), *t)).collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn both_sets() -> [&'static str; 4] {
    ["--set", "s4", "--set6", "s6"]
}

#[test]
fn both_families_are_sorted_deduplicated_and_replace_the_sets() {
    let lab = Lab::new(vec![(
        "both.test",
        Answer {
            addrs: addrs(&[
                ("192.0.2.2", 300),
                ("192.0.2.1", 60),
                ("192.0.2.2", 300),
                ("2001:db8::2", 300),
                ("2001:db8::1", 120),
                ("2001:db8::1", 120),
            ]),
            ..Answer::default()
        },
    )]);
    let out = lab.update("both.test", &both_sets());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "inet t: s4 = 192.0.2.1 192.0.2.2; s6 = 2001:db8::1 2001:db8::2 (ttl 60 s)"
    );
    assert_eq!(lab.set("s4"), ips(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(lab.set("s6"), ips(&["2001:db8::1", "2001:db8::2"]));
    assert!(
        !std::path::Path::new("/nonexistent/weft-domain-set-test").exists(),
        "no state directory is needed or created"
    );
}

#[test]
fn an_ipv4_only_answer_empties_the_ipv6_set() {
    let lab = Lab::new(vec![(
        "v4.test",
        Answer {
            addrs: addrs(&[("192.0.2.7", 30)]),
            ..Answer::default()
        },
    )]);
    let out = lab.update("v4.test", &both_sets());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lab.set("s4"), ips(&["192.0.2.7"]));
    assert!(lab.set("s6").is_empty());
    assert_eq!(
        text(&out).0.trim(),
        "inet t: s4 = 192.0.2.7; s6 = none (ttl 30 s)"
    );
}

#[test]
fn an_ipv6_only_answer_empties_the_ipv4_set() {
    let lab = Lab::new(vec![(
        "v6.test",
        Answer {
            addrs: addrs(&[("2001:db8::7", 30)]),
            // Through a CNAME: its TTL counts too.
            cname: Some(("real.v6.test", 10)),
            ..Answer::default()
        },
    )]);
    let out = lab.update("v6.test", &both_sets());
    assert!(out.status.success(), "{out:?}");
    assert!(lab.set("s4").is_empty());
    assert_eq!(lab.set("s6"), ips(&["2001:db8::7"]));
    assert!(text(&out).0.contains("(ttl 10 s)"), "{out:?}");
}

#[test]
fn with_the_ipv4_set_only_an_a_answer_is_needed() {
    let lab = Lab::new(vec![(
        "v6.test",
        Answer {
            addrs: addrs(&[("2001:db8::7", 30)]),
            ..Answer::default()
        },
    )]);
    let out = lab.update("v6.test", &["--set", "s4"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("v6.test has no A address"), "{out:?}");
    assert_eq!(lab.set("s4"), ips(&["198.51.100.1"]), "unchanged");
}

#[test]
fn an_empty_answer_fails_and_leaves_the_sets_alone() {
    let lab = Lab::new(vec![("nodata.test", Answer::default())]);
    for host in ["nodata.test", "nxdomain.test"] {
        let out = lab.update(host, &both_sets());
        assert!(!out.status.success(), "{host}: {out:?}");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out)
                .1
                .contains(&format!("{host} has no A or AAAA address")),
            "{out:?}"
        );
        assert_eq!(lab.set("s4"), ips(&["198.51.100.1"]));
        assert_eq!(lab.set("s6"), ips(&["2001:db8::99"]));
    }
}

#[test]
fn an_invalid_identifier_fails_before_any_question() {
    let lab = Lab::new(vec![(
        "ok.test",
        Answer {
            addrs: addrs(&[("192.0.2.1", 30)]),
            ..Answer::default()
        },
    )]);
    for extra in [
        &["--set", "4s"][..],
        &["--set", "s4", "--set6", "s 6"],
        &["--set", "s4;flush ruleset"],
        &["--set", ""],
        &["--set", "s4/x"],
    ] {
        let out = lab.update("ok.test", extra);
        assert!(!out.status.success(), "{extra:?}");
        assert!(
            text(&out).1.contains("is not a valid nftables identifier"),
            "{extra:?}: {out:?}"
        );
    }
    let long = "a".repeat(256);
    let out = lab.update("ok.test", &["--set", &long]);
    assert!(!out.status.success());
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns, env!("CARGO_BIN_EXE_weftd")])
        .args(["--update-nft-domain-set", "--host", "ok.test"])
        .args(["--table", "t-1.x", "--set", "_s4", "--family", "inet4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--family \"inet4\""), "{out:?}");
    assert_eq!(lab.queries(), 0, "nothing was asked");
    assert_eq!(lab.set("s4"), ips(&["198.51.100.1"]));
    // A bad host name is refused too.
    let out = lab.update("bad host", &["--set", "s4"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("is not a host name"), "{out:?}");
}

#[test]
fn a_missing_set_or_table_fails_and_changes_nothing() {
    let lab = Lab::new(vec![(
        "ok.test",
        Answer {
            addrs: addrs(&[("192.0.2.1", 30), ("2001:db8::1", 30)]),
            ..Answer::default()
        },
    )]);
    // s6 exists but s4 does not: one transaction, so s6 stays as it was.
    let out = lab.update("ok.test", &["--set", "nope", "--set6", "s6"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("nft refused"), "{out:?}");
    assert_eq!(lab.set("s6"), ips(&["2001:db8::99"]));
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns, env!("CARGO_BIN_EXE_weftd")])
        .args(["--update-nft-domain-set", "--host", "ok.test"])
        .args(["--table", "missing", "--set", "s4"])
        .args(["--dns-server", &format!("127.0.0.1:{}", lab.dns_port)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn a_resolver_failure_fails() {
    let lab = Lab::new(vec![(
        "broken.test",
        Answer {
            rcode: Some(ResponseCode::ServFail),
            ..Answer::default()
        },
    )]);
    let out = lab.update("broken.test", &both_sets());
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("SERVFAIL") || text(&out).1.contains("Server Failure"),
        "{out:?}"
    );
    assert_eq!(lab.set("s4"), ips(&["198.51.100.1"]));
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let lab = Lab::new(vec![(
        "big.test",
        Answer {
            addrs: addrs(&[("192.0.2.9", 30), ("192.0.2.8", 30)]),
            truncate: true,
            ..Answer::default()
        },
    )]);
    let out = lab.update("big.test", &["--set", "s4"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lab.set("s4"), ips(&["192.0.2.8", "192.0.2.9"]));
    assert_eq!(lab.queries(), 2, "one UDP question, then the same over TCP");
}
