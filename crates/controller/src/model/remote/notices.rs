//! The `task` events a replayed change calls for.
//!
//! The replica that committed a batch sends its own streams a `task` event
//! after some operations (the API handlers do: a new task's runs, the runs
//! whose lease a sweep expired, the waiting tasks of a node whose integrity
//! mismatch an operation resolved). A node streaming from another replica
//! must hear of them too, without waiting for its next stream open: the
//! replay notes the same `(node, task)` pairs, and the replaying replica
//! sends them to its own streams once the change is published
//! ([`crate::replica::Replica::catch_up`]).

use super::{AnyOp, RecordedOp};
use crate::model::{Batch, NodeId, World};

impl World {
    /// Replays one recorded operation and adds to `tasks` the `task` events
    /// the replica that committed it sent after it.
    pub(super) fn replay_op(
        &mut self,
        batch: &mut Batch,
        r: RecordedOp,
        now_ms: u64,
        tasks: &mut Vec<(NodeId, String)>,
    ) {
        match r.op {
            AnyOp::CreateTask(op) => {
                let id = op.id.clone();
                if self.apply(batch, &r.actor, op, now_ms).is_ok()
                    && let Some(t) = self.task(&id)
                {
                    tasks.extend(t.runs.keys().map(|n| (*n, id.clone())));
                }
            }
            AnyOp::SweepTasks(op) => {
                if let Ok(again) = self.apply(batch, &r.actor, op, now_ms) {
                    tasks.extend(again);
                }
            }
            op @ (AnyOp::ReportIntegrity(_) | AnyOp::ApproveHook(_) | AnyOp::ExpectWeftd(_)) => {
                // As `api::integrity` does: the nodes blocked before, then
                // the waiting tasks of those no longer blocked.
                let blocked: Vec<NodeId> = self
                    .node_ids()
                    .filter(|n| !self.integrity_allows_exec(*n))
                    .collect();
                op.apply(self, batch, &r.actor, now_ms);
                for node in blocked {
                    if self.integrity_allows_exec(node) {
                        let waiting = self.pending_tasks(node, now_ms);
                        tasks.extend(waiting.into_iter().map(|t| (node, t)));
                    }
                }
            }
            op => op.apply(self, batch, &r.actor, now_ms),
        }
    }
}
