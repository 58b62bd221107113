//! The rows of remote tasks (migration 0008): each task, one run per target
//! node, and each run's result. Tasks and runs are loaded at start (the model in
//! `crate::model`'s `tasks` module decides on them); results, whose outputs can
//! be 256 KiB per stream, stay in the store and are read for `task show`.

use weft_proto::task::{RunState, TaskKind, TaskLimits, TaskResult, TaskStatus, TaskTarget};

/// Tasks kept at most; the oldest finished ones are deleted (with their runs
/// and results) as new ones are created.
pub const TASKS_KEPT: usize = 1000;

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Its id (`tsk_` and hex).
    pub id: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Who created it (an actor label; never handed to nodes).
    pub created_by: String,
    /// The target as given.
    pub target: TaskTarget,
    /// What it runs (a hook's approved hashes are empty here: they are filled
    /// at lease time).
    pub kind: TaskKind,
    /// Its bounds.
    pub limits: TaskLimits,
    /// When it expires, Unix milliseconds.
    pub deadline_ms: u64,
    /// When an admin cancelled it, Unix milliseconds.
    pub cancelled_at_ms: Option<u64>,
}

/// One node's run of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunRecord {
    /// The task.
    pub task_id: String,
    /// The node.
    pub node_id: u64,
    /// Its name when the task was created (the run outlives a removed node).
    pub node_name: String,
    /// Its key, likewise.
    pub node_key: String,
    /// Where it stands.
    pub state: RunState,
    /// The current or last lease.
    pub lease_id: Option<String>,
    /// When that lease expires, Unix milliseconds.
    pub lease_expires_at_ms: Option<u64>,
    /// Leases handed out so far.
    pub leases: u32,
    /// How it ended, once done.
    pub status: Option<TaskStatus>,
    /// When it ended, Unix milliseconds.
    pub finished_at_ms: Option<u64>,
}

/// A run's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResultRecord {
    /// The task.
    pub task_id: String,
    /// The node.
    pub node_id: u64,
    /// Unix milliseconds.
    pub received_at_ms: u64,
    /// The result as the node sent it (checked against the task's caps).
    pub result: TaskResult,
}

/// Every task and run, loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TasksSnapshot {
    /// The tasks.
    pub tasks: Vec<TaskRecord>,
    /// Their runs.
    pub runs: Vec<TaskRunRecord>,
}
