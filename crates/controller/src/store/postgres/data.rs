//! Node data and sealed secrets' rows (migration 0010) on PostgreSQL.

use postgres::GenericClient;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::data::{DataRecord, DataRows, DataWrite, ScopeRef, SecretRecord};
use crate::store::sqlite::{to_i64, to_u64};

/// Applies one change inside the batch's transaction.
pub(super) fn apply<C: GenericClient>(db: &mut Db<'_, C>, w: &DataWrite) -> Result<(), StoreError> {
    match w {
        DataWrite::Put(r) => {
            db.exec(
                "INSERT INTO data_entries (scope, node_id, key, value, version, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
                &[
                    &r.scope.to_text(),
                    &r.scope.node_id().map(to_i64),
                    &r.key,
                    &r.value,
                    &to_i64(r.version),
                    &to_i64(r.updated_at_ms),
                ],
            )?;
        }
        DataWrite::Delete { scope, key } => {
            db.exec(
                "DELETE FROM data_entries WHERE scope = $1 AND key = $2",
                &[&scope.to_text(), key],
            )?;
        }
        DataWrite::PutSecret(s) => {
            db.exec(
                "INSERT INTO secrets (node_id, key, sealed, version, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (node_id, key) DO UPDATE SET sealed = excluded.sealed,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
                &[
                    &to_i64(s.node_id),
                    &s.key,
                    &s.sealed,
                    &to_i64(s.version),
                    &to_i64(s.updated_at_ms),
                ],
            )?;
        }
        DataWrite::DeleteSecret { node_id, key } => {
            db.exec(
                "DELETE FROM secrets WHERE node_id = $1 AND key = $2",
                &[&to_i64(*node_id), key],
            )?;
        }
    }
    Ok(())
}

/// Every data entry and secret.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<DataRows, StoreError> {
    let mut rows = DataRows::default();
    for r in db.query(
        "SELECT scope, key, value, version, updated_at_ms FROM data_entries ORDER BY scope, key",
        &[],
    )? {
        let scope: String = col(&r, 0)?;
        rows.entries.push(DataRecord {
            scope: ScopeRef::parse(&scope)
                .ok_or_else(|| StoreError::Corrupt(format!("data_entries.scope: {scope:?}")))?,
            key: col(&r, 1)?,
            value: col(&r, 2)?,
            version: to_u64(col(&r, 3)?),
            updated_at_ms: to_u64(col(&r, 4)?),
        });
    }
    for r in db.query(
        "SELECT node_id, key, sealed, version, updated_at_ms FROM secrets ORDER BY node_id, key",
        &[],
    )? {
        rows.secrets.push(SecretRecord {
            node_id: to_u64(col(&r, 0)?),
            key: col(&r, 1)?,
            sealed: col(&r, 2)?,
            version: to_u64(col(&r, 3)?),
            updated_at_ms: to_u64(col(&r, 4)?),
        });
    }
    Ok(rows)
}
