//! The underlay: packets from TUNs, datagrams on links and through NATs, the
//! relay, the STUN server, and the trace lines for each.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use weft_proto::stun;
use weft_tunnel::{Dest, Event, NetOutcome, TunOutcome};

use super::{Arrival, Flight, Link, PathEvent, STUN_SERVER, Sim};
use crate::packet;

impl Sim {
    // ----- traffic ----------------------------------------------------------------

    /// A new test packet from `src` (host `from`'s overlay address when `None`;
    /// another address makes it spoofed) to host `to`'s overlay address and
    /// `dport`, with a fresh id and source port (so it opens a flow of its own).
    pub fn packet(
        &mut self,
        from: usize,
        src: Option<IpAddr>,
        to: usize,
        proto: packet::Proto,
        dport: u16,
    ) -> (u64, Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id;
        let src = src.unwrap_or(self.hosts[from].overlay);
        let sport = 10_000 + (id % 50_000) as u16;
        (
            id,
            packet::make(proto, src, self.hosts[to].overlay, sport, dport, id),
        )
    }

    /// Host `i` writes `packet` into its TUN.
    pub fn send(&mut self, i: usize, packet: &[u8]) {
        let now = self.instant();
        let mut out = std::mem::take(&mut self.scratch);
        let name = self.hosts[i].name.clone();
        let id = packet::id_of(packet);
        let id_s = id.map_or_else(|| "-".to_owned(), |v| v.to_string());
        match self.hosts[i]
            .node
            .handle_tun_packet(now, 0, packet, &mut out)
        {
            TunOutcome::Send { dst, datagram } => {
                self.trace
                    .line(self.now, || format!("tun {name} pkt#{id_s} sent"));
                let bytes = datagram.to_vec();
                self.transmit(i, dst, bytes);
            }
            TunOutcome::Queued => {
                self.trace
                    .line(self.now, || format!("tun {name} pkt#{id_s} queued"));
            }
            TunOutcome::Reply(r) => {
                let n = r.len();
                self.trace.line(self.now, || {
                    format!("tun {name} pkt#{id_s} icmp-reply {n}B")
                });
            }
            TunOutcome::Dropped(r) => {
                self.trace
                    .line(self.now, || format!("tun {name} pkt#{id_s} dropped {r}"));
            }
        }
        self.scratch = out;
        self.drain(i);
    }

    /// Drains host `i`'s node: transmits onto the wire, events into the trace.
    pub(super) fn drain(&mut self, i: usize) {
        let mut sends = Vec::new();
        while let Some(t) = self.hosts[i].node.poll_transmit() {
            sends.push(t);
        }
        for t in sends {
            self.transmit(i, t.dst, t.payload);
        }
        let mut reflexive_changed = false;
        while let Some(e) = self.hosts[i].node.poll_event() {
            let line = self.describe(&e);
            let name = self.hosts[i].name.clone();
            self.trace.line(self.now, || format!("event {name} {line}"));
            if let Event::ReflexiveAddresses { addrs } = &e {
                self.hosts[i].reflexive.clone_from(addrs);
                reflexive_changed = true;
            }
            self.hosts[i].events.push((self.now, e));
        }
        if reflexive_changed {
            // The node reports its candidates; the controller maps them at once.
            let _ = self.apply_maps();
        }
    }

    fn describe(&self, e: &Event) -> String {
        match e {
            Event::PeerUp { key } => format!("peer-up {}", self.name_of(key)),
            Event::PeerDown { key } => format!("peer-down {}", self.name_of(key)),
            Event::PathChanged { key, path } => {
                format!("path {} {path:?}", self.name_of(key))
            }
            Event::PolicyDrop {
                key,
                direction,
                explanation,
                suppressed,
            } => format!(
                "policy-drop {} {direction:?} {explanation} (+{suppressed})",
                self.name_of(key)
            ),
            Event::PolicyRejected { why } => format!("policy-rejected {why}"),
            Event::ReflexiveAddresses { addrs } => format!("reflexive {addrs:?}"),
            Event::PeerRejected { key, why } => {
                format!("peer-rejected {} {why}", self.name_of(key))
            }
        }
    }

    fn schedule(&mut self, delay: Duration, f: Flight) {
        self.seq += 1;
        self.wire.insert((self.now + delay, self.seq), f);
    }

    fn jitter(&mut self, a: &Link, b: &Link) -> Duration {
        let span = (a.jitter + b.jitter).as_micros() as u64;
        Duration::from_micros(self.rng.below(span + 1))
    }

    /// Host `i` sends `bytes` to `dst`.
    fn transmit(&mut self, i: usize, dst: Dest, bytes: Vec<u8>) {
        let kind = packet::kind(&bytes);
        let digest = packet::digest(&bytes);
        let len = bytes.len();
        let name = self.hosts[i].name.clone();
        match dst {
            Dest::Relay(key) => {
                let to = self.host_of(&key);
                let to_name = self.name_of(&key);
                let ok = self.relay_connected(i) && to.is_some();
                self.trace.line(self.now, || {
                    format!(
                        "send {name} -> relay:{to_name} {kind} {len}B #{digest:08x}{}",
                        if ok { "" } else { " dropped relay-unavailable" }
                    )
                });
                if let (true, Some(to)) = (ok, to) {
                    let (la, lb) = (self.hosts[i].link, self.hosts[to].link);
                    let delay =
                        la.latency + lb.latency + self.relay_latency + self.jitter(&la, &lb);
                    self.schedule(delay, Flight::Relay { from: i, to, bytes });
                }
            }
            Dest::Udp(to_addr) => {
                let target = self
                    .hosts
                    .iter()
                    .position(|h| h.public_ip() == to_addr.ip());
                let drop = if !self.hosts[i].up {
                    Some("uplink-down")
                } else if target.is_none() && to_addr != STUN_SERVER {
                    Some("no-route")
                } else if target.is_some_and(|j| j == i || self.is_cut(i, j)) {
                    Some("cut")
                } else {
                    None
                };
                let local = self.hosts[i].local;
                let src = if drop.is_none() {
                    let now = self.now;
                    match self.hosts[i].nat.as_mut() {
                        Some(nat) => nat.outbound(now, local, to_addr, &mut self.rng),
                        None => local,
                    }
                } else {
                    local
                };
                let la = self.hosts[i].link;
                let lb = target.map_or_else(Link::default, |j| self.hosts[j].link);
                let lost = drop.is_none() && self.rng.chance_ppm(la.loss_ppm + lb.loss_ppm);
                let drop = drop.or(lost.then_some("lost"));
                self.trace.line(self.now, || {
                    format!(
                        "send {name} {src} -> {to_addr} {kind} {len}B #{digest:08x}{}",
                        drop.map_or_else(String::new, |d| format!(" dropped {d}"))
                    )
                });
                if drop.is_none() {
                    let delay = la.latency + lb.latency + self.jitter(&la, &lb);
                    self.schedule(
                        delay,
                        Flight::Udp {
                            src,
                            dst: to_addr,
                            to: target,
                            bytes,
                        },
                    );
                }
            }
        }
    }

    /// Delivers one datagram that reached its destination.
    pub(super) fn arrive(&mut self, f: Flight) {
        let now = self.instant();
        match f {
            Flight::Udp {
                src,
                dst,
                to: None,
                bytes,
            } => self.stun_answer(src, dst, &bytes),
            Flight::Udp {
                src,
                dst,
                to: Some(j),
                bytes,
            } => {
                let name = self.hosts[j].name.clone();
                let kind = packet::kind(&bytes);
                if !self.hosts[j].up {
                    self.trace.line(self.now, || {
                        format!("drop {name} {kind} from {src} uplink-down")
                    });
                    return;
                }
                let at = self.now;
                if let Some(nat) = self.hosts[j].nat.as_mut() {
                    let res = nat.inbound(at, dst.port(), src);
                    for t in nat.take_expired() {
                        self.path_events.push(PathEvent { at: t, host: j });
                    }
                    if let Err(why) = res {
                        let why = why.as_str();
                        self.trace
                            .line(self.now, || format!("drop {name} {kind} from {src} {why}"));
                        return;
                    }
                } else if dst != self.hosts[j].local {
                    self.trace.line(self.now, || {
                        format!("drop {name} {kind} from {src} no-socket")
                    });
                    return;
                }
                let mut out = std::mem::take(&mut self.scratch);
                let res = self.hosts[j]
                    .node
                    .handle_datagram(now, src, &bytes, &mut out);
                self.outcome(j, &format!("from {src} {kind}"), res);
                self.scratch = out;
                self.drain(j);
            }
            Flight::Relay { from, to, bytes } => {
                let name = self.hosts[to].name.clone();
                let from_name = self.hosts[from].name.clone();
                let kind = packet::kind(&bytes);
                if !self.relay_connected(to) {
                    self.trace.line(self.now, || {
                        format!("drop {name} {kind} relay:{from_name} relay-unavailable")
                    });
                    return;
                }
                let key = self.hosts[from].key;
                let mut out = std::mem::take(&mut self.scratch);
                let res = self.hosts[to]
                    .node
                    .handle_relay_frame(now, key, &bytes, &mut out);
                self.outcome(to, &format!("relay:{from_name} {kind}"), res);
                self.scratch = out;
                self.drain(to);
            }
        }
    }

    fn outcome(&mut self, j: usize, what: &str, res: NetOutcome<'_>) {
        let name = self.hosts[j].name.clone();
        match res {
            NetOutcome::WriteTun { packet, .. } => {
                let id = packet::id_of(packet);
                let id_s = id.map_or_else(|| "-".to_owned(), |v| v.to_string());
                self.trace
                    .line(self.now, || format!("recv {name} {what} -> tun pkt#{id_s}"));
                let at = self.now;
                let packet = packet.to_vec();
                // The sender, by the packet's (checked) inner source.
                let sender = packet
                    .get(12..16)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(IpAddr::from)
                    .and_then(|src| self.hosts.iter().position(|h| h.overlay == src));
                let key_age = sender
                    .and_then(|k| self.peer_status(j, k))
                    .and_then(|p| p.since_handshake);
                self.hosts[j].tun.push(Arrival {
                    at,
                    id,
                    packet,
                    key_age,
                });
            }
            NetOutcome::Handled => {
                self.trace.line(self.now, || format!("recv {name} {what}"));
            }
            NetOutcome::Dropped(r) => {
                self.trace
                    .line(self.now, || format!("recv {name} {what} dropped {r}"));
            }
        }
    }

    /// The STUN server answers a binding request with the address it saw.
    fn stun_answer(&mut self, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        let Ok(req) = stun::parse_binding_request(bytes) else {
            self.trace
                .line(self.now, || format!("drop stun from {src} not-a-request"));
            return;
        };
        let mut resp = Vec::new();
        stun::encode_binding_response(&req, src, &mut resp);
        let target = self.hosts.iter().position(|h| h.public_ip() == src.ip());
        let link = target.map_or_else(Link::default, |j| self.hosts[j].link);
        self.trace.line(self.now, || format!("stun answer {src}"));
        let delay = link.latency + self.jitter(&link, &Link::default());
        self.schedule(
            delay,
            Flight::Udp {
                src: dst,
                dst: src,
                to: target,
                bytes: resp,
            },
        );
    }
}
