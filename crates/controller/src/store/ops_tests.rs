//! Store behaviour of operations at scale, run by each driver's tests:
//! deleting a network with every row that names it, and audit retention
//! (`audit_cut`, `AuditPrune`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use weft_proto::service::{HealthCheck, ServicePort, ServiceProto};

use super::data::{DataRecord, DataWrite, ScopeRef};
use super::services::{
    InstanceRecord, InstanceState, ServiceOrigin, ServiceRangeRecord, ServiceRecord, ServiceWrite,
};
use super::*;
use crate::secret::SecretHash;

fn net(id: u64, name: &str, cidr: &str) -> NetworkRecord {
    NetworkRecord {
        id,
        name: name.into(),
        ipv4_cidr: cidr.parse().unwrap(),
        ipv6_prefix: None,
        dns_domain: "weft.internal".into(),
        pow_difficulty: 0,
        created_at: 1,
        anomaly: None,
    }
}

use super::row_suites::node;

fn member(node_id: u64, network_id: u64, ip: [u8; 4]) -> MembershipRecord {
    MembershipRecord {
        node_id,
        network_id,
        ipv4: Ipv4Addr::from(ip),
        ipv6: None,
        token_id: None,
        joined_at: 1,
    }
}

fn audit(id: u64, at_ms: u64) -> Write {
    Write::Audit(AuditRecord {
        id,
        at_ms,
        actor: "admin".into(),
        action: "test".into(),
        target: "t".into(),
        detail: serde_json::json!({}),
    })
}

/// `DeleteNetwork` removes the network and what names it, even rows the
/// model did not delete one by one, and nothing of another network.
pub(crate) fn delete_network_suite<S: Store>(mut s: S) {
    s.apply(&[
        Write::PutNetwork(net(1, "gone", "10.9.0.0/24")),
        Write::PutNetwork(net(2, "kept", "10.8.0.0/24")),
        Write::PutNode(node(1)),
        Write::PutNode(node(2)),
        Write::PutMembership(member(1, 1, [10, 9, 0, 2])),
        Write::PutMembership(member(1, 2, [10, 8, 0, 2])),
        Write::PutMembership(member(2, 1, [10, 9, 0, 3])),
        Write::PutRoute(RouteRecord {
            node_id: 1,
            network_id: 1,
            prefix: "192.168.9.0/24".parse().unwrap(),
            state: RouteState::Approved,
            source: RouteSource::Admin,
            approved_at: Some(1),
            created_at: 1,
        }),
        Write::PutRoute(RouteRecord {
            node_id: 1,
            network_id: 2,
            prefix: "192.168.8.0/24".parse().unwrap(),
            state: RouteState::Approved,
            source: RouteSource::Admin,
            approved_at: Some(1),
            created_at: 1,
        }),
        Write::Services(ServiceWrite::PutRange(ServiceRangeRecord {
            network_id: 1,
            prefix: "100.127.255.0/24".parse().unwrap(),
        })),
        Write::Services(ServiceWrite::PutService(ServiceRecord {
            id: 1,
            network_id: 1,
            name: "db".into(),
            vip: Ipv4Addr::new(100, 127, 255, 254),
            ports: vec![ServicePort {
                port: 5432,
                proto: ServiceProto::Tcp,
            }],
            health: HealthCheck::Tcp,
            origin: ServiceOrigin::Admin,
            version: 1,
            created_at_ms: 1,
        })),
        Write::Services(ServiceWrite::PutInstance(InstanceRecord {
            service_id: 1,
            node_id: 2,
            state: InstanceState::Approved,
            created_at_ms: 1,
        })),
        Write::Data(DataWrite::Put(DataRecord {
            scope: ScopeRef::Network(1),
            key: "k".into(),
            value: "v".into(),
            version: 1,
            updated_at_ms: 1,
        })),
        Write::Data(DataWrite::Put(DataRecord {
            scope: ScopeRef::Network(2),
            key: "k".into(),
            value: "v".into(),
            version: 1,
            updated_at_ms: 1,
        })),
    ])
    .unwrap();

    let token = TokenRecord {
        id: 1,
        token_hash: SecretHash::of("t"),
        description: None,
        tags: BTreeSet::new(),
        networks: [1, 2].into(),
        max_uses: None,
        uses: 0,
        expires_at: 100,
        revoked: false,
        created_at: 1,
    };
    s.apply(&[Write::PutToken(token.clone())]).unwrap();

    // The model's writes for the deletion end with DeleteNetwork; a token
    // loses the network (an upsert replaces its networks).
    s.apply(&[
        Write::PutToken(TokenRecord {
            networks: [2].into(),
            ..token.clone()
        }),
        Write::DeleteNetwork(1),
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.tokens[0].networks, [2].into());
    let names: Vec<&str> = snap.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["kept"]);
    assert_eq!(snap.nodes.len(), 2, "nodes keep their identity");
    assert_eq!(snap.memberships, vec![member(1, 2, [10, 8, 0, 2])]);
    assert_eq!(snap.routes.len(), 1);
    assert_eq!(snap.routes[0].network_id, 2);
    assert!(snap.services.ranges.is_empty());
    assert!(snap.services.services.is_empty());
    assert!(snap.services.instances.is_empty());
    assert_eq!(snap.data.entries.len(), 1);
    assert_eq!(snap.data.entries[0].scope, ScopeRef::Network(2));

    // Deleting it again (a replayed batch) is not an error.
    s.apply(&[Write::DeleteNetwork(1)]).unwrap();
    // The name and the addresses can be used again.
    s.apply(&[
        Write::PutNetwork(net(3, "gone", "10.9.0.0/24")),
        Write::PutMembership(member(2, 3, [10, 9, 0, 3])),
    ])
    .unwrap();
}

/// `audit_cut` by age and by count, `AuditPrune` by id prefix.
pub(crate) fn audit_retention_suite<S: Store>(mut s: S) {
    assert_eq!(s.audit_cut(Some(1_000), Some(1)).unwrap(), None, "empty");
    // Ids 1..=10 at 100, 200, ... 1000 ms.
    let writes: Vec<Write> = (1..=10).map(|i| audit(i, i * 100)).collect();
    s.apply(&writes).unwrap();
    s.ping().unwrap();

    assert_eq!(s.audit_cut(None, None).unwrap(), None, "no limit");
    assert_eq!(
        s.audit_cut(Some(100), Some(10)).unwrap(),
        None,
        "nothing due"
    );
    // Older than 350 ms: ids 1..=3.
    assert_eq!(
        s.audit_cut(Some(350), None).unwrap(),
        Some(AuditCut {
            through_id: 3,
            count: 3
        })
    );
    // Keep the newest 4: ids 1..=6 go.
    assert_eq!(
        s.audit_cut(None, Some(4)).unwrap(),
        Some(AuditCut {
            through_id: 6,
            count: 6
        })
    );
    // Both: the stricter wins.
    assert_eq!(
        s.audit_cut(Some(850), Some(4)).unwrap(),
        Some(AuditCut {
            through_id: 8,
            count: 8
        })
    );
    // Keep zero: everything.
    assert_eq!(
        s.audit_cut(None, Some(0)).unwrap(),
        Some(AuditCut {
            through_id: 10,
            count: 10
        })
    );

    s.apply(&[Write::AuditPrune { through_id: 6 }, audit(11, 1_100)])
        .unwrap();
    let left: Vec<u64> = s
        .audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left, [11, 10, 9, 8, 7]);
    // The highest id survives a reload: ids are never reused.
    assert_eq!(s.load().unwrap().max_audit_id, 11);
    // Counting starts after the gap.
    assert_eq!(
        s.audit_cut(None, Some(2)).unwrap(),
        Some(AuditCut {
            through_id: 9,
            count: 3
        })
    );
    // Ids are never reused after a prune of everything: the sweep's own
    // record, appended in the same batch, is newer than what it deletes.
    s.apply(&[Write::AuditPrune { through_id: 11 }, audit(12, 1_200)])
        .unwrap();
    assert_eq!(s.load().unwrap().max_audit_id, 12);
}
