//! Datagrams from the UDP socket and the relay: authenticate, check the source, police, deliver.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use weft_proto::NodeKey;

use super::*;
use crate::batch::PacketBatch;
use crate::counters::DropReason;
use crate::disco;
use crate::ip::IpView;
use crate::path::Route;
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

    pub(super) fn handle_wireguard<'a>(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        via_relay: Option<NodeKey>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        let src_ip = from.map(|f| f.ip());
        let key = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => return self.drop_net(None, DropReason::NotWireGuard),
            Ok(Packet::HandshakeInit(init)) => {
                // Check MAC1 and load before the expensive Diffie-Hellman.
                match self.rate_limiter.verify_packet(src_ip, datagram, out) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        if let Some(from) = from {
                            self.transmits.push_back(Transmit {
                                dst: Dest::Udp(from),
                                payload: cookie.to_vec(),
                            });
                        }
                        return self.drop_net(None, DropReason::UnderLoad);
                    }
                    Err(_) => return self.drop_net(None, DropReason::BadAuth),
                }
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => match self.by_x25519.get(&half.peer_static_public) {
                        Some(k) => *k,
                        None => return self.drop_net(None, DropReason::UnknownPeer),
                    },
                    Err(_) => return self.drop_net(None, DropReason::BadAuth),
                }
            }
            Ok(Packet::HandshakeResponse(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
            Ok(Packet::PacketCookieReply(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
            Ok(Packet::PacketData(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
        };
        if via_relay.is_some_and(|k| k != key) {
            // The relay says it is from one peer, the message belongs to another.
            return self.drop_net(None, DropReason::BadAuth);
        }
        let data = is_data(datagram);
        let relay_up = self.relay_up;
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let reply_to = match from {
            Some(f) => Dest::Udp(f),
            None => Dest::Relay(key),
        };
        let res = peer.tunn.decapsulate(src_ip, datagram, out);
        match res {
            TunnResult::WriteToNetwork(buf) => {
                // Handshake response, or keepalive after one: reply where it came from.
                self.transmits.push_back(Transmit {
                    dst: reply_to,
                    payload: buf.to_vec(),
                });
                heard(&mut self.events, key, peer, from, now);
                // Flush packets that queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(b) =
                    peer.tunn.decapsulate(None, &[], &mut self.scratch)
                {
                    let dst = match peer.path.route(now, relay_up) {
                        Route::Direct(a) => Dest::Udp(a),
                        Route::Relay => Dest::Relay(key),
                        Route::Candidates => reply_to,
                    };
                    self.transmits.push_back(Transmit {
                        dst,
                        payload: b.to_vec(),
                    });
                }
                self.report_path_changes(now);
                NetOutcome::Handled
            }
            TunnResult::Done => {
                if data {
                    // An authenticated keepalive.
                    heard(&mut self.events, key, peer, from, now);
                    self.report_path_changes(now);
                }
                NetOutcome::Handled
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %key, error = ?e, "WireGuard refused a datagram");
                let reason = match e {
                    WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => {
                        DropReason::Replay
                    }
                    WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
                        DropReason::UnknownSession
                    }
                    WireGuardError::UnderLoad => DropReason::UnderLoad,
                    WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => {
                        DropReason::NotWireGuard
                    }
                    WireGuardError::ConnectionExpired => DropReason::SessionError,
                    // A response to a handshake we already replaced (both sides
                    // initiated at once): harmless, the newer handshake wins.
                    WireGuardError::UnexpectedPacket => DropReason::StaleHandshake,
                    _ => DropReason::BadAuth,
                };
                self.drop_net(Some(key), reason)
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                let n = pkt.len();
                heard(&mut self.events, key, peer, from, now);
                self.deliver(now, key, IpAddr::V4(src), n, out)
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                let n = pkt.len();
                heard(&mut self.events, key, peer, from, now);
                self.deliver(now, key, IpAddr::V6(src), n, out)
            }
        }
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
        if let Err(reason) = self.police(now, key, Direction::Ingress, &out[..n]) {
            return NetOutcome::Dropped(reason);
        }
        NetOutcome::WriteTun {
            net,
            packet: &out[..n],
        }
    }
}
