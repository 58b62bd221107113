//! The rows of SSH through the mesh (migration 0014).

use rusqlite::{Connection, Transaction, params};

use super::{to_i64, to_u64};
use crate::store::StoreError;
use crate::store::ssh::{SshRows, SshSeenRecord, SshServerRecord, SshWrite};

/// Reads every row.
pub(super) fn load(c: &Connection) -> Result<SshRows, StoreError> {
    let mut rows = SshRows::default();
    let mut st =
        c.prepare("SELECT node_id, port, host_key, reported_at_ms FROM node_ssh ORDER BY node_id")?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })? {
        let (node_id, port, host_key, at) = row?;
        let port = u16::try_from(port)
            .map_err(|_| StoreError::Db(format!("node_ssh: port {port} out of range")))?;
        rows.servers.push(SshServerRecord {
            node_id: to_u64(node_id),
            port,
            host_key,
            reported_at_ms: to_u64(at),
        });
    }
    let mut st =
        c.prepare("SELECT node_id, record_id, ended, at_ms FROM ssh_sessions_seen ORDER BY at_ms")?;
    for row in st.query_map([], |r| {
        Ok(SshSeenRecord {
            node_id: to_u64(r.get(0)?),
            record_id: r.get(1)?,
            ended: r.get::<_, i64>(2)? != 0,
            at_ms: to_u64(r.get(3)?),
        })
    })? {
        rows.seen.push(row?);
    }
    Ok(rows)
}

/// Applies one change.
pub(super) fn apply(tx: &Transaction<'_>, w: &SshWrite) -> Result<(), StoreError> {
    match w {
        SshWrite::PutServer(r) => {
            tx.prepare_cached(
                "INSERT INTO node_ssh (node_id, port, host_key, reported_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node_id) DO UPDATE SET port = excluded.port,
                 host_key = excluded.host_key, reported_at_ms = excluded.reported_at_ms",
            )?
            .execute(params![
                to_i64(r.node_id),
                i64::from(r.port),
                r.host_key,
                to_i64(r.reported_at_ms)
            ])?;
        }
        SshWrite::DeleteServer(node) => {
            tx.prepare_cached("DELETE FROM node_ssh WHERE node_id = ?1")?
                .execute(params![to_i64(*node)])?;
        }
        SshWrite::Seen(r) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO ssh_sessions_seen (node_id, record_id, ended, at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                to_i64(r.node_id),
                r.record_id,
                i64::from(r.ended),
                to_i64(r.at_ms)
            ])?;
        }
    }
    Ok(())
}
