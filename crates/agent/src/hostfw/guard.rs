//! The rollback guard (pure, with injected time): which spec is in force,
//! which one is being checked, and which one was refused.
//!
//! A new spec is put in force at once. When the controller was reachable just
//! before (its link up within [`RECENTLY_UP`]), the spec is on probation: the
//! shell runs the control-plane self-check until it answers or the deadline
//! passes. A check that never answered rolls the previous spec (or no table)
//! back into force, and that spec version is refused until a newer one
//! arrives. Removing the firewall, or a spec applied while the controller was
//! not reachable anyway, is never on probation: there is nothing to judge by.

use std::time::{Duration, Instant};

use weft_proto::hostfw::HostFirewallSpec;
use weft_proto::local::RollbackStatus;

/// The controller counts as reachable before a change when its link was up
/// this recently.
pub(crate) const RECENTLY_UP: Duration = Duration::from_secs(60);

/// A spec on probation.
#[derive(Debug, Clone)]
struct Probation {
    /// Which check this is (results of older ones are ignored).
    generation: u64,
    /// The spec on probation (in force now).
    spec: HostFirewallSpec,
    /// The last good spec, restored if the check fails.
    previous: Option<HostFirewallSpec>,
}

/// What the shell must do after a change of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing new is in force.
    Nothing,
    /// Put [`Guard::in_force`] in force.
    Apply,
    /// Put [`Guard::in_force`] in force, then run the self-check (this
    /// generation) until the deadline.
    ApplyAndCheck {
        /// The check's generation, handed back with its result.
        generation: u64,
        /// When the check gives up.
        deadline: Instant,
    },
}

/// The guard's state.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The spec known good (or applied without a way to judge it).
    good: Option<HostFirewallSpec>,
    probation: Option<Probation>,
    /// The map's latest spec.
    wanted: Option<HostFirewallSpec>,
    /// Specs up to this version are not applied (one was rolled back).
    refused_upto: Option<u64>,
    generation: u64,
    rollbacks: u64,
    last_rollback: Option<RollbackStatus>,
}

impl Guard {
    /// The spec in force: the one on probation, else the good one.
    pub(crate) fn in_force(&self) -> Option<&HostFirewallSpec> {
        self.probation
            .as_ref()
            .map(|p| &p.spec)
            .or(self.good.as_ref())
    }

    /// The map's spec, when it is not the one in force.
    pub(crate) fn wanted_version(&self) -> Option<u64> {
        let wanted = self.wanted.as_ref()?;
        (self.in_force() != Some(wanted)).then_some(wanted.version)
    }

    /// Whether a self-check is running.
    pub(crate) fn checking(&self) -> bool {
        self.probation.is_some()
    }

    /// Rollbacks so far and the last one.
    pub(crate) fn rollbacks(&self) -> (u64, Option<&RollbackStatus>) {
        (self.rollbacks, self.last_rollback.as_ref())
    }

    /// The map asks for `spec`; `controller_up`: its link was up within
    /// [`RECENTLY_UP`].
    pub(crate) fn set_wanted(
        &mut self,
        spec: Option<HostFirewallSpec>,
        controller_up: bool,
        check_for: Duration,
        now: Instant,
    ) -> Next {
        self.wanted = spec.clone();
        if let (Some(s), Some(upto)) = (&spec, self.refused_upto)
            && s.version <= upto
        {
            return Next::Nothing;
        }
        if spec.as_ref() == self.in_force() {
            return Next::Nothing;
        }
        // A newer spec than the one refused: it is judged on its own.
        let previous = match self.probation.take() {
            Some(p) => p.previous,
            None => self.good.take(),
        };
        match spec {
            Some(spec) if controller_up => {
                self.generation += 1;
                let deadline = now + check_for;
                self.probation = Some(Probation {
                    generation: self.generation,
                    spec,
                    previous: previous.clone(),
                });
                self.good = previous;
                Next::ApplyAndCheck {
                    generation: self.generation,
                    deadline,
                }
            }
            spec => {
                self.good = spec;
                Next::Apply
            }
        }
    }

    /// The self-check of `generation` answered: its spec is good.
    pub(crate) fn check_passed(&mut self, generation: u64) -> Next {
        match self.probation.take() {
            Some(p) if p.generation == generation => {
                self.good = Some(p.spec);
                Next::Nothing
            }
            other => {
                self.probation = other;
                Next::Nothing
            }
        }
    }

    /// The self-check of `generation` never answered by its deadline: the
    /// previous spec is back in force and this one refused. `None`: a stale
    /// result (a newer spec is on probation, or none).
    pub(crate) fn check_failed(
        &mut self,
        generation: u64,
        reason: &str,
        now_ms: u64,
    ) -> Option<RollbackStatus> {
        let p = match self.probation.take() {
            Some(p) if p.generation == generation => p,
            other => {
                self.probation = other;
                return None;
            }
        };
        self.good = p.previous;
        self.refused_upto = Some(p.spec.version);
        self.rollbacks += 1;
        let rb = RollbackStatus {
            version: p.spec.version,
            restored: self.good.as_ref().map(|s| s.version),
            at_ms: now_ms,
            reason: reason.to_owned(),
        };
        self.last_rollback = Some(rb.clone());
        Some(rb)
    }

    /// The refused version, while the map still asks for it (for `weft status`).
    pub(crate) fn refused(&self) -> Option<u64> {
        let w = self.wanted.as_ref()?;
        self.refused_upto.filter(|&r| w.version <= r)
    }

    /// A rollback of an earlier run of weftd (remembered in the state
    /// directory): its version stays refused, the firewall it restored is
    /// in force again.
    pub(crate) fn remember(&mut self, rb: RollbackStatus, restored: Option<HostFirewallSpec>) {
        self.refused_upto = Some(rb.version);
        self.last_rollback = Some(rb);
        self.good = restored;
    }

    /// The spec the last rollback restored (what to remember with it).
    pub(crate) fn good(&self) -> Option<&HostFirewallSpec> {
        self.good.as_ref()
    }

    /// `weft down`: nothing in force; the next map is applied afresh (a
    /// refused version stays refused).
    pub(crate) fn clear(&mut self) {
        self.good = None;
        self.probation = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Duration = Duration::from_secs(10);

    fn spec(version: u64) -> HostFirewallSpec {
        super::super::test_spec(version)
    }

    fn generation(n: &Next) -> u64 {
        match n {
            Next::ApplyAndCheck { generation, .. } => *generation,
            other => panic!("expected a check, got {other:?}"),
        }
    }

    #[test]
    fn a_spec_that_passes_its_check_becomes_the_good_one() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        let next = g.set_wanted(Some(spec(1)), true, N, now);
        assert!(matches!(next, Next::ApplyAndCheck { deadline, .. } if deadline == now + N));
        assert!(g.checking());
        assert_eq!(g.in_force().map(|s| s.version), Some(1));
        assert_eq!(g.check_passed(generation(&next)), Next::Nothing);
        assert!(!g.checking());
        assert_eq!(g.in_force().map(|s| s.version), Some(1));
        assert_eq!(g.wanted_version(), None);
        // The same spec again changes nothing.
        assert_eq!(g.set_wanted(Some(spec(1)), true, N, now), Next::Nothing);
    }

    #[test]
    fn a_failed_check_restores_the_previous_spec_and_refuses_the_version() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        let n1 = g.set_wanted(Some(spec(1)), true, N, now);
        g.check_passed(generation(&n1));
        let n2 = g.set_wanted(Some(spec(2)), true, N, now);
        let rb = g
            .check_failed(generation(&n2), "timed out", 77)
            .expect("rollback");
        assert_eq!(
            rb,
            RollbackStatus {
                version: 2,
                restored: Some(1),
                at_ms: 77,
                reason: "timed out".into()
            }
        );
        assert_eq!(g.in_force().map(|s| s.version), Some(1));
        assert_eq!(g.refused(), Some(2));
        assert_eq!(g.wanted_version(), Some(2));
        assert_eq!(g.rollbacks().0, 1);
        // The same version again (a map resent, a reconnect) is not re-applied.
        assert_eq!(g.set_wanted(Some(spec(2)), true, N, now), Next::Nothing);
        assert_eq!(g.in_force().map(|s| s.version), Some(1));
        // A newer one is judged on its own, with the good one as its fallback.
        let n3 = g.set_wanted(Some(spec(3)), true, N, now);
        assert_eq!(g.refused(), None);
        let rb = g.check_failed(generation(&n3), "x", 78).expect("rollback");
        assert_eq!(rb.restored, Some(1));
    }

    #[test]
    fn a_remembered_rollback_keeps_its_version_out_after_a_restart() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        g.remember(
            RollbackStatus {
                version: 8,
                restored: Some(7),
                at_ms: 1,
                reason: "x".into(),
            },
            Some(spec(7)),
        );
        // The cached map at start, no controller: the refused version is not
        // applied; the one restored is in force.
        assert_eq!(g.set_wanted(Some(spec(8)), false, N, now), Next::Nothing);
        assert_eq!(g.in_force().map(|s| s.version), Some(7));
        assert_eq!(g.refused(), Some(8));
        assert_eq!(g.rollbacks().0, 0, "none in this run");
        assert_eq!(g.set_wanted(Some(spec(9)), false, N, now), Next::Apply);
    }

    #[test]
    fn the_first_spec_rolls_back_to_no_table() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        let n = g.set_wanted(Some(spec(5)), true, N, now);
        let rb = g.check_failed(generation(&n), "x", 1).expect("rollback");
        assert_eq!(rb.restored, None);
        assert_eq!(g.in_force(), None);
    }

    #[test]
    fn without_a_reachable_controller_or_for_a_removal_there_is_no_check() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        assert_eq!(g.set_wanted(Some(spec(1)), false, N, now), Next::Apply);
        assert!(!g.checking());
        assert_eq!(g.set_wanted(None, true, N, now), Next::Apply);
        assert_eq!(g.in_force(), None);
    }

    #[test]
    fn a_newer_spec_during_a_check_replaces_it_and_old_results_are_ignored() {
        let now = crate::clock::now();
        let mut g = Guard::default();
        let n1 = g.set_wanted(Some(spec(1)), true, N, now);
        g.check_passed(generation(&n1));
        let n2 = g.set_wanted(Some(spec(2)), true, N, now);
        let n3 = g.set_wanted(Some(spec(3)), true, N, now + N / 2);
        assert!(
            matches!(n3, Next::ApplyAndCheck { deadline, .. } if deadline == now + N / 2 + N),
            "a fresh deadline"
        );
        assert_eq!(g.check_failed(generation(&n2), "stale", 1), None);
        assert_eq!(g.check_passed(generation(&n2)), Next::Nothing);
        assert!(g.checking(), "spec 3 is still on probation");
        let rb = g.check_failed(generation(&n3), "x", 2).expect("rollback");
        assert_eq!(rb.restored, Some(1), "back to the last good one, not to 2");
    }
}
