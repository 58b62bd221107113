//! The rows of each feature (usage, events, tasks, integrity, the DNS
//! blocklist, services) as every driver must keep them; run by each driver's
//! tests. A suite taking `open` reopens the same database to check that rows
//! persist.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::sync::Arc;

use weft_proto::NodeKey;
use weft_proto::dnsblock::{BlockMode, DnsBlocklist};
use weft_proto::events::{AnomalyEvent, AnomalyKind, Baseline};
use weft_proto::integrity::{HookHash, IntegrityReport};
use weft_proto::task::{
    Action, RunState, TaskKind, TaskLimits, TaskResult, TaskStatus, TaskTarget,
};
use weft_proto::usage::UsageCounters;

use super::dns_blocklist::DnsBlocklistRecord;
use super::integrity::{ExpectedRecord, HookApprovalRecord, NodeIntegrityRecord};
use super::services::{
    InstanceRecord, InstanceState, ServiceOrigin, ServiceRangeRecord, ServiceRecord, ServiceWrite,
};
use super::tasks::{TaskRecord, TaskResultRecord, TaskRunRecord};
use super::usage::{SeriesKey, SeriesKind, UsageBucketRecord, UsageCounterRecord};
use super::{EventQuery, EventRecord, NetworkRecord, NodeRecord, Store, Write};
use crate::secret::SecretHash;

/// A node row `id` named `n{id}`, for the store's test suites.
pub(crate) fn node(id: u64) -> NodeRecord {
    NodeRecord {
        id,
        node_key: NodeKey::from_bytes([id as u8; 32]),
        name: format!("n{id}"),
        hostname: None,
        tags: Default::default(),
        disabled: false,
        credential_hash: SecretHash::of(&format!("c{id}")),
        endpoints: Vec::new(),
        last_seen: None,
        seen_published: None,
        created_at: 1,
        facts: None,
        facts_changed_ms: None,
    }
}

/// Usage: counters upsert, buckets add, sums window, prune.
pub(crate) fn usage_suite<S: Store>(mut s: S) {
    let flow = |peer: &str, port| SeriesKey {
        kind: SeriesKind::Flow,
        peer: peer.into(),
        proto: 6,
        port,
        user: String::new(),
    };
    let c = |tx| UsageCounters {
        tx_bytes: tx,
        rx_bytes: 2 * tx,
        tx_packets: 1,
        rx_packets: 1,
        flows: 1,
    };
    let counter = |tx| UsageCounterRecord {
        node_id: 1,
        key: flow("k", 443),
        run_id: "r".into(),
        epoch: 0,
        counters: c(tx),
        updated_ms: 5,
    };
    let bucket = |at, tx| UsageBucketRecord {
        node_id: 1,
        bucket_ms: at,
        key: flow("k", 443),
        delta: c(tx),
    };
    s.apply(&[
        Write::UsageCounter(counter(10)),
        Write::UsageAdd(bucket(0, 10)),
    ])
    .unwrap();
    s.apply(&[
        Write::UsageCounter(counter(25)),
        Write::UsageAdd(bucket(0, 15)),
        Write::UsageAdd(bucket(3_600_000, 1)),
    ])
    .unwrap();
    assert_eq!(s.usage_counters(1).unwrap(), vec![counter(25)]);
    assert!(s.usage_counters(2).unwrap().is_empty());
    let all = s.usage_sums(0).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].counters.tx_bytes, 26);
    assert_eq!(all[0].counters.flows, 3);
    assert_eq!(s.usage_sums(3_600_000).unwrap()[0].counters.tx_bytes, 1);
    // A sum past i64::MAX is capped, not an error.
    s.apply(&[Write::UsageAdd(bucket(3_600_000, u64::MAX / 2))])
        .unwrap();
    s.apply(&[Write::UsageAdd(bucket(3_600_000, u64::MAX / 2))])
        .unwrap();
    assert_eq!(
        s.usage_sums(3_600_000).unwrap()[0].counters.tx_bytes,
        i64::MAX as u64
    );
    s.apply(&[Write::UsagePrune(3_600_000)]).unwrap();
    assert_eq!(s.usage_sums(0).unwrap().len(), 1);
    s.apply(&[Write::UsagePrune(7_200_000)]).unwrap();
    assert!(s.usage_sums(0).unwrap().is_empty());
}

/// An anomaly event `id` of node `node_id`, received at `received_at_ms`.
pub(crate) fn event(node_id: u64, id: u64, received_at_ms: u64) -> EventRecord {
    EventRecord {
        node_id,
        node_name: format!("n{node_id}"),
        node_key: NodeKey::from_bytes([node_id as u8; 32]),
        received_at_ms,
        event: AnomalyEvent {
            id,
            at_ms: received_at_ms,
            kind: AnomalyKind::Scan,
            peer: None,
            peer_key: None,
            target: Some("b".into()),
            observed: 30.0,
            unit: "distinct ports".into(),
            baseline: Baseline::Threshold {
                threshold: 20.0,
                ratio: 1.5,
            },
            window_secs: 10,
            details: Default::default(),
            summary: "scan".into(),
        },
    }
}

/// Events: kept once per (node, event id), filtered, read oldest first.
pub(crate) fn events_suite<S: Store>(mut s: S) {
    s.apply(&[Write::Events(vec![event(1, 10, 100), event(2, 10, 200)])])
        .unwrap();
    // A retried upload of the same event adds nothing.
    s.apply(&[Write::Events(vec![event(1, 10, 300), event(1, 11, 400)])])
        .unwrap();
    let all = s
        .events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap();
    let ids: Vec<(u64, u64)> = all.iter().map(|(_, r)| (r.node_id, r.event.id)).collect();
    assert_eq!(ids, vec![(1, 10), (2, 10), (1, 11)]);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    let one = s
        .events(&EventQuery {
            node_id: Some(1),
            since_ms: Some(150),
            limit: 100,
        })
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].1.event.id, 11);
    let newest = s
        .events(&EventQuery {
            limit: 2,
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[1].1.event.id, 11);
    assert_eq!(newest[1].1, event(1, 11, 400));
}

fn task(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        created_at_ms: 1_000,
        created_by: "admin".into(),
        target: TaskTarget::Tag("web".into()),
        kind: TaskKind::Action(Action::Ping { peer: "b".into() }),
        limits: TaskLimits::default(),
        deadline_ms: 9_000,
        cancelled_at_ms: None,
    }
}

fn run(task_id: &str, node_id: u64) -> TaskRunRecord {
    TaskRunRecord {
        task_id: task_id.into(),
        node_id,
        node_name: format!("n{node_id}"),
        node_key: "k".into(),
        state: RunState::Pending,
        lease_id: None,
        lease_expires_at_ms: None,
        leases: 0,
        status: None,
        finished_at_ms: None,
    }
}

/// Tasks, runs and results round-trip and are deleted together.
pub(crate) fn tasks_suite<S: Store>(open: impl Fn() -> S) {
    let mut s = open();
    s.apply(&[
        Write::PutTask(task("tsk_1")),
        Write::PutTaskRun(run("tsk_1", 1)),
        Write::PutTaskRun(run("tsk_1", 2)),
    ])
    .unwrap();
    let leased = TaskRunRecord {
        state: RunState::Done,
        lease_id: Some("lse_1".into()),
        lease_expires_at_ms: Some(5_000),
        leases: 1,
        status: Some(TaskStatus::Completed),
        finished_at_ms: Some(4_000),
        ..run("tsk_1", 1)
    };
    let result = TaskResultRecord {
        task_id: "tsk_1".into(),
        node_id: 1,
        received_at_ms: 4_000,
        result: TaskResult {
            task_id: "tsk_1".into(),
            lease_id: "lse_1".into(),
            status: TaskStatus::Completed,
            exit_code: Some(0),
            signal: None,
            duration_ms: 3,
            stdout: "ok\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: None,
        },
    };
    let cancelled = TaskRecord {
        cancelled_at_ms: Some(4_500),
        ..task("tsk_1")
    };
    s.apply(&[
        Write::PutTaskRun(leased.clone()),
        Write::PutTaskResult(result.clone()),
        Write::PutTask(cancelled.clone()),
    ])
    .unwrap();
    // A second result for the run fails the whole commit.
    assert!(s.apply(&[Write::PutTaskResult(result.clone())]).is_err());
    drop(s);
    let mut s = open();
    let snap = s.load().unwrap().tasks;
    assert_eq!(snap.tasks, vec![cancelled]);
    assert_eq!(snap.runs, vec![leased, run("tsk_1", 2)]);
    assert_eq!(s.task_results("tsk_1").unwrap(), vec![result]);
    s.apply(&[Write::DeleteTask("tsk_1".into())]).unwrap();
    let snap = s.load().unwrap().tasks;
    assert!(snap.tasks.is_empty() && snap.runs.is_empty());
    assert!(s.task_results("tsk_1").unwrap().is_empty());
}

fn approval(name: &str, c: char, at: u64) -> HookApprovalRecord {
    HookApprovalRecord {
        name: name.into(),
        sha256: c.to_string().repeat(64),
        approved_at_ms: at,
    }
}

/// Approvals, expectations and reports persist; a removed node takes its
/// report.
pub(crate) fn integrity_suite<S: Store>(open: impl Fn() -> S) {
    let mut s = open();
    let report = NodeIntegrityRecord {
        node_id: 3,
        reported_at_ms: 50,
        report: IntegrityReport {
            api_version: None,
            weftd_version: "0.1.0".into(),
            weftd_sha256: "e".repeat(64),
            hooks: vec![HookHash {
                name: "a".into(),
                sha256: "a".repeat(64),
            }],
            hooks_error: None,
        },
    };
    s.apply(&[
        Write::PutNode(node(3)),
        Write::PutHookApproval(approval("a", 'a', 10)),
        Write::PutHookApproval(approval("a", 'b', 11)),
        Write::PutHookApproval(approval("b", 'c', 12)),
        // Approving again keeps the first approval's time.
        Write::PutHookApproval(approval("a", 'a', 99)),
        Write::PutExpected(ExpectedRecord {
            version: "0.1.0".into(),
            sha256: "d".repeat(64),
            set_at_ms: 20,
        }),
        Write::PutExpected(ExpectedRecord {
            version: "0.1.0".into(),
            sha256: "e".repeat(64),
            set_at_ms: 21,
        }),
        Write::PutNodeIntegrity(report.clone()),
    ])
    .unwrap();
    drop(s);
    let mut s = open();
    let snap = s.load().unwrap().integrity;
    assert_eq!(
        snap.approvals,
        vec![
            approval("a", 'a', 10),
            approval("a", 'b', 11),
            approval("b", 'c', 12)
        ]
    );
    assert_eq!(snap.expected.len(), 1);
    assert_eq!(snap.expected[0].sha256, "e".repeat(64));
    assert_eq!(snap.reports, vec![report]);
    s.apply(&[
        Write::DeleteHookApproval {
            name: "a".into(),
            sha256: Some("b".repeat(64)),
        },
        Write::DeleteHookApproval {
            name: "b".into(),
            sha256: None,
        },
        Write::DeleteNode(3),
    ])
    .unwrap();
    let snap = s.load().unwrap().integrity;
    assert_eq!(snap.approvals, vec![approval("a", 'a', 10)]);
    assert!(snap.reports.is_empty(), "the report went with its node");
}

/// The DNS blocklist persists, is replaced and cleared; an empty list is a
/// list.
pub(crate) fn dns_blocklist_suite<S: Store>(open: impl Fn() -> S) {
    let mut s = open();
    assert_eq!(s.load().unwrap().dns_blocklist, None);
    let rec = |version, domains: &[&str]| DnsBlocklistRecord {
        list: Arc::new(DnsBlocklist {
            version,
            mode: BlockMode::Zero,
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        }),
        set_by: "admin".into(),
        set_at_ms: 5,
    };
    s.apply(&[Write::DnsBlocklist(Some(rec(
        3,
        &["a.example", "b.example"],
    )))])
    .unwrap();
    s.apply(&[Write::DnsBlocklist(Some(rec(4, &["c.example"])))])
        .unwrap();
    drop(s);
    let mut s = open();
    assert_eq!(
        s.load().unwrap().dns_blocklist,
        Some(rec(4, &["c.example"]))
    );
    s.apply(&[Write::DnsBlocklist(Some(rec(5, &[])))]).unwrap();
    assert_eq!(s.load().unwrap().dns_blocklist, Some(rec(5, &[])));
    s.apply(&[Write::DnsBlocklist(None)]).unwrap();
    assert_eq!(s.load().unwrap().dns_blocklist, None);
}

fn svc(id: u64, name: &str, vip: &str) -> ServiceRecord {
    ServiceRecord {
        id,
        network_id: 1,
        name: name.into(),
        vip: vip.parse().unwrap(),
        ports: weft_proto::service::parse_ports("5432/tcp,53/udp").unwrap(),
        health: "http:/healthz".parse().unwrap(),
        origin: ServiceOrigin::Admin,
        version: 3,
        created_at_ms: 9,
    }
}

/// The service registry persists and cascades; a second VIP is refused.
/// Returns the store, holding service 1 (`db`) and its instance on node 2.
pub(crate) fn services_suite<S: Store>(mut s: S) -> S {
    let range = ServiceRangeRecord {
        network_id: 1,
        prefix: "100.127.255.0/24".parse().unwrap(),
    };
    let inst = |service_id, node_id, state| InstanceRecord {
        service_id,
        node_id,
        state,
        created_at_ms: 5,
    };
    s.apply(&[
        Write::PutNetwork(NetworkRecord {
            id: 1,
            name: "prod".into(),
            ipv4_cidr: "100.64.0.0/24".parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 8,
            created_at: 1,
            anomaly: None,
        }),
        Write::PutNode(node(1)),
        Write::PutNode(node(2)),
        Write::Services(ServiceWrite::PutRange(range.clone())),
        Write::Services(ServiceWrite::PutService(svc(1, "db", "100.127.255.1"))),
        Write::Services(ServiceWrite::PutService(svc(2, "web", "100.127.255.2"))),
        Write::Services(ServiceWrite::PutInstance(inst(
            1,
            1,
            InstanceState::Approved,
        ))),
        Write::Services(ServiceWrite::PutInstance(inst(
            1,
            2,
            InstanceState::Pending,
        ))),
        Write::Services(ServiceWrite::PutInstance(inst(
            2,
            2,
            InstanceState::Approved,
        ))),
        Write::Services(ServiceWrite::SetVersion(3)),
    ])
    .unwrap();
    let rows = s.load().unwrap().services;
    assert_eq!(rows.version, 3);
    assert_eq!(rows.ranges, vec![range]);
    assert_eq!(
        rows.services,
        vec![
            svc(1, "db", "100.127.255.1"),
            svc(2, "web", "100.127.255.2")
        ]
    );
    assert_eq!(rows.instances.len(), 3);
    // A second VIP or name is refused by the schema too.
    assert!(
        s.apply(&[Write::Services(ServiceWrite::PutService(svc(
            3,
            "db2",
            "100.127.255.1"
        )))])
        .is_err()
    );
    // Approve, then the node and the service go: their rows go with them.
    s.apply(&[
        Write::Services(ServiceWrite::PutInstance(inst(
            1,
            2,
            InstanceState::Approved,
        ))),
        Write::DeleteNode(1),
        Write::Services(ServiceWrite::DeleteService(2)),
    ])
    .unwrap();
    let rows = s.load().unwrap().services;
    assert_eq!(rows.instances, vec![inst(1, 2, InstanceState::Approved)]);
    assert_eq!(rows.services.len(), 1);
    s
}

#[test]
fn sqlite_passes_the_row_suites() {
    use super::sqlite::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let path = dir.path().join(name);
        move || SqliteStore::open(&path).unwrap()
    };
    usage_suite(SqliteStore::open_in_memory().unwrap());
    events_suite(SqliteStore::open_in_memory().unwrap());
    tasks_suite(file("tasks.db"));
    integrity_suite(file("integrity.db"));
    dns_blocklist_suite(file("dns.db"));
    services_suite(SqliteStore::open_in_memory().unwrap());
}

/// Rows in most tables (a boolean, a BLOB, an identity column among them),
/// for tests that move a whole database.
pub(crate) fn sample_rows() -> Vec<Write> {
    use super::data::{DataRecord, DataWrite, ScopeRef, SecretRecord};
    use super::hostfw::{FirewallFileRecord, HostFwWrite};
    use super::ssh::{SshSeenRecord, SshServerRecord, SshWrite};
    use super::usage::UsageBucketRecord;
    use super::{AuditRecord, MembershipRecord, PolicyRecord, RelayRecord, TokenRecord};
    let mut n1 = node(1);
    n1.disabled = true;
    n1.last_seen = Some(8);
    n1.seen_published = Some(7);
    n1.facts = Some(Box::new(weft_proto::facts::HostFacts {
        kernel_version: Some("6.1.0".into()),
        ..Default::default()
    }));
    let mut w = vec![
        Write::PutNetwork(NetworkRecord {
            id: 1,
            name: "prod".into(),
            ipv4_cidr: "100.64.0.0/24".parse().unwrap(),
            ipv6_prefix: Some("fd00:1::/48".parse().unwrap()),
            dns_domain: "weft.internal".into(),
            pow_difficulty: 8,
            created_at: 1,
            anomaly: None,
        }),
        Write::PutNode(n1),
        Write::PutNode(node(2)),
        Write::PutToken(TokenRecord {
            id: 1,
            token_hash: SecretHash::of("t"),
            description: Some("ops".into()),
            tags: ["web".to_string()].into(),
            networks: [1].into(),
            max_uses: Some(5),
            uses: 2,
            expires_at: 100,
            revoked: true,
            created_at: 1,
        }),
        Write::PutMembership(MembershipRecord {
            node_id: 1,
            network_id: 1,
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: Some("fd00:1::2".parse().unwrap()),
            token_id: Some(1),
            joined_at: 3,
        }),
        Write::PutRelay(RelayRecord {
            id: 1,
            name: "fra1".into(),
            url: "https://relay.example.net".into(),
            token_hash: SecretHash::of("r"),
            tls_fingerprint: None,
            stun_port: Some(3478),
            created_at: 4,
            last_seen: Some(9),
        }),
        Write::PutPolicy(PolicyRecord {
            version: 1,
            text: "# policy".into(),
            author: "admin".into(),
            at_ms: 5,
        }),
        Write::Events(vec![event(1, 10, 100), event(2, 11, 200)]),
        Write::UsageAdd(UsageBucketRecord {
            node_id: 1,
            bucket_ms: 0,
            key: SeriesKey {
                kind: SeriesKind::Flow,
                peer: "k".into(),
                proto: 6,
                port: 443,
                user: String::new(),
            },
            delta: UsageCounters {
                tx_bytes: 10,
                rx_bytes: 20,
                tx_packets: 1,
                rx_packets: 2,
                flows: 1,
            },
        }),
        Write::PutTask(task("tsk_1")),
        Write::PutTaskRun(run("tsk_1", 1)),
        Write::PutHookApproval(approval("a", 'a', 10)),
        Write::PutExpected(ExpectedRecord {
            version: "0.1.0".into(),
            sha256: "d".repeat(64),
            set_at_ms: 20,
        }),
        Write::Data(DataWrite::Put(DataRecord {
            scope: ScopeRef::Node(1),
            key: "role".into(),
            value: "db".into(),
            version: 4,
            updated_at_ms: 6,
        })),
        Write::Data(DataWrite::PutSecret(SecretRecord {
            node_id: 1,
            key: "pw".into(),
            sealed: vec![0, 1, 2, 255],
            version: 4,
            updated_at_ms: 6,
        })),
        Write::HostFw(HostFwWrite::PutFile(FirewallFileRecord {
            version: 1,
            text: "# fw".into(),
            author: "admin".into(),
            at_ms: 7,
        })),
        Write::Ssh(SshWrite::PutServer(SshServerRecord {
            node_id: 1,
            port: 22,
            host_key: "ssh-ed25519 AAAA".into(),
            reported_at_ms: 8,
        })),
        Write::Ssh(SshWrite::Seen(SshSeenRecord {
            node_id: 1,
            record_id: "r1".into(),
            ended: true,
            at_ms: 8,
        })),
        Write::Services(ServiceWrite::PutRange(ServiceRangeRecord {
            network_id: 1,
            prefix: "100.127.255.0/24".parse().unwrap(),
        })),
        Write::Services(ServiceWrite::PutService(svc(1, "db", "100.127.255.1"))),
        Write::Services(ServiceWrite::PutInstance(InstanceRecord {
            service_id: 1,
            node_id: 1,
            state: InstanceState::Approved,
            created_at_ms: 5,
        })),
        Write::Services(ServiceWrite::SetVersion(2)),
        Write::SetMapVersion(7),
        Write::SetAdminHash(SecretHash::of("admin")),
    ];
    for id in 1..=3 {
        w.push(Write::Audit(AuditRecord {
            id,
            at_ms: 10 * id,
            actor: "admin".into(),
            action: "network.create".into(),
            target: "prod".into(),
            detail: serde_json::json!({"n": id}),
        }));
    }
    w
}
