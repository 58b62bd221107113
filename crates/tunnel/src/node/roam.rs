//! Our own underlay changed (the shell's link monitor saw a link, an address
//! or the default route change): learn the reflexive address again, check
//! every path, and let every peer learn our new address at once.

use std::time::Instant;

use super::{Dest, Node, Transmit, send_handshake};
use crate::path::Route;

impl Node {
    /// This host's underlay changed. At once, not at the next timer:
    /// - STUN is asked again (the reflexive address may be new; the shell
    ///   reports it to the controller when it changes);
    /// - every peer's paths are probed again (the direct one and every
    ///   candidate), so a direct path wins over the relay as soon as one
    ///   answers;
    /// - every peer with a session gets an authenticated keepalive on its
    ///   direct path, sent from whatever source address the host now uses: the
    ///   peer follows it (WireGuard's roaming rule) instead of sending into the
    ///   address that went away until its trust in it lapses. A peer without a
    ///   usable session gets a handshake instead.
    pub fn underlay_changed(&mut self, now: Instant) {
        self.stun.pending.clear();
        self.stun.next = Some(now);
        let relay_up = self.relay_up;
        for (key, peer) in &mut self.peers {
            peer.path.underlay_changed(now);
            let direct = match peer.path.route(now, false) {
                Route::Direct(a) => Some(a),
                Route::Relay | Route::Candidates => None,
            };
            if peer.tunn.can_send(now) {
                let Some(addr) = direct else {
                    // No direct path to roam: the probes above find one.
                    continue;
                };
                let transmits = &mut self.transmits;
                peer.tunn.flush(now, true, &mut self.scratch, |m| {
                    transmits.push_back(Transmit {
                        dst: Dest::Udp(addr),
                        payload: m.to_vec(),
                    });
                });
            } else if peer.up
                && let Ok(Some(n)) = peer
                    .tunn
                    .initiate(&mut self.wg, now, false, &mut self.scratch)
            {
                let msg = self.scratch[..n].to_vec();
                send_handshake(&mut self.transmits, *key, peer, &msg, now, relay_up);
            }
        }
        self.run_paths(now);
    }
}
