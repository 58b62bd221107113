//! Nodes' host facts: what a node reported at registration or on a report
//! replaces what was stored when something changed, and the change goes to
//! the audit log (`node.facts`, with each changed field's old and new value).
//! Facts are inventory only: no map, policy or peer depends on them, so a
//! change touches no map.

use serde_json::json;
use weft_proto::facts::HostFacts;

use crate::store::NodeRecord;

use super::{Actor, Batch, World};

/// Facts reported by a node, waiting for their audit entry.
#[must_use = "the change must be audited with World::audit_facts"]
pub(super) struct FactsChange(serde_json::Value);

/// Stores `facts` on `rec` (the caller writes the row) if they differ from the
/// stored ones; returns the change to audit, `None` when nothing changed. Boot
/// times a few seconds apart are the same boot (see
/// [`weft_proto::facts::BOOT_TIME_SLACK_MS`]).
pub(super) fn take_facts(
    rec: &mut NodeRecord,
    facts: Option<HostFacts>,
    now_ms: u64,
) -> Option<FactsChange> {
    let facts = facts?;
    let changed = rec
        .facts
        .as_deref()
        .cloned()
        .unwrap_or_default()
        .changes(&facts);
    if changed.is_empty() && rec.facts.is_some() {
        return None;
    }
    rec.facts = Some(Box::new(facts));
    rec.facts_changed_ms = Some(now_ms);
    (!changed.is_empty()).then(|| FactsChange(json!({ "name": rec.name, "changed": changed })))
}

impl World {
    /// Audits a change [`take_facts`] made to node `key`'s facts.
    pub(super) fn audit_facts(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        key: String,
        change: Option<FactsChange>,
        now_ms: u64,
    ) {
        if let Some(FactsChange(detail)) = change {
            self.audit(batch, actor, "node.facts", key, detail, now_ms);
        }
    }
}
