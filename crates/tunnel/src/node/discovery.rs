//! Path discovery: disco ping/pong, STUN reflexive addresses, relay availability, path-change events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_proto::NodeKey;

use super::*;
use crate::counters::DropReason;
use crate::disco::{self, Disco};
use crate::path::PathKind;
use weft_proto::stun;

/// STUN reflexive-address discovery against the relays' STUN servers.
#[derive(Debug, Default)]
pub(super) struct Stun {
    pub(super) servers: Vec<SocketAddr>,
    pub(super) pending: BTreeMap<[u8; 12], (SocketAddr, Instant)>,
    pub(super) mapped: BTreeMap<SocketAddr, (SocketAddr, Instant)>,
    pub(super) next: Option<Instant>,
    pub(super) reported: Vec<SocketAddr>,
}

/// How often reflexive addresses are refreshed (NAT mappings and roaming).
const STUN_EVERY: Duration = Duration::from_secs(20);
/// A mapping not confirmed for this long is forgotten.
const STUN_FORGET: Duration = Duration::from_secs(75);

impl Node {
    /// Handles a discovery ping or pong from `from`.
    pub(super) fn handle_disco<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> NetOutcome<'a> {
        let Ok(sender) = disco::sender(datagram) else {
            return self.drop_net(None, DropReason::BadDisco);
        };
        let Some(peer) = self.peers.get_mut(&sender) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let Ok(msg) = peer.disco.open(datagram) else {
            return self.drop_net(Some(sender), DropReason::BadDisco);
        };
        match msg {
            Disco::Ping { tx } => {
                // Answer, learn the address, and ping back so our NAT opens too.
                peer.path.pinged_from(from);
                let nonce = self.wg.rng.bytes::<12>();
                let pong = peer
                    .disco
                    .seal(&self.key, nonce, &Disco::Pong { tx, observed: from });
                self.transmits.push_back(Transmit {
                    dst: Dest::Udp(from),
                    payload: pong,
                });
                if !peer.path.direct_fresh(now) {
                    let tx = self.wg.rng.u64();
                    let nonce = self.wg.rng.bytes::<12>();
                    peer.path.ping_sent(tx, from, now);
                    self.transmits.push_back(Transmit {
                        dst: Dest::Udp(from),
                        payload: peer.disco.seal(&self.key, nonce, &Disco::Ping { tx }),
                    });
                }
            }
            Disco::Pong { tx, .. } => {
                if !peer.path.pong(tx, from, now) {
                    return self.drop_net(Some(sender), DropReason::BadDisco);
                }
            }
        }
        self.report_path_change(sender, now);
        NetOutcome::Handled
    }

    /// Sets the STUN servers used to learn this node's reflexive addresses (the
    /// relays' STUN ports); a change queries them at once.
    pub fn set_stun_servers(&mut self, now: Instant, servers: Vec<SocketAddr>) {
        if servers != self.stun.servers {
            self.stun.servers = servers;
            self.stun
                .mapped
                .retain(|s, _| self.stun.servers.contains(s));
            self.stun.next = Some(now);
        }
    }

    /// The reflexive addresses STUN servers currently report.
    pub fn reflexive_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.stun.mapped.values().map(|(a, _)| *a).collect();
        v.sort();
        v.dedup();
        v
    }

    pub(super) fn handle_stun<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> NetOutcome<'a> {
        let Ok(resp) = stun::parse_binding_response(datagram) else {
            return self.drop_net(None, DropReason::BadStun);
        };
        match self.stun.pending.remove(&resp.transaction_id) {
            Some((server, _)) if server == from => {
                self.stun.mapped.insert(server, (resp.mapped, now));
                self.report_reflexive();
                NetOutcome::Handled
            }
            _ => self.drop_net(None, DropReason::BadStun),
        }
    }

    pub(super) fn report_reflexive(&mut self) {
        let now_set = self.reflexive_addresses();
        if now_set != self.stun.reported {
            self.stun.reported.clone_from(&now_set);
            self.events
                .push_back(Event::ReflexiveAddresses { addrs: now_set });
        }
    }

    pub(super) fn run_stun(&mut self, now: Instant) {
        self.stun
            .pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < Duration::from_secs(5));
        let before = self.stun.mapped.len();
        self.stun
            .mapped
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < STUN_FORGET);
        if self.stun.mapped.len() != before {
            self.report_reflexive();
        }
        if self.stun.servers.is_empty() || self.stun.next.is_some_and(|t| now < t) {
            return;
        }
        self.stun.next = Some(now + STUN_EVERY);
        for server in self.stun.servers.clone() {
            let id: [u8; 12] = self.wg.rng.bytes();
            let mut msg = Vec::with_capacity(28);
            stun::encode_binding_request(&id, true, &mut msg);
            self.stun.pending.insert(id, (server, now));
            self.transmits.push_back(Transmit {
                dst: Dest::Udp(server),
                payload: msg,
            });
        }
    }

    /// Sends due discovery pings and reports path changes.
    pub(super) fn run_paths(&mut self, now: Instant) {
        self.run_stun(now);
        let relay_up = self.relay_up;
        for (key, peer) in &mut self.peers {
            for to in peer.path.due_pings(now) {
                let tx = self.wg.rng.u64();
                let nonce = self.wg.rng.bytes::<12>();
                peer.path.ping_sent(tx, to, now);
                self.transmits.push_back(Transmit {
                    dst: Dest::Udp(to),
                    payload: peer.disco.seal(&self.key, nonce, &Disco::Ping { tx }),
                });
            }
            if let Some(path) = peer.path.changed(now, relay_up) {
                // A direct path that went quiet may mean our own underlay
                // address changed (roaming): learn the reflexive address again
                // now rather than at the next refresh, so peers get the new one.
                if !matches!(path, PathKind::Direct(_)) {
                    self.stun.next = Some(now);
                }
                self.events
                    .push_back(Event::PathChanged { key: *key, path });
            }
        }
    }

    pub(super) fn report_path_changes(&mut self, now: Instant) {
        let keys: Vec<NodeKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.report_path_change(k, now);
        }
    }

    pub(super) fn report_path_change(&mut self, key: NodeKey, now: Instant) {
        let relay_up = self.relay_up;
        if let Some(peer) = self.peers.get_mut(&key)
            && let Some(path) = peer.path.changed(now, relay_up)
        {
            self.events.push_back(Event::PathChanged { key, path });
        }
    }

    /// Tells the node whether the relay connection is up (it then routes peers
    /// without a direct path through it).
    pub fn set_relay_available(&mut self, now: Instant, up: bool) {
        if self.relay_up == up {
            return;
        }
        self.relay_up = up;
        if up {
            // Peers still waiting for a handshake (their candidates may be
            // unreachable) get one through the relay now, not at the next retry.
            for (key, peer) in &mut self.peers {
                if !peer.up
                    && let Ok(Some(n)) =
                        peer.tunn
                            .initiate(&mut self.wg, now, true, &mut self.scratch)
                {
                    self.transmits.push_back(Transmit {
                        dst: Dest::Relay(*key),
                        payload: self.scratch[..n].to_vec(),
                    });
                }
            }
        }
        self.report_path_changes(now);
    }
}
