//! Packets from the TUN: route by destination, police, encrypt.

use std::net::IpAddr;
use std::time::Instant;

use crate::wg::Encrypted;
use weft_proto::NodeKey;

use super::*;
use crate::batch::{DatagramBatch, PacketBatch};
use crate::counters::DropReason;
use crate::ip::{self, IpView};
use crate::path::Route;
use weft_policy::Direction;

impl Node {
    /// Handles a packet read from the TUN: route it to a peer by destination
    /// address and encrypt it into `out` (at least `packet.len() + 32` and
    /// [`MIN_OUT_BUF`] bytes).
    pub fn handle_tun_packet<'a>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> TunOutcome<'a> {
        let Ok(view) = IpView::parse(packet) else {
            return self.drop_tun(DropReason::MalformedIp);
        };
        let packet = &packet[..view.total_len];
        if !self.services.is_empty() {
            return self.handle_vip_packet(now, net, packet, &view, out);
        }
        self.route_tun_packet(now, net, packet, &view, None, out)
    }

    /// A packet that may be to a service VIP: rewritten to a backend and
    /// routed (policy on the real addresses; the rewrite is applied as the
    /// packet is copied into the encrypted message), or refused with an ICMP
    /// unreachable; any other packet is routed as it is.
    fn handle_vip_packet<'a>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packet: &[u8],
        view: &IpView,
        out: &'a mut [u8],
    ) -> TunOutcome<'a> {
        match self.services.outbound(now, net, packet, view) {
            services::Outbound::Rewritten { backend, rewrite } => {
                let mut real = *view;
                real.dst = IpAddr::V4(backend);
                self.route_tun_packet(now, net, packet, &real, Some(&rewrite), out)
            }
            services::Outbound::Refused(DropReason::MalformedIp, _) => {
                self.drop_tun(DropReason::MalformedIp)
            }
            services::Outbound::Refused(reason, kind) => {
                self.drops.add(reason);
                // Port unreachable comes from the VIP itself; host unreachable
                // from this node, as for an address no peer has.
                let from = match kind {
                    ip::Unreachable::Port => Some(view.dst),
                    _ => self.local_address(net, view.src.is_ipv4()),
                };
                match from.and_then(|f| ip::icmp_error(packet, view, f, out, kind)) {
                    Some(n) => TunOutcome::Reply(&out[..n]),
                    None => TunOutcome::Dropped(reason),
                }
            }
            services::Outbound::NotVip => self.route_tun_packet(now, net, packet, view, None, out),
        }
    }

    /// This node's address in `net` of the family asked for.
    fn local_address(&self, net: NetIndex, v4: bool) -> Option<IpAddr> {
        self.local
            .iter()
            .find(|(a, n)| **n == net && a.is_ipv4() == v4)
            .map(|(a, _)| *a)
    }

    /// Routes, polices and encrypts `packet` by `view` (for a packet to a
    /// VIP: the backend as destination, and `rewrite` to apply to the bytes
    /// as they are encrypted). ICMP errors for the local sender quote the
    /// packet as the sender wrote it.
    fn route_tun_packet<'a>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packet: &[u8],
        real: &IpView,
        rewrite: Option<&services::Rewrite>,
        out: &'a mut [u8],
    ) -> TunOutcome<'a> {
        let view = *real;
        // ICMP errors read the sender and the header lengths from the view,
        // the quoted bytes from `packet` (as sent: to the VIP).
        let quote = (packet, &view);
        let routed = || self.gateway_for(now, net, view.dst);
        let Some(key) = self.by_ip.get(&(net, view.dst)).copied().or_else(routed) else {
            self.drops.add(DropReason::NoRoute);
            let from = self.local_address(net, view.src.is_ipv4());
            if let Some(from) = from
                && let Some(n) = ip::icmp_unreachable(quote.0, quote.1, from, out)
            {
                return TunOutcome::Reply(&out[..n]);
            }
            return TunOutcome::Dropped(DropReason::NoRoute);
        };
        if out.len() < packet.len() + WG_OVERHEAD || out.len() < MIN_OUT_BUF {
            return self.drop_tun(DropReason::BufferTooSmall);
        }
        if let Err(reason) = self.police(now, key, Direction::Egress, &view, packet) {
            // Tell the local sender at once instead of letting it time out.
            if let Some(from) = self.local_address(net, view.src.is_ipv4())
                && let Some(n) =
                    ip::icmp_error(quote.0, quote.1, from, out, ip::Unreachable::Prohibited)
            {
                return TunOutcome::Reply(&out[..n]);
            }
            return TunOutcome::Dropped(reason);
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.drop_tun(DropReason::NoRoute);
        };
        let relay_up = self.relay_up;
        let patch = |plain: &mut [u8]| {
            if let Some(r) = rewrite {
                r.apply(plain);
            }
        };
        match peer
            .tunn
            .encrypt_with(&mut self.wg, now, packet, out, patch)
        {
            Ok(Encrypted::Data(n)) => {
                let dst = match peer.path.route(now, relay_up) {
                    Route::Direct(a) => Dest::Udp(a),
                    Route::Relay => Dest::Relay(key),
                    Route::Candidates => {
                        // No confirmed path and no relay: best effort.
                        let first = peer.path.candidates().next();
                        match first {
                            Some(a) => Dest::Udp(a),
                            None => return self.drop_tun(DropReason::NoPath),
                        }
                    }
                };
                TunOutcome::Send {
                    dst,
                    datagram: &out[..n],
                }
            }
            Ok(Encrypted::Initiation(n)) => {
                // A handshake initiation (the packet is queued behind it).
                send_handshake(&mut self.transmits, key, peer, &out[..n], now, relay_up);
                TunOutcome::Queued
            }
            Ok(Encrypted::Queued) => TunOutcome::Queued,
            Err(_) => {
                peer.drops.add(DropReason::SessionError);
                self.drop_tun(DropReason::SessionError)
            }
        }
    }

    /// The gateway for `dst` in `net`: among the gateways of the longest
    /// matching prefix, the best-ranked one that is alive, else the best-ranked.
    pub(super) fn gateway_for(&self, now: Instant, net: NetIndex, dst: IpAddr) -> Option<NodeKey> {
        let mut first: Option<(IpNet, NodeKey)> = None;
        for (n, p, _, k) in &self.routes {
            if *n != net || !p.contains(&dst) {
                continue;
            }
            match first {
                None => first = Some((*p, *k)),
                // Only the gateways of the most specific prefix compete.
                Some((fp, _)) if fp != *p => break,
                Some(_) => {}
            }
            if self
                .peers
                .get(k)
                .is_some_and(|peer| peer.path.alive(now, GATEWAY_RELAY_WINDOW))
            {
                return Some(*k);
            }
        }
        first.map(|f| f.1)
    }

    /// Handles packets read together from the TUN of `net` (the segments of one
    /// offload read, say): each exactly as [`Node::handle_tun_packet`] would, in
    /// order. Encrypted datagrams are appended to `out` (grouped for GSO sends),
    /// ICMP errors for local senders to `replies`; handshakes and queued packets
    /// go to [`Node::poll_transmit`] as usual.
    pub fn handle_tun_batch<'p>(
        &mut self,
        now: Instant,
        net: NetIndex,
        packets: impl IntoIterator<Item = &'p [u8]>,
        out: &mut DatagramBatch,
        replies: &mut PacketBatch,
    ) {
        for packet in packets {
            let space = out.space((packet.len() + WG_OVERHEAD).max(MIN_OUT_BUF));
            let sent = match self.handle_tun_packet(now, net, packet, space) {
                TunOutcome::Send { dst, datagram } => Some((dst, datagram.len())),
                TunOutcome::Reply(icmp) => {
                    replies.push(net, icmp);
                    None
                }
                TunOutcome::Queued | TunOutcome::Dropped(_) => None,
            };
            if let Some((dst, n)) = sent {
                out.commit(dst, n);
            }
        }
    }
}
