//! Built-in task actions (issue 17): what `weft admin task create --action`
//! runs on a node, without a script.
//!
//! | action | what it does | changes the node |
//! |---|---|---|
//! | `ping PEER` | 3 ICMP echoes to the peer's overlay address through the tunnel, with the path | no |
//! | `netcheck` | STUN to every relay of the map, TCP connect to each relay, the data plane's reflexive addresses and relay link | no |
//! | `diagnostics` | a bounded bundle: `weft status` JSON, recent log lines, `ip route show table all`, `nft list table inet weft` | no |
//! | `reconcile` | a reconciler pass now; what it applied and what failed | interfaces, routes, firewall (to the map) |
//! | `restart-dataplane` | a fresh tunnel core (sessions renegotiated), relay reconnected; TUNs and socket kept | sessions |
//! | `flush-dns` | empties the overlay resolver's answer cache | cache |
//! | `rotate-key` | a new identity key, confirmed by the controller, then used | identity |
//! | `firewall-allow RULE` | opens a port in the host firewall until the rule expires (node-local rule `task-<short task id>`) | host firewall |
//! | `firewall-revoke ID` | closes such a rule before it expires | host firewall |
//!
//! [`run`] is the one entry point (the task runner calls it): it bounds the
//! action by the task's timeout and its output by the task's cap, and answers
//! a [`TaskResult`] whose ids the runner fills in. What an action needs from
//! the supervisor it asks through [`ActionContext`]: a [`Request`] with a
//! oneshot reply, served by the supervisor's loop (`supervisor/actions.rs`).

mod diagnostics;
mod netcheck;
mod ping;
pub(crate) mod rotate;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use weft_identity::{Difficulty, Identity};
use weft_proto::hostfw::HostRule;
use weft_proto::local::AgentStatus;
use weft_proto::task::{
    Action, MAX_ERROR_BYTES, TaskLimits, TaskResult, TaskStatus, cut_at_char_boundary,
};

use crate::clock;
use crate::state::{Credential, StateDir};

/// What an action asks of the supervisor; each carries its reply channel.
pub(crate) enum Request {
    /// `weft status`, as the local API answers it.
    Status(oneshot::Sender<AgentStatus>),
    /// A reconciler pass now.
    Reconcile(oneshot::Sender<Reconciled>),
    /// A fresh tunnel core and relay link (`Ok`: what was done, in words).
    RestartDataplane(oneshot::Sender<Result<String, String>>),
    /// Empty the resolver's cache (`Ok`: the answers dropped).
    FlushDns(oneshot::Sender<Result<usize, String>>),
    /// The controller credential (`None`: not joined) and the identity in use.
    KeyContext(oneshot::Sender<(Option<Credential>, Arc<Identity>)>),
    /// Use `identity` from now on (the controller has it): `identity.next`
    /// becomes `identity.key`, the data plane and relay link take the key.
    InstallIdentity(Box<Identity>, oneshot::Sender<Result<(), String>>),
    /// Add (or renew) a task-made host firewall rule (`Ok`: what was done).
    FirewallAllow(Box<HostRule>, oneshot::Sender<Result<String, NotDone>>),
    /// Remove the task-made host firewall rule with this id.
    FirewallRevoke(String, oneshot::Sender<Result<String, NotDone>>),
}

/// Why a firewall action changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotDone {
    /// The node will not, in its state (no host firewall in force, a damaged
    /// rules file, no room, no such rule): the result is `refused`.
    Refused(String),
    /// It tried and failed (the rules file could not be written): `failed`.
    Failed(String),
}

/// The outcome of a reconciler pass asked for by the `reconcile` action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Whether a pass ran (no netlink, or nothing desired yet: no pass).
    pub(crate) ran: bool,
    /// What it applied.
    pub(crate) applied: Vec<String>,
    /// What failed, with why.
    pub(crate) failed: Vec<String>,
    /// Whether the system matches the map now.
    pub(crate) converged: bool,
}

/// The supervisor's side of the channel.
pub(crate) type Inbox = mpsc::Receiver<Request>;

/// What actions use to reach the agent: the supervisor's request channel, the
/// state directory and the proof-of-work difficulty for a new identity.
#[derive(Clone)]
pub(crate) struct ActionContext {
    tx: mpsc::Sender<Request>,
    pub(crate) state: StateDir,
    pub(crate) difficulty: Difficulty,
    /// Held while a key rotation runs: one at a time (two tasks, or a task
    /// and the rotation finished at start, would race for `identity.next`).
    pub(crate) rotating: Arc<tokio::sync::Mutex<()>>,
}

/// A new channel: the context for actions, the inbox for the supervisor.
pub(crate) fn channel(state: StateDir, difficulty: Difficulty) -> (ActionContext, Inbox) {
    let (tx, rx) = mpsc::channel(8);
    (
        ActionContext {
            tx,
            state,
            difficulty,
            rotating: Arc::default(),
        },
        rx,
    )
}

/// The supervisor is gone (the agent is shutting down).
const GONE: &str = "the agent is shutting down";

impl std::fmt::Debug for ActionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("state", &self.state.root())
            .finish_non_exhaustive()
    }
}

impl ActionContext {
    /// Sends the request `make` builds around a reply channel and waits for
    /// the reply.
    pub(crate) async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Request,
    ) -> Result<R, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| GONE.to_owned())?;
        answer.await.map_err(|_| GONE.to_owned())
    }
}

/// What an action produced before the result is bounded.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// `false`: the action failed (the error says why).
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    /// The producer cut the output itself (a diagnostics part).
    pub(crate) cut: bool,
    /// The node would not do it (the result is `refused`, not `failed`).
    pub(crate) refused: bool,
    pub(crate) error: Option<String>,
}

impl Done {
    fn ok(stdout: String) -> Self {
        Self {
            ok: true,
            stdout,
            ..Self::default()
        }
    }

    fn failed(stdout: String, error: impl Into<String>) -> Self {
        Self {
            ok: false,
            stdout,
            cut: false,
            refused: false,
            error: Some(error.into()),
        }
    }
}

/// Runs `action` within `limits`: the timeout ends it (`timed_out`; a key
/// rotation already under way still finishes, so the key on disk and at the
/// controller stay in step), stdout is cut at the output cap (flagged), the
/// error at [`MAX_ERROR_BYTES`]. `task_id` names the rule `firewall-allow`
/// opens; the result's `task_id` and `lease_id` are left empty for the runner
/// to fill in.
pub(crate) async fn run(
    ctx: &ActionContext,
    task_id: &str,
    action: &Action,
    limits: &TaskLimits,
) -> TaskResult {
    let started = clock::now();
    let cap = limits.output_cap_bytes as usize;
    let timeout = Duration::from_secs(u64::from(limits.timeout_secs));
    let (status, done) =
        match tokio::time::timeout(timeout, perform(ctx, task_id, action, cap)).await {
            Ok(done) if done.ok => (TaskStatus::Completed, done),
            Ok(done) if done.refused => (TaskStatus::Refused, done),
            Ok(done) => (TaskStatus::Failed, done),
            Err(_) => (
                TaskStatus::TimedOut,
                Done::failed(
                    String::new(),
                    format!(
                        "action {} did not finish within {} s (the task's timeout)",
                        action.name(),
                        limits.timeout_secs
                    ),
                ),
            ),
        };
    let (stdout, cut) = cut_at_char_boundary(&done.stdout, cap);
    TaskResult {
        task_id: String::new(),
        lease_id: String::new(),
        status,
        exit_code: None,
        signal: None,
        duration_ms: u64::try_from(clock::now().saturating_duration_since(started).as_millis())
            .unwrap_or(u64::MAX),
        stdout: stdout.to_owned(),
        stderr: String::new(),
        stdout_truncated: cut || done.cut,
        stderr_truncated: false,
        error: done
            .error
            .map(|e| cut_at_char_boundary(&e, MAX_ERROR_BYTES).0.to_owned()),
    }
}

async fn perform(ctx: &ActionContext, task_id: &str, action: &Action, cap: usize) -> Done {
    match action {
        Action::FirewallAllow(args) => {
            let rule = args.rule(task_id, clock::unix_ms());
            firewall(ctx.ask(|r| Request::FirewallAllow(Box::new(rule), r)).await)
        }
        Action::FirewallRevoke { id } => {
            firewall(ctx.ask(|r| Request::FirewallRevoke(id.clone(), r)).await)
        }
        Action::Ping { peer } => ping::ping(ctx, peer).await,
        Action::Netcheck => netcheck::netcheck(ctx).await,
        Action::Diagnostics => diagnostics::bundle(ctx, cap).await,
        Action::Reconcile => reconcile(ctx).await,
        Action::RestartDataplane => answer(ctx.ask(Request::RestartDataplane).await),
        Action::FlushDns => match ctx.ask(Request::FlushDns).await {
            Ok(Ok(n)) => Done::ok(format!(
                "overlay DNS cache flushed: {n} cached answer{} dropped\n",
                if n == 1 { "" } else { "s" }
            )),
            Ok(Err(e)) | Err(e) => Done::failed(String::new(), e),
        },
        // Its own task: a timeout must not stop it between the controller's
        // answer and the switch to the new key.
        Action::RotateKey => {
            let ctx = ctx.clone();
            match tokio::spawn(async move { rotate::rotate(&ctx).await }).await {
                Ok(done) => done,
                Err(e) => Done::failed(String::new(), format!("the key rotation task failed: {e}")),
            }
        }
    }
}

/// The supervisor's answer in words, or why it failed.
fn answer(r: Result<Result<String, String>, String>) -> Done {
    match r {
        Ok(Ok(what)) => Done::ok(what),
        Ok(Err(e)) | Err(e) => Done::failed(String::new(), e),
    }
}

/// A firewall action's answer: done, refused or failed.
fn firewall(r: Result<Result<String, NotDone>, String>) -> Done {
    match r {
        Ok(Ok(what)) => Done::ok(what),
        Ok(Err(NotDone::Refused(why))) => Done {
            refused: true,
            ..Done::failed(String::new(), why)
        },
        Ok(Err(NotDone::Failed(why))) | Err(why) => Done::failed(String::new(), why),
    }
}

async fn reconcile(ctx: &ActionContext) -> Done {
    let r = match ctx.ask(Request::Reconcile).await {
        Ok(r) => r,
        Err(e) => return Done::failed(String::new(), e),
    };
    if !r.ran {
        return Done::failed(
            String::new(),
            "no reconciler pass ran: netlink is unavailable or no network map has been applied yet (see weft status)",
        );
    }
    let mut out = format!(
        "reconciler pass: {} applied, {} failed; {}\n",
        r.applied.len(),
        r.failed.len(),
        if r.converged {
            "the system matches the map"
        } else {
            "the system does not match the map yet"
        }
    );
    for a in &r.applied {
        out.push_str(&format!("applied: {a}\n"));
    }
    for f in &r.failed {
        out.push_str(&format!("failed: {f}\n"));
    }
    if r.failed.is_empty() {
        Done::ok(out)
    } else {
        let why = format!("{} reconciler action(s) failed", r.failed.len());
        Done::failed(out, why)
    }
}

#[cfg(test)]
mod tests;
