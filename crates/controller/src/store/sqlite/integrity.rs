//! The rows of hooks and integrity (migration 0009): approved hook hashes,
//! expected weftd hashes, nodes' last reports.

use rusqlite::{Connection, Transaction, params};

use super::{parse_json, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::integrity::{
    ExpectedRecord, HookApprovalRecord, IntegritySnapshot, NodeIntegrityRecord,
};

/// Reads every row.
pub(super) fn load(c: &Connection) -> Result<IntegritySnapshot, StoreError> {
    let mut snap = IntegritySnapshot::default();
    let mut st =
        c.prepare("SELECT name, sha256, approved_at_ms FROM hook_approvals ORDER BY name, sha256")?;
    for row in st.query_map([], |r| {
        Ok(HookApprovalRecord {
            name: r.get(0)?,
            sha256: r.get(1)?,
            approved_at_ms: to_u64(r.get(2)?),
        })
    })? {
        snap.approvals.push(row?);
    }
    let mut st =
        c.prepare("SELECT version, sha256, set_at_ms FROM integrity_expected ORDER BY version")?;
    for row in st.query_map([], |r| {
        Ok(ExpectedRecord {
            version: r.get(0)?,
            sha256: r.get(1)?,
            set_at_ms: to_u64(r.get(2)?),
        })
    })? {
        snap.expected.push(row?);
    }
    let mut st =
        c.prepare("SELECT node_id, reported_at_ms, report FROM node_integrity ORDER BY node_id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (node_id, at, report) = row?;
        snap.reports.push(NodeIntegrityRecord {
            node_id: to_u64(node_id),
            reported_at_ms: to_u64(at),
            report: parse_json("node integrity report", &report)?,
        });
    }
    Ok(snap)
}

/// Inserts an approved hash (one already there is kept as it was).
pub(super) fn put_approval(tx: &Transaction<'_>, r: &HookApprovalRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO hook_approvals (name, sha256, approved_at_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![r.name, r.sha256, to_i64(r.approved_at_ms)])?;
    Ok(())
}

/// Deletes one approved hash of `name`, or all of them.
pub(super) fn delete_approval(
    tx: &Transaction<'_>,
    name: &str,
    sha256: Option<&str>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM hook_approvals WHERE name = ?1 AND (?2 IS NULL OR sha256 = ?2)",
    )?
    .execute(params![name, sha256])?;
    Ok(())
}

/// Inserts or replaces the expected hash of a version.
pub(super) fn put_expected(tx: &Transaction<'_>, r: &ExpectedRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO integrity_expected (version, sha256, set_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (version) DO UPDATE SET sha256 = excluded.sha256, set_at_ms = excluded.set_at_ms",
    )?
    .execute(params![r.version, r.sha256, to_i64(r.set_at_ms)])?;
    Ok(())
}

/// Inserts or replaces a node's last report.
pub(super) fn put_report(tx: &Transaction<'_>, r: &NodeIntegrityRecord) -> Result<(), StoreError> {
    let json = serde_json::to_string(&r.report)
        .map_err(|e| StoreError::Db(format!("encoding an integrity report: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO node_integrity (node_id, reported_at_ms, report) VALUES (?1, ?2, ?3)
         ON CONFLICT (node_id) DO UPDATE SET reported_at_ms = excluded.reported_at_ms, report = excluded.report",
    )?
    .execute(params![to_i64(r.node_id), to_i64(r.reported_at_ms), json])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_proto::NodeKey;
    use weft_proto::integrity::{HookHash, IntegrityReport};

    use crate::secret::SecretHash;
    use crate::store::integrity::{ExpectedRecord, HookApprovalRecord, NodeIntegrityRecord};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NodeRecord, Store, Write};

    fn approval(name: &str, c: char, at: u64) -> HookApprovalRecord {
        HookApprovalRecord {
            name: name.into(),
            sha256: c.to_string().repeat(64),
            approved_at_ms: at,
        }
    }

    #[test]
    fn approvals_expectations_and_reports_persist_and_a_removed_node_takes_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.db");
        let mut s = SqliteStore::create(&path).unwrap();
        let node = NodeRecord {
            id: 3,
            node_key: NodeKey::from_bytes([3; 32]),
            name: "n3".into(),
            hostname: None,
            tags: Default::default(),
            disabled: false,
            credential_hash: SecretHash::of("c"),
            endpoints: vec![],
            last_seen: None,
            created_at: 1,
            facts: None,
            facts_changed_ms: None,
        };
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
            Write::PutNode(node),
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
        let mut s = SqliteStore::open(&path).unwrap();
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
}
