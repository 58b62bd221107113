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

// Tested with the other driver: crate::store::row_suites.
