//! Remote tasks: an admin creates one for a node, a tag or a network
//! ([`CreateTask`]: the target is resolved to one run per node at creation and
//! every limit is checked here, before anything can be leased); a node leases
//! its run ([`LeaseTask`]: a lease id that expires at now + timeout + 60 s;
//! leasing again under a live lease returns the same lease) and returns a
//! result ([`SubmitResult`]: checked against the task's caps, idempotent by
//! task and lease); an admin cancels ([`CancelTask`]); [`SweepTasks`] expires
//! runs past their deadline and makes runs whose lease expired leasable again.
//! Every change is audited (`task.create`, `task.lease`, `task.result`,
//! `task.cancel`, `task.expire`).
//!
//! What a node receives ([`LeasedTask`]) holds execution fields only: never
//! who created the task.

use std::collections::BTreeMap;

use serde_json::json;
use weft_proto::task::{
    CreateTaskRequest, LeasedTask, ResultAck, RunState, TaskKind, TaskResult, TaskRunView,
    TaskTarget, TaskView,
};

use super::{Actor, Batch, NodeId, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::tasks::{TASKS_KEPT, TaskRecord, TaskResultRecord, TaskRunRecord, TasksSnapshot};

/// How long a lease outlives the task's timeout, in ms: time to send the
/// result after the process was killed.
pub const LEASE_GRACE_MS: u64 = 60_000;

/// A task with its runs, by node.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// The row.
    pub rec: TaskRecord,
    /// One run per target node.
    pub runs: BTreeMap<NodeId, TaskRunRecord>,
}

/// Every task, by id.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    rows: BTreeMap<String, TaskState>,
}

impl Tasks {
    pub(super) fn load(snap: TasksSnapshot) -> Tasks {
        let mut rows: BTreeMap<String, TaskState> = snap
            .tasks
            .into_iter()
            .map(|rec| {
                (
                    rec.id.clone(),
                    TaskState {
                        rec,
                        runs: BTreeMap::new(),
                    },
                )
            })
            .collect();
        for run in snap.runs {
            if let Some(t) = rows.get_mut(&run.task_id) {
                t.runs.insert(run.node_id, run);
            }
        }
        Tasks { rows }
    }
}

/// Admin: create a task (the id is drawn by the caller).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateTask {
    /// The new task's id.
    pub id: String,
    /// The request.
    pub req: CreateTaskRequest,
}

/// A node leases its run of a task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeaseTask {
    /// The node (authenticated).
    pub node: NodeId,
    /// The task.
    pub task_id: String,
    /// The lease id to hand out if a new lease starts (drawn by the caller).
    pub lease_id: String,
}

/// A node returns the result of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubmitResult {
    /// The node (authenticated).
    pub node: NodeId,
    /// The result.
    pub result: TaskResult,
}

/// Admin: cancel a task's runs that have no result yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CancelTask {
    /// The task.
    pub id: String,
}

/// Expires runs past their deadline and makes runs whose lease expired
/// leasable again; returns the `(node, task)` pairs to notify again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SweepTasks;

operation!(CreateTask => TaskView, |op, w, batch, actor, now_ms| {
    w.create_task(batch, actor, op, now_ms)
});

operation!(LeaseTask => LeasedTask, |op, w, batch, actor, now_ms| {
    w.lease_task(batch, actor, op, now_ms)
});

operation!(SubmitResult => ResultAck, |op, w, batch, actor, now_ms| {
    w.submit_result(batch, actor, op, now_ms)
});

operation!(CancelTask => TaskView, |op, w, batch, actor, now_ms| {
    w.cancel_task(batch, actor, &op.id, now_ms)
});

operation!(SweepTasks => Vec<(NodeId, String)>, |_op, w, batch, actor, now_ms| {
    Ok(w.sweep_tasks(batch, actor, now_ms))
});

fn unavailable(why: &str) -> ApiError {
    ApiError::Conflict {
        code: "task_unavailable",
        message: format!("the task is not available to this node: {why}"),
    }
}

fn task_not_found(id: &str) -> ApiError {
    ApiError::not_found("task_not_found", format!("no task with id {id:?}"))
}

fn run_view(run: &TaskRunRecord, result: Option<&TaskResult>) -> TaskRunView {
    TaskRunView {
        node: run.node_name.clone(),
        node_key: run.node_key.clone(),
        state: run.state,
        leases: run.leases,
        lease_id: run.lease_id.clone(),
        lease_expires_at_ms: run.lease_expires_at_ms,
        status: run.status,
        finished_at_ms: run.finished_at_ms,
        result: result.cloned(),
    }
}

/// Which tasks `GET /v1/admin/tasks` lists.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only tasks with a run on this node.
    pub node: Option<NodeId>,
    /// Only tasks with a run (on that node, if given) in this state.
    pub state: Option<RunState>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl TaskState {
    /// The admin view; `with_kind` adds what it runs (a script body can be
    /// 64 KiB, so lists leave it out).
    pub fn view(&self, with_kind: bool) -> TaskView {
        self.view_inner(with_kind, None)
    }

    /// The admin view with what it runs and each run's result (by node id).
    pub fn view_with_results(&self, results: &BTreeMap<NodeId, TaskResult>) -> TaskView {
        self.view_inner(true, Some(results))
    }

    fn view_inner(
        &self,
        with_kind: bool,
        results: Option<&BTreeMap<NodeId, TaskResult>>,
    ) -> TaskView {
        let mut runs: Vec<TaskRunView> = self
            .runs
            .iter()
            .map(|(id, r)| run_view(r, results.and_then(|m| m.get(id))))
            .collect();
        runs.sort_by(|a, b| a.node.cmp(&b.node).then(a.node_key.cmp(&b.node_key)));
        TaskView {
            id: self.rec.id.clone(),
            created_at_ms: self.rec.created_at_ms,
            created_by: self.rec.created_by.clone(),
            target: self.rec.target.clone(),
            label: self.rec.kind.label(),
            kind: with_kind.then(|| self.rec.kind.clone()),
            limits: self.rec.limits,
            deadline_ms: self.rec.deadline_ms,
            cancelled_at_ms: self.rec.cancelled_at_ms,
            runs,
        }
    }

    fn finished(&self) -> bool {
        self.runs.values().all(|r| r.state.is_final())
    }
}

impl World {
    /// A task, if it exists.
    pub fn task(&self, id: &str) -> Option<&TaskState> {
        self.tasks.rows.get(id)
    }

    /// Tasks matching `q`, newest first.
    pub fn task_list(&self, q: &TaskQuery) -> Vec<TaskView> {
        let mut hits: Vec<&TaskState> = self
            .tasks
            .rows
            .values()
            .filter(|t| {
                t.runs.values().any(|r| {
                    q.node.is_none_or(|n| r.node_id == n) && q.state.is_none_or(|s| r.state == s)
                }) || (q.node.is_none() && q.state.is_none())
            })
            .collect();
        hits.sort_by(|a, b| {
            (b.rec.created_at_ms, &b.rec.id).cmp(&(a.rec.created_at_ms, &a.rec.id))
        });
        hits.into_iter()
            .take(q.limit)
            .map(|t| t.view(false))
            .collect()
    }

    /// The tasks `node` should lease now: runs that are pending (never leased,
    /// or whose lease expired) of tasks neither cancelled nor past their
    /// deadline, oldest first.
    pub fn pending_tasks(&self, node: NodeId, now_ms: u64) -> Vec<String> {
        let mut out: Vec<(u64, &str)> = self
            .tasks
            .rows
            .values()
            .filter(|t| t.rec.cancelled_at_ms.is_none() && now_ms < t.rec.deadline_ms)
            .filter(|t| {
                t.runs.get(&node).is_some_and(|r| match r.state {
                    RunState::Pending => true,
                    RunState::Leased => r.lease_expires_at_ms.is_none_or(|e| now_ms >= e),
                    _ => false,
                })
            })
            .map(|t| (t.rec.created_at_ms, t.rec.id.as_str()))
            .collect();
        out.sort();
        out.into_iter().map(|(_, id)| id.to_owned()).collect()
    }

    /// The nodes a target names now: enabled nodes only.
    fn resolve_target(&self, target: &TaskTarget) -> Result<Vec<NodeId>, ApiError> {
        let ids: Vec<NodeId> = match target {
            TaskTarget::Node(sel) => {
                let n = self
                    .find_node(sel)
                    .ok_or_else(|| super::nodes::node_not_found(sel))?;
                if n.rec.disabled {
                    return Err(ApiError::Conflict {
                        code: "node_disabled",
                        message: format!("node {} is disabled", n.rec.name),
                    });
                }
                vec![n.rec.id]
            }
            TaskTarget::Tag(tag) => self
                .nodes
                .values()
                .filter(|n| !n.rec.disabled && n.rec.tags.contains(tag))
                .map(|n| n.rec.id)
                .collect(),
            TaskTarget::Network(name) => {
                let net = self.network_by_name(name).ok_or_else(|| {
                    ApiError::not_found("network_not_found", format!("no network named {name:?}"))
                })?;
                net.members
                    .iter()
                    .copied()
                    .filter(|id| self.nodes.get(id).is_some_and(|n| !n.rec.disabled))
                    .collect()
            }
        };
        if ids.is_empty() {
            return Err(ApiError::invalid(
                "no_target_nodes",
                format!("{target} names no enabled node"),
            ));
        }
        Ok(ids)
    }

    fn create_task(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: CreateTask,
        now_ms: u64,
    ) -> Result<TaskView, ApiError> {
        op.req
            .check()
            .map_err(|e| ApiError::invalid("invalid_task", e.to_string()))?;
        if let TaskKind::Hook { name, .. } = &op.req.kind
            && self.approved_hook_hashes(name).is_empty()
        {
            return Err(ApiError::Conflict {
                code: "hook_not_approved",
                message: format!(
                    "hook {name:?} has no approved sha256; approve it first: \
                     weft admin hook approve {name} SHA256"
                ),
            });
        }
        if self.tasks.rows.contains_key(&op.id) {
            return Err(ApiError::Conflict {
                code: "task_exists",
                message: format!("a task with id {:?} exists", op.id),
            });
        }
        let deadline_secs = op
            .req
            .deadline_secs()
            .map_err(|e| ApiError::invalid("invalid_task", e.to_string()))?;
        let nodes = self.resolve_target(&op.req.target)?;
        // The last step that can fail: it removes at most one finished task.
        self.make_room_for_a_task(batch)?;
        let rec = TaskRecord {
            id: op.id.clone(),
            created_at_ms: now_ms,
            created_by: actor.label(),
            target: op.req.target.clone(),
            kind: op.req.kind.clone(),
            limits: op.req.limits(),
            deadline_ms: now_ms.saturating_add(deadline_secs.saturating_mul(1000)),
            cancelled_at_ms: None,
        };
        batch.writes.push(Write::PutTask(rec.clone()));
        let mut runs = BTreeMap::new();
        for id in nodes {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            let run = TaskRunRecord {
                task_id: rec.id.clone(),
                node_id: id,
                node_name: n.rec.name.clone(),
                node_key: n.rec.node_key.to_string(),
                state: RunState::Pending,
                lease_id: None,
                lease_expires_at_ms: None,
                leases: 0,
                status: None,
                finished_at_ms: None,
            };
            batch.writes.push(Write::PutTaskRun(run.clone()));
            runs.insert(id, run);
        }
        let state = TaskState { rec, runs };
        let view = state.view(true);
        self.audit(
            batch,
            actor,
            "task.create",
            op.id.clone(),
            json!({
                "target": op.req.target,
                "kind": state.rec.kind.label(),
                "nodes": view.runs.iter().map(|r| r.node.clone()).collect::<Vec<_>>(),
                "timeout_secs": state.rec.limits.timeout_secs,
                "output_cap_bytes": state.rec.limits.output_cap_bytes,
                "deadline_ms": state.rec.deadline_ms,
            }),
            now_ms,
        );
        self.tasks.rows.insert(op.id, state);
        Ok(view)
    }

    /// Deletes the oldest finished task while [`TASKS_KEPT`] are kept; refuses
    /// when every kept task is still running.
    fn make_room_for_a_task(&mut self, batch: &mut Batch) -> Result<(), ApiError> {
        while self.tasks.rows.len() >= TASKS_KEPT {
            let oldest = self
                .tasks
                .rows
                .values()
                .filter(|t| t.finished())
                .min_by(|a, b| {
                    (a.rec.created_at_ms, &a.rec.id).cmp(&(b.rec.created_at_ms, &b.rec.id))
                })
                .map(|t| t.rec.id.clone());
            let Some(id) = oldest else {
                return Err(ApiError::TooMany {
                    code: "too_many_tasks",
                    message: format!(
                        "{TASKS_KEPT} tasks are still running; cancel some (weft admin task cancel ID) \
                         or wait for them to finish"
                    ),
                });
            };
            self.tasks.rows.remove(&id);
            batch.writes.push(Write::DeleteTask(id));
        }
        Ok(())
    }

    fn lease_task(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: LeaseTask,
        now_ms: u64,
    ) -> Result<LeasedTask, ApiError> {
        let allows_exec = self.integrity_allows_exec(op.node);
        let Some(task) = self.tasks.rows.get(&op.task_id) else {
            return Err(unavailable("no such task"));
        };
        let Some(run) = task.runs.get(&op.node) else {
            return Err(unavailable("not this node's task"));
        };
        if task.rec.cancelled_at_ms.is_some() || run.state == RunState::Cancelled {
            return Err(unavailable("it was cancelled"));
        }
        if run.state == RunState::Done {
            return Err(unavailable("it is done"));
        }
        if run.state == RunState::Expired || now_ms >= task.rec.deadline_ms {
            return Err(ApiError::TokenGone {
                code: "task_expired",
                message: "the task's deadline passed".into(),
            });
        }
        if task.rec.kind.runs_code() && !allows_exec {
            return Err(ApiError::Forbidden {
                code: "integrity_mismatch",
                message: "this node's integrity is a mismatch: script and hook tasks are refused \
                          until it is resolved (weft admin integrity show)"
                    .into(),
            });
        }
        let mut kind = task.rec.kind.clone();
        if let TaskKind::Hook {
            name,
            approved_sha256,
        } = &mut kind
        {
            *approved_sha256 = self.approved_hook_hashes(name);
        }
        let (limits, deadline_ms) = (task.rec.limits, task.rec.deadline_ms);
        let live = match (run.state, &run.lease_id, run.lease_expires_at_ms) {
            (RunState::Leased, Some(id), Some(exp)) if now_ms < exp => Some((id.clone(), exp)),
            _ => None,
        };
        let (lease_id, expires) = match live {
            // The same node asks again while its lease lives: the same lease.
            Some(l) => l,
            None => {
                let expires = now_ms
                    .saturating_add(u64::from(limits.timeout_secs) * 1000)
                    .saturating_add(LEASE_GRACE_MS);
                let run = self
                    .tasks
                    .rows
                    .get_mut(&op.task_id)
                    .and_then(|t| t.runs.get_mut(&op.node))
                    .ok_or(ApiError::Internal)?;
                run.state = RunState::Leased;
                run.lease_id = Some(op.lease_id.clone());
                run.lease_expires_at_ms = Some(expires);
                run.leases = run.leases.saturating_add(1);
                let leases = run.leases;
                batch.writes.push(Write::PutTaskRun(run.clone()));
                self.audit(
                    batch,
                    actor,
                    "task.lease",
                    op.task_id.clone(),
                    json!({ "lease_id": op.lease_id, "lease_expires_at_ms": expires, "leases": leases }),
                    now_ms,
                );
                (op.lease_id, expires)
            }
        };
        Ok(LeasedTask {
            task_id: op.task_id,
            lease_id,
            lease_expires_at_ms: expires,
            deadline_ms,
            kind,
            limits,
        })
    }

    fn submit_result(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: SubmitResult,
        now_ms: u64,
    ) -> Result<ResultAck, ApiError> {
        let r = op.result;
        let Some(task) = self.tasks.rows.get_mut(&r.task_id) else {
            return Err(unavailable("no such task"));
        };
        let Some(run) = task.runs.get_mut(&op.node) else {
            return Err(unavailable("not this node's task"));
        };
        r.check(task.rec.limits.output_cap_bytes)
            .map_err(|e| ApiError::invalid("invalid_result", e.to_string()))?;
        let same_lease = run.lease_id.as_deref() == Some(r.lease_id.as_str());
        match run.state {
            RunState::Done if same_lease => return Ok(ResultAck { duplicate: true }),
            RunState::Done => {
                return Err(ApiError::Conflict {
                    code: "task_done",
                    message: "the task was completed under another lease".into(),
                });
            }
            RunState::Cancelled => {
                return Err(ApiError::Conflict {
                    code: "task_cancelled",
                    message: "the task was cancelled".into(),
                });
            }
            // The current or last lease, live or expired (a run whose lease
            // expired stays "pending" with that lease until it is leased
            // again), or a run that reached its deadline while it ran.
            RunState::Leased | RunState::Pending | RunState::Expired if same_lease => {}
            _ => {
                return Err(ApiError::Conflict {
                    code: "lease_superseded",
                    message: "this lease is not the task's current one (it expired and the task \
                              was leased again, or it was never issued)"
                        .into(),
                });
            }
        }
        run.state = RunState::Done;
        run.status = Some(r.status);
        run.finished_at_ms = Some(now_ms);
        batch.writes.push(Write::PutTaskRun(run.clone()));
        let detail = json!({
            "lease_id": r.lease_id,
            "status": r.status,
            "exit_code": r.exit_code,
            "signal": r.signal,
            "duration_ms": r.duration_ms,
            "stdout_bytes": r.stdout.len(),
            "stderr_bytes": r.stderr.len(),
            "stdout_truncated": r.stdout_truncated,
            "stderr_truncated": r.stderr_truncated,
        });
        batch.writes.push(Write::PutTaskResult(TaskResultRecord {
            task_id: r.task_id.clone(),
            node_id: op.node,
            received_at_ms: now_ms,
            result: r.clone(),
        }));
        self.audit(batch, actor, "task.result", r.task_id, detail, now_ms);
        Ok(ResultAck { duplicate: false })
    }

    fn cancel_task(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: &str,
        now_ms: u64,
    ) -> Result<TaskView, ApiError> {
        let task = self
            .tasks
            .rows
            .get_mut(id)
            .ok_or_else(|| task_not_found(id))?;
        if task.rec.cancelled_at_ms.is_some() || task.finished() {
            return Err(ApiError::Conflict {
                code: "task_finished",
                message: format!("task {id} has no run left to cancel"),
            });
        }
        task.rec.cancelled_at_ms = Some(now_ms);
        batch.writes.push(Write::PutTask(task.rec.clone()));
        let mut cancelled = Vec::new();
        for run in task.runs.values_mut().filter(|r| !r.state.is_final()) {
            run.state = RunState::Cancelled;
            run.finished_at_ms = Some(now_ms);
            cancelled.push(run.node_name.clone());
            batch.writes.push(Write::PutTaskRun(run.clone()));
        }
        let view = task.view(true);
        self.audit(
            batch,
            actor,
            "task.cancel",
            id.to_owned(),
            json!({ "runs_cancelled": cancelled }),
            now_ms,
        );
        Ok(view)
    }

    fn sweep_tasks(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        now_ms: u64,
    ) -> Vec<(NodeId, String)> {
        let mut renotify = Vec::new();
        let mut audits = Vec::new();
        for task in self.tasks.rows.values_mut() {
            if task.rec.cancelled_at_ms.is_some() {
                continue;
            }
            let past_deadline = now_ms >= task.rec.deadline_ms;
            for run in task.runs.values_mut().filter(|r| !r.state.is_final()) {
                if past_deadline {
                    run.state = RunState::Expired;
                    run.finished_at_ms = Some(now_ms);
                    audits.push((
                        task.rec.id.clone(),
                        json!({ "reason": "deadline", "node": run.node_name }),
                    ));
                } else if run.state == RunState::Leased
                    && run.lease_expires_at_ms.is_none_or(|e| now_ms >= e)
                {
                    // Leasable again; the lease id stays, so a late result
                    // under it is still taken until the task is leased again.
                    run.state = RunState::Pending;
                    audits.push((
                        task.rec.id.clone(),
                        json!({ "reason": "lease", "node": run.node_name, "lease_id": run.lease_id }),
                    ));
                    renotify.push((run.node_id, task.rec.id.clone()));
                } else {
                    continue;
                }
                batch.writes.push(Write::PutTaskRun(run.clone()));
            }
        }
        for (id, detail) in audits {
            self.audit(batch, actor, "task.expire", id, detail, now_ms);
        }
        renotify
    }
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
