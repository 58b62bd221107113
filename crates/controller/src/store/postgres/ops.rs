//! Network deletion and audit retention on PostgreSQL (see the SQLite
//! driver's `ops` for what each deletes).

use postgres::GenericClient;

use super::{Db, col};
use crate::store::sqlite::{to_i64, to_u64};
use crate::store::{AuditCut, StoreError};

/// Deletes network `id` and what still names it.
pub(super) fn delete_network<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: u64,
) -> Result<(), StoreError> {
    let id = to_i64(id);
    // Instances go with their service (ON DELETE CASCADE).
    for sql in [
        "DELETE FROM routes WHERE network_id = $1",
        "DELETE FROM memberships WHERE network_id = $1",
        "DELETE FROM services WHERE network_id = $1",
        "DELETE FROM service_ranges WHERE network_id = $1",
        "DELETE FROM networks WHERE id = $1",
    ] {
        db.exec(sql, &[&id])?;
    }
    db.exec(
        "DELETE FROM data_entries WHERE scope = $1",
        &[&format!("network:{id}")],
    )?;
    Ok(())
}

/// Deletes the audit records with `id <= through_id`.
pub(super) fn audit_prune<C: GenericClient>(
    db: &mut Db<'_, C>,
    through_id: u64,
) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM audit_log WHERE id <= $1",
        &[&to_i64(through_id)],
    )?;
    Ok(())
}

/// See [`crate::store::Store::audit_cut`].
pub(super) fn audit_cut<C: GenericClient>(
    db: &mut Db<'_, C>,
    older_than_ms: Option<u64>,
    keep: Option<u64>,
) -> Result<Option<AuditCut>, StoreError> {
    let by_age: Option<i64> = match older_than_ms {
        None => None,
        Some(ms) => match db.query_opt(
            "SELECT MAX(id) FROM audit_log WHERE at_ms < $1",
            &[&to_i64(ms)],
        )? {
            Some(r) => col(&r, 0)?,
            None => None,
        },
    };
    let by_count: Option<i64> = match keep {
        None => None,
        Some(n) => db
            .query_opt(
                "SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET $1",
                &[&to_i64(n)],
            )?
            .map(|r| col(&r, 0))
            .transpose()?,
    };
    let Some(through) = by_age.max(by_count) else {
        return Ok(None);
    };
    let count: i64 =
        match db.query_opt("SELECT COUNT(*) FROM audit_log WHERE id <= $1", &[&through])? {
            Some(r) => col(&r, 0)?,
            None => 0,
        };
    Ok((count > 0).then(|| AuditCut {
        through_id: to_u64(through),
        count: to_u64(count),
    }))
}
