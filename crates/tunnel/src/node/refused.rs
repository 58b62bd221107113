//! A bounded summary of the new connection attempts the access policy refused,
//! by direction and peer: how many, and which destination ports and addresses
//! (distinct, up to [`MAX_DISTINCT`] each). The agent reads and resets it once
//! per detection window ([`Node::take_refusals`]) to recognise a scan. Only the
//! deny path pays for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weft_policy::{Direction, FiveTuple, IcmpKind, Transport, tcp_flags};
use weft_proto::NodeKey;

use super::Node;

/// (direction, peer) pairs tracked per window; attempts of further pairs are
/// only counted ([`Refusals::untracked`]).
pub const MAX_REFUSAL_PEERS: usize = 256;
/// Distinct destination ports, and distinct destination addresses, kept per
/// pair and window.
pub const MAX_DISTINCT: usize = 256;

/// Refused attempts of one peer pair in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedAttempts {
    /// Attempts refused.
    pub attempts: u64,
    /// Their distinct destination ports (TCP and UDP), at most [`MAX_DISTINCT`].
    pub ports: BTreeSet<u16>,
    /// Their distinct destination addresses, at most [`MAX_DISTINCT`].
    pub addrs: BTreeSet<IpAddr>,
    /// Some port or address was not kept because its set was full.
    pub truncated: bool,
}

/// Refused new connection attempts since the last [`Node::take_refusals`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// By direction (egress: this node tried to reach the peer; ingress: the
    /// peer tried to reach this node) and peer.
    pub by_peer: BTreeMap<(Direction, NodeKey), RefusedAttempts>,
    /// Attempts of pairs beyond [`MAX_REFUSAL_PEERS`].
    pub untracked: u64,
}

impl Refusals {
    /// Records a packet the policy refused, if it was a new connection
    /// attempt: a TCP SYN without ACK, any UDP datagram, an ICMP echo request,
    /// another protocol (not stray TCP segments or ICMP errors).
    pub(super) fn record(&mut self, dir: Direction, key: NodeKey, packet: &FiveTuple) {
        let port = match packet.transport {
            Transport::Tcp {
                dst_port, flags, ..
            } if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN => Some(dst_port),
            Transport::Tcp { .. } => return,
            Transport::Udp { dst_port, .. } => Some(dst_port),
            Transport::Icmp {
                kind: IcmpKind::EchoRequest,
                ..
            }
            | Transport::Other(_) => None,
            Transport::Icmp { .. } => return,
        };
        let full = self.by_peer.len() >= MAX_REFUSAL_PEERS;
        let entry = match self.by_peer.get_mut(&(dir, key)) {
            Some(e) => e,
            None if full => {
                self.untracked = self.untracked.saturating_add(1);
                return;
            }
            None => self.by_peer.entry((dir, key)).or_default(),
        };
        entry.attempts = entry.attempts.saturating_add(1);
        if let Some(p) = port {
            entry.truncated |= !insert_bounded(&mut entry.ports, p);
        }
        entry.truncated |= !insert_bounded(&mut entry.addrs, packet.dst);
    }
}

/// Inserts `v` unless the set is full; `false`: it was full and `v` new.
fn insert_bounded<T: Ord>(set: &mut BTreeSet<T>, v: T) -> bool {
    if set.len() < MAX_DISTINCT || set.contains(&v) {
        set.insert(v);
        true
    } else {
        false
    }
}

impl Node {
    /// The refused new connection attempts since the last call, and a fresh
    /// summary for the next window.
    pub fn take_refusals(&mut self) -> Refusals {
        std::mem::take(&mut self.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::from_bytes([b; 32])
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([100, 64, 0, last])
    }

    #[test]
    fn only_new_attempts_count_and_every_set_is_bounded() {
        let mut r = Refusals::default();
        let (me, them) = (ip(1), ip(2));
        r.record(
            Direction::Egress,
            key(2),
            &FiveTuple::tcp(me, 40000, them, 22, tcp_flags::SYN),
        );
        // A stray ACK and an ICMP error are not attempts.
        r.record(
            Direction::Egress,
            key(2),
            &FiveTuple::tcp(me, 40000, them, 23, tcp_flags::ACK),
        );
        r.record(
            Direction::Egress,
            key(2),
            &FiveTuple::tcp(me, 40000, them, 24, tcp_flags::SYN | tcp_flags::ACK),
        );
        r.record(
            Direction::Egress,
            key(2),
            &FiveTuple::icmp(me, them, IcmpKind::Other(3, 1), 0),
        );
        r.record(
            Direction::Ingress,
            key(3),
            &FiveTuple::udp(ip(3), 5000, me, 53),
        );
        r.record(
            Direction::Ingress,
            key(3),
            &FiveTuple::icmp(ip(3), me, IcmpKind::EchoRequest, 7),
        );
        let e = &r.by_peer[&(Direction::Egress, key(2))];
        assert_eq!(e.attempts, 1);
        assert_eq!(e.ports, [22].into());
        assert_eq!(e.addrs, [them].into());
        let i = &r.by_peer[&(Direction::Ingress, key(3))];
        assert_eq!((i.attempts, i.ports.len(), i.addrs.len()), (2, 1, 1));

        for port in 0..1000u16 {
            r.record(
                Direction::Egress,
                key(2),
                &FiveTuple::tcp(me, 40000, ip((port % 250) as u8), port, tcp_flags::SYN),
            );
        }
        let e = &r.by_peer[&(Direction::Egress, key(2))];
        assert_eq!(e.attempts, 1001);
        assert_eq!(e.ports.len(), MAX_DISTINCT);
        assert_eq!(e.addrs.len(), 250);
        assert!(e.truncated);

        for b in 0..=255u8 {
            r.record(
                Direction::Ingress,
                NodeKey::from_bytes([
                    b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5,
                    6, 7, 8, 9, 0, 1,
                ]),
                &FiveTuple::udp(ip(3), 5000, me, 53),
            );
        }
        assert_eq!(r.by_peer.len(), MAX_REFUSAL_PEERS);
        assert_eq!(r.untracked, 2);
    }
}
