//! Timers: WireGuard's, the policy's, and path discovery's.

use std::time::{Duration, Instant};

use super::*;
use crate::path::Route;
use crate::wg::TimerAction;
use weft_policy::Engine;

impl Node {
    /// Runs WireGuard's timers (handshake retries, rekeys, keepalives) when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(engine) = self.policy.as_mut() {
            engine.handle_timeout(now);
        }
        self.services.expire(now);
        if now >= self.next_rate_reset {
            self.wg.reset_load();
            self.next_rate_reset = now + Duration::from_secs(1);
        }
        self.run_paths(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TIMER_TICK;
        let relay_up = self.relay_up;
        for (key, peer) in &mut self.peers {
            match peer
                .tunn
                .update_timers(&mut self.wg, now, &mut self.scratch)
            {
                TimerAction::Send(n) => {
                    let buf = &self.scratch[..n];
                    if is_data(buf) {
                        let dst = match peer.path.route(now, relay_up) {
                            Route::Direct(a) => Some(Dest::Udp(a)),
                            Route::Relay => Some(Dest::Relay(*key)),
                            Route::Candidates => None,
                        };
                        if let Some(dst) = dst {
                            self.transmits.push_back(Transmit {
                                dst,
                                payload: buf.to_vec(),
                            });
                        }
                    } else {
                        send_handshake(&mut self.transmits, *key, peer, buf, now, relay_up);
                    }
                }
                TimerAction::Expired if peer.up => {
                    peer.up = false;
                    self.events.push_back(Event::PeerDown { key: *key });
                }
                TimerAction::Expired | TimerAction::Idle => {}
            }
        }
    }

    /// When [`Node::handle_timeout`] wants to run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let wg = (self.next_tick.min(self.next_rate_reset), "wireguard timers");
        let paths = self
            .peers
            .values()
            .filter_map(|p| p.path.next_due(wg.0))
            .min()
            .map(|t| (t, "path discovery"));
        let policy = self.policy.as_ref().and_then(Engine::poll_timeout);
        let stun = self
            .stun
            .next
            .filter(|_| !self.stun.servers.is_empty())
            .map(|t| (t, "stun refresh"));
        let services = self
            .services
            .next_deadline()
            .map(|t| (t, "service flow expiry"));
        [Some(wg), paths, policy, stun, services]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }
}
