//! The agent-side engine: compiled rules plus connection tracking, deciding every
//! packet in both directions, counting drops and explaining decisions.

use std::fmt;
use std::time::Instant;

use crate::compile::{CompiledPolicy, RuleId, RuleInfo};
use crate::conntrack::{Conntrack, ConntrackConfig, Flow, Lookup};
use crate::matcher::{Direction, FiveTuple, InvalidPolicy, Matcher, RuleVerdict};
use crate::usage::{Usage, UsageTable};

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The packet passes.
    Allow {
        /// The rule that allowed it (for an established flow: the rule that
        /// allowed the flow).
        rule: RuleId,
        /// Whether a rule matched it or it belongs to a tracked flow.
        via: Via,
    },
    /// The packet is dropped.
    Drop(DropReason),
}

impl Verdict {
    /// Whether the packet passes.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// How an allowed packet was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// An allow rule matched it (and it opened a tracked flow if trackable).
    New,
    /// It belongs to a tracked flow (same orientation, or its reply).
    Established,
}

/// Why the policy dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// No allow rule matches and it belongs to no tracked flow (default deny).
    NoRule,
    /// A deny rule matches (the earliest matching deny).
    Denied(RuleId),
}

impl DropReason {
    /// A stable snake_case name (metrics labels, status output).
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::NoRule => "policy_no_rule",
            DropReason::Denied(_) => "policy_denied",
        }
    }
}

/// Counts of decisions and table events since the engine was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets a rule allowed.
    pub allowed_new: u64,
    /// Packets allowed as part of a tracked flow.
    pub allowed_established: u64,
    /// Packets dropped because no rule allows them.
    pub dropped_no_rule: u64,
    /// Packets dropped by a deny rule.
    pub dropped_denied: u64,
    /// Flows that started being tracked.
    pub flows_opened: u64,
    /// Flows that went idle past their timeout.
    pub flows_expired: u64,
    /// Live flows evicted because the table was full.
    pub flows_evicted: u64,
    /// Flows ended because a new policy no longer allows them.
    pub flows_ended_by_policy: u64,
}

/// Enforces one node's compiled policy. See the crate docs for the drive contract.
#[derive(Debug, Clone)]
pub struct Engine {
    policy: CompiledPolicy,
    matcher: Matcher,
    conntrack: Conntrack,
    counters: Counters,
}

/// Why a packet got (or would get) its verdict: what [`Engine::explain`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The packet.
    pub packet: FiveTuple,
    /// The direction it crosses.
    pub direction: Direction,
    /// The verdict [`Engine::decide`] would give now.
    pub verdict: Verdict,
    /// What the rules alone say.
    pub rules_verdict: RuleVerdict,
    /// The tracked flow it belongs to, if any.
    pub flow: Option<Flow>,
    /// Every rule that matched, in policy order.
    pub matched: Vec<RuleInfo>,
    /// The rule that decided (a tracked flow's rule for an established packet).
    pub decided_by: Option<RuleInfo>,
    /// How many compiled rules were examined (those indexed under the peer's
    /// address; independent of rules about other peers).
    pub rules_examined: usize,
}

impl Engine {
    /// Builds an engine for a compiled policy, with an empty flow table.
    pub fn new(policy: CompiledPolicy, config: ConntrackConfig) -> Result<Engine, InvalidPolicy> {
        let matcher = Matcher::new(&policy)?;
        Ok(Engine {
            policy,
            matcher,
            conntrack: Conntrack::new(config),
            counters: Counters::default(),
        })
    }

    /// An engine that drops everything (no policy received yet).
    pub fn deny_all(config: ConntrackConfig) -> Engine {
        Engine {
            policy: CompiledPolicy::default(),
            matcher: Matcher::default(),
            conntrack: Conntrack::new(config),
            counters: Counters::default(),
        }
    }

    /// Decides one packet crossing in `dir`: a live tracked flow passes it (and
    /// is refreshed); otherwise the rules decide, and an allowed packet opens a
    /// flow (TCP, UDP, ICMP echo request, other protocols; not other ICMP).
    /// Counts it in [`Engine::usage`] as a packet of 0 bytes under peer 0 (the
    /// data plane uses [`Engine::decide_metered`]).
    pub fn decide(&mut self, dir: Direction, packet: &FiveTuple, now: Instant) -> Verdict {
        self.decide_metered(dir, packet, 0, now, || 0)
    }

    /// [`Engine::decide`], also counting the packet (`bytes` long) in its flow's
    /// usage; a flow it opens counts under the peer number `peer` returns
    /// (called only then). See [`crate::usage`].
    #[inline]
    pub fn decide_metered(
        &mut self,
        dir: Direction,
        packet: &FiveTuple,
        bytes: usize,
        now: Instant,
        peer: impl FnOnce() -> u32,
    ) -> Verdict {
        let bytes = bytes as u64;
        match self.conntrack.lookup(dir, packet, bytes, now) {
            Lookup::Established(rule) => {
                self.counters.allowed_established += 1;
                return Verdict::Allow {
                    rule,
                    via: Via::Established,
                };
            }
            Lookup::Miss { expired } => {
                self.counters.flows_expired += u64::from(expired);
            }
        }
        match self.matcher.evaluate(dir, packet) {
            RuleVerdict::Allow(rule) => {
                self.counters.allowed_new += 1;
                let ins = self.conntrack.insert(dir, packet, rule, now, bytes, peer);
                self.counters.flows_evicted += ins.evicted;
                self.counters.flows_expired += ins.expired;
                self.counters.flows_opened += u64::from(ins.opened);
                Verdict::Allow {
                    rule,
                    via: Via::New,
                }
            }
            RuleVerdict::Deny(rule) => {
                self.counters.dropped_denied += 1;
                Verdict::Drop(DropReason::Denied(rule))
            }
            RuleVerdict::NoRule => {
                self.counters.dropped_no_rule += 1;
                Verdict::Drop(DropReason::NoRule)
            }
        }
    }

    /// Switches to a new compiled policy. Every tracked flow is re-decided by its
    /// opening packet: flows the new policy still allows keep going (under the
    /// rule that allows them now), the others end. Returns how many ended.
    pub fn replace_policy(
        &mut self,
        policy: CompiledPolicy,
        now: Instant,
    ) -> Result<u64, InvalidPolicy> {
        let matcher = Matcher::new(&policy)?;
        self.counters.flows_expired += self.conntrack.expire(now);
        let ended =
            self.conntrack.retain(
                |flow| match matcher.evaluate(flow.direction, &flow.opened_by) {
                    RuleVerdict::Allow(rule) => Some(rule),
                    RuleVerdict::Deny(_) | RuleVerdict::NoRule => None,
                },
            );
        self.counters.flows_ended_by_policy += ended;
        self.policy = policy;
        self.matcher = matcher;
        Ok(ended)
    }

    /// Removes flows idle past their timeout. Call when [`Engine::poll_timeout`]'s
    /// deadline passes (calling it late or never only costs memory: expired
    /// flows never pass packets).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.counters.flows_expired += self.conntrack.expire(now);
    }

    /// When [`Engine::handle_timeout`] should next run, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.conntrack
            .next_deadline()
            .map(|t| (t, "policy: conntrack expiry"))
    }

    /// Explains the verdict `packet` would get now, without changing any state.
    pub fn explain(&self, dir: Direction, packet: &FiveTuple, now: Instant) -> Explanation {
        let mut matched: Vec<RuleInfo> = Vec::new();
        let (rules_verdict, rules_examined) = self.matcher.evaluate_with(dir, packet, |flow| {
            if let Some(info) = self.matcher.rule(flow.rule)
                && !matched.iter().any(|m| m.id == info.id)
            {
                matched.push(info.clone());
            }
        });
        matched.sort_by_key(|m| m.id);
        let flow = self.conntrack.peek(dir, packet, now).cloned();
        let verdict = match (&flow, rules_verdict) {
            (Some(f), _) => Verdict::Allow {
                rule: f.rule,
                via: Via::Established,
            },
            (None, RuleVerdict::Allow(rule)) => Verdict::Allow {
                rule,
                via: Via::New,
            },
            (None, RuleVerdict::Deny(rule)) => Verdict::Drop(DropReason::Denied(rule)),
            (None, RuleVerdict::NoRule) => Verdict::Drop(DropReason::NoRule),
        };
        let decided_by = match verdict {
            Verdict::Allow { rule, .. } | Verdict::Drop(DropReason::Denied(rule)) => {
                self.matcher.rule(rule).cloned()
            }
            Verdict::Drop(DropReason::NoRule) => None,
        };
        Explanation {
            packet: *packet,
            direction: dir,
            verdict,
            rules_verdict,
            flow,
            matched,
            decided_by,
            rules_examined,
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The compiled policy being enforced.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// The info of a rule of the current policy (to render a [`Verdict`]).
    pub fn rule(&self, id: RuleId) -> Option<&RuleInfo> {
        self.matcher.rule(id)
    }

    /// Tracked flows, in key order (for the agent's live view).
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.conntrack.flows()
    }

    /// Number of tracked flows.
    pub fn flow_count(&self) -> usize {
        self.conntrack.len()
    }

    /// Usage so far: the totals of flows that left the table plus the live
    /// flows' counters (monotonic; see [`crate::usage`]).
    pub fn usage(&self) -> Usage {
        self.conntrack.usage()
    }

    /// Ends every tracked flow and hands over the usage totals, for the engine
    /// that replaces this one ([`Engine::absorb_usage`]) so no count is lost or
    /// goes down.
    pub fn take_usage(&mut self) -> UsageTable {
        self.conntrack.take_usage()
    }

    /// Adds the totals of an engine this one replaces.
    pub fn absorb_usage(&mut self, older: UsageTable) {
        self.conntrack.absorb_usage(older);
    }
}

impl fmt::Display for Explanation {
    /// One or two lines a person can act on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        };
        write!(f, "{dir} {}: ", self.packet)?;
        let rule = |f: &mut fmt::Formatter<'_>| match &self.decided_by {
            Some(r) => write!(f, "{r}"),
            None => f.write_str("a rule no longer in the policy"),
        };
        match self.verdict {
            Verdict::Allow {
                via: Via::Established,
                ..
            } => {
                f.write_str("allowed: part of a tracked flow allowed by ")?;
                rule(f)?;
            }
            Verdict::Allow { via: Via::New, .. } => {
                f.write_str("allowed by ")?;
                rule(f)?;
            }
            Verdict::Drop(DropReason::Denied(_)) => {
                f.write_str("denied by ")?;
                rule(f)?;
                let allows: Vec<String> = self
                    .matched
                    .iter()
                    .filter(|m| m.action == crate::Action::Allow)
                    .map(|m| m.to_string())
                    .collect();
                if !allows.is_empty() {
                    write!(
                        f,
                        "; a matching deny beats the matching allow {}",
                        allows.join(", ")
                    )?;
                }
            }
            Verdict::Drop(DropReason::NoRule) => {
                f.write_str("dropped: no rule allows it (default deny)")?;
            }
        }
        Ok(())
    }
}
