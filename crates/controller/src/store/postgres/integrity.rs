//! The rows of hooks and integrity (migration 0009) on PostgreSQL.

use postgres::GenericClient;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::integrity::{
    ExpectedRecord, HookApprovalRecord, IntegritySnapshot, NodeIntegrityRecord,
};
use crate::store::sqlite::{parse_json, to_i64, to_u64};

/// Reads every row.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<IntegritySnapshot, StoreError> {
    let mut snap = IntegritySnapshot::default();
    for r in db.query(
        "SELECT name, sha256, approved_at_ms FROM hook_approvals ORDER BY name, sha256",
        &[],
    )? {
        snap.approvals.push(HookApprovalRecord {
            name: col(&r, 0)?,
            sha256: col(&r, 1)?,
            approved_at_ms: to_u64(col(&r, 2)?),
        });
    }
    for r in db.query(
        "SELECT version, sha256, set_at_ms FROM integrity_expected ORDER BY version",
        &[],
    )? {
        snap.expected.push(ExpectedRecord {
            version: col(&r, 0)?,
            sha256: col(&r, 1)?,
            set_at_ms: to_u64(col(&r, 2)?),
        });
    }
    for r in db.query(
        "SELECT node_id, reported_at_ms, report FROM node_integrity ORDER BY node_id",
        &[],
    )? {
        let report: String = col(&r, 2)?;
        snap.reports.push(NodeIntegrityRecord {
            node_id: to_u64(col(&r, 0)?),
            reported_at_ms: to_u64(col(&r, 1)?),
            report: parse_json("node integrity report", &report)?,
        });
    }
    Ok(snap)
}

/// Inserts an approved hash (one already there is kept as it was).
pub(super) fn put_approval<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &HookApprovalRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO hook_approvals (name, sha256, approved_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name, sha256) DO NOTHING",
        &[&r.name, &r.sha256, &to_i64(r.approved_at_ms)],
    )?;
    Ok(())
}

/// Deletes one approved hash of `name`, or all of them.
pub(super) fn delete_approval<C: GenericClient>(
    db: &mut Db<'_, C>,
    name: &str,
    sha256: Option<&str>,
) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM hook_approvals WHERE name = $1 AND ($2::TEXT IS NULL OR sha256 = $2)",
        &[&name, &sha256],
    )?;
    Ok(())
}

/// Inserts or replaces the expected hash of a version.
pub(super) fn put_expected<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &ExpectedRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO integrity_expected (version, sha256, set_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (version) DO UPDATE SET sha256 = excluded.sha256, set_at_ms = excluded.set_at_ms",
        &[&r.version, &r.sha256, &to_i64(r.set_at_ms)],
    )?;
    Ok(())
}

/// Inserts or replaces a node's last report.
pub(super) fn put_report<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &NodeIntegrityRecord,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(&r.report)
        .map_err(|e| StoreError::Db(format!("encoding an integrity report: {e}")))?;
    db.exec(
        "INSERT INTO node_integrity (node_id, reported_at_ms, report) VALUES ($1, $2, $3)
         ON CONFLICT (node_id) DO UPDATE SET reported_at_ms = excluded.reported_at_ms, report = excluded.report",
        &[&to_i64(r.node_id), &to_i64(r.reported_at_ms), &json],
    )?;
    Ok(())
}
