//! Audit retention: the sweep's operation. The sweep (`api::retention`)
//! asks the store which records are due ([`crate::store::Store::audit_cut`])
//! and then runs [`PruneAudit`], which deletes them by id prefix and is
//! itself audited (`audit.prune`, with the count), in one transaction. Its
//! own record is newer than what it deletes, so the log never empties and
//! ids are never reused.

use serde_json::json;

use super::{Actor, Batch, World};
use crate::error::ApiError;
use crate::store::Write;

/// Delete the audit records with `id <= through_id` (`count` of them, as
/// the store counted them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneAudit {
    /// The newest id deleted.
    pub through_id: u64,
    /// How many records that is (for the audit entry).
    pub count: u64,
    /// The age limit the sweep applied (Unix milliseconds: records older
    /// than this were due), if any.
    pub older_than_ms: Option<u64>,
    /// The count limit the sweep applied, if any.
    pub keep: Option<u64>,
}

operation!(PruneAudit => (), |op, w, batch, actor, now_ms| {
    w.prune_audit(batch, actor, op, now_ms)
});

impl World {
    fn prune_audit(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: PruneAudit,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        if op.through_id >= self.next_audit_id {
            return Err(ApiError::invalid(
                "invalid_cut",
                format!(
                    "audit id {} is not in the log yet (the newest is {})",
                    op.through_id,
                    self.next_audit_id.saturating_sub(1)
                ),
            ));
        }
        batch.writes.push(Write::AuditPrune {
            through_id: op.through_id,
        });
        self.audit(
            batch,
            actor,
            "audit.prune",
            "audit".into(),
            json!({
                "deleted": op.count,
                "through_id": op.through_id,
                "older_than_ms": op.older_than_ms,
                "keep": op.keep,
            }),
            now_ms,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NewNetwork, Operation as _};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AuditCut, AuditQuery, Store};

    fn network(name: &str, cidr: &str) -> NewNetwork {
        NewNetwork {
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            pow_difficulty: 0,
        }
    }

    #[test]
    fn a_sweep_deletes_what_is_due_and_audits_its_count() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        let mut w = World::from_snapshot(store.load().unwrap(), Vec::new());
        // Three networks: each audits network.create and policy.update.
        for (i, (name, cidr)) in [
            ("a", "10.0.0.0/24"),
            ("b", "10.0.1.0/24"),
            ("c", "10.0.2.0/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut b = Batch::default();
            network(name, cidr)
                .apply(&mut w, &mut b, &Actor::Admin, 1_000 * (i as u64 + 1))
                .unwrap();
            w.finish_batch(&mut b);
            store.apply(&b.writes).unwrap();
        }
        // Keep the newest 2 of 6.
        let cut = store.audit_cut(None, Some(2)).unwrap().unwrap();
        assert_eq!(
            cut,
            AuditCut {
                through_id: 4,
                count: 4
            }
        );
        let mut b = Batch::default();
        let op = PruneAudit {
            through_id: cut.through_id,
            count: cut.count,
            older_than_ms: None,
            keep: Some(2),
        };
        w.apply(&mut b, &Actor::System, op, 9_000).unwrap();
        assert!(w.finish_batch(&mut b).is_none(), "no map changes");
        store.apply(&b.writes).unwrap();
        let left = store
            .audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        let actions: Vec<(u64, &str)> = left.iter().map(|r| (r.id, r.action.as_str())).collect();
        assert_eq!(
            actions,
            [
                (7, "audit.prune"),
                (6, "policy.update"),
                (5, "network.create")
            ]
        );
        assert_eq!(left[0].actor, "system");
        assert_eq!(left[0].detail["deleted"], 4);
        assert_eq!(left[0].detail["keep"], 2);

        // A restart continues the ids after the sweep's own record.
        let back = World::from_snapshot(store.load().unwrap(), Vec::new());
        assert_eq!(back.next_audit_id, 8);

        // A cut past the log is refused, with no effect.
        let mut b = Batch::default();
        let bad = PruneAudit {
            through_id: 8,
            count: 1,
            older_than_ms: None,
            keep: None,
        };
        let e = w.apply(&mut b, &Actor::System, bad, 9_000).unwrap_err();
        assert_eq!(e.code(), "invalid_cut");
        assert!(b.writes.is_empty());
    }
}
