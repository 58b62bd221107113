//! The access-policy hook points: every packet in both directions passes `police`.

use std::time::Instant;

use weft_proto::NodeKey;

use super::*;
use crate::counters::DropReason;
use crate::ip::IpView;
use weft_policy::{
    CompiledPolicy, ConntrackConfig, Direction, DropReason as PolicyDrop, Engine, FiveTuple,
    Verdict,
};

impl Node {
    /// Puts `policy` in force. An unchanged policy keeps its engine, so a map
    /// event that only moves a peer's endpoint or online flag costs no matcher
    /// rebuild and keeps every tracked flow. No policy (the map carried none, or
    /// the agent could not read it) denies every packet: fail closed.
    pub(super) fn apply_policy(&mut self, now: Instant, policy: Option<&CompiledPolicy>) {
        let Some(cp) = policy else {
            if let Some(mut old) = self.policy.take() {
                self.usage.park(old.take_usage());
                self.events.push_back(Event::PolicyRejected {
                    why: "the network map carries no usable access policy".to_owned(),
                });
            }
            return;
        };
        match self.policy.as_mut() {
            Some(engine) if engine.policy() == cp => {}
            Some(engine) => match engine.replace_policy(cp.clone(), now) {
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
                    let mut deny = Engine::deny_all(ConntrackConfig::default());
                    deny.absorb_usage(engine.take_usage());
                    *engine = deny;
                }
            },
            None => {
                let mut engine = match Engine::new(cp.clone(), ConntrackConfig::default()) {
                    Ok(e) => e,
                    Err(e) => {
                        self.events
                            .push_back(Event::PolicyRejected { why: e.to_string() });
                        Engine::deny_all(ConntrackConfig::default())
                    }
                };
                if let Some(parked) = self.usage.unpark() {
                    engine.absorb_usage(parked);
                }
                self.policy = Some(engine);
            }
        }
    }

    /// Runs the policy on a packet to or from `key`; on a drop counts it and
    /// (rate-limited) reports it.
    pub(super) fn police(
        &mut self,
        now: Instant,
        key: NodeKey,
        dir: Direction,
        view: &IpView,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        // Benchmark builds only (see the feature in Cargo.toml): no enforcement.
        if cfg!(feature = "unenforced-benchmark-only") {
            return Ok(());
        }
        let Some(engine) = self.policy.as_mut() else {
            self.drops.add(DropReason::NoPolicy);
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.drops.add(DropReason::NoPolicy);
            }
            return Err(DropReason::NoPolicy);
        };
        let Ok(tuple) = FiveTuple::from_view(view, packet) else {
            self.drops.add(DropReason::MalformedIp);
            return Err(DropReason::MalformedIp);
        };
        let usage = &mut self.usage;
        match engine.decide_metered(dir, &tuple, packet.len(), now, || usage.peer_id(key)) {
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
                self.refused.record(dir, key, &tuple);
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
    /// (`None` when the node has no policy: every packet is dropped).
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
