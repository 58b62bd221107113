//! The host firewall's rows (migration 0011) on PostgreSQL. Rows are checked
//! as the SQLite driver checks them.

use postgres::GenericClient;
use weft_proto::hostfw::HostAddr;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::hostfw::{FirewallFileRecord, HostFwRows, HostFwWrite};
use crate::store::sqlite::{rule_from_row, to_i64, to_u64};

/// Applies one change inside the batch's transaction.
pub(super) fn apply<C: GenericClient>(
    db: &mut Db<'_, C>,
    w: &HostFwWrite,
) -> Result<(), StoreError> {
    match w {
        HostFwWrite::PutFile(f) => {
            db.exec(
                "INSERT INTO host_firewall_versions (version, text, author, at_ms) VALUES ($1, $2, $3, $4)",
                &[&to_i64(f.version), &f.text, &f.author, &to_i64(f.at_ms)],
            )?;
        }
        HostFwWrite::PutRule(r) => {
            let ports = serde_json::to_string(&r.rule.ports)
                .map_err(|e| StoreError::Corrupt(format!("host firewall rule ports: {e}")))?;
            let peers: Vec<String> = r.rule.peers.iter().map(HostAddr::to_string).collect();
            let peers = serde_json::to_string(&peers)
                .map_err(|e| StoreError::Corrupt(format!("host firewall rule peers: {e}")))?;
            db.exec(
                "INSERT INTO host_firewall_rules (id, node_id, direction, proto, ports, peers, comment,
                   created_by, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &to_i64(r.id),
                    &to_i64(r.node_id),
                    &r.rule.direction.to_string(),
                    &r.rule.proto.to_string(),
                    &ports,
                    &peers,
                    &r.rule.comment,
                    &r.created_by,
                    &to_i64(r.created_at_ms),
                    &r.rule.expires_at_ms.map(to_i64),
                ],
            )?;
        }
        HostFwWrite::DeleteRule(id) => {
            db.exec(
                "DELETE FROM host_firewall_rules WHERE id = $1",
                &[&to_i64(*id)],
            )?;
        }
    }
    Ok(())
}

/// The newest file version and every dynamic rule.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<HostFwRows, StoreError> {
    let file = db
        .query_opt(
            "SELECT version, text, author, at_ms FROM host_firewall_versions ORDER BY version DESC LIMIT 1",
            &[],
        )?
        .map(|r| {
            Ok::<_, StoreError>(FirewallFileRecord {
                version: to_u64(col(&r, 0)?),
                text: col(&r, 1)?,
                author: col(&r, 2)?,
                at_ms: to_u64(col(&r, 3)?),
            })
        })
        .transpose()?;
    let mut rules = Vec::new();
    for r in db.query(
        "SELECT id, node_id, direction, proto, ports, peers, comment, created_by, created_at_ms,
                expires_at_ms
         FROM host_firewall_rules ORDER BY id",
        &[],
    )? {
        rules.push(rule_from_row((
            col(&r, 0)?,
            col(&r, 1)?,
            col(&r, 2)?,
            col(&r, 3)?,
            col(&r, 4)?,
            col(&r, 5)?,
            col(&r, 6)?,
            col(&r, 7)?,
            col(&r, 8)?,
            col(&r, 9)?,
        ))?);
    }
    Ok(HostFwRows { file, rules })
}
