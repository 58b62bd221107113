//! The service registry's rows (migration 0013).

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use weft_proto::service::{HealthCheck, ServicePort};

use super::{corrupt, parse, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::services::{
    InstanceRecord, InstanceState, ServiceOrigin, ServiceRangeRecord, ServiceRecord, ServiceRows,
    ServiceWrite,
};

/// Applies one change inside the batch's transaction.
pub(super) fn apply(tx: &Transaction<'_>, w: &ServiceWrite) -> Result<(), StoreError> {
    match w {
        ServiceWrite::PutRange(r) => {
            tx.prepare_cached("INSERT INTO service_ranges (network_id, prefix) VALUES (?1, ?2)")?
                .execute(params![to_i64(r.network_id), r.prefix.to_string()])?;
        }
        ServiceWrite::PutService(s) => {
            let ports = serde_json::to_string(&s.ports)
                .map_err(|e| StoreError::Corrupt(format!("service ports: {e}")))?;
            tx.prepare_cached(
                "INSERT INTO services (id, network_id, name, vip, ports, health, origin, version, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET ports = excluded.ports, health = excluded.health,
                   origin = excluded.origin, version = excluded.version",
            )?
            .execute(params![
                to_i64(s.id),
                to_i64(s.network_id),
                s.name,
                s.vip.to_string(),
                ports,
                s.health.to_string(),
                s.origin.as_str(),
                to_i64(s.version),
                to_i64(s.created_at_ms),
            ])?;
        }
        ServiceWrite::DeleteService(id) => {
            tx.prepare_cached("DELETE FROM services WHERE id = ?1")?
                .execute([to_i64(*id)])?;
        }
        ServiceWrite::PutInstance(i) => {
            tx.prepare_cached(
                "INSERT INTO service_instances (service_id, node_id, state, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (service_id, node_id) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![
                to_i64(i.service_id),
                to_i64(i.node_id),
                i.state.as_str(),
                to_i64(i.created_at_ms),
            ])?;
        }
        ServiceWrite::DeleteInstance {
            service_id,
            node_id,
        } => {
            tx.prepare_cached(
                "DELETE FROM service_instances WHERE service_id = ?1 AND node_id = ?2",
            )?
            .execute(params![to_i64(*service_id), to_i64(*node_id)])?;
        }
        ServiceWrite::SetVersion(v) => {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('services_version', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([v.to_string()])?;
        }
    }
    Ok(())
}

/// The whole registry. A row that does not parse is refused as corrupt (never
/// skipped: a service silently missing would change who reaches what).
pub(super) fn load(c: &Connection) -> Result<ServiceRows, StoreError> {
    let version = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'services_version'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|v| parse::<u64>("services_version", &v))
        .transpose()?
        .unwrap_or(0);
    let mut ranges = Vec::new();
    let mut st = c.prepare("SELECT network_id, prefix FROM service_ranges ORDER BY network_id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (net, prefix) = row?;
        ranges.push(ServiceRangeRecord {
            network_id: to_u64(net),
            prefix: parse("service_ranges.prefix", &prefix)?,
        });
    }
    let mut services = Vec::new();
    let mut st = c.prepare(
        "SELECT id, network_id, name, vip, ports, health, origin, version, created_at_ms
         FROM services ORDER BY id",
    )?;
    let rows = st.query_map([], |r| -> rusqlite::Result<ServiceRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    })?;
    for row in rows {
        services.push(service_from_row(row?)?);
    }
    let mut instances = Vec::new();
    let mut st = c.prepare(
        "SELECT service_id, node_id, state, created_at_ms FROM service_instances
         ORDER BY service_id, node_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        instances.push(instance_from_row(row?)?);
    }
    Ok(ServiceRows {
        version,
        ranges,
        services,
        instances,
    })
}

/// A service row's columns: id, network_id, name, vip, ports, health, origin,
/// version, created_at_ms.
pub(in crate::store) type ServiceRow = (i64, i64, String, String, String, String, String, i64, i64);

/// The service of a row, checked (both drivers).
pub(in crate::store) fn service_from_row(row: ServiceRow) -> Result<ServiceRecord, StoreError> {
    let (id, net, name, vip, ports, health, origin, version, at) = row;
    let bad = |what: String| corrupt("services")(format!("service {id} ({name:?}): {what}"));
    weft_proto::service::check_service_name(&name).map_err(|e| bad(e.to_string()))?;
    let ports: Vec<ServicePort> =
        serde_json::from_str(&ports).map_err(|e| bad(format!("ports: {e}")))?;
    weft_proto::service::check_ports(&ports).map_err(|e| bad(e.to_string()))?;
    let health: HealthCheck = health.parse().map_err(|e| bad(format!("health: {e}")))?;
    let origin = ServiceOrigin::parse(&origin).ok_or_else(|| bad(format!("origin {origin:?}")))?;
    Ok(ServiceRecord {
        id: to_u64(id),
        network_id: to_u64(net),
        vip: vip.parse().map_err(|e| bad(format!("vip {vip:?}: {e}")))?,
        name,
        ports,
        health,
        origin,
        version: to_u64(version),
        created_at_ms: to_u64(at),
    })
}

/// The instance of a row (service_id, node_id, state, created_at_ms), checked.
pub(in crate::store) fn instance_from_row(
    (service, node, state, at): (i64, i64, String, i64),
) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        service_id: to_u64(service),
        node_id: to_u64(node),
        state: InstanceState::parse(&state).ok_or_else(|| {
            corrupt("service_instances")(format!("service {service} node {node}: state {state:?}"))
        })?,
        created_at_ms: to_u64(at),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use crate::store::Store as _;
    use crate::store::row_suites::services_suite;
    use crate::store::sqlite::SqliteStore;

    /// The rows themselves are `row_suites::services_suite`'s (run on every
    /// driver); here what only SQLite's text columns allow: a damaged row.
    #[test]
    fn a_damaged_row_is_refused_not_skipped() {
        let mut s = services_suite(SqliteStore::open_in_memory().unwrap());
        s.conn
            .execute("UPDATE services SET ports = '[]' WHERE id = 1", [])
            .unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("service 1 (\"db\")"), "{e}");
    }
}
