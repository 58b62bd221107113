//! The supervisor's side of the host firewall ([`crate::hostfw`]): the map's
//! spec into the desired system state, the self-check started after an
//! apply, and a rollback applied, shown (`weft status`, area `firewall`) and
//! raised as a `firewall_rollback` event; the rules `firewall-allow` and
//! `firewall-revoke` tasks open and close.

use std::collections::BTreeMap;

use weft_proto::events::{AnomalyEvent, AnomalyKind, Baseline};
use weft_proto::hostfw::HostRule;
use weft_proto::local::RollbackStatus;
use weft_proto::netmap::NetworkMap;

use super::Agent;
use crate::actions::NotDone;
use crate::clock;
use crate::hostfw::{self, Event, Next};
use crate::netmap::Derived;
use crate::system;

impl Agent {
    /// A map is being applied: the host firewall it asks for goes into the
    /// desired state with the rest of `derived`. What to do once the pass ran
    /// is returned (hand it to [`Agent::hostfw_applied`]).
    pub(super) async fn hostfw_map(&mut self, map: &NetworkMap, derived: &Derived) -> Next {
        let now = clock::now();
        if !self.from_cache || self.link_state.borrow().connected {
            self.hostfw.note_controller_up(now);
        }
        let own = if self.hostfw.active(map.host_firewall.is_some()) {
            hostfw::own_endpoints(
                self.credential.as_ref(),
                map,
                self.dp.port(),
                &mut self.hostfw.lookups,
            )
            .await
        } else {
            hostfw::Own::default()
        };
        let next = match self.hostfw.set_spec(map.host_firewall.clone(), own, now) {
            Ok(next) => {
                self.note_hostfw(None);
                next
            }
            Err(why) => {
                tracing::error!("host firewall not applied: {why}");
                self.note_hostfw(Some(("spec", why)));
                Next::Nothing
            }
        };
        self.hostfw.refresh_domains(now);
        let mut desired = system::desired_state(derived);
        desired.host_firewall = self.hostfw.desired();
        self.system.set_desired(desired, now);
        next
    }

    /// After the pass that applied a map: the self-check, when the change is
    /// on probation.
    pub(super) fn hostfw_applied(&mut self, next: Next) {
        if let (
            Next::ApplyAndCheck {
                generation,
                deadline,
            },
            Some(cred),
        ) = (next, self.credential.as_ref())
        {
            tracing::info!(
                version = self.hostfw.in_force().map(|s| s.version),
                "host firewall applied; checking that the controller still answers"
            );
            self.hostfw.start_check(cred, generation, deadline);
        }
    }

    /// The host firewall's background work reported.
    pub(super) async fn hostfw_event(&mut self, ev: Event) {
        let now = clock::now();
        match ev {
            Event::Checked {
                generation,
                result: Ok(()),
            } => {
                tracing::info!("host firewall: the controller answers; change kept");
                self.hostfw.check_passed(generation);
            }
            Event::Checked {
                generation,
                result: Err(why),
            } => {
                let Some(rb) = self.hostfw.check_failed(generation, &why) else {
                    return;
                };
                tracing::error!(
                    version = rb.version,
                    restored = ?rb.restored,
                    "host firewall cut this node off its controller ({why}); rolled back"
                );
                self.push_desired().await;
                self.raise_rollback(&rb);
                let (dir, saved) = (
                    self.hostfw.state_dir().to_owned(),
                    self.hostfw.memory_of(&rb),
                );
                let written =
                    system::off_runtime((), move |()| hostfw::HostFw::remember(&dir, &saved))
                        .await
                        .1;
                if let Err(e) = &written {
                    tracing::error!("host firewall: cannot remember the rollback: {e}");
                }
                self.hostfw.set_memory_error(written.err());
                self.note_hostfw(None);
            }
            Event::Resolved { domain, result } => {
                if let Err(e) = &result {
                    tracing::warn!(%domain, error = %e, "host firewall: cannot resolve a domain a rule names");
                }
                if self.hostfw.resolved(&domain, result, now) {
                    self.push_desired().await;
                }
            }
            Event::RefreshDue => self.hostfw.refresh_domains(now),
        }
    }

    /// `firewall-allow`: `rule` saved with the other task-made rules, then in
    /// the table (`Ok`: what was opened, in words).
    pub(super) async fn firewall_allow(&mut self, rule: HostRule) -> Result<String, NotDone> {
        let now_ms = clock::unix_ms();
        let rules = self
            .hostfw
            .local_with(rule.clone(), now_ms)
            .map_err(NotDone::Refused)?;
        self.save_local(rules).await?;
        tracing::info!(id = %rule.id, expires_at_ms = ?rule.expires_at_ms, "host firewall: a task opened a rule");
        let applied = self.push_local().await;
        let ports = rule
            .ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        let from = rule
            .peers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        let secs = rule.expires_at_ms.unwrap_or(now_ms).saturating_sub(now_ms) / 1000;
        Ok(format!(
            "opened {}: in {} {} from {} for {secs} s (closes by itself at unix ms {}){applied}
",
            rule.id,
            rule.proto,
            if ports.is_empty() {
                "every port".to_owned()
            } else {
                format!("port {}", ports.join(","))
            },
            if from.is_empty() {
                "anyone".to_owned()
            } else {
                from.join(",")
            },
            rule.expires_at_ms.unwrap_or(now_ms),
        ))
    }

    /// `firewall-revoke`: the task-made rule `id` removed from the file and
    /// the table.
    pub(super) async fn firewall_revoke(&mut self, id: &str) -> Result<String, NotDone> {
        let rules = self
            .hostfw
            .local_without(id, clock::unix_ms())
            .map_err(NotDone::Refused)?;
        self.save_local(rules).await?;
        tracing::info!(%id, "host firewall: a task closed a rule");
        let applied = self.push_local().await;
        Ok(format!(
            "closed {id}{applied}
"
        ))
    }

    async fn save_local(&mut self, rules: Vec<HostRule>) -> Result<(), NotDone> {
        let dir = self.hostfw.state_dir().to_owned();
        let (rules, saved) =
            system::off_runtime(rules, move |r| hostfw::HostFw::save_local(&dir, r)).await;
        saved.map_err(|e| {
            NotDone::Failed(format!("the rule was not saved, nothing changed: {e}"))
        })?;
        self.hostfw.set_local(rules);
        Ok(())
    }

    /// The table with the task-made rules now; a note when it is not (yet)
    /// in the system.
    async fn push_local(&mut self) -> &'static str {
        if self.down || self.derived.is_none() {
            return "; saved, applied when weft is up again";
        }
        match self.push_desired().await {
            Some(report) if report.converged => "",
            _ => "; saved, but the reconciler pass did not converge (see weft status: it retries)",
        }
    }

    /// The desired system state again (the host firewall changed without a
    /// new map), applied at once.
    async fn push_desired(&mut self) -> Option<weft_netcfg::ReconcileReport> {
        if self.down {
            return None;
        }
        let derived = self.derived.as_ref()?;
        let mut desired = system::desired_state(derived);
        desired.host_firewall = self.hostfw.desired();
        self.system.set_desired(desired, clock::now());
        self.reconcile().await
    }

    /// Shows a refused spec or a rolled-back version in status (area
    /// `firewall`); `extra`: a further failure (what, why).
    fn note_hostfw(&mut self, extra: Option<(&str, String)>) {
        let mut failing: Vec<(String, String)> = Vec::new();
        if let Some(v) = self.hostfw.refused() {
            let why = self
                .hostfw
                .status(clock::unix_ms())
                .and_then(|s| s.last_rollback)
                .map(|r| r.reason)
                .unwrap_or_default();
            failing.push((
                format!("version {v}"),
                format!(
                    "rolled back: the controller did not answer after it was applied ({why}); \
                     not applied again until a newer version arrives"
                ),
            ));
        }
        if let Some((what, why)) = extra {
            failing.push((what.to_owned(), why));
        }
        if let Some(e) = self.hostfw.memory_error() {
            failing.push(("rollback memory".to_owned(), e.to_owned()));
        }
        if let Some(e) = self.hostfw.local_error() {
            failing.push(("task-made rules".to_owned(), e.to_owned()));
        }
        self.failures
            .set_area("firewall", failing, clock::unix_ms());
    }

    /// The rollback as an event for `weft events` and the controller's log.
    fn raise_rollback(&self, rb: &RollbackStatus) {
        let restored = rb
            .restored
            .map_or_else(|| "no host firewall".to_owned(), |v| format!("version {v}"));
        let secs = self.hostfw_rollback_secs();
        let details: BTreeMap<String, String> = [
            ("version".to_owned(), rb.version.to_string()),
            ("restored".to_owned(), restored.clone()),
            ("reason".to_owned(), truncate(&rb.reason, 200)),
        ]
        .into();
        self.telemetry.raise(AnomalyEvent {
            id: rb.at_ms.saturating_mul(1000).saturating_add(999),
            at_ms: rb.at_ms,
            kind: AnomalyKind::FirewallRollback,
            peer: None,
            peer_key: None,
            target: self
                .credential
                .as_ref()
                .map(|c| truncate(&c.controller_list(), 200)),
            observed: secs as f64,
            unit: "s without the controller".to_owned(),
            baseline: Baseline::Expected,
            window_secs: u32::try_from(secs).unwrap_or(u32::MAX),
            details,
            summary: format!(
                "host firewall version {} cut this node off its controller for {secs} s; \
                 {restored} restored",
                rb.version
            ),
        });
    }

    fn hostfw_rollback_secs(&self) -> u64 {
        self.hostfw.rollback_after().as_secs()
    }

    /// `weft down` / SIGTERM: the table goes with the rest (the reconciler's
    /// teardown); nothing is in force any more.
    pub(super) fn hostfw_down(&mut self) {
        self.hostfw.clear();
    }
}

/// `s` without control, bidirectional or zero-width characters, at most
/// `max` bytes (event fields are bounded and refused with those).
fn truncate(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if weft_proto::text::is_spoofing_char(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    crate::telemetry::clip_to(s, max)
}
