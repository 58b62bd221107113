//! Hooks and integrity: which hook hashes the admin approved
//! ([`ApproveHook`], [`RevokeHook`]), which weftd hash each version must have
//! ([`ExpectWeftd`]), and what each node reports it runs
//! ([`ReportIntegrity`]). From these a node's [`IntegrityState`] is judged
//! ([`judge`], pure): `mismatch` when weftd's hash is not the one expected for
//! its version, a hook's hash is not among its name's approved ones, or the
//! node refused its hooks directory; `ok` when weftd matches and nothing
//! mismatched; `unknown` otherwise (no report, or no expected hash for its
//! version). The state is computed, never stored: after a restart it is judged
//! again from the same rows.
//!
//! Every change of a node's state is audited (`node.integrity`); a node that
//! enters `mismatch`, or whose mismatch reasons change, gets an
//! `integrity_mismatch` event in the anomaly event log. While a node is in
//! `mismatch` it is refused hook and script tasks
//! ([`World::integrity_allows_exec`]); a leased hook task carries the
//! approved hashes of its name ([`World::approved_hook_hashes`]).

use std::collections::BTreeMap;

use serde_json::json;
use weft_proto::events::{
    AnomalyEvent, AnomalyKind, Baseline, MAX_DETAILS, MAX_FIELD_LEN, MAX_SUMMARY_LEN,
};
use weft_proto::integrity::{
    ExpectRequest, ExpectedWeftd, HookApproval, HookApprovalList, IntegrityOverview,
    IntegrityReport, IntegrityState, MAX_APPROVALS_PER_HOOK, MAX_APPROVED_HOOKS,
    MAX_EXPECTED_VERSIONS, NodeIntegrity,
};
use weft_proto::task::{check_hook_name, check_sha256};

use super::{Actor, Batch, NodeId, NodeState, World};
use crate::error::ApiError;
use crate::store::integrity::{
    ExpectedRecord, HookApprovalRecord, IntegritySnapshot, NodeIntegrityRecord,
};
use crate::store::{EventRecord, Write};

/// Event ids the controller gives the events it raises start here, far above
/// the ids agents use (Unix milliseconds times 1000), so a node's own event
/// and one raised about it never collide in the log.
pub const CONTROLLER_EVENT_BASE: u64 = 1 << 62;

/// The integrity aggregate.
#[derive(Debug, Default)]
pub(super) struct Integrity {
    /// Approved hashes by hook name, with when each was approved.
    approvals: BTreeMap<String, BTreeMap<String, u64>>,
    /// Expected weftd hash and when it was set, by version.
    expected: BTreeMap<String, (String, u64)>,
    /// Each node's last report and when it arrived.
    reports: BTreeMap<NodeId, (u64, IntegrityReport)>,
    /// Each reporting node's state and reasons as last judged.
    judged: BTreeMap<NodeId, (IntegrityState, Vec<String>)>,
    /// Counter for the ids of events raised in the same millisecond.
    events_raised: u64,
}

impl Integrity {
    /// From the stored rows, judged (no event: nothing changed).
    pub(super) fn load(snap: IntegritySnapshot) -> Self {
        let mut i = Integrity::default();
        for a in snap.approvals {
            i.approvals
                .entry(a.name)
                .or_default()
                .insert(a.sha256, a.approved_at_ms);
        }
        for e in snap.expected {
            i.expected.insert(e.version, (e.sha256, e.set_at_ms));
        }
        for r in snap.reports {
            i.reports.insert(r.node_id, (r.reported_at_ms, r.report));
        }
        let ids: Vec<NodeId> = i.reports.keys().copied().collect();
        for id in ids {
            let j = i.judge_node(id);
            i.judged.insert(id, j);
        }
        i
    }

    fn judge_node(&self, id: NodeId) -> (IntegrityState, Vec<String>) {
        judge(
            self.reports.get(&id).map(|(_, r)| r),
            &self.expected,
            &self.approvals,
        )
    }

    /// Forgets a removed node (its row goes with the node's).
    pub(super) fn forget(&mut self, id: NodeId) {
        self.reports.remove(&id);
        self.judged.remove(&id);
    }
}

/// Judges a node's report against the expected weftd hashes (by version) and
/// the approved hook hashes (by name): its state and the reasons (what
/// differs, or why nothing could be compared).
pub fn judge(
    report: Option<&IntegrityReport>,
    expected: &BTreeMap<String, (String, u64)>,
    approvals: &BTreeMap<String, BTreeMap<String, u64>>,
) -> (IntegrityState, Vec<String>) {
    let Some(r) = report else {
        return (IntegrityState::Unknown, vec!["no report yet".into()]);
    };
    let mut mismatches = Vec::new();
    let weftd_known = match expected.get(&r.weftd_version) {
        Some((want, _)) if *want != r.weftd_sha256 => {
            mismatches.push(format!(
                "weftd {} is {} (expected {want})",
                r.weftd_version, r.weftd_sha256
            ));
            true
        }
        Some(_) => true,
        None => false,
    };
    for h in &r.hooks {
        if let Some(ok) = approvals.get(&h.name)
            && !ok.contains_key(&h.sha256)
        {
            mismatches.push(format!(
                "hook {} is {} (not approved; weft admin hook approve to accept it)",
                h.name, h.sha256
            ));
        }
    }
    if let Some(e) = &r.hooks_error {
        mismatches.push(format!("hooks directory refused: {e}"));
    }
    if !mismatches.is_empty() {
        (IntegrityState::Mismatch, mismatches)
    } else if weftd_known {
        (IntegrityState::Ok, Vec::new())
    } else {
        (
            IntegrityState::Unknown,
            vec![format!(
                "no expected sha256 for weftd {} (weft admin integrity expect)",
                r.weftd_version
            )],
        )
    }
}

/// A node reports what it runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportIntegrity {
    /// The node (authenticated).
    pub node: NodeId,
    /// The report.
    pub report: IntegrityReport,
}

/// Admin: approve one hash of a hook.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ApproveHook {
    /// The hook's file name.
    pub name: String,
    /// The hash.
    pub sha256: String,
}

/// Admin: revoke one approved hash of a hook, or all of them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RevokeHook {
    /// The hook's file name.
    pub name: String,
    /// One hash (`None`: every hash of the hook).
    pub sha256: Option<String>,
}

/// Admin: the hash weftd of a version must have.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExpectWeftd(pub ExpectRequest);

operation!(ReportIntegrity => NodeIntegrity, |op, w, batch, actor, now_ms| {
    w.report_integrity(batch, actor, op, now_ms)
});

operation!(ApproveHook => HookApprovalList, |op, w, batch, actor, now_ms| {
    w.approve_hook(batch, actor, op, now_ms)
});

operation!(RevokeHook => HookApprovalList, |op, w, batch, actor, now_ms| {
    w.revoke_hook(batch, actor, op, now_ms)
});

operation!(ExpectWeftd => ExpectedWeftd, |op, w, batch, actor, now_ms| {
    w.expect_weftd(batch, actor, op.0, now_ms)
});

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid("invalid_integrity", e.to_string())
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl World {
    /// Whether node `node` may be given hook and script tasks: not while its
    /// integrity is `mismatch`.
    pub fn integrity_allows_exec(&self, node: NodeId) -> bool {
        self.integrity_state(node) != IntegrityState::Mismatch
    }

    /// The hashes the admin approved for hook `name` (sorted; empty: none).
    pub fn approved_hook_hashes(&self, name: &str) -> Vec<String> {
        self.integrity
            .approvals
            .get(name)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Node `node`'s integrity state.
    pub fn integrity_state(&self, node: NodeId) -> IntegrityState {
        self.integrity
            .judged
            .get(&node)
            .map_or(IntegrityState::Unknown, |(s, _)| *s)
    }

    /// Node `n`'s integrity with its reasons and last report.
    pub fn node_integrity(&self, n: &NodeState) -> NodeIntegrity {
        let (state, reasons) = self
            .integrity
            .judged
            .get(&n.rec.id)
            .cloned()
            .unwrap_or_else(|| self.integrity.judge_node(n.rec.id));
        let last = self.integrity.reports.get(&n.rec.id);
        NodeIntegrity {
            node: n.rec.name.clone(),
            state,
            reasons,
            reported_at_ms: last.map(|(at, _)| *at),
            report: last.map(|(_, r)| r.clone()),
        }
    }

    /// `GET /v1/admin/integrity`.
    pub fn integrity_overview(&self) -> IntegrityOverview {
        IntegrityOverview {
            expected: self
                .integrity
                .expected
                .iter()
                .map(|(version, (sha256, at))| ExpectedWeftd {
                    version: version.clone(),
                    sha256: sha256.clone(),
                    set_at_ms: *at,
                })
                .collect(),
            nodes: self
                .nodes_by_name(None)
                .map(|n| self.node_integrity(n))
                .collect(),
        }
    }

    /// Approved hook hashes: of one hook, or all.
    pub fn hook_approvals(&self, name: Option<&str>) -> HookApprovalList {
        HookApprovalList {
            approvals: self
                .integrity
                .approvals
                .iter()
                .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
                .flat_map(|(n, hashes)| {
                    hashes.iter().map(|(sha256, at)| HookApproval {
                        name: n.clone(),
                        sha256: sha256.clone(),
                        approved_at_ms: *at,
                    })
                })
                .collect(),
        }
    }

    fn report_integrity(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: ReportIntegrity,
        now_ms: u64,
    ) -> Result<NodeIntegrity, ApiError> {
        op.report.check().map_err(bad)?;
        let node = self.node(op.node).ok_or(ApiError::Unauthorized)?;
        let id = node.rec.id;
        batch
            .writes
            .push(Write::PutNodeIntegrity(NodeIntegrityRecord {
                node_id: id,
                reported_at_ms: now_ms,
                report: op.report.clone(),
            }));
        self.integrity.reports.insert(id, (now_ms, op.report));
        self.rejudge(batch, actor, &[id], now_ms);
        let node = self.node(id).ok_or(ApiError::Unauthorized)?;
        Ok(self.node_integrity(node))
    }

    fn approve_hook(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: ApproveHook,
        now_ms: u64,
    ) -> Result<HookApprovalList, ApiError> {
        check_hook_name(&op.name).map_err(bad)?;
        check_sha256(&op.sha256).map_err(bad)?;
        let known = self.integrity.approvals.get(&op.name);
        if known.is_some_and(|h| h.contains_key(&op.sha256)) {
            return Ok(self.hook_approvals(Some(&op.name))); // already approved
        }
        if known.is_none() && self.integrity.approvals.len() >= MAX_APPROVED_HOOKS {
            return Err(ApiError::invalid(
                "too_many_hooks",
                format!("at most {MAX_APPROVED_HOOKS} hooks may be approved; revoke one first"),
            ));
        }
        if known.is_some_and(|h| h.len() >= MAX_APPROVALS_PER_HOOK) {
            return Err(ApiError::invalid(
                "too_many_approvals",
                format!(
                    "hook {} has {MAX_APPROVALS_PER_HOOK} approved hashes already; revoke one first",
                    op.name
                ),
            ));
        }
        self.integrity
            .approvals
            .entry(op.name.clone())
            .or_default()
            .insert(op.sha256.clone(), now_ms);
        batch
            .writes
            .push(Write::PutHookApproval(HookApprovalRecord {
                name: op.name.clone(),
                sha256: op.sha256.clone(),
                approved_at_ms: now_ms,
            }));
        self.audit(
            batch,
            actor,
            "hook.approve",
            op.name.clone(),
            json!({ "sha256": op.sha256 }),
            now_ms,
        );
        self.rejudge_all(batch, actor, now_ms);
        Ok(self.hook_approvals(Some(&op.name)))
    }

    fn revoke_hook(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: RevokeHook,
        now_ms: u64,
    ) -> Result<HookApprovalList, ApiError> {
        check_hook_name(&op.name).map_err(bad)?;
        if let Some(h) = &op.sha256 {
            check_sha256(h).map_err(bad)?;
        }
        let not_found = || {
            ApiError::not_found(
                "hook_not_approved",
                match &op.sha256 {
                    Some(h) => format!("hook {} has no approved hash {h}", op.name),
                    None => format!("hook {} has no approved hash", op.name),
                },
            )
        };
        let hashes = self
            .integrity
            .approvals
            .get_mut(&op.name)
            .ok_or_else(not_found)?;
        let revoked: Vec<String> = match &op.sha256 {
            Some(h) => {
                hashes.remove(h).ok_or_else(not_found)?;
                vec![h.clone()]
            }
            None => std::mem::take(hashes).into_keys().collect(),
        };
        if hashes.is_empty() {
            self.integrity.approvals.remove(&op.name);
        }
        batch.writes.push(Write::DeleteHookApproval {
            name: op.name.clone(),
            sha256: op.sha256.clone(),
        });
        self.audit(
            batch,
            actor,
            "hook.revoke",
            op.name.clone(),
            json!({ "sha256": revoked }),
            now_ms,
        );
        self.rejudge_all(batch, actor, now_ms);
        Ok(self.hook_approvals(Some(&op.name)))
    }

    fn expect_weftd(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: ExpectRequest,
        now_ms: u64,
    ) -> Result<ExpectedWeftd, ApiError> {
        req.check().map_err(bad)?;
        let old = self.integrity.expected.get(&req.version).cloned();
        if old.is_none() && self.integrity.expected.len() >= MAX_EXPECTED_VERSIONS {
            return Err(ApiError::invalid(
                "too_many_versions",
                format!("at most {MAX_EXPECTED_VERSIONS} versions may have an expected hash"),
            ));
        }
        if let Some((sha256, at)) = old.as_ref().filter(|(h, _)| *h == req.sha256) {
            return Ok(ExpectedWeftd {
                version: req.version,
                sha256: sha256.clone(),
                set_at_ms: *at,
            });
        }
        self.integrity
            .expected
            .insert(req.version.clone(), (req.sha256.clone(), now_ms));
        batch.writes.push(Write::PutExpected(ExpectedRecord {
            version: req.version.clone(),
            sha256: req.sha256.clone(),
            set_at_ms: now_ms,
        }));
        self.audit(
            batch,
            actor,
            "integrity.expect",
            req.version.clone(),
            json!({ "sha256": req.sha256, "was": old.map(|(h, _)| h) }),
            now_ms,
        );
        self.rejudge_all(batch, actor, now_ms);
        Ok(ExpectedWeftd {
            version: req.version,
            sha256: req.sha256,
            set_at_ms: now_ms,
        })
    }

    fn rejudge_all(&mut self, batch: &mut Batch, actor: &Actor, now_ms: u64) {
        let ids: Vec<NodeId> = self.integrity.reports.keys().copied().collect();
        self.rejudge(batch, actor, &ids, now_ms);
    }

    /// Judges `ids` again; audits each change of state and raises an event
    /// for each node that enters `mismatch` or whose mismatch reasons changed.
    fn rejudge(&mut self, batch: &mut Batch, actor: &Actor, ids: &[NodeId], now_ms: u64) {
        for &id in ids {
            let Some(node) = self.node(id) else {
                continue;
            };
            let (name, key) = (node.rec.name.clone(), node.rec.node_key);
            let now = self.integrity.judge_node(id);
            let before = self.integrity.judged.insert(id, now.clone());
            let (was, was_reasons) = before.unwrap_or((IntegrityState::Unknown, Vec::new()));
            if was != now.0 {
                self.audit(
                    batch,
                    actor,
                    "node.integrity",
                    key.to_string(),
                    json!({ "name": name, "from": was, "to": now.0, "reasons": now.1 }),
                    now_ms,
                );
            }
            let newly = now.0 == IntegrityState::Mismatch
                && (was != IntegrityState::Mismatch || was_reasons != now.1);
            if newly {
                self.integrity.events_raised += 1;
                let id_in_ms = self.integrity.events_raised % 1000;
                let event = mismatch_event(
                    CONTROLLER_EVENT_BASE + now_ms.saturating_mul(1000) + id_in_ms,
                    now_ms,
                    &now.1,
                );
                batch.writes.push(Write::Events(vec![EventRecord {
                    node_id: id,
                    node_name: name,
                    node_key: key,
                    received_at_ms: now_ms,
                    event,
                }]));
            }
        }
    }
}

/// The `integrity_mismatch` event for `reasons` (bounded as every event is).
fn mismatch_event(id: u64, at_ms: u64, reasons: &[String]) -> AnomalyEvent {
    let details = reasons
        .iter()
        .take(MAX_DETAILS)
        .enumerate()
        .map(|(i, r)| (format!("reason_{}", i + 1), cut(r, MAX_FIELD_LEN)))
        .collect();
    let first = reasons.first().map_or("", String::as_str);
    let more = match reasons.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let summary = format!(
        "integrity mismatch: {first}{more}; hook and script tasks are refused until it is resolved"
    );
    AnomalyEvent {
        id,
        at_ms,
        kind: AnomalyKind::IntegrityMismatch,
        peer: None,
        peer_key: None,
        target: None,
        observed: reasons.len() as f64,
        unit: "mismatches".into(),
        baseline: Baseline::Expected,
        window_secs: 0,
        details,
        summary: cut(&summary, MAX_SUMMARY_LEN),
    }
}

#[cfg(test)]
#[path = "integrity_tests.rs"]
mod tests;
