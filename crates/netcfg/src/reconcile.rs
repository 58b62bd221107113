//! The loop body the agent drives: observe → plan → apply → observe again, with the
//! timing of the next pass decided by [`Reconciler`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::desired::DesiredState;
use crate::exec::{ExecError, Executor};
use crate::observed::ObservedState;
use crate::plan::{Action, Plan, plan_at};
use crate::retry::{Backoff, BackoffConfig};

/// What one pass did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Actions the kernel accepted, in order.
    pub applied: Vec<Action>,
    /// Actions that failed, with why. The others were still applied.
    pub failed: Vec<(Action, ExecError)>,
    /// Desired interfaces that do not exist yet (the data plane creates them).
    pub waiting_for: Vec<String>,
    /// Parts of the desired state weft does not manage (see [`Plan::ignored`]).
    pub ignored: Vec<String>,
    /// Differences left after applying, by the re-observation (empty when converged).
    pub remaining: Vec<Action>,
    /// Observation failed (before planning, or when re-observing); nothing more is
    /// known.
    pub observe_error: Option<ExecError>,
    /// The kernel matched the desired state at the end of the pass.
    pub converged: bool,
}

/// Which weft objects [`teardown`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeardownScope {
    /// Everything weft owns: addresses on every `weft*` interface and every
    /// weft-tagged route (`weft down`, SIGTERM).
    All,
    /// Addresses and weft routes on these interfaces only (leaving one network).
    Links(BTreeSet<String>),
}

/// Runs one pass: observes, plans, applies every action (collecting failures rather
/// than stopping at the first), and observes again to tell whether it converged.
///
/// Logs each applied action at INFO, each failure at WARN, a pass with nothing to do
/// at TRACE.
pub fn reconcile_once<E: Executor + ?Sized>(
    exec: &mut E,
    desired: &DesiredState,
) -> ReconcileReport {
    let now_ms = exec.wall_ms();
    run_pass(exec, |observed| plan_at(desired, observed, now_ms))
}

/// Removes what weft created within `scope` (weft routes; addresses on weft
/// interfaces), leaving the interfaces themselves to the data plane. Repeats passes
/// while they make progress (deleting an IPv4 primary address takes its secondaries
/// along, which can turn a later delete into a no-op). `converged` in the report
/// means nothing of weft's is left in scope.
pub fn teardown<E: Executor + ?Sized>(exec: &mut E, scope: &TeardownScope) -> ReconcileReport {
    const MAX_PASSES: usize = 3;
    let nothing = DesiredState::default();
    let mut total = ReconcileReport::default();
    for _ in 0..MAX_PASSES {
        let report = run_pass(exec, |observed| {
            plan_at(&nothing, &restrict(observed, scope), 0)
        });
        let progress = !report.applied.is_empty();
        total.applied.extend(report.applied);
        total.failed.extend(report.failed);
        total.remaining = report.remaining;
        total.observe_error = report.observe_error;
        total.converged = report.converged;
        if total.converged || !progress {
            break;
        }
    }
    total
}

fn restrict(observed: &ObservedState, scope: &TeardownScope) -> ObservedState {
    match scope {
        TeardownScope::All => observed.clone(),
        TeardownScope::Links(links) => ObservedState {
            links: observed
                .links
                .iter()
                .filter(|(name, _)| links.contains(*name))
                .map(|(name, link)| (name.clone(), link.clone()))
                .collect(),
            orphan_routes: BTreeSet::new(),
            firewall: Default::default(),
            host_firewall: None,
        },
    }
}

fn run_pass<E: Executor + ?Sized>(
    exec: &mut E,
    planner: impl Fn(&ObservedState) -> Plan,
) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let before = match exec.observe() {
        Ok(observed) => observed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot observe network configuration");
            report.observe_error = Some(e);
            return report;
        }
    };
    let todo = planner(&before);
    report.waiting_for.clone_from(&todo.waiting_for);
    report.ignored.clone_from(&todo.ignored);
    for what in &todo.ignored {
        tracing::warn!("ignoring part of the desired state: {what}");
    }
    if todo.is_empty() {
        tracing::trace!(waiting_for = ?todo.waiting_for, "network configuration up to date");
        report.converged = todo.is_converged();
        return report;
    }
    for action in todo.actions {
        match exec.apply(&action) {
            Ok(()) => {
                tracing::info!(%action, "applied");
                report.applied.push(action);
            }
            Err(error) => {
                tracing::warn!(%action, %error, "action failed");
                report.failed.push((action, error));
            }
        }
    }
    match exec.observe() {
        Ok(after) => {
            let left = planner(&after);
            report.converged = left.is_converged();
            report.remaining = left.actions;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-observe network configuration");
            report.observe_error = Some(e);
        }
    }
    report
}

/// Timing of a [`Reconciler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Pause between passes while converged: the drift check. Default 2 s, so
    /// drift (a deleted route or address) is repaired within the promised 5 s.
    pub check_interval: Duration,
    /// Pause between passes while a desired interface does not exist yet. Default
    /// 500 ms; the agent can also call [`Reconciler::trigger`] once it created it.
    pub waiting_interval: Duration,
    /// Backoff after a pass with failures.
    pub backoff: BackoffConfig,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(2),
            waiting_interval: Duration::from_millis(500),
            backoff: BackoffConfig::default(),
        }
    }
}

/// Holds the desired state and decides when the next pass runs.
///
/// Drive contract (all inputs carry `now`; the reconciler never reads the clock):
/// 1. [`set_desired`](Self::set_desired) whenever the network map changes;
/// 2. sleep until [`poll_timeout`](Self::poll_timeout), then call
///    [`handle_timeout`](Self::handle_timeout) with the executor;
/// 3. on shutdown, [`shutdown`](Self::shutdown) removes what weft created.
#[derive(Debug)]
pub struct Reconciler {
    config: ReconcilerConfig,
    desired: Option<DesiredState>,
    backoff: Backoff,
    next: Option<(Instant, &'static str)>,
    converged: bool,
}

impl Reconciler {
    /// A reconciler with nothing desired yet (it sleeps until
    /// [`set_desired`](Self::set_desired)); `seed` drives the backoff jitter.
    pub fn new(config: ReconcilerConfig, seed: u64) -> Self {
        Self {
            config,
            desired: None,
            backoff: Backoff::new(config.backoff, seed),
            next: None,
            converged: false,
        }
    }

    /// Replaces the desired state; a change schedules a pass at `now`.
    pub fn set_desired(&mut self, desired: DesiredState, now: Instant) {
        if self.desired.as_ref() == Some(&desired) {
            return;
        }
        self.desired = Some(desired);
        self.backoff.reset();
        self.next = Some((now, "reconcile: desired state changed"));
    }

    /// The current desired state, if any was set.
    pub fn desired(&self) -> Option<&DesiredState> {
        self.desired.as_ref()
    }

    /// Schedules a pass at `now` (e.g. the data plane just created an interface, or
    /// a netlink notification reported a change).
    pub fn trigger(&mut self, now: Instant) {
        if self.desired.is_some() {
            self.next = Some((now, "reconcile: triggered"));
        }
    }

    /// When the next pass is due and why; `None` until a desired state is set and
    /// after [`shutdown`](Self::shutdown).
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.next
    }

    /// Whether the last pass ended with the kernel matching the desired state.
    pub fn is_converged(&self) -> bool {
        self.converged
    }

    /// Runs a pass if one is due at `now`, and schedules the next one.
    pub fn handle_timeout<E: Executor + ?Sized>(
        &mut self,
        exec: &mut E,
        now: Instant,
    ) -> Option<ReconcileReport> {
        let (due, _) = self.next?;
        if now < due {
            return None;
        }
        let desired = self.desired.as_ref()?;
        let report = reconcile_once(exec, desired);
        if self.converged && !report.applied.is_empty() {
            tracing::info!(actions = report.applied.len(), "drift corrected");
        }
        self.converged = report.converged;
        self.next = Some(
            if report.observe_error.is_some() || !report.failed.is_empty() {
                (
                    self.backoff.on_failure(now),
                    "reconcile: retry after failure",
                )
            } else if !report.waiting_for.is_empty() {
                self.backoff.reset();
                (
                    now + self.config.waiting_interval,
                    "reconcile: waiting for interface",
                )
            } else if !report.converged {
                // Everything was accepted yet the kernel still differs: retry, backing off.
                (self.backoff.on_failure(now), "reconcile: not converged")
            } else {
                self.backoff.reset();
                (now + self.config.check_interval, "reconcile: drift check")
            },
        );
        self.wake_at_expiry(now, exec.wall_ms());
        Some(report)
    }

    /// Brings the next pass forward to the next host firewall rule expiry
    /// (`now_ms` is the wall clock at `now`), so an expired rule leaves the
    /// table within milliseconds even though the kernel already stopped
    /// matching it (its guard element timed out).
    fn wake_at_expiry(&mut self, now: Instant, now_ms: u64) {
        let Some(at) = self
            .desired
            .as_ref()
            .and_then(|d| d.host_firewall.as_ref())
            .and_then(|fw| fw.next_expiry(now_ms))
        else {
            return;
        };
        let when = now + Duration::from_millis(at - now_ms);
        if self.next.is_none_or(|(due, _)| when < due) {
            self.next = Some((when, "reconcile: host firewall rule expires"));
        }
    }

    /// Removes everything weft created ([`teardown`] with [`TeardownScope::All`]) and
    /// stops scheduling passes. For `weft down`, SIGTERM and leaving the last network.
    pub fn shutdown<E: Executor + ?Sized>(&mut self, exec: &mut E) -> ReconcileReport {
        self.next = None;
        self.desired = None;
        self.converged = false;
        teardown(exec, &TeardownScope::All)
    }
}
