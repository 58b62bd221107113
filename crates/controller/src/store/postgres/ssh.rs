//! The rows of SSH through the mesh (migration 0014) on PostgreSQL.

use postgres::GenericClient;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::sqlite::{to_i64, to_u64};
use crate::store::ssh::{SshRows, SshSeenRecord, SshServerRecord, SshWrite};

/// Reads every row.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<SshRows, StoreError> {
    let mut rows = SshRows::default();
    for r in db.query(
        "SELECT node_id, port, host_key, reported_at_ms FROM node_ssh ORDER BY node_id",
        &[],
    )? {
        let port: i64 = col(&r, 1)?;
        rows.servers.push(SshServerRecord {
            node_id: to_u64(col(&r, 0)?),
            port: u16::try_from(port)
                .map_err(|_| StoreError::Corrupt(format!("node_ssh: port {port} out of range")))?,
            host_key: col(&r, 2)?,
            reported_at_ms: to_u64(col(&r, 3)?),
        });
    }
    for r in db.query(
        "SELECT node_id, record_id, ended, at_ms FROM ssh_sessions_seen ORDER BY at_ms",
        &[],
    )? {
        rows.seen.push(SshSeenRecord {
            node_id: to_u64(col(&r, 0)?),
            record_id: col(&r, 1)?,
            ended: col(&r, 2)?,
            at_ms: to_u64(col(&r, 3)?),
        });
    }
    Ok(rows)
}

/// Applies one change.
pub(super) fn apply<C: GenericClient>(db: &mut Db<'_, C>, w: &SshWrite) -> Result<(), StoreError> {
    match w {
        SshWrite::PutServer(r) => {
            db.exec(
                "INSERT INTO node_ssh (node_id, port, host_key, reported_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node_id) DO UPDATE SET port = excluded.port,
                 host_key = excluded.host_key, reported_at_ms = excluded.reported_at_ms",
                &[
                    &to_i64(r.node_id),
                    &i64::from(r.port),
                    &r.host_key,
                    &to_i64(r.reported_at_ms),
                ],
            )?;
        }
        SshWrite::DeleteServer(node) => {
            db.exec("DELETE FROM node_ssh WHERE node_id = $1", &[&to_i64(*node)])?;
        }
        SshWrite::Seen(r) => {
            db.exec(
                "INSERT INTO ssh_sessions_seen (node_id, record_id, ended, at_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node_id, record_id, ended) DO NOTHING",
                &[&to_i64(r.node_id), &r.record_id, &r.ended, &to_i64(r.at_ms)],
            )?;
        }
    }
    Ok(())
}
