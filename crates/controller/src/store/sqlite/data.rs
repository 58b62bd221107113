//! Node data and sealed secrets' rows (migration 0010).

use rusqlite::{Connection, Transaction, params};

use super::{corrupt, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::data::{DataRecord, DataRows, DataWrite, ScopeRef, SecretRecord};

/// Applies one change inside the batch's transaction.
pub(super) fn apply(tx: &Transaction<'_>, w: &DataWrite) -> Result<(), StoreError> {
    match w {
        DataWrite::Put(r) => {
            tx.prepare_cached(
                "INSERT INTO data_entries (scope, node_id, key, value, version, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                r.scope.to_text(),
                r.scope.node_id().map(to_i64),
                r.key,
                r.value,
                to_i64(r.version),
                to_i64(r.updated_at_ms)
            ])?;
        }
        DataWrite::Delete { scope, key } => {
            tx.prepare_cached("DELETE FROM data_entries WHERE scope = ?1 AND key = ?2")?
                .execute(params![scope.to_text(), key])?;
        }
        DataWrite::PutSecret(s) => {
            tx.prepare_cached(
                "INSERT INTO secrets (node_id, key, sealed, version, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (node_id, key) DO UPDATE SET sealed = excluded.sealed,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                to_i64(s.node_id),
                s.key,
                s.sealed,
                to_i64(s.version),
                to_i64(s.updated_at_ms)
            ])?;
        }
        DataWrite::DeleteSecret { node_id, key } => {
            tx.prepare_cached("DELETE FROM secrets WHERE node_id = ?1 AND key = ?2")?
                .execute(params![to_i64(*node_id), key])?;
        }
    }
    Ok(())
}

/// Every data entry and secret.
pub(super) fn load(c: &Connection) -> Result<DataRows, StoreError> {
    let mut rows = DataRows::default();
    let mut st = c.prepare(
        "SELECT scope, key, value, version, updated_at_ms FROM data_entries ORDER BY scope, key",
    )?;
    let entries = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for e in entries {
        let (scope, key, value, version, at) = e?;
        rows.entries.push(DataRecord {
            scope: ScopeRef::parse(&scope)
                .ok_or_else(|| corrupt("data_entries.scope")(format!("{scope:?}")))?,
            key,
            value,
            version: to_u64(version),
            updated_at_ms: to_u64(at),
        });
    }
    let mut st = c.prepare(
        "SELECT node_id, key, sealed, version, updated_at_ms FROM secrets ORDER BY node_id, key",
    )?;
    let secrets = st.query_map([], |r| {
        Ok(SecretRecord {
            node_id: to_u64(r.get::<_, i64>(0)?),
            key: r.get(1)?,
            sealed: r.get(2)?,
            version: to_u64(r.get::<_, i64>(3)?),
            updated_at_ms: to_u64(r.get::<_, i64>(4)?),
        })
    })?;
    for s in secrets {
        rows.secrets.push(s?);
    }
    Ok(rows)
}
