//! The access-policy hook points: every packet in both directions passes `police`.

use std::time::Instant;

use weft_proto::NodeKey;

use super::*;
use crate::counters::DropReason;
use weft_policy::{
    CompiledPolicy, ConntrackConfig, Direction, DropReason as PolicyDrop, Engine, FiveTuple,
    Verdict,
};

impl Node {
    pub(super) fn apply_policy(&mut self, now: Instant, policy: Option<CompiledPolicy>) {
        // Benchmark builds only (see the feature in Cargo.toml): no enforcement.
        #[cfg(feature = "unenforced-benchmark-only")]
        let policy: Option<CompiledPolicy> = policy.and(None);
        let Some(cp) = policy else {
            self.policy = None;
            return;
        };
        match self.policy.as_mut() {
            Some(engine) => match engine.replace_policy(cp, now) {
                Ok(ended) if ended > 0 => {
                    tracing::info!(
                        flows = ended,
                        "policy change ended flows it no longer allows"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.events
                        .push_back(Event::PolicyRejected { why: e.to_string() });
                    self.policy = Some(Engine::deny_all(ConntrackConfig::default()));
                }
            },
            None => match Engine::new(cp, ConntrackConfig::default()) {
                Ok(e) => self.policy = Some(e),
                Err(e) => {
                    self.events
                        .push_back(Event::PolicyRejected { why: e.to_string() });
                    self.policy = Some(Engine::deny_all(ConntrackConfig::default()));
                }
            },
        }
    }

    /// Runs the policy on a packet to or from `key`; on a drop counts it and
    /// (rate-limited) reports it.
    pub(super) fn police(
        &mut self,
        now: Instant,
        key: NodeKey,
        dir: Direction,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        let Some(engine) = self.policy.as_mut() else {
            return Ok(());
        };
        let Ok(tuple) = FiveTuple::parse(packet) else {
            self.drops.add(DropReason::MalformedIp);
            return Err(DropReason::MalformedIp);
        };
        match engine.decide(dir, &tuple, now) {
            Verdict::Allow { .. } => Ok(()),
            Verdict::Drop(why) => {
                let reason = match why {
                    PolicyDrop::NoRule => DropReason::PolicyNoRule,
                    PolicyDrop::Denied(_) => DropReason::PolicyDenied,
                };
                self.drops.add(reason);
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.drops.add(reason);
                }
                if let Some(suppressed) = self.policy_log.check(&key, now) {
                    let explanation = engine.explain(dir, &tuple, now).to_string();
                    self.events.push_back(Event::PolicyDrop {
                        key,
                        direction: dir,
                        explanation,
                        suppressed,
                    });
                }
                Err(reason)
            }
        }
    }

    /// Explains what the policy would do with `packet` in direction `dir` now
    /// (`None` when enforcement is off).
    pub fn explain(
        &self,
        dir: Direction,
        packet: &FiveTuple,
        now: Instant,
    ) -> Option<(bool, String)> {
        self.policy.as_ref().map(|e| {
            let x = e.explain(dir, packet, now);
            (matches!(x.verdict, Verdict::Allow { .. }), x.to_string())
        })
    }
}
