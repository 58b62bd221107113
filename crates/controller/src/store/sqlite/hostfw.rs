//! The host firewall's rows (migration 0011).

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use weft_policy::hostfw::host_addr;
use weft_proto::hostfw::{Direction, HostAddr, HostRule, PortRange, RuleAction};

use super::{corrupt, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::hostfw::{FirewallFileRecord, FirewallRuleRecord, HostFwRows, HostFwWrite};

/// Applies one change inside the batch's transaction.
pub(super) fn apply(tx: &Transaction<'_>, w: &HostFwWrite) -> Result<(), StoreError> {
    match w {
        HostFwWrite::PutFile(f) => {
            tx.prepare_cached(
                "INSERT INTO host_firewall_versions (version, text, author, at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![to_i64(f.version), f.text, f.author, to_i64(f.at_ms)])?;
        }
        HostFwWrite::PutRule(r) => {
            let ports = serde_json::to_string(&r.rule.ports)
                .map_err(|e| StoreError::Corrupt(format!("host firewall rule ports: {e}")))?;
            let peers: Vec<String> = r.rule.peers.iter().map(HostAddr::to_string).collect();
            let peers = serde_json::to_string(&peers)
                .map_err(|e| StoreError::Corrupt(format!("host firewall rule peers: {e}")))?;
            tx.prepare_cached(
                "INSERT INTO host_firewall_rules (id, node_id, direction, proto, ports, peers, comment,
                   created_by, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                to_i64(r.id),
                to_i64(r.node_id),
                r.rule.direction.to_string(),
                r.rule.proto.to_string(),
                ports,
                peers,
                r.rule.comment,
                r.created_by,
                to_i64(r.created_at_ms),
                r.rule.expires_at_ms.map(to_i64),
            ])?;
        }
        HostFwWrite::DeleteRule(id) => {
            tx.prepare_cached("DELETE FROM host_firewall_rules WHERE id = ?1")?
                .execute([to_i64(*id)])?;
        }
    }
    Ok(())
}

/// The newest file version and every dynamic rule.
pub(super) fn load(c: &Connection) -> Result<HostFwRows, StoreError> {
    let file = c
        .query_row(
            "SELECT version, text, author, at_ms FROM host_firewall_versions ORDER BY version DESC LIMIT 1",
            [],
            |r| {
                Ok(FirewallFileRecord {
                    version: to_u64(r.get::<_, i64>(0)?),
                    text: r.get(1)?,
                    author: r.get(2)?,
                    at_ms: to_u64(r.get::<_, i64>(3)?),
                })
            },
        )
        .optional()?;
    let mut st = c.prepare(
        "SELECT id, node_id, direction, proto, ports, peers, comment, created_by, created_at_ms,
                expires_at_ms
         FROM host_firewall_rules ORDER BY id",
    )?;
    let rows = st.query_map([], |r| -> rusqlite::Result<RuleRow> {
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
            r.get(9)?,
        ))
    })?;
    let mut rules = Vec::new();
    for row in rows {
        rules.push(rule_from_row(row?)?);
    }
    Ok(HostFwRows { file, rules })
}

/// A dynamic rule row's columns: id, node_id, direction, proto, ports, peers,
/// comment, created_by, created_at_ms, expires_at_ms.
pub(in crate::store) type RuleRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
);

/// The dynamic rule of a row, checked (both drivers): a value that does not
/// parse, or a rule that fails its own check, is corrupt.
pub(in crate::store) fn rule_from_row(row: RuleRow) -> Result<FirewallRuleRecord, StoreError> {
    let (id, node_id, direction, proto, ports, peers, comment, created_by, at, expires) = row;
    let id = to_u64(id);
    let bad = |what: &str| corrupt("host_firewall_rules")(format!("rule {id}: {what}"));
    let direction = match direction.as_str() {
        "in" => Direction::In,
        "out" => Direction::Out,
        "forward" => Direction::Forward,
        other => return Err(bad(&format!("direction {other:?}"))),
    };
    let proto =
        weft_policy::hostfw::parse_proto(&proto).ok_or_else(|| bad(&format!("proto {proto:?}")))?;
    let ports: Vec<PortRange> =
        serde_json::from_str(&ports).map_err(|e| bad(&format!("ports: {e}")))?;
    let peers: Vec<String> =
        serde_json::from_str(&peers).map_err(|e| bad(&format!("peers: {e}")))?;
    let peers = peers
        .iter()
        .map(|p| host_addr(p).map_err(|e| bad(&format!("peer {p:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let rule = HostRule {
        id: format!("dyn:{id}"),
        direction,
        action: RuleAction::Accept,
        proto,
        ports,
        peers,
        comment,
        expires_at_ms: expires.map(to_u64),
    };
    rule.check().map_err(|e| bad(&e.to_string()))?;
    Ok(FirewallRuleRecord {
        id,
        node_id: to_u64(node_id),
        rule,
        created_by,
        created_at_ms: to_u64(at),
    })
}

#[cfg(test)]
mod tests {
    use weft_proto::hostfw::Proto;

    #[test]
    fn proto_names_round_trip() {
        for p in [Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp] {
            assert_eq!(weft_policy::hostfw::parse_proto(&p.to_string()), Some(p));
        }
    }
}
