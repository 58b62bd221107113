//! Remote tasks: what an admin asks a node to run, what the node leases, and the
//! result it returns.
//!
//! A task is one of a built-in [`Action`], a script (an interpreter from
//! [`INTERPRETERS`] and a body) or a named hook ([`TaskKind`]), with
//! [`TaskLimits`] (timeout and per-stream output cap). The controller checks
//! every limit here before a task can be leased and again when a result comes
//! in ([`TaskResult::check`]); the agent checks them again before it runs
//! anything. The node learns of a task from a `task` SSE event on its map
//! stream ([`TaskNotice`], [`EVENT_TASK`]) and leases it: the [`LeasedTask`] it
//! gets carries execution fields only (no admin identity, no token, no creator).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hostfw::task_rule::{TaskRule, check_task_rule_id};
use crate::text::is_spoofing_char;

/// Interpreters a script task may name.
pub const INTERPRETERS: [&str; 4] = ["sh", "bash", "python3", "node"];
/// Timeout when the admin gives none, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;
/// Shortest timeout, in seconds.
pub const MIN_TIMEOUT_SECS: u32 = 1;
/// Longest timeout, in seconds (10 minutes).
pub const MAX_TIMEOUT_SECS: u32 = 600;
/// Output cap when the admin gives none, in bytes per stream (stdout, stderr).
pub const DEFAULT_OUTPUT_CAP: u32 = 64 * 1024;
/// Smallest output cap, in bytes per stream.
pub const MIN_OUTPUT_CAP: u32 = 1;
/// Largest output cap, in bytes per stream (256 KiB).
pub const MAX_OUTPUT_CAP: u32 = 256 * 1024;
/// Largest script body, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
/// Longest error text in a result, in bytes.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Deadline when the admin gives none, in seconds from creation: the task must
/// be leased and done by then.
pub const DEFAULT_DEADLINE_SECS: u64 = 24 * 3600;
/// Longest deadline, in seconds from creation (30 days).
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;
/// Longest hook name, in bytes.
pub const MAX_HOOK_NAME: usize = 64;
/// Longest peer name in `ping`, in bytes (a DNS name).
pub const MAX_PEER_NAME: usize = 253;
/// Longest task or lease id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most approved hashes a leased hook task carries.
pub const MAX_APPROVED_HASHES: usize = 16;
/// SSE event name of a [`TaskNotice`] on the map stream. It has no `id:` line:
/// map resume ids stay map versions.
pub const EVENT_TASK: &str = "task";

/// A built-in action. The read-only ones ([`Action::read_only`]) are allowed by
/// default on the agent; the others need `weftd --allow-actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Ping a peer over the overlay.
    Ping {
        /// The peer's node name (or overlay address).
        peer: String,
    },
    /// Check reachability: STUN and relays.
    Netcheck,
    /// A bounded bundle of status, logs, routes and the nft table.
    Diagnostics,
    /// A reconciler pass now.
    Reconcile,
    /// A new identity key for the node.
    RotateKey,
    /// Restart the data plane.
    RestartDataplane,
    /// Clear the DNS cache.
    FlushDns,
    /// Open a port in the node's host firewall for a while (a node-local rule
    /// `task-<short task id>`, removed by the node when it expires).
    FirewallAllow(TaskRule),
    /// Close a rule `firewall-allow` opened before it expires.
    FirewallRevoke {
        /// The rule's id (`task-...`, as `weft status` lists it).
        id: String,
    },
}

/// Names of every action, in [`Action::parse_list`] order.
pub const ACTION_NAMES: [&str; 9] = [
    "ping",
    "netcheck",
    "diagnostics",
    "reconcile",
    "rotate-key",
    "restart-dataplane",
    "flush-dns",
    "firewall-allow",
    "firewall-revoke",
];

/// Names of the read-only actions (on by default on the agent).
pub const READ_ONLY_ACTIONS: [&str; 3] = ["ping", "netcheck", "diagnostics"];

impl Action {
    /// The action's kebab-case name (`ping`, `rotate-key`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Ping { .. } => "ping",
            Action::Netcheck => "netcheck",
            Action::Diagnostics => "diagnostics",
            Action::Reconcile => "reconcile",
            Action::RotateKey => "rotate-key",
            Action::RestartDataplane => "restart-dataplane",
            Action::FlushDns => "flush-dns",
            Action::FirewallAllow(_) => "firewall-allow",
            Action::FirewallRevoke { .. } => "firewall-revoke",
        }
    }

    /// Whether the action only reads state (ping, netcheck, diagnostics).
    pub fn read_only(&self) -> bool {
        READ_ONLY_ACTIONS.contains(&self.name())
    }

    /// Parses a comma-separated list of action names (`ping,netcheck`) as given to
    /// `weftd --allow-actions`. `none` (alone) is the empty list; `all` every
    /// action. Names are deduplicated and returned in [`ACTION_NAMES`] order.
    pub fn parse_list(s: &str) -> Result<Vec<&'static str>, TaskLimitError> {
        let s = s.trim();
        if s == "none" {
            return Ok(Vec::new());
        }
        if s == "all" {
            return Ok(ACTION_NAMES.to_vec());
        }
        let mut wanted = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            match ACTION_NAMES.iter().find(|n| **n == part) {
                Some(n) => wanted.push(*n),
                None => {
                    return Err(TaskLimitError::UnknownAction(bounded(part)));
                }
            }
        }
        Ok(ACTION_NAMES
            .iter()
            .copied()
            .filter(|n| wanted.contains(n))
            .collect())
    }

    /// Checks the action's arguments (the ping peer name, the firewall rule
    /// and its lifetime, the rule id to revoke).
    pub fn check(&self) -> Result<(), TaskLimitError> {
        match self {
            Action::FirewallAllow(rule) => {
                return rule.check().map_err(|e| TaskLimitError::Firewall(e.0));
            }
            Action::FirewallRevoke { id } => {
                return check_task_rule_id(id).map_err(|e| TaskLimitError::Firewall(e.0));
            }
            _ => {}
        }
        if let Action::Ping { peer } = self {
            if peer.is_empty() || peer.len() > MAX_PEER_NAME {
                return Err(TaskLimitError::Field {
                    field: "peer",
                    bound: format!("1..={MAX_PEER_NAME} bytes"),
                    value: format!("{} bytes", peer.len()),
                });
            }
            if let Some(c) = peer
                .chars()
                .find(|c| is_spoofing_char(*c) || c.is_whitespace())
            {
                return Err(TaskLimitError::Field {
                    field: "peer",
                    bound: "no whitespace or control characters".into(),
                    value: format!("{:?}", c),
                });
            }
        }
        Ok(())
    }
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskKind {
    /// A built-in action.
    Action(Action),
    /// A script run by an allowlisted interpreter.
    Script {
        /// One of [`INTERPRETERS`].
        interpreter: String,
        /// The script text (at most [`MAX_SCRIPT_BYTES`]).
        body: String,
    },
    /// A hook script from the node's hooks directory.
    Hook {
        /// The hook's file name.
        name: String,
        /// The sha256 values the admin approved for this hook. Empty in a create
        /// request: the controller fills it at lease time.
        #[serde(default)]
        approved_sha256: Vec<String>,
    },
}

impl TaskKind {
    /// A short label: `action ping`, `script sh`, `hook NAME`.
    pub fn label(&self) -> String {
        match self {
            TaskKind::Action(a) => format!("action {}", a.name()),
            TaskKind::Script { interpreter, .. } => format!("script {interpreter}"),
            TaskKind::Hook { name, .. } => format!("hook {name}"),
        }
    }

    /// Whether the task runs code the admin supplied or approved (a script or a
    /// hook): these are refused while a node's integrity is mismatched.
    pub fn runs_code(&self) -> bool {
        matches!(self, TaskKind::Script { .. } | TaskKind::Hook { .. })
    }

    /// Checks every field against its bound: interpreter allowlist, script size
    /// (non-empty, at most [`MAX_SCRIPT_BYTES`]), hook name (a file name:
    /// `[A-Za-z0-9._-]`, 1..=[`MAX_HOOK_NAME`], not starting with `.`), approved
    /// hashes (at most [`MAX_APPROVED_HASHES`], each 64 lowercase hex), action
    /// arguments.
    pub fn check(&self) -> Result<(), TaskLimitError> {
        match self {
            TaskKind::Action(a) => a.check(),
            TaskKind::Script { interpreter, body } => {
                if !INTERPRETERS.contains(&interpreter.as_str()) {
                    return Err(TaskLimitError::Interpreter(bounded(interpreter)));
                }
                if body.is_empty() || body.len() > MAX_SCRIPT_BYTES {
                    return Err(TaskLimitError::Field {
                        field: "body",
                        bound: format!("1..={MAX_SCRIPT_BYTES} bytes"),
                        value: format!("{} bytes", body.len()),
                    });
                }
                Ok(())
            }
            TaskKind::Hook {
                name,
                approved_sha256,
            } => {
                check_hook_name(name)?;
                if approved_sha256.len() > MAX_APPROVED_HASHES {
                    return Err(TaskLimitError::Field {
                        field: "approved_sha256",
                        bound: format!("at most {MAX_APPROVED_HASHES} hashes"),
                        value: approved_sha256.len().to_string(),
                    });
                }
                approved_sha256.iter().try_for_each(|h| check_sha256(h))
            }
        }
    }
}

/// Checks a hook name: a plain file name of `[A-Za-z0-9._-]`, 1..=[`MAX_HOOK_NAME`]
/// bytes, not starting with `.`.
pub fn check_hook_name(name: &str) -> Result<(), TaskLimitError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_HOOK_NAME || !ok_chars || name.starts_with('.') {
        return Err(TaskLimitError::Field {
            field: "hook name",
            bound: format!("1..={MAX_HOOK_NAME} of [A-Za-z0-9._-], not starting with '.'"),
            value: format!("{:?}", bounded(name)),
        });
    }
    Ok(())
}

/// Checks a sha256 in hex: exactly 64 lowercase hex digits.
pub fn check_sha256(h: &str) -> Result<(), TaskLimitError> {
    if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TaskLimitError::Field {
            field: "sha256",
            bound: "64 lowercase hex digits".into(),
            value: format!("{:?}", bounded(h)),
        });
    }
    Ok(())
}

/// A task's execution bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Seconds before the whole process group is killed
    /// ([`MIN_TIMEOUT_SECS`]..=[`MAX_TIMEOUT_SECS`]).
    pub timeout_secs: u32,
    /// Bytes kept of stdout and of stderr, each
    /// ([`MIN_OUTPUT_CAP`]..=[`MAX_OUTPUT_CAP`]).
    pub output_cap_bytes: u32,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            output_cap_bytes: DEFAULT_OUTPUT_CAP,
        }
    }
}

impl TaskLimits {
    /// Checks both bounds.
    pub fn check(&self) -> Result<(), TaskLimitError> {
        if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(TaskLimitError::Field {
                field: "timeout_secs",
                bound: format!("{MIN_TIMEOUT_SECS}..={MAX_TIMEOUT_SECS}"),
                value: self.timeout_secs.to_string(),
            });
        }
        if !(MIN_OUTPUT_CAP..=MAX_OUTPUT_CAP).contains(&self.output_cap_bytes) {
            return Err(TaskLimitError::Field {
                field: "output_cap_bytes",
                bound: format!("{MIN_OUTPUT_CAP}..={MAX_OUTPUT_CAP}"),
                value: self.output_cap_bytes.to_string(),
            });
        }
        Ok(())
    }
}

/// What the node gets when it leases a task: execution fields only (no admin
/// identity, no token, no creator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedTask {
    /// The task.
    pub task_id: String,
    /// This lease: returned with the result.
    pub lease_id: String,
    /// When the lease expires (Unix ms); after that the task may be leased again.
    pub lease_expires_at_ms: u64,
    /// When the task expires (Unix ms).
    pub deadline_ms: u64,
    /// What to run.
    pub kind: TaskKind,
    /// Its bounds.
    pub limits: TaskLimits,
}

impl LeasedTask {
    /// Checks ids, kind and limits (the agent does this before it runs anything).
    pub fn check(&self) -> Result<(), TaskLimitError> {
        check_id("task_id", &self.task_id)?;
        check_id("lease_id", &self.lease_id)?;
        self.kind.check()?;
        self.limits.check()
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Ran and exited 0.
    Completed,
    /// Ran and exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Killed at the timeout.
    TimedOut,
    /// The node would not run it (exec off, action not allowed, hook changed or
    /// missing, integrity).
    Refused,
}

impl TaskStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::Refused => "refused",
        }
    }

    /// Parses [`TaskStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::TimedOut,
            TaskStatus::Refused,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's result, as the node returns it with its lease id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub task_id: String,
    /// The lease it ran under.
    pub lease_id: String,
    /// How it ended.
    pub status: TaskStatus,
    /// The exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Wall time from start to end, in ms.
    #[serde(default)]
    pub duration_ms: u64,
    /// Captured stdout (lossy UTF-8, cut at a char boundary at most the cap).
    #[serde(default)]
    pub stdout: String,
    /// Captured stderr, likewise.
    #[serde(default)]
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Why it failed or was refused, in words (at most [`MAX_ERROR_BYTES`]).
    #[serde(default)]
    pub error: Option<String>,
}

impl TaskResult {
    /// Checks the result against the task's output cap: stdout and stderr at most
    /// `cap` bytes each, the error at most [`MAX_ERROR_BYTES`], ids bounded.
    pub fn check(&self, cap: u32) -> Result<(), TaskLimitError> {
        check_id("task_id", &self.task_id)?;
        check_id("lease_id", &self.lease_id)?;
        let cap_usize = cap as usize;
        for (field, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if text.len() > cap_usize {
                return Err(TaskLimitError::Field {
                    field,
                    bound: format!("at most {cap} bytes (the task's output cap)"),
                    value: format!("{} bytes", text.len()),
                });
            }
        }
        if let Some(e) = &self.error
            && e.len() > MAX_ERROR_BYTES
        {
            return Err(TaskLimitError::Field {
                field: "error",
                bound: format!("at most {MAX_ERROR_BYTES} bytes"),
                value: format!("{} bytes", e.len()),
            });
        }
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary; returns the kept
/// prefix and whether anything was cut.
pub fn cut_at_char_boundary(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// The data of a `task` SSE event: a task is waiting for this node to lease it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNotice {
    /// The task to lease.
    pub task_id: String,
}

impl TaskNotice {
    /// Decodes and checks the event data.
    pub fn decode(data: &str) -> Result<Self, TaskLimitError> {
        let n: TaskNotice =
            serde_json::from_str(data).map_err(|e| TaskLimitError::Json(e.to_string()))?;
        check_id("task_id", &n.task_id)?;
        Ok(n)
    }

    /// The JSON event data.
    pub fn to_json(&self) -> String {
        // A struct of one string: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Which nodes a task is for; resolved to nodes when the task is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskTarget {
    /// One node, by name or key.
    Node(String),
    /// Every enabled node with this tag.
    Tag(String),
    /// Every enabled member of this network.
    Network(String),
}

impl fmt::Display for TaskTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskTarget::Node(n) => write!(f, "node {n}"),
            TaskTarget::Tag(t) => write!(f, "tag {t}"),
            TaskTarget::Network(n) => write!(f, "network {n}"),
        }
    }
}

/// `POST /v1/admin/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTaskRequest {
    /// Which nodes.
    pub target: TaskTarget,
    /// What to run (a hook's `approved_sha256` must be empty).
    pub kind: TaskKind,
    /// Seconds (default [`DEFAULT_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// Bytes per stream (default [`DEFAULT_OUTPUT_CAP`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap_bytes: Option<u32>,
    /// Seconds from now until the task expires (default
    /// [`DEFAULT_DEADLINE_SECS`], at most [`MAX_DEADLINE_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

impl CreateTaskRequest {
    /// The limits with defaults filled in (not yet checked).
    pub fn limits(&self) -> TaskLimits {
        TaskLimits {
            timeout_secs: self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            output_cap_bytes: self.output_cap_bytes.unwrap_or(DEFAULT_OUTPUT_CAP),
        }
    }

    /// The deadline in seconds from creation, default filled in and checked
    /// (1..=[`MAX_DEADLINE_SECS`]).
    pub fn deadline_secs(&self) -> Result<u64, TaskLimitError> {
        let d = self.deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS);
        if !(1..=MAX_DEADLINE_SECS).contains(&d) {
            return Err(TaskLimitError::Field {
                field: "deadline_secs",
                bound: format!("1..={MAX_DEADLINE_SECS}"),
                value: d.to_string(),
            });
        }
        Ok(d)
    }

    /// Checks kind, limits and deadline. A hook's approved hashes come from the
    /// controller, never from the request.
    pub fn check(&self) -> Result<(), TaskLimitError> {
        if let TaskKind::Hook {
            approved_sha256, ..
        } = &self.kind
            && !approved_sha256.is_empty()
        {
            return Err(TaskLimitError::Field {
                field: "approved_sha256",
                bound: "empty in a create request (approve hooks with `weft admin hook approve`)"
                    .into(),
                value: format!("{} hashes", approved_sha256.len()),
            });
        }
        self.kind.check()?;
        self.limits().check()?;
        self.deadline_secs().map(|_| ())
    }
}

/// Where one node's run of a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for the node to lease it (never leased, or its lease expired).
    Pending,
    /// Leased: the node is running it.
    Leased,
    /// A result arrived.
    Done,
    /// Cancelled by an admin before a result arrived.
    Cancelled,
    /// Its deadline passed before a result arrived.
    Expired,
}

impl RunState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Leased => "leased",
            RunState::Done => "done",
            RunState::Cancelled => "cancelled",
            RunState::Expired => "expired",
        }
    }

    /// Parses [`RunState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            RunState::Pending,
            RunState::Leased,
            RunState::Done,
            RunState::Cancelled,
            RunState::Expired,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Whether nothing more happens to the run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Done | RunState::Cancelled | RunState::Expired
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's run, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRunView {
    /// The node's name.
    pub node: String,
    /// The node's key.
    pub node_key: String,
    /// Where it stands.
    pub state: RunState,
    /// Leases handed out so far.
    pub leases: u32,
    /// The current (or last) lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// When that lease expires (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at_ms: Option<u64>,
    /// How it ended, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// When it ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The whole result (`GET /v1/admin/tasks/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
}

/// A task, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its id.
    pub id: String,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Who created it (`admin`).
    pub created_by: String,
    /// The target as given.
    pub target: TaskTarget,
    /// `action ping`, `script sh`, `hook NAME`.
    pub label: String,
    /// What it runs (`GET /v1/admin/tasks/{id}` and create only: a script body
    /// can be 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    /// Its bounds.
    pub limits: TaskLimits,
    /// When it expires (Unix ms).
    pub deadline_ms: u64,
    /// When an admin cancelled it (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at_ms: Option<u64>,
    /// One run per target node, by node name.
    pub runs: Vec<TaskRunView>,
}

impl TaskView {
    /// Whether every run is final (done, cancelled or expired).
    pub fn finished(&self) -> bool {
        self.runs.iter().all(|r| r.state.is_final())
    }
}

/// `GET /v1/admin/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskView>,
}

/// `POST /v1/node/tasks/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The task from the notice.
    pub task_id: String,
}

/// The answer to `POST /v1/node/tasks/result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck {
    /// The controller already had this result (same task and lease).
    pub duplicate: bool,
}

/// Checks a task or lease id: 1..=[`MAX_ID_LEN`] of `[A-Za-z0-9_-]`.
pub fn check_id(field: &'static str, id: &str) -> Result<(), TaskLimitError> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(TaskLimitError::Field {
            field,
            bound: format!("1..={MAX_ID_LEN} of [A-Za-z0-9_-]"),
            value: format!("{:?}", bounded(id)),
        });
    }
    Ok(())
}

/// Why a task, its limits or a result is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskLimitError {
    /// The interpreter is not in [`INTERPRETERS`].
    #[error("interpreter {0:?} is not allowed (allowed: sh, bash, python3, node)")]
    Interpreter(String),
    /// An action name is unknown.
    #[error(
        "unknown action {0:?} (actions: ping, netcheck, diagnostics, reconcile, rotate-key, restart-dataplane, flush-dns, firewall-allow, firewall-revoke)"
    )]
    UnknownAction(String),
    /// A field is outside its bound.
    #[error("{field} must be {bound}, got {value}")]
    Field {
        /// The field.
        field: &'static str,
        /// The bound, in words.
        bound: String,
        /// The value (or its size), bounded.
        value: String,
    },
    /// A `firewall-allow` rule or `firewall-revoke` id is out of bounds.
    #[error("firewall action: {0}")]
    Firewall(String),
    /// The JSON is not valid.
    #[error("invalid task JSON: {0}")]
    Json(String),
}

/// At most 64 characters of `s`, for error messages.
fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout_secs: u32, output_cap_bytes: u32) -> TaskLimits {
        TaskLimits {
            timeout_secs,
            output_cap_bytes,
        }
    }

    fn script(interpreter: &str, body: String) -> TaskKind {
        TaskKind::Script {
            interpreter: interpreter.into(),
            body,
        }
    }

    fn result(stdout: usize, stderr: usize, error: Option<usize>) -> TaskResult {
        TaskResult {
            task_id: "t1".into(),
            lease_id: "l1".into(),
            status: TaskStatus::Completed,
            exit_code: Some(0),
            signal: None,
            duration_ms: 5,
            stdout: "a".repeat(stdout),
            stderr: "b".repeat(stderr),
            stdout_truncated: false,
            stderr_truncated: false,
            error: error.map(|n| "e".repeat(n)),
        }
    }

    #[test]
    fn timeout_at_under_and_over_its_bounds() {
        let cap = DEFAULT_OUTPUT_CAP;
        assert!(limits(MAX_TIMEOUT_SECS, cap).check().is_ok());
        assert!(limits(MAX_TIMEOUT_SECS - 1, cap).check().is_ok());
        let e = limits(MAX_TIMEOUT_SECS + 1, cap).check().unwrap_err();
        assert!(e.to_string().contains("timeout_secs"), "{e}");
        assert!(e.to_string().contains("601"), "{e}");
        assert!(limits(MIN_TIMEOUT_SECS, cap).check().is_ok());
        assert!(limits(MIN_TIMEOUT_SECS - 1, cap).check().is_err());
        assert!(TaskLimits::default().check().is_ok());
        assert_eq!(TaskLimits::default().timeout_secs, 30);
    }

    #[test]
    fn output_cap_at_under_and_over_its_bounds() {
        let t = DEFAULT_TIMEOUT_SECS;
        assert!(limits(t, MAX_OUTPUT_CAP).check().is_ok());
        assert!(limits(t, MAX_OUTPUT_CAP - 1).check().is_ok());
        let e = limits(t, MAX_OUTPUT_CAP + 1).check().unwrap_err();
        assert!(e.to_string().contains("output_cap_bytes"), "{e}");
        assert!(limits(t, MIN_OUTPUT_CAP).check().is_ok());
        assert!(limits(t, 0).check().is_err());
        assert_eq!(MAX_OUTPUT_CAP, 262_144);
    }

    #[test]
    fn script_size_at_under_and_over_its_bound() {
        assert!(script("sh", "x".repeat(MAX_SCRIPT_BYTES)).check().is_ok());
        assert!(
            script("sh", "x".repeat(MAX_SCRIPT_BYTES - 1))
                .check()
                .is_ok()
        );
        let e = script("sh", "x".repeat(MAX_SCRIPT_BYTES + 1))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("body"), "{e}");
        assert!(script("sh", String::new()).check().is_err());
    }

    #[test]
    fn only_allowlisted_interpreters() {
        for i in INTERPRETERS {
            assert!(script(i, "true".into()).check().is_ok(), "{i}");
        }
        for bad in ["perl", "/bin/sh", "sh ", "", "SH", "python"] {
            let e = script(bad, "true".into()).check().unwrap_err();
            assert!(matches!(e, TaskLimitError::Interpreter(_)), "{bad}");
        }
    }

    #[test]
    fn hook_names_are_plain_file_names() {
        let hook = |name: &str| TaskKind::Hook {
            name: name.into(),
            approved_sha256: vec![],
        };
        assert!(hook(&"h".repeat(MAX_HOOK_NAME)).check().is_ok());
        assert!(hook(&"h".repeat(MAX_HOOK_NAME - 1)).check().is_ok());
        assert!(hook(&"h".repeat(MAX_HOOK_NAME + 1)).check().is_err());
        assert!(hook("rotate-logs.sh").check().is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é", "x\n"] {
            assert!(hook(bad).check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn approved_hashes_are_64_lowercase_hex_and_bounded() {
        let h = "a".repeat(64);
        let hook = |hashes: Vec<String>| TaskKind::Hook {
            name: "h".into(),
            approved_sha256: hashes,
        };
        assert!(hook(vec![h.clone()]).check().is_ok());
        assert!(hook(vec!["a".repeat(63)]).check().is_err());
        assert!(hook(vec!["a".repeat(65)]).check().is_err());
        assert!(hook(vec!["A".repeat(64)]).check().is_err());
        assert!(hook(vec!["g".repeat(64)]).check().is_err());
        assert!(hook(vec![h.clone(); MAX_APPROVED_HASHES]).check().is_ok());
        assert!(
            hook(vec![h.clone(); MAX_APPROVED_HASHES - 1])
                .check()
                .is_ok()
        );
        assert!(hook(vec![h; MAX_APPROVED_HASHES + 1]).check().is_err());
    }

    #[test]
    fn ping_peer_is_bounded() {
        let ping = |p: String| TaskKind::Action(Action::Ping { peer: p });
        assert!(ping("p".repeat(MAX_PEER_NAME)).check().is_ok());
        assert!(ping("p".repeat(MAX_PEER_NAME - 1)).check().is_ok());
        assert!(ping("p".repeat(MAX_PEER_NAME + 1)).check().is_err());
        assert!(ping(String::new()).check().is_err());
        assert!(ping("a\u{202e}b".into()).check().is_err());
        assert!(TaskKind::Action(Action::FlushDns).check().is_ok());
    }

    #[test]
    fn result_outputs_at_under_and_over_the_cap() {
        let cap = 1000;
        assert!(result(1000, 1000, None).check(cap).is_ok());
        assert!(result(999, 999, None).check(cap).is_ok());
        let e = result(1001, 0, None).check(cap).unwrap_err();
        assert!(e.to_string().contains("stdout"), "{e}");
        let e = result(0, 1001, None).check(cap).unwrap_err();
        assert!(e.to_string().contains("stderr"), "{e}");
        let big = MAX_OUTPUT_CAP as usize;
        assert!(result(big, big, None).check(MAX_OUTPUT_CAP).is_ok());
        assert!(result(big + 1, 0, None).check(MAX_OUTPUT_CAP).is_err());
    }

    #[test]
    fn result_error_text_at_under_and_over_its_bound() {
        assert!(result(0, 0, Some(MAX_ERROR_BYTES)).check(10).is_ok());
        assert!(result(0, 0, Some(MAX_ERROR_BYTES - 1)).check(10).is_ok());
        let e = result(0, 0, Some(MAX_ERROR_BYTES + 1))
            .check(10)
            .unwrap_err();
        assert!(e.to_string().contains("error"), "{e}");
    }

    #[test]
    fn result_ids_are_bounded() {
        let mut r = result(0, 0, None);
        r.lease_id = "l".repeat(MAX_ID_LEN);
        assert!(r.check(10).is_ok());
        r.lease_id = "l".repeat(MAX_ID_LEN - 1);
        assert!(r.check(10).is_ok());
        r.lease_id = "l".repeat(MAX_ID_LEN + 1);
        assert!(r.check(10).is_err());
        r.lease_id = String::new();
        assert!(r.check(10).is_err());
        r.lease_id = "a/b".into();
        assert!(r.check(10).is_err());
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        assert_eq!(cut_at_char_boundary("abc", 3), ("abc", false));
        assert_eq!(cut_at_char_boundary("abcd", 3), ("abc", true));
        // "é" is two bytes: a cut inside it keeps the byte before.
        assert_eq!(cut_at_char_boundary("aé", 2), ("a", true));
        assert_eq!(cut_at_char_boundary("", 0), ("", false));
    }

    #[test]
    fn wire_forms() {
        let k = TaskKind::Action(Action::Ping {
            peer: "web1".into(),
        });
        let j = serde_json::to_value(&k).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind": "action", "action": "ping", "peer": "web1"})
        );
        let k = TaskKind::Action(Action::RotateKey);
        assert_eq!(
            serde_json::to_value(&k).unwrap(),
            serde_json::json!({"kind": "action", "action": "rotate-key"})
        );
        let h: TaskKind = serde_json::from_str(r#"{"kind":"hook","name":"x"}"#).unwrap();
        assert_eq!(
            h,
            TaskKind::Hook {
                name: "x".into(),
                approved_sha256: vec![]
            }
        );
        let s: TaskKind =
            serde_json::from_str(r#"{"kind":"script","interpreter":"sh","body":"true"}"#).unwrap();
        assert_eq!(s.label(), "script sh");
        assert_eq!(
            serde_json::to_value(TaskStatus::TimedOut).unwrap(),
            serde_json::json!("timed_out")
        );
        assert_eq!(TaskStatus::parse("refused"), Some(TaskStatus::Refused));
        let n = TaskNotice {
            task_id: "abc".into(),
        };
        assert_eq!(TaskNotice::decode(&n.to_json()), Ok(n));
        assert!(TaskNotice::decode(r#"{"task_id":""}"#).is_err());
        assert!(TaskNotice::decode("{").is_err());
    }

    #[test]
    fn leased_task_has_execution_fields_only() {
        let t = LeasedTask {
            task_id: "t".into(),
            lease_id: "l".into(),
            lease_expires_at_ms: 1,
            deadline_ms: 2,
            kind: TaskKind::Action(Action::Netcheck),
            limits: TaskLimits::default(),
        };
        assert!(t.check().is_ok());
        let j = serde_json::to_value(&t).unwrap();
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "deadline_ms",
                "kind",
                "lease_expires_at_ms",
                "lease_id",
                "limits",
                "task_id"
            ]
        );
    }

    #[test]
    fn create_requests_fill_defaults_and_check_the_deadline() {
        let mut r: CreateTaskRequest = serde_json::from_str(
            r#"{"target":{"tag":"web"},"kind":{"kind":"action","action":"netcheck"}}"#,
        )
        .unwrap();
        assert_eq!(r.target, TaskTarget::Tag("web".into()));
        assert_eq!(r.limits(), TaskLimits::default());
        assert_eq!(r.deadline_secs(), Ok(DEFAULT_DEADLINE_SECS));
        assert!(r.check().is_ok());
        r.deadline_secs = Some(MAX_DEADLINE_SECS);
        assert!(r.check().is_ok());
        r.deadline_secs = Some(MAX_DEADLINE_SECS - 1);
        assert!(r.check().is_ok());
        r.deadline_secs = Some(MAX_DEADLINE_SECS + 1);
        assert!(r.check().is_err());
        r.deadline_secs = Some(0);
        assert!(r.check().is_err());
        r.deadline_secs = None;
        r.timeout_secs = Some(MAX_TIMEOUT_SECS + 1);
        assert!(r.check().is_err());
        r.timeout_secs = None;
        r.kind = TaskKind::Hook {
            name: "h".into(),
            approved_sha256: vec!["a".repeat(64)],
        };
        let e = r.check().unwrap_err();
        assert!(e.to_string().contains("approved_sha256"), "{e}");
        assert_eq!(RunState::parse("expired"), Some(RunState::Expired));
        assert!(RunState::Done.is_final() && !RunState::Leased.is_final());
    }

    #[test]
    fn action_lists() {
        assert_eq!(
            Action::parse_list("netcheck, ping,ping").unwrap(),
            ["ping", "netcheck"]
        );
        assert_eq!(Action::parse_list("none").unwrap(), Vec::<&str>::new());
        assert_eq!(Action::parse_list("all").unwrap(), ACTION_NAMES);
        assert!(matches!(
            Action::parse_list("ping,reboot"),
            Err(TaskLimitError::UnknownAction(_))
        ));
        assert!(Action::Diagnostics.read_only());
        assert!(!Action::RotateKey.read_only());
    }

    #[test]
    fn firewall_actions_are_checked_and_not_read_only() {
        use crate::hostfw::PortRange;
        use crate::hostfw::task_rule::MAX_TASK_RULE_SECS;
        let allow = |for_secs| {
            Action::FirewallAllow(TaskRule {
                proto: crate::hostfw::Proto::Tcp,
                ports: vec![PortRange {
                    start: 8080,
                    end: 8080,
                }],
                from: vec!["10.0.0.0/8".parse().unwrap()],
                comment: "x".into(),
                for_secs,
            })
        };
        assert_eq!(allow(7200).check(), Ok(()));
        assert!(matches!(
            allow(MAX_TASK_RULE_SECS + 1).check(),
            Err(TaskLimitError::Firewall(_))
        ));
        assert!(allow(0).check().is_err());
        let revoke = |id: &str| Action::FirewallRevoke { id: id.into() };
        assert_eq!(revoke("task-abc").check(), Ok(()));
        assert!(revoke("dyn:4").check().is_err());
        assert!(!allow(60).read_only() && !revoke("task-a").read_only());
        assert_eq!(
            Action::parse_list("firewall-allow,firewall-revoke").unwrap(),
            ["firewall-allow", "firewall-revoke"]
        );
        assert_eq!(
            serde_json::to_value(TaskKind::Action(allow(60))).unwrap(),
            serde_json::json!({"kind": "action", "action": "firewall-allow", "proto": "tcp",
                "ports": [{"start": 8080, "end": 8080}], "from": ["10.0.0.0/8"],
                "comment": "x", "for_secs": 60})
        );
        let back: TaskKind =
            serde_json::from_str(r#"{"kind":"action","action":"firewall-revoke","id":"task-abc"}"#)
                .unwrap();
        assert_eq!(back, TaskKind::Action(revoke("task-abc")));
    }
}
