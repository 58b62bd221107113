//! Tasks (issue 17): what an operator asks this node to run, delivered over
//! the map stream.
//!
//! The controller link hands each `task` notice (a task id only) to the
//! runner, which leases the task (`POST /v1/node/tasks/lease`: the payload
//! holds execution fields only), decides ([`gate`]: the limits checked
//! again, `--allow-exec`, `--allow-actions`), runs it (a built-in action,
//! a script or a verified hook through [`exec`]: a fresh 0700 directory, a
//! minimal environment, the exec user, its own process group killed at the
//! timeout, capped output) and keeps the result in the results outbox
//! ([`results`], fsync'd before it is first sent) until the controller takes
//! it (`POST /v1/node/tasks/result` with the lease id). A refusal is a result
//! too (`status: refused`, the error says why). Results are sent oldest
//! first; a network error keeps them for the next try (every
//! [`RETRY_EVERY`], and when the link comes back), a refusal for good (`409
//! task_done`, `400`) drops the result with a log line. A task whose result
//! is in the outbox, or was delivered lately, is never run again; at most
//! [`MAX_RUNNING`] tasks run at once.

pub(crate) mod exec;
mod gate;
mod results;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Method;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use weft_api_client::{Client, ClientError};
use weft_proto::local::{FailureStatus, TasksStatus};
use weft_proto::task::{
    Action, LeaseRequest, LeasedTask, MAX_ERROR_BYTES, READ_ONLY_ACTIONS, ResultAck, TaskLimits,
    TaskNotice, TaskResult, TaskStatus, cut_at_char_boundary,
};

use self::exec::{ExecRequest, ExecUser, Program};
use self::gate::Plan;
use self::results::Results;
use crate::clock;
use crate::state::Credential;

/// Tasks running at once at most (more wait before they are leased).
pub(crate) const MAX_RUNNING: usize = 4;
/// How often results that could not be sent are tried again.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(5);
/// One lease or result call at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Notices waiting for the runner (more are dropped: the controller sends
/// every pending task again when the map stream reopens).
const NOTICE_QUEUE: usize = 256;

/// How tasks run on this node (`weftd --allow-exec`, `--allow-actions`,
/// `--exec-user`).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Scripts run (`--allow-exec`; off by default).
    pub allow_exec: bool,
    /// The built-in actions allowed, by name (`--allow-actions`; by default
    /// the read-only ones: ping, netcheck, diagnostics).
    pub allow_actions: Vec<&'static str>,
    /// The user scripts and hooks run as (`--exec-user`, default `nobody`).
    pub exec_user: String,
    /// Where each task's working directory is created (the system's
    /// temporary directory).
    pub work_dir: PathBuf,
    /// The hooks directory (`--hooks-dir`, default `/etc/weft/hooks`; checked as
    /// the hooks module says).
    pub hooks_dir: PathBuf,
    /// Asks for an integrity report right after a hook was refused (set by
    /// the supervisor).
    pub(crate) report_now: Option<crate::integrity::ReportNow>,
    /// Where built-in actions reach the agent (set by the supervisor; `None`:
    /// actions are refused).
    pub(crate) actions: Option<crate::actions::ActionContext>,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            allow_exec: false,
            allow_actions: READ_ONLY_ACTIONS.to_vec(),
            exec_user: "nobody".into(),
            work_dir: std::env::temp_dir(),
            hooks_dir: PathBuf::from(crate::hooks::DEFAULT_HOOKS_DIR),
            report_now: None,
            actions: None,
        }
    }
}

impl TaskSettings {
    /// Checks what can be checked at start: with `--allow-exec`, the exec
    /// user must exist (weftd refuses to start otherwise).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.allow_exec {
            ExecUser::lookup(&self.exec_user)?;
        }
        Ok(())
    }
}

/// The running task runner, as the supervisor holds it.
pub(crate) struct Tasks {
    notices: mpsc::Sender<TaskNotice>,
    link: watch::Sender<Option<Credential>>,
    results: Arc<Mutex<Results>>,
    /// Tasks running now (the runner keeps it).
    running: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Tasks {
    /// Opens the results outbox in `state_dir` and starts the runner.
    /// Nothing is leased or sent before [`Tasks::set_link`].
    pub(crate) fn start(settings: TaskSettings, state_dir: &std::path::Path) -> Self {
        let results = Arc::new(Mutex::new(Results::open(state_dir, clock::unix_ms())));
        let (notices, notices_rx) = mpsc::channel(NOTICE_QUEUE);
        let (link, link_rx) = watch::channel(None);
        let runner = Runner::new(settings, results.clone());
        let running = runner.running_count.clone();
        let task = tokio::spawn(runner.run(notices_rx, link_rx));
        Self {
            notices,
            link,
            results,
            running,
            task,
        }
    }

    /// For `weft status`: tasks running, results delivered, waiting, lost.
    pub(crate) fn status(&self) -> TasksStatus {
        let r = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        TasksStatus {
            running: self.running.load(Ordering::Relaxed),
            delivered: r.counts().0,
            waiting: r.pending() as u64,
            lost: r.dropped(),
        }
    }

    /// Where the controller link puts task notices.
    pub(crate) fn notices(&self) -> mpsc::Sender<TaskNotice> {
        self.notices.clone()
    }

    /// The node's credential (`None`: not joined, or down).
    pub(crate) fn set_link(&self, cred: Option<&Credential>) {
        self.link.send_replace(cred.cloned());
    }

    /// For `weft status` (area `tasks`): a damaged or unwritable results
    /// outbox, and results waiting or lost.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        let r = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v = r.failures();
        if let Some(since_unix_ms) = r.lost_since() {
            let (delivered, refused) = r.counts();
            v.push(FailureStatus {
                area: "tasks".into(),
                what: "results lost".into(),
                error: format!(
                    "{} task result(s) never reached the controller (refused by it, or the \
                     outbox was full; see the log); this run: {delivered} delivered, {refused} \
                     refused, {} waiting",
                    r.dropped(),
                    r.pending()
                ),
                since_unix_ms,
            });
        }
        v
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A finished job: the task id and its result (`None`: not leased).
type Finished = (String, Option<TaskResult>);

struct Runner {
    settings: Arc<TaskSettings>,
    results: Arc<Mutex<Results>>,
    running: BTreeSet<String>,
    /// `running.len()`, for `weft status`.
    running_count: Arc<AtomicU64>,
    client: Option<Client>,
    slots: Arc<Semaphore>,
    done_tx: mpsc::Sender<Finished>,
    done_rx: mpsc::Receiver<Finished>,
}

impl Runner {
    fn new(settings: TaskSettings, results: Arc<Mutex<Results>>) -> Self {
        let (done_tx, done_rx) = mpsc::channel(MAX_RUNNING * 2);
        Self {
            settings: Arc::new(settings),
            results,
            running: BTreeSet::new(),
            running_count: Arc::new(AtomicU64::new(0)),
            client: None,
            slots: Arc::new(Semaphore::new(MAX_RUNNING)),
            done_tx,
            done_rx,
        }
    }

    async fn run(
        mut self,
        mut notices: mpsc::Receiver<TaskNotice>,
        mut link: watch::Receiver<Option<Credential>>,
    ) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased: a new link is taken before a notice that came with it.
            tokio::select! {
                biased;
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let cred = link.borrow_and_update().clone();
                    self.client = cred.as_ref().and_then(|c| {
                        crate::ctl::client_for(c)
                            .inspect_err(|e| tracing::warn!("tasks: {e:#}"))
                            .ok()
                    });
                    self.flush().await;
                }
                Some(n) = notices.recv() => self.notice(n),
                Some((id, result)) = self.done_rx.recv() => {
                    self.running.remove(&id);
                    self.running_count.store(self.running.len() as u64, Ordering::Relaxed);
                    if let Some(r) = result {
                        self.lock().push(r);
                        self.flush().await;
                    }
                }
                _ = retry.tick() => self.flush().await,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Results> {
        self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A task notice: lease and run it unless it runs or ran already.
    fn notice(&mut self, n: TaskNotice) {
        if self.running.contains(&n.task_id) {
            tracing::debug!(task = %n.task_id, "task notice for a task running now");
            return;
        }
        if self.lock().has(&n.task_id) {
            tracing::debug!(task = %n.task_id, "task notice for a task already done here; not run again");
            return;
        }
        let Some(client) = self.client.clone() else {
            tracing::debug!(task = %n.task_id, "task notice while not linked; the controller sends it again");
            return;
        };
        self.running.insert(n.task_id.clone());
        self.running_count
            .store(self.running.len() as u64, Ordering::Relaxed);
        let (slots, settings, done) = (
            self.slots.clone(),
            self.settings.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let result = match lease(&client, &n.task_id).await {
                Some(task) => Some(execute(&task, &settings).await),
                None => None,
            };
            let _ = done.send((n.task_id, result)).await;
        });
    }

    /// Sends the waiting results, oldest first, until one cannot be sent.
    async fn flush(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        loop {
            let Some(r) = self.lock().oldest() else {
                return;
            };
            match send(&client, &r).await {
                Sent::Taken => self.lock().taken(false),
                Sent::Refused => self.lock().taken(true),
                Sent::Later => return,
            }
        }
    }
}

/// Leases `task_id`; `None` when the controller would not (logged).
async fn lease(client: &Client, task_id: &str) -> Option<LeasedTask> {
    let req = LeaseRequest {
        task_id: task_id.to_owned(),
    };
    let call = client.request::<_, LeasedTask>(Method::POST, "/v1/node/tasks/lease", Some(&req));
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(t)) if t.task_id == task_id => Some(t),
        Ok(Ok(t)) => {
            tracing::warn!(task = %task_id, leased = %t.task_id, "the controller leased another task than asked; ignored");
            None
        }
        Ok(Err(e)) => {
            match e.code() {
                Some("task_unavailable") => {
                    tracing::debug!(task = %task_id, "task not available (leased, done or cancelled)");
                }
                Some("task_expired") => {
                    tracing::info!(task = %task_id, "task expired before it could run")
                }
                Some("integrity_mismatch") => tracing::warn!(
                    task = %task_id,
                    "the controller refuses this node scripts and hooks while its integrity is a mismatch"
                ),
                _ => {
                    tracing::warn!(task = %task_id, error = %e, "leasing a task failed; the controller offers it again")
                }
            }
            None
        }
        Err(_) => {
            tracing::warn!(task = %task_id, "leasing a task timed out; the controller offers it again");
            None
        }
    }
}

/// What became of a result sent.
enum Sent {
    /// The controller has it (now or before: a duplicate).
    Taken,
    /// Refused for good: drop it.
    Refused,
    /// Not now (network, the controller's own trouble): keep it.
    Later,
}

async fn send(client: &Client, r: &TaskResult) -> Sent {
    let call = client.request::<_, ResultAck>(Method::POST, "/v1/node/tasks/result", Some(r));
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(ack)) => {
            tracing::info!(task = %r.task_id, lease = %r.lease_id, status = %r.status, duplicate = ack.duplicate, "task result delivered");
            Sent::Taken
        }
        Ok(Err(e)) if refused_for_good(&e) => {
            tracing::warn!(task = %r.task_id, lease = %r.lease_id, error = %e, "the controller refused a task result; dropped");
            Sent::Refused
        }
        Ok(Err(e)) => {
            tracing::info!(task = %r.task_id, error = %e, "cannot send a task result now; kept for the next try");
            Sent::Later
        }
        Err(_) => {
            tracing::info!(task = %r.task_id, "sending a task result timed out; kept for the next try");
            Sent::Later
        }
    }
}

/// `409 task_done`, `400` and the other 4xx that retrying cannot change (not
/// auth, timeout or rate).
fn refused_for_good(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| (400..500).contains(&s) && ![401, 403, 408, 429].contains(&s))
}

/// Runs a leased task to its result (never fails: a task that cannot run
/// has a refused or failed result).
async fn execute(task: &LeasedTask, settings: &TaskSettings) -> TaskResult {
    let label = task.kind.label();
    let mut r = match gate::plan(task, settings) {
        Plan::Refuse(why) => refused(why),
        Plan::Action(a) => run_action(settings, &task.task_id, &a, &task.limits).await,
        Plan::Script { interpreter, body } => {
            run_program(
                task,
                settings,
                Program::Script {
                    interpreter,
                    body: body.into_bytes(),
                },
            )
            .await
        }
        Plan::Hook { name, approved } => match hook_body(settings, &name, &approved).await {
            Ok(body) => run_program(task, settings, Program::Executable { body }).await,
            Err(why) => refused(why),
        },
    };
    r.task_id.clone_from(&task.task_id);
    r.lease_id.clone_from(&task.lease_id);
    if let Some(e) = &r.error {
        r.error = Some(cut_at_char_boundary(e, MAX_ERROR_BYTES).0.to_owned());
    }
    match &r.error {
        Some(e) => {
            tracing::info!(task = %task.task_id, %label, status = %r.status, error = %e, "task finished")
        }
        None => {
            tracing::info!(task = %task.task_id, %label, status = %r.status, exit_code = ?r.exit_code, "task finished")
        }
    }
    r
}

/// A result without ids (the caller fills them in).
fn blank(status: TaskStatus, error: Option<String>) -> TaskResult {
    TaskResult {
        task_id: String::new(),
        lease_id: String::new(),
        status,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        error,
    }
}

fn refused(why: String) -> TaskResult {
    blank(TaskStatus::Refused, Some(why))
}

/// A built-in action ([`crate::actions::run`]: bounded by the task's timeout
/// and output cap).
async fn run_action(
    settings: &TaskSettings,
    task_id: &str,
    action: &Action,
    limits: &TaskLimits,
) -> TaskResult {
    match &settings.actions {
        Some(ctx) => crate::actions::run(ctx, task_id, action, limits).await,
        None => refused(format!(
            "action {} cannot run: this task runner has no agent to act on",
            action.name()
        )),
    }
}

/// The verified body of hook `name` in the hooks directory: its sha256 one
/// of `approved`, read once and hashed, so what runs is what was hashed
/// ([`crate::hooks::hook_for_run`], on the blocking pool). A refusal asks for
/// an integrity report right away, so the controller learns of an edited hook.
async fn hook_body(
    settings: &TaskSettings,
    name: &str,
    approved: &[String],
) -> Result<Vec<u8>, String> {
    let (dir, n, a) = (
        settings.hooks_dir.clone(),
        name.to_owned(),
        approved.to_vec(),
    );
    match tokio::task::spawn_blocking(move || crate::hooks::hook_for_run(&dir, &n, &a)).await {
        Ok(Ok(hook)) => Ok(hook.body),
        Ok(Err(refusal)) => {
            if let Some(r) = &settings.report_now {
                r.report_now();
            }
            Err(refusal.to_string())
        }
        Err(e) => Err(format!("checking hook {name} failed: {e}")),
    }
}

/// Runs `program` under the task's limits as the exec user.
async fn run_program(task: &LeasedTask, settings: &TaskSettings, program: Program) -> TaskResult {
    let user = match ExecUser::lookup(&settings.exec_user) {
        Ok(u) => u,
        Err(e) => return refused(format!("{e:#}")),
    };
    let timeout_secs = task.limits.timeout_secs;
    let req = ExecRequest {
        program,
        user,
        base_dir: settings.work_dir.clone(),
        lease_id: task.lease_id.clone(),
        timeout: Duration::from_secs(u64::from(timeout_secs)),
        output_cap: task.limits.output_cap_bytes as usize,
    };
    match exec::run(&req).await {
        Ok(f) => {
            tracing::debug!(task = %task.task_id, pgid = f.pgid, workdir = %f.workdir.display(), "task process group ended; working directory removed");
            let (status, error) = if f.timed_out {
                (
                    TaskStatus::TimedOut,
                    Some(format!(
                        "killed (with its process group) after {timeout_secs} s, the task's timeout"
                    )),
                )
            } else if f.exit_code == Some(0) {
                (TaskStatus::Completed, None)
            } else {
                (TaskStatus::Failed, None)
            };
            TaskResult {
                exit_code: f.exit_code,
                signal: f.signal,
                duration_ms: u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
                stdout: f.stdout.text,
                stderr: f.stderr.text,
                stdout_truncated: f.stdout.truncated,
                stderr_truncated: f.stderr.truncated,
                ..blank(status, error)
            }
        }
        Err(e) => blank(TaskStatus::Failed, Some(format!("{e:#}"))),
    }
}

#[cfg(test)]
mod tests;
