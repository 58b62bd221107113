//! `ssh_hosts` in maps: a server's report reaches exactly the nodes the
//! policy lets log in to it, deltas keep every map equal to a fresh
//! snapshot, and session records are audited once.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use weft_proto::NodeKey;
use weft_proto::netmap::{MapChange, NetworkMap};
use weft_proto::ssh::{SshServerInfo, SshServerReport, SshSessionRecord, SshSessionReport};

use super::super::{Payload, compile, snapshot};
use crate::model::{
    Actor, Batch, NewNetwork, NewToken, NodeId, Registration, ReportSshServer, ReportSshSessions,
    SetPolicy, World,
};
use crate::secret::SecretHash;
use crate::store::Write;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

fn host_key(fill: u8) -> String {
    let mut wire = Vec::new();
    wire.extend_from_slice(&11u32.to_be_bytes());
    wire.extend_from_slice(b"ssh-ed25519");
    wire.extend_from_slice(&32u32.to_be_bytes());
    wire.extend_from_slice(&[fill; 32]);
    format!(
        "ssh-ed25519 {}",
        base64::engine::general_purpose::STANDARD.encode(wire)
    )
}

const POLICY: &str = "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\n\n[[ssh]]\nfrom = [\"node:ops\"]\nto = [\"node:db1\"]\nusers = [\"deploy\", \"*\"]\n";

/// The world, every node's held map, and the nodes by name.
struct Fixture {
    w: World,
    held: BTreeMap<NodeId, NetworkMap>,
    ids: BTreeMap<&'static str, NodeId>,
    now: u64,
}

impl Fixture {
    fn new() -> Self {
        let mut w = World::default();
        let mut b = Batch::default();
        let a = &Actor::Admin;
        let net = NewNetwork {
            name: "prod".into(),
            ipv4_cidr: "100.64.0.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        };
        w.apply(&mut b, a, net, 0).unwrap();
        let tok = NewToken {
            networks: ["prod".to_string()].into(),
            tags: Default::default(),
            expires_at: u64::MAX,
            max_uses: None,
            description: None,
            hash: SecretHash::of("t"),
        };
        w.apply(&mut b, a, tok, 0).unwrap();
        let mut ids = BTreeMap::new();
        for (i, name) in [(1u8, "ops"), (2, "db1"), (3, "web")] {
            let reg = Registration {
                node_key: key(i),
                token_hash: SecretHash::of("t"),
                pow_bits: 0,
                name: Some(name.into()),
                hostname: None,
                facts: None,
                credential_hash: SecretHash::of(&format!("cred{i}")),
            };
            w.apply(&mut b, a, reg, 0).unwrap();
            ids.insert(name, w.find_node_by_key(&key(i)).unwrap().rec.id);
        }
        let set = SetPolicy {
            text: POLICY.into(),
            expect_version: None,
        };
        w.apply(&mut b, a, set, 0).unwrap();
        w.finish_batch(&mut b);
        let held = ids
            .values()
            .map(|id| (*id, snapshot(&w, *id).unwrap()))
            .collect();
        Fixture {
            w,
            held,
            ids,
            now: 1000,
        }
    }

    /// Runs `op` as node `by` in its own batch; delivers the deltas; returns
    /// the nodes that received an `SshHosts` change and the batch's writes.
    fn run<O: crate::model::Operation>(
        &mut self,
        by: &str,
        op: O,
    ) -> (BTreeSet<&'static str>, Vec<Write>) {
        self.now += 1000;
        let mut b = Batch::default();
        let actor = Actor::Node(key(match by {
            "ops" => 1,
            "db1" => 2,
            _ => 3,
        }));
        self.w.apply(&mut b, &actor, op, self.now).unwrap();
        let mut got = BTreeSet::new();
        if let Some(o) = self.w.finish_batch(&mut b) {
            for out in compile(&self.w, &o) {
                for r in out.recipients.iter() {
                    match &out.payload {
                        Payload::Resync => {
                            self.held.insert(*r, snapshot(&self.w, *r).unwrap());
                        }
                        Payload::Delta(d) => {
                            let d = &d.to_map_delta();
                            if d.changes
                                .iter()
                                .any(|c| matches!(c, MapChange::SshHosts { .. }))
                            {
                                let name = self.ids.iter().find(|(_, id)| **id == *r).unwrap().0;
                                got.insert(*name);
                            }
                            self.held.get_mut(r).unwrap().apply(d).unwrap();
                        }
                    }
                }
            }
        }
        for (id, map) in &self.held {
            let mut fresh = snapshot(&self.w, *id).unwrap();
            fresh.version = map.version;
            assert_eq!(
                map, &fresh,
                "a delta-kept map differs from a fresh snapshot"
            );
        }
        (got, b.writes)
    }

    fn hosts(&self, name: &str) -> Vec<weft_proto::ssh::SshHost> {
        self.held[&self.ids[name]].ssh_hosts.clone()
    }

    fn server(&self, name: &str, server: Option<(u16, String)>) -> ReportSshServer {
        ReportSshServer {
            node: self.ids[name],
            report: SshServerReport {
                server: server.map(|(port, host_key)| SshServerInfo { port, host_key }),
            },
        }
    }
}

fn audits(writes: &[Write], action: &str) -> Vec<serde_json::Value> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Audit(a) if a.action == action => Some(a.detail.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn ssh_hosts_reach_exactly_the_nodes_the_policy_lets_log_in() {
    let mut f = Fixture::new();
    assert!(f.hosts("ops").is_empty(), "no server reported yet");

    // db1 starts serving: only ops (granted) learns its host key.
    let op = f.server("db1", Some((22, host_key(7))));
    let (got, writes) = f.run("db1", op);
    assert_eq!(got, BTreeSet::from(["ops"]));
    assert_eq!(audits(&writes, "node.ssh_server").len(), 1);
    let h = f.hosts("ops");
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].node.as_str(), h[0].network.as_str(), h[0].port),
        ("db1", "prod", 22)
    );
    assert_eq!(h[0].host_key, host_key(7));
    assert_eq!(h[0].users, vec!["*".to_owned(), "deploy".to_owned()]);
    assert_eq!(
        Some(h[0].addr),
        f.held[&f.ids["db1"]].networks[0].ipv4.into()
    );
    assert!(f.hosts("web").is_empty() && f.hosts("db1").is_empty());
    // db1's own policy lists ops as the client it lets in.
    let db1 = f.w.node_policy(f.ids["db1"]).unwrap();
    assert_eq!(db1.ssh_inbound.len(), 1);
    assert_eq!(db1.ssh_inbound[0].peer, "ops");

    // The same report again changes nothing (no batch, no audit).
    let op = f.server("db1", Some((22, host_key(7))));
    let (got, writes) = f.run("db1", op);
    assert!(got.is_empty() && audits(&writes, "node.ssh_server").is_empty());

    // A new key (and port) reaches ops only.
    let op = f.server("db1", Some((2222, host_key(8))));
    let (got, _) = f.run("db1", op);
    assert_eq!(got, BTreeSet::from(["ops"]));
    assert_eq!(f.hosts("ops")[0].port, 2222);

    // web starting a server changes nobody's list: no rule grants it.
    let op = f.server("web", Some((22, host_key(9))));
    let (got, _) = f.run("web", op);
    assert!(got.is_empty(), "{got:?}");

    // db1 stops serving: ops's list empties.
    let op = f.server("db1", None);
    let (got, writes) = f.run("db1", op);
    assert_eq!(got, BTreeSet::from(["ops"]));
    assert!(f.hosts("ops").is_empty());
    assert_eq!(
        audits(&writes, "node.ssh_server")[0]["server"],
        serde_json::Value::Null
    );
}

#[test]
fn bad_server_reports_are_refused() {
    let mut f = Fixture::new();
    let mut b = Batch::default();
    for bad in [
        (0, host_key(1)),
        (22, "ssh-rsa AAAA".into()),
        (22, format!("{} comment", host_key(1))),
        (22, "ssh-ed25519 !!!".into()),
        (22, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==".into()),
        (22, format!("ssh-ed25519 {}", "A".repeat(2000))),
    ] {
        let op = f.server("db1", Some(bad.clone()));
        assert!(
            f.w.apply(&mut b, &Actor::Node(key(2)), op, 1).is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(b.writes.is_empty());
    let _ = &mut f;
}

fn record(id: &str, accepted: bool, ended: Option<u64>) -> SshSessionRecord {
    SshSessionRecord {
        id: id.into(),
        from_node: Some("ops".into()),
        from_addr: "100.64.0.2".parse().unwrap(),
        user: "deploy".into(),
        accepted,
        reason: (!accepted).then(|| "no grant".into()),
        command: Some("id -un".into()),
        started_ms: 5000,
        ended_ms: ended,
    }
}

#[test]
fn ssh_session_records_are_audited_once_with_who_user_from_and_duration() {
    let mut f = Fixture::new();
    let db1 = f.ids["db1"];
    let report = |sessions| ReportSshSessions {
        node: db1,
        report: SshSessionReport { sessions },
    };
    let op = report(vec![
        record("1-1", true, None),
        record("1-1", true, Some(7500)),
        record("1-2", false, Some(5000)),
    ]);
    let (_, writes) = f.run("db1", op);
    let sessions = audits(&writes, "ssh.session");
    assert_eq!(sessions.len(), 2, "start and end");
    assert_eq!(sessions[1]["state"], "closed");
    assert_eq!(sessions[1]["duration_ms"], 2500);
    assert_eq!(sessions[1]["from_node"], "ops");
    assert_eq!(sessions[1]["user"], "deploy");
    assert_eq!(sessions[1]["server"], "db1");
    assert_eq!(sessions[1]["from_addr"], "100.64.0.2");
    let refused = audits(&writes, "ssh.refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "no grant");

    // A replay (the agent's outbox after a lost answer) audits nothing.
    let op = report(vec![
        record("1-1", true, Some(7500)),
        record("1-2", false, Some(5000)),
    ]);
    let (_, writes) = f.run("db1", op);
    assert!(audits(&writes, "ssh.session").is_empty() && audits(&writes, "ssh.refused").is_empty());

    // Bounded and validated.
    let mut b = Batch::default();
    let too_many = report(
        (0..300)
            .map(|i| record(&format!("x-{i}"), true, None))
            .collect(),
    );
    assert!(
        f.w.apply(&mut b, &Actor::Node(key(2)), too_many, 1)
            .is_err()
    );
    let backwards = report(vec![record("y-1", true, Some(1))]);
    assert!(
        f.w.apply(&mut b, &Actor::Node(key(2)), backwards, 1)
            .is_err()
    );
    let bad_id = report(vec![record("../x", true, None)]);
    assert!(f.w.apply(&mut b, &Actor::Node(key(2)), bad_id, 1).is_err());
}
