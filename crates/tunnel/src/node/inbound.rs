//! Datagrams from the UDP socket and the relay: authenticate, check the source, police, deliver.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use weft_proto::NodeKey;

use super::*;
use crate::batch::PacketBatch;
use crate::counters::DropReason;
use crate::disco;
use crate::ip::IpView;
use weft_policy::Direction;
use weft_proto::stun;

impl Node {
    /// Handles datagrams received together from `from` (the datagrams of one GRO
    /// read, say): each exactly as [`Node::handle_datagram`] would, in order.
    /// Packets for a TUN are appended to `out` with their network.
    pub fn handle_datagram_batch<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagrams: impl IntoIterator<Item = &'d [u8]>,
        out: &mut PacketBatch,
    ) {
        for datagram in datagrams {
            let space = out.space(datagram.len().max(MIN_OUT_BUF));
            let written = match self.handle_datagram(now, from, datagram, space) {
                NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                NetOutcome::Handled | NetOutcome::Dropped(_) => None,
            };
            if let Some((net, n)) = written {
                out.commit(net, n);
            }
        }
    }

    /// Handles a datagram from the UDP socket. Only packets authenticated by a
    /// peer's WireGuard session, whose inner source address belongs to that peer
    /// and whose destination is this node, come out as [`NetOutcome::WriteTun`].
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        if out.len() < datagram.len() || out.len() < MIN_OUT_BUF {
            return self.drop_net(None, DropReason::BufferTooSmall);
        }
        if disco::is_disco(datagram) {
            return self.handle_disco(now, from, datagram);
        }
        if stun::is_stun(datagram) {
            return self.handle_stun(now, from, datagram);
        }
        self.handle_wireguard(now, Some(from), None, datagram, out)
    }

    /// Handles a WireGuard message that the relay delivered from peer `src`.
    pub fn handle_relay_frame<'a>(
        &mut self,
        now: Instant,
        src: NodeKey,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        if out.len() < datagram.len() || out.len() < MIN_OUT_BUF {
            return self.drop_net(None, DropReason::BufferTooSmall);
        }
        if !self.peers.contains_key(&src) {
            return self.drop_net(None, DropReason::UnknownPeer);
        }
        self.handle_wireguard(now, None, Some(src), datagram, out)
    }

    pub(super) fn deliver<'a>(
        &mut self,
        now: Instant,
        key: NodeKey,
        src: IpAddr,
        n: usize,
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        self.report_path_change(key, now);
        let Some(peer) = self.peers.get(&key) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let Ok(view) = IpView::parse(&out[..n]) else {
            return self.drop_net(Some(key), DropReason::MalformedIp);
        };
        // The destination picks the network: one of this node's addresses, or a
        // subnet it serves (possibly in several networks: the one where the
        // source belongs to the peer). The source must be the peer's address, or
        // inside a subnet the peer routes, in that same network.
        let src_ok = |net: NetIndex| {
            peer.addresses.contains(&(net, src))
                || peer
                    .routes
                    .iter()
                    .any(|(n, p, _)| *n == net && p.contains(&src))
        };
        let chosen = match self.local.get(&view.dst) {
            Some(&net) => Some(net).filter(|n| src_ok(*n)),
            None => {
                let mut served = self
                    .served
                    .iter()
                    .filter(|(_, p)| p.contains(&view.dst))
                    .peekable();
                if served.peek().is_none() {
                    return self.drop_net(Some(key), DropReason::NotForUs);
                }
                served.map(|s| s.0).find(|n| src_ok(*n))
            }
        };
        let Some(net) = chosen.filter(|_| view.src == src) else {
            return self.drop_net(Some(key), DropReason::SpoofedSource);
        };
        if let Err(reason) = self.police(now, key, Direction::Ingress, &view, &out[..n]) {
            return NetOutcome::Dropped(reason);
        }
        // A backend answering a flow to a service VIP: the reply comes from the VIP.
        self.services.inbound(now, net, &view, &mut out[..n]);
        NetOutcome::WriteTun {
            net,
            packet: &out[..n],
        }
    }
}
