//! WireGuard messages from a peer (over UDP or through the relay), dispatched to
//! the peer's [`Tunnel`](crate::wg::Tunnel): handshakes checked for MAC1 and load
//! before any Diffie-Hellman, transport data decrypted in place.

use std::net::SocketAddr;
use std::time::Instant;

use weft_proto::NodeKey;

use super::{Dest, NetOutcome, Node, Peer, Transmit, heard};
use crate::counters::DropReason;
use crate::ip::IpView;
use crate::path::Route;
use crate::wg::{self, Message};

/// The drop counter for a refused WireGuard message.
fn reason(e: wg::Error) -> DropReason {
    match e {
        wg::Error::Malformed => DropReason::NotWireGuard,
        wg::Error::BadAuth => DropReason::BadAuth,
        wg::Error::Replay => DropReason::Replay,
        wg::Error::UnknownSession => DropReason::UnknownSession,
        // A response to a handshake we already replaced (both sides initiated
        // at once): harmless, the newer handshake wins.
        wg::Error::Stale => DropReason::StaleHandshake,
        wg::Error::BufferTooSmall => DropReason::BufferTooSmall,
    }
}

impl Node {
    pub(super) fn handle_wireguard<'a>(
        &mut self,
        now: Instant,
        from: Option<SocketAddr>,
        via_relay: Option<NodeKey>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> NetOutcome<'a> {
        let Ok(msg) = Message::parse(datagram) else {
            return self.drop_net(None, DropReason::NotWireGuard);
        };
        let mut initiation = None;
        let key = match msg.receiver() {
            None => {
                // Check MAC1 and load before the expensive Diffie-Hellman.
                if !self.wg.check_mac1(datagram) {
                    return self.drop_net(None, DropReason::BadAuth);
                }
                // Under load, a UDP sender must prove its address with the cookie
                // we give it (the relay already authenticated its senders).
                if self.wg.under_load()
                    && let Some(f) = from
                    && !self.wg.check_mac2(now, datagram, &f)
                {
                    if let Ok(n) = self.wg.cookie_reply(now, datagram, &f, out) {
                        self.transmits.push_back(Transmit {
                            dst: Dest::Udp(f),
                            payload: out[..n].to_vec(),
                        });
                    }
                    return self.drop_net(None, DropReason::UnderLoad);
                }
                let Ok(init) = self.wg.consume_initiation(datagram) else {
                    return self.drop_net(None, DropReason::BadAuth);
                };
                let Some(k) = self.by_x25519.get(&init.remote_static).copied() else {
                    return self.drop_net(None, DropReason::UnknownPeer);
                };
                initiation = Some(init);
                k
            }
            Some(index) => match self.by_index.get(&(index >> 8)) {
                Some(k) => *k,
                None => return self.drop_net(None, DropReason::UnknownSession),
            },
        };
        if via_relay.is_some_and(|k| k != key) {
            // The relay says it is from one peer, the message belongs to another.
            return self.drop_net(None, DropReason::BadAuth);
        }
        let relay_up = self.relay_up;
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.drop_net(None, DropReason::UnknownPeer);
        };
        let reply_to = match from {
            Some(f) => Dest::Udp(f),
            None => Dest::Relay(key),
        };
        // Packets released by a completed handshake take the peer's path
        // (worked out only then: not on the per-packet path).
        let release_to = |peer: &Peer| match peer.path.route(now, relay_up) {
            Route::Direct(a) => Dest::Udp(a),
            Route::Relay => Dest::Relay(key),
            Route::Candidates => reply_to,
        };
        let result = match (msg, initiation) {
            (Message::Initiation { .. }, Some(init)) => {
                match peer.tunn.respond(&mut self.wg, &init, now, out) {
                    Ok(n) => {
                        self.transmits.push_back(Transmit {
                            dst: reply_to,
                            payload: out[..n].to_vec(),
                        });
                        Ok(())
                    }
                    Err(wg::Error::Replay) => {
                        // The initiation we just answered, over another path
                        // (the initiator sends it over the relay and to every
                        // candidate): our answer may not have got back, so the
                        // same response goes this way too. Nothing else changes.
                        let Some(n) = peer.tunn.repeat_response(&init, now, out) else {
                            return self.drop_net(Some(key), DropReason::Replay);
                        };
                        self.transmits.push_back(Transmit {
                            dst: reply_to,
                            payload: out[..n].to_vec(),
                        });
                        return NetOutcome::Handled;
                    }
                    Err(e) => Err(e),
                }
            }
            (Message::Response { .. }, _) => {
                if self.wg.check_mac1(datagram) {
                    peer.tunn
                        .receive_response(&self.wg, datagram, now)
                        .map(|()| {
                            // What waited for the handshake, or a keepalive that
                            // confirms the session (sent back where the response came
                            // from).
                            let dst = if peer.tunn.queued() > 0 {
                                release_to(peer)
                            } else {
                                reply_to
                            };
                            let transmits = &mut self.transmits;
                            peer.tunn.flush(now, true, &mut self.scratch, |m| {
                                transmits.push_back(Transmit {
                                    dst,
                                    payload: m.to_vec(),
                                });
                            });
                        })
                } else {
                    Err(wg::Error::BadAuth)
                }
            }
            (Message::Cookie { .. }, _) => peer.tunn.receive_cookie(datagram, now),
            (Message::Data { .. }, _) => match peer.tunn.decrypt(now, datagram, out) {
                Ok(n) => {
                    if peer.tunn.has_releasable(now) {
                        // The initiator confirmed the session we answered: send
                        // what waited for it.
                        let dst = release_to(peer);
                        let transmits = &mut self.transmits;
                        peer.tunn.flush(now, false, &mut self.scratch, |m| {
                            transmits.push_back(Transmit {
                                dst,
                                payload: m.to_vec(),
                            });
                        });
                    }
                    if n > 0 {
                        // Only IP packets go on (truncated to their length).
                        let Ok(view) = IpView::parse(&out[..n]) else {
                            return self.drop_net(Some(key), DropReason::NotWireGuard);
                        };
                        let (src, len) = (view.src, view.total_len);
                        heard(&mut self.events, key, peer, from, now);
                        return self.deliver(now, key, src, len, out);
                    }
                    // An authenticated keepalive.
                    Ok(())
                }
                Err(e) => Err(e),
            },
            (Message::Initiation { .. }, None) => Err(wg::Error::Malformed),
        };
        match result {
            Ok(()) => {
                // A cookie reply proves nothing about the path, nor does an
                // initiation over UDP (it shows the peer reaches us from
                // there, not that we reach it: our answer may be filtered by
                // its NAT). Responses and data do; the relay works both ways.
                let proves = match msg {
                    Message::Cookie { .. } => false,
                    Message::Initiation { .. } => from.is_none(),
                    Message::Response { .. } | Message::Data { .. } => true,
                };
                if let Some(peer) = self.peers.get_mut(&key) {
                    if proves {
                        heard(&mut self.events, key, peer, from, now);
                    } else if matches!(msg, Message::Initiation { .. }) && !peer.up {
                        // Still a sign of life (as before): the peer is up.
                        peer.up = true;
                        self.events.push_back(super::Event::PeerUp { key });
                    }
                }
                self.report_path_changes(now);
                NetOutcome::Handled
            }
            Err(e) => {
                tracing::trace!(peer = %key, error = %e, "WireGuard refused a datagram");
                self.drop_net(Some(key), reason(e))
            }
        }
    }
}
