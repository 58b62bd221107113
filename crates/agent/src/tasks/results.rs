//! Where finished tasks' results wait for the controller:
//! `STATE_DIR/results-outbox.json`, the agent's
//! [`Outbox`](crate::outbox::Outbox) (bounded, written with fsync before the
//! result is first sent, kept across restarts, a damaged file moved aside and
//! named, never silently replaced; [`Tracked`] keeps its failures). Each result
//! is keyed by (task id, lease id): the controller answers a second copy
//! `duplicate: true` and changes nothing, so a replay after a crash or a lost
//! answer is harmless. A task whose result is waiting here is never run
//! again, nor one whose result the controller took lately ([`RECENT_DONE`]).
//! What fails here is shown in `weft status` (area `tasks`).

use std::collections::VecDeque;
use std::path::Path;

use weft_proto::local::FailureStatus;
use weft_proto::task::TaskResult;

use crate::clock;
use crate::outbox::{Keyed, Kind, Tracked};

/// The outbox file in the state directory.
pub(crate) const FILE: &str = "results-outbox.json";
/// Results kept for the controller at most (a result is at most about
/// 520 KiB: two capped streams and the error; tasks come one lease at a
/// time, so a full outbox means the controller took leases but not results).
pub(crate) const MAX_PENDING: usize = 64;
/// Task ids remembered as done after the controller took their result.
pub(crate) const RECENT_DONE: usize = 1024;
/// How the outbox is named in log lines and in `weft status`.
const KIND: Kind = Kind {
    file: FILE,
    what: "task results",
    sent: "sent",
    area: "tasks",
    status: "results outbox",
};

impl Keyed for TaskResult {
    fn idempotency_key(&self) -> String {
        format!("{}/{}", self.task_id, self.lease_id)
    }
}

/// The results of this agent not yet taken by the controller.
#[derive(Debug)]
pub(crate) struct Results {
    pending: Tracked<TaskResult>,
    /// Tasks whose result the controller has (or refused for good).
    done: VecDeque<String>,
    opened_ms: u64,
    /// Results the controller refused for good (dropped), this run.
    refused: u64,
    /// Results delivered this run.
    delivered: u64,
    /// When a result was first lost (this run; the opening time for losses
    /// the file counted before).
    lost_since: Option<u64>,
}

impl Results {
    /// Opens the outbox in `dir`. A damaged file is moved aside and logged;
    /// an unreadable one (I/O) leaves an outbox in memory only, logged.
    pub(crate) fn open(dir: &Path, now_ms: u64) -> Self {
        let pending = Tracked::open(dir, KIND, MAX_PENDING, now_ms);
        if pending.outbox().len() > 0 {
            tracing::info!(
                results = pending.outbox().len(),
                "task results from before the restart wait for the controller"
            );
        }
        Self {
            pending,
            done: VecDeque::new(),
            opened_ms: now_ms,
            refused: 0,
            delivered: 0,
            lost_since: None,
        }
    }

    /// Whether the task `task_id` must not run (again): its result waits
    /// here, or the controller took it lately.
    pub(crate) fn has(&self, task_id: &str) -> bool {
        self.done.iter().any(|d| d == task_id)
            || self
                .pending
                .outbox()
                .oldest(usize::MAX)
                .iter()
                .any(|r| r.task_id == task_id)
    }

    /// Keeps `r` for the controller (on disk before it returns).
    pub(crate) fn push(&mut self, r: TaskResult) {
        let before = self.dropped();
        self.pending.outbox_mut().push(r);
        if self.dropped() > before {
            self.lost_since.get_or_insert_with(clock::unix_ms);
            tracing::error!(
                max = MAX_PENDING,
                "the task results outbox is full; the oldest result was dropped"
            );
        }
        self.pending.save();
    }

    /// The oldest result waiting.
    pub(crate) fn oldest(&self) -> Option<TaskResult> {
        self.pending.outbox().oldest(1).pop()
    }

    /// The controller took the oldest result (`refused`: refused it for
    /// good; it is dropped and counted).
    pub(crate) fn taken(&mut self, refused: bool) {
        if let Some(r) = self.oldest() {
            if self.done.len() == RECENT_DONE {
                self.done.pop_front();
            }
            self.done.push_back(r.task_id);
        }
        self.pending.outbox_mut().taken(1);
        if refused {
            self.pending.outbox_mut().count_dropped(1);
            self.refused += 1;
            self.lost_since.get_or_insert_with(clock::unix_ms);
        } else {
            self.delivered += 1;
        }
        self.pending.save();
    }

    /// Results waiting.
    pub(crate) fn pending(&self) -> usize {
        self.pending.outbox().len()
    }

    /// Results lost: the outbox was full, or the controller refused them
    /// (a running total kept in the file).
    pub(crate) fn dropped(&self) -> u64 {
        self.pending.outbox().dropped()
    }

    /// Since when results are lost (`None`: none is).
    pub(crate) fn lost_since(&self) -> Option<u64> {
        (self.dropped() > 0).then(|| self.lost_since.unwrap_or(self.opened_ms))
    }

    /// Results delivered and refused this run.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.delivered, self.refused)
    }

    /// For `weft status` (area `tasks`): each damaged outbox moved aside
    /// (until the operator removes it), an outbox that could not be read or
    /// written.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.pending.failures()
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::task::TaskStatus;

    use super::*;

    pub(crate) fn result(task: &str, lease: &str) -> TaskResult {
        TaskResult {
            task_id: task.into(),
            lease_id: lease.into(),
            status: TaskStatus::Completed,
            exit_code: Some(0),
            signal: None,
            duration_ms: 1,
            stdout: "out".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: None,
        }
    }

    #[test]
    fn results_survive_a_restart_in_order_and_are_not_queued_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Results::open(dir.path(), 0);
        r.push(result("t1", "l1"));
        r.push(result("t2", "l2"));
        // The same (task, lease) again: one copy.
        r.push(result("t1", "l1"));
        assert_eq!(r.pending(), 2);
        drop(r);
        let mut r = Results::open(dir.path(), 0);
        assert_eq!(r.pending(), 2);
        assert!(r.has("t1") && r.has("t2") && !r.has("t3"));
        assert_eq!(r.oldest().map(|x| x.task_id), Some("t1".into()));
        r.taken(false);
        // Taken: still known as done (not run again), no longer waiting.
        assert!(r.has("t1"));
        assert_eq!(r.oldest().map(|x| x.task_id), Some("t2".into()));
        r.taken(true);
        assert_eq!((r.pending(), r.dropped(), r.counts()), (0, 1, (1, 1)));
        drop(r);
        let r = Results::open(dir.path(), 0);
        assert_eq!(
            r.pending(),
            0,
            "an emptied outbox stays empty after a restart"
        );
        assert_eq!(r.dropped(), 1);
    }

    #[test]
    fn a_damaged_outbox_is_moved_aside_and_a_status_failure_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let r = Results::open(dir.path(), 42);
        assert_eq!(r.pending(), 0);
        let aside = dir.path().join(format!("{FILE}.damaged-42"));
        assert_eq!(std::fs::read(&aside).unwrap(), b"{not json");
        let f = r.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].area.as_str(), f[0].what.as_str()),
            ("tasks", aside.display().to_string().as_str())
        );
        std::fs::remove_file(&aside).unwrap();
        assert!(r.failures().is_empty());
    }

    #[test]
    fn an_unwritable_outbox_is_a_status_failure_and_keeps_results_in_memory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let mut r = Results::open(&dir, 0);
        std::fs::remove_dir(&dir).unwrap();
        r.push(result("t1", "l1"));
        let f = r.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].what, "results outbox");
        assert_eq!(r.pending(), 1);
        std::fs::create_dir(&dir).unwrap();
        r.push(result("t2", "l2"));
        assert!(r.failures().is_empty());
        assert_eq!(Results::open(&dir, 0).pending(), 2);
    }
}
