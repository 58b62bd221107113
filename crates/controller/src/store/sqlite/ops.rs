//! Operations at scale: deleting a network with every row that names it, and
//! audit retention (which records a sweep deletes, and deleting them).

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::{to_i64, to_u64};
use crate::store::{AuditCut, StoreError};

/// Deletes network `id` and what still names it (the model deleted the rows
/// one by one already; this leaves no foreign key dangling). Data entries
/// scoped to it are stored as `network:<id>`.
pub(super) fn delete_network(tx: &Transaction<'_>, id: u64) -> Result<(), StoreError> {
    let id = to_i64(id);
    // Instances go with their service (ON DELETE CASCADE).
    for sql in [
        "DELETE FROM routes WHERE network_id = ?1",
        "DELETE FROM memberships WHERE network_id = ?1",
        "DELETE FROM services WHERE network_id = ?1",
        "DELETE FROM service_ranges WHERE network_id = ?1",
        "DELETE FROM networks WHERE id = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([id])?;
    }
    tx.prepare_cached("DELETE FROM data_entries WHERE scope = ?1")?
        .execute([format!("network:{id}")])?;
    Ok(())
}

/// Deletes the audit records with `id <= through_id`.
pub(super) fn audit_prune(tx: &Transaction<'_>, through_id: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM audit_log WHERE id <= ?1")?
        .execute([to_i64(through_id)])?;
    Ok(())
}

/// See [`crate::store::Store::audit_cut`].
pub(super) fn audit_cut(
    c: &Connection,
    older_than_ms: Option<u64>,
    keep: Option<u64>,
) -> Result<Option<AuditCut>, StoreError> {
    let by_age: Option<i64> = match older_than_ms {
        None => None,
        // A full scan (no index on at_ms): once per sweep, on a table the
        // sweep keeps bounded.
        Some(ms) => c.query_row(
            "SELECT MAX(id) FROM audit_log WHERE at_ms < ?1",
            [to_i64(ms)],
            |r| r.get(0),
        )?,
    };
    let by_count: Option<i64> = match keep {
        None => None,
        Some(n) => c
            .query_row(
                "SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET ?1",
                [to_i64(n)],
                |r| r.get(0),
            )
            .optional()?,
    };
    let Some(through) = by_age.max(by_count) else {
        return Ok(None);
    };
    let count: i64 = c.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE id <= ?1",
        params![through],
        |r| r.get(0),
    )?;
    Ok((count > 0).then(|| AuditCut {
        through_id: to_u64(through),
        count: to_u64(count),
    }))
}

/// A trivial query: the database answers.
pub(super) fn ping(c: &Connection) -> Result<(), StoreError> {
    c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}
