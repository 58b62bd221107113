//! The service registry's rows (migration 0013) on PostgreSQL. Rows are
//! checked as the SQLite driver checks them.

use postgres::GenericClient;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::services::{ServiceRangeRecord, ServiceRows, ServiceWrite};
use crate::store::sqlite::{instance_from_row, parse, service_from_row, to_i64, to_u64};

/// Applies one change inside the batch's transaction.
pub(super) fn apply<C: GenericClient>(
    db: &mut Db<'_, C>,
    w: &ServiceWrite,
) -> Result<(), StoreError> {
    match w {
        ServiceWrite::PutRange(r) => {
            db.exec(
                "INSERT INTO service_ranges (network_id, prefix) VALUES ($1, $2)",
                &[&to_i64(r.network_id), &r.prefix.to_string()],
            )?;
        }
        ServiceWrite::PutService(s) => {
            let ports = serde_json::to_string(&s.ports)
                .map_err(|e| StoreError::Corrupt(format!("service ports: {e}")))?;
            db.exec(
                "INSERT INTO services (id, network_id, name, vip, ports, health, origin, version, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET ports = excluded.ports, health = excluded.health,
                   origin = excluded.origin, version = excluded.version",
                &[
                    &to_i64(s.id),
                    &to_i64(s.network_id),
                    &s.name,
                    &s.vip.to_string(),
                    &ports,
                    &s.health.to_string(),
                    &s.origin.as_str(),
                    &to_i64(s.version),
                    &to_i64(s.created_at_ms),
                ],
            )?;
        }
        ServiceWrite::DeleteService(id) => {
            db.exec("DELETE FROM services WHERE id = $1", &[&to_i64(*id)])?;
        }
        ServiceWrite::PutInstance(i) => {
            db.exec(
                "INSERT INTO service_instances (service_id, node_id, state, created_at_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (service_id, node_id) DO UPDATE SET state = excluded.state",
                &[
                    &to_i64(i.service_id),
                    &to_i64(i.node_id),
                    &i.state.as_str(),
                    &to_i64(i.created_at_ms),
                ],
            )?;
        }
        ServiceWrite::DeleteInstance {
            service_id,
            node_id,
        } => {
            db.exec(
                "DELETE FROM service_instances WHERE service_id = $1 AND node_id = $2",
                &[&to_i64(*service_id), &to_i64(*node_id)],
            )?;
        }
        ServiceWrite::SetVersion(v) => {
            db.exec(
                "INSERT INTO meta (key, value) VALUES ('services_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&v.to_string()],
            )?;
        }
    }
    Ok(())
}

/// The whole registry. A row that does not parse is refused as corrupt.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<ServiceRows, StoreError> {
    let version = db
        .query_opt("SELECT value FROM meta WHERE key = 'services_version'", &[])?
        .map(|r| col::<String>(&r, 0))
        .transpose()?
        .map(|v| parse::<u64>("services_version", &v))
        .transpose()?
        .unwrap_or(0);
    let mut ranges = Vec::new();
    for r in db.query(
        "SELECT network_id, prefix FROM service_ranges ORDER BY network_id",
        &[],
    )? {
        let prefix: String = col(&r, 1)?;
        ranges.push(ServiceRangeRecord {
            network_id: to_u64(col(&r, 0)?),
            prefix: parse("service_ranges.prefix", &prefix)?,
        });
    }
    let mut services = Vec::new();
    for r in db.query(
        "SELECT id, network_id, name, vip, ports, health, origin, version, created_at_ms
         FROM services ORDER BY id",
        &[],
    )? {
        services.push(service_from_row((
            col(&r, 0)?,
            col(&r, 1)?,
            col(&r, 2)?,
            col(&r, 3)?,
            col(&r, 4)?,
            col(&r, 5)?,
            col(&r, 6)?,
            col(&r, 7)?,
            col(&r, 8)?,
        ))?);
    }
    let mut instances = Vec::new();
    for r in db.query(
        "SELECT service_id, node_id, state, created_at_ms FROM service_instances
         ORDER BY service_id, node_id",
        &[],
    )? {
        instances.push(instance_from_row((
            col(&r, 0)?,
            col(&r, 1)?,
            col(&r, 2)?,
            col(&r, 3)?,
        ))?);
    }
    Ok(ServiceRows {
        version,
        ranges,
        services,
        instances,
    })
}
