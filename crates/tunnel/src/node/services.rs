//! Service VIPs on the consumer: a packet to a service's virtual IP goes to one
//! of its instances (the backends), chosen per flow, and the replies come back
//! from the VIP.
//!
//! Outbound (TUN → peer), before routing and policy: a TCP or UDP packet to a
//! VIP on one of the service's ports finds its flow (protocol, client address
//! and port, VIP and port) or opens one on a backend picked by a hash of that
//! 5-tuple among the healthy backends (the unknown ones when none is healthy;
//! never an unhealthy one); its destination becomes the backend's overlay
//! address (same port), the IPv4 header and TCP/UDP checksums updated
//! incrementally (RFC 1624). Routing and the access policy then see the real
//! addresses. Inbound (peer → TUN), after the source check and the policy: a
//! packet from a backend that answers a flow gets its source set back to the
//! VIP.
//!
//! Checksums: the core only ever sees complete checksums. On the TUN read path
//! tun-rs completes every offloaded packet before the core gets it (a TSO/USO
//! super-packet is split with a full checksum per segment, a `NEEDS_CSUM`
//! packet has its partial checksum, the pseudo-header sum, finished by
//! `gso_none_checksum`); on the write path the GRO coalescer checks each
//! packet's full checksum and writes a coalesced packet's pseudo-header sum from
//! the addresses as they are then (the VIP). The agent's `dataplane::vip_offload`
//! tests run real TSO super-packets and GRO writes through these paths.
//!
//! A flow is sticky for its life: a health change affects only new flows; a
//! flow whose backend (or service, or port) leaves the configuration ends at
//! once. The table is bounded ([`MAX_SERVICE_FLOWS`]; when full, the flow
//! closest to expiry makes room) and flows expire when idle, with the policy
//! conntrack's timeouts so a mapping lives as long as the flow the policy
//! allows: 30 s before a reply, then 2 h 4 min for TCP (4 min once a FIN or
//! RST was seen; a new SYN on a closing flow picks afresh) and 2 min for UDP.
//!
//! Only IPv4 (VIPs are IPv4). A non-first fragment carries no ports: it is
//! refused like a packet to a port the service does not have.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use weft_proto::service::{Health, ServicePort, ServiceProto};

use super::NetIndex;
use crate::counters::DropReason;
use crate::ip::{self, IpView, proto};

/// Most service flows tracked at once.
pub const MAX_SERVICE_FLOWS: usize = 65_536;
/// Idle timeout of a flow before its first reply.
const UNREPLIED: Duration = Duration::from_secs(30);
/// Idle timeout of an answered TCP flow.
const TCP_ESTABLISHED: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
/// Idle timeout of a TCP flow once a FIN or RST was seen.
const TCP_CLOSING: Duration = Duration::from_secs(240);
/// Idle timeout of an answered UDP flow.
const UDP: Duration = Duration::from_secs(120);

/// One service as the consumer's data plane sees it (from the map's
/// `services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNat {
    /// The service's name (status only).
    pub name: String,
    /// The network (and TUN) the service belongs to.
    pub net: NetIndex,
    /// Its virtual IP.
    pub vip: Ipv4Addr,
    /// Its ports; the backends listen on the same ports.
    pub ports: Vec<ServicePort>,
    /// The instances this node may reach.
    pub backends: Vec<Backend>,
}

/// One instance of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The provider's overlay address in the service's network.
    pub addr: Ipv4Addr,
    /// Its health: new flows go to healthy backends, to unknown ones only
    /// when none is healthy, never to unhealthy ones.
    pub health: Health,
}

/// One service's counters, as [`crate::Node::service_status`] reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its network.
    pub net: NetIndex,
    /// Its VIP.
    pub vip: Option<Ipv4Addr>,
    /// Flows open now.
    pub flows: u64,
    /// Flows opened since the service appeared.
    pub flows_opened: u64,
    /// Packets sent to it (rewritten to a backend).
    pub packets_out: u64,
    /// Packets received from it (rewritten back to the VIP).
    pub packets_in: u64,
    /// Packets refused: no usable backend.
    pub drops_no_instance: u64,
    /// Packets refused: not TCP/UDP to one of its ports.
    pub drops_port: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    net: NetIndex,
    proto: u8,
    client: (Ipv4Addr, u16),
    vip: (Ipv4Addr, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ReplyKey {
    net: NetIndex,
    proto: u8,
    backend: (Ipv4Addr, u16),
    client: (Ipv4Addr, u16),
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    backend: Ipv4Addr,
    /// Its service's index in `list` (kept by `apply`).
    svc: usize,
    replied: bool,
    closing: bool,
    deadline: Instant,
    /// Its key in the deadline index: a lower bound of `deadline`.
    indexed: (Instant, u64),
}

impl Flow {
    fn timeout(&self, tcp: bool) -> Duration {
        match (self.replied, tcp, self.closing) {
            (false, _, _) => UNREPLIED,
            (true, true, true) => TCP_CLOSING,
            (true, true, false) => TCP_ESTABLISHED,
            (true, false, _) => UDP,
        }
    }
}

/// What to do with a packet to a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// Not a VIP: route it as it is.
    NotVip,
    /// To the backend: apply `rewrite` to the packet's bytes (on their way
    /// into the encrypted message; the policy reads the view with the
    /// backend as destination).
    Rewritten { backend: Ipv4Addr, rewrite: Rewrite },
    /// Refused: answer with this unreachable.
    Refused(DropReason, ip::Unreachable),
}

/// The VIP table, the flows and their counters.
#[derive(Debug)]
pub(super) struct Services {
    list: Vec<ServiceNat>,
    by_vip: BTreeMap<(NetIndex, Ipv4Addr), usize>,
    /// Counters, by index in `list`.
    stats: Vec<ServiceStatus>,
    flows: BTreeMap<FlowKey, Flow>,
    replies: BTreeMap<ReplyKey, FlowKey>,
    by_deadline: BTreeMap<(Instant, u64), FlowKey>,
    seq: u64,
    capacity: usize,
    /// Flows ended to make room for new ones.
    pub(super) evicted: u64,
}

impl Default for Services {
    fn default() -> Self {
        Self::with_capacity(MAX_SERVICE_FLOWS)
    }
}

/// FNV-1a over the flow's 5-tuple, then a final mix: deterministic, so the
/// same flow picks the same backend across runs.
fn flow_hash(k: &FlowKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(k.proto);
    k.client.0.octets().into_iter().for_each(&mut eat);
    k.client.1.to_be_bytes().into_iter().for_each(&mut eat);
    k.vip.0.octets().into_iter().for_each(&mut eat);
    k.vip.1.to_be_bytes().into_iter().for_each(&mut eat);
    // splitmix64's finalizer: FNV's low bits alone spread poorly over `% n`.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The backend a new flow uses: among the healthy backends, else the unknown
/// ones, the one `hash` picks (as `weft_proto::service::ServiceView::pick`).
fn pick(backends: &[Backend], hash: u64) -> Option<Ipv4Addr> {
    let pool = |h: Health| backends.iter().filter(move |b| b.health == h);
    let healthy = pool(Health::Healthy).count();
    let (h, n) = if healthy > 0 {
        (Health::Healthy, healthy)
    } else {
        (Health::Unknown, pool(Health::Unknown).count())
    };
    if n == 0 {
        return None;
    }
    pool(h).nth((hash % n as u64) as usize).map(|b| b.addr)
}

impl Services {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            list: Vec::new(),
            by_vip: BTreeMap::new(),
            stats: Vec::new(),
            flows: BTreeMap::new(),
            replies: BTreeMap::new(),
            by_deadline: BTreeMap::new(),
            seq: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Whether any service is configured (the hot path's first test).
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `dst` in `net` is a VIP.
    #[cfg(test)]
    pub(super) fn is_vip(&self, net: NetIndex, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(d) => self.by_vip.contains_key(&(net, d)),
            IpAddr::V6(_) => false,
        }
    }

    /// Puts `services` in force. Flows whose service, port or backend is gone
    /// end; the others keep their backend whatever its health now. Counters
    /// stay with a service while its network and VIP do.
    pub(super) fn apply(&mut self, services: &[ServiceNat]) {
        let mut old: BTreeMap<(NetIndex, Ipv4Addr), ServiceStatus> = self
            .list
            .iter()
            .zip(std::mem::take(&mut self.stats))
            .map(|(s, st)| ((s.net, s.vip), st))
            .collect();
        self.list = services.to_vec();
        self.by_vip.clear();
        self.stats.clear();
        for (i, s) in self.list.iter().enumerate() {
            self.by_vip.entry((s.net, s.vip)).or_insert(i);
            let mut st = old.remove(&(s.net, s.vip)).unwrap_or_default();
            st.name.clone_from(&s.name);
            st.net = s.net;
            st.vip = Some(s.vip);
            st.flows = 0;
            self.stats.push(st);
        }
        let (list, by_vip) = (&self.list, &self.by_vip);
        let mut stale = Vec::new();
        for (k, f) in &mut self.flows {
            let idx = by_vip.get(&(k.net, k.vip.0)).copied();
            let keep = idx.is_some_and(|i| {
                let s = &list[i];
                s.ports
                    .iter()
                    .any(|p| proto_number(p.proto) == k.proto && p.port == k.vip.1)
                    && s.backends.iter().any(|b| b.addr == f.backend)
            });
            match idx {
                Some(i) if keep => f.svc = i,
                _ => stale.push(*k),
            }
        }
        for k in &stale {
            if let Some(f) = self.flows.remove(k) {
                self.replies.remove(&reply_key(k, f.backend));
            }
        }
        for f in self.flows.values() {
            if let Some(st) = self.stats.get_mut(f.svc) {
                st.flows += 1;
            }
        }
    }

    fn remove(&mut self, k: &FlowKey) {
        if let Some(f) = self.flows.remove(k) {
            self.replies.remove(&reply_key(k, f.backend));
            if let Some(st) = self.stats.get_mut(f.svc) {
                st.flows = st.flows.saturating_sub(1);
            }
        }
    }

    /// Handles a packet from the TUN of `net`: [`Outbound::NotVip`] unless its
    /// destination is a VIP.
    #[inline]
    pub(super) fn outbound(
        &mut self,
        now: Instant,
        net: NetIndex,
        packet: &[u8],
        view: &IpView,
    ) -> Outbound {
        let (IpAddr::V4(client), IpAddr::V4(vip)) = (view.src, view.dst) else {
            return Outbound::NotVip;
        };
        let Some(&idx) = self.by_vip.get(&(net, vip)) else {
            return Outbound::NotVip;
        };
        let ports = match view.protocol {
            proto::TCP | proto::UDP => view.ports(packet),
            _ => None,
        };
        let Some((sport, dport)) = ports else {
            return self.refuse(idx, DropReason::ServicePort);
        };
        let key = FlowKey {
            net,
            proto: view.protocol,
            client: (client, sport),
            vip: (vip, dport),
        };
        let flags = tcp_flags(view, packet);
        let tcp = view.protocol == proto::TCP;
        // The common case: a live flow, one lookup.
        let syn_only = flags.is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
        let backend = match self.flows.get_mut(&key) {
            Some(f) if f.deadline > now && !(f.closing && syn_only) => {
                if flags.is_some_and(|f| f & (TCP_FIN | TCP_RST) != 0) {
                    f.closing = true;
                }
                f.deadline = now + f.timeout(tcp);
                f.backend
            }
            found => {
                let has_port = self.list[idx]
                    .ports
                    .iter()
                    .any(|p| proto_number(p.proto) == view.protocol && p.port == dport);
                if !has_port {
                    return self.refuse(idx, DropReason::ServicePort);
                }
                if found.is_some() {
                    // Expired, or a new connection reusing a closed one's
                    // ports: pick afresh.
                    self.remove(&key);
                }
                let Some(backend) = pick(&self.list[idx].backends, flow_hash(&key)) else {
                    return self.refuse(idx, DropReason::ServiceNoInstance);
                };
                let Some(rewrite) = Rewrite::plan(packet, view, Field::Dst, backend) else {
                    return Outbound::Refused(DropReason::MalformedIp, ip::Unreachable::Host);
                };
                self.open(now, key, idx, backend);
                if let Some(f) = self.flows.get_mut(&key)
                    && flags.is_some_and(|f| f & (TCP_FIN | TCP_RST) != 0)
                {
                    f.closing = true;
                    f.deadline = now + f.timeout(tcp);
                }
                self.stats[idx].packets_out += 1;
                return Outbound::Rewritten { backend, rewrite };
            }
        };
        let Some(rewrite) = Rewrite::plan(packet, view, Field::Dst, backend) else {
            return Outbound::Refused(DropReason::MalformedIp, ip::Unreachable::Host);
        };
        self.stats[idx].packets_out += 1;
        Outbound::Rewritten { backend, rewrite }
    }

    fn refuse(&mut self, idx: usize, why: DropReason) -> Outbound {
        if let Some(st) = self.stats.get_mut(idx) {
            match why {
                DropReason::ServiceNoInstance => st.drops_no_instance += 1,
                DropReason::ServicePort => st.drops_port += 1,
                _ => {}
            }
        }
        let kind = match why {
            DropReason::ServicePort => ip::Unreachable::Port,
            _ => ip::Unreachable::Host,
        };
        Outbound::Refused(why, kind)
    }

    fn open(&mut self, now: Instant, key: FlowKey, svc: usize, backend: Ipv4Addr) {
        while self.flows.len() >= self.capacity {
            if !self.pop_earliest(now) {
                break;
            }
        }
        // A flow of another VIP whose replies would look the same (the kernel
        // reused a source port for the same backend): the newer one wins.
        if let Some(old) = self.replies.get(&reply_key(&key, backend)).copied() {
            self.remove(&old);
        }
        let mut flow = Flow {
            backend,
            svc,
            replied: false,
            closing: false,
            deadline: now,
            indexed: (now, 0),
        };
        flow.deadline = now + flow.timeout(key.proto == proto::TCP);
        self.seq += 1;
        flow.indexed = (flow.deadline, self.seq);
        self.by_deadline.insert(flow.indexed, key);
        self.flows.insert(key, flow);
        self.replies.insert(reply_key(&key, backend), key);
        if let Some(st) = self.stats.get_mut(svc) {
            st.flows += 1;
            st.flows_opened += 1;
        }
    }

    /// Removes the flow closest to expiry (returns false when none is left);
    /// counted as evicted when it was still live.
    fn pop_earliest(&mut self, now: Instant) -> bool {
        while let Some((indexed, key)) = self.by_deadline.pop_first() {
            let Some(f) = self.flows.get_mut(&key) else {
                continue;
            };
            if f.indexed != indexed {
                continue;
            }
            if f.deadline > indexed.0 {
                // Refreshed since it was indexed: back in at its real deadline.
                self.seq += 1;
                f.indexed = (f.deadline, self.seq);
                self.by_deadline.insert(f.indexed, key);
                continue;
            }
            if f.deadline > now {
                self.evicted += 1;
            }
            self.remove(&key);
            return true;
        }
        false
    }

    /// A packet from a peer in `net`, already allowed: when it answers a flow,
    /// its source becomes the VIP again (in place).
    #[inline]
    pub(super) fn inbound(
        &mut self,
        now: Instant,
        net: NetIndex,
        view: &IpView,
        packet: &mut [u8],
    ) {
        if self.flows.is_empty() {
            return;
        }
        self.reply(now, net, view, packet);
    }

    fn reply(&mut self, now: Instant, net: NetIndex, view: &IpView, packet: &mut [u8]) {
        let (IpAddr::V4(backend), IpAddr::V4(client)) = (view.src, view.dst) else {
            return;
        };
        if !matches!(view.protocol, proto::TCP | proto::UDP) {
            return;
        }
        let Some((sport, dport)) = view.ports(packet) else {
            return;
        };
        let rk = ReplyKey {
            net,
            proto: view.protocol,
            backend: (backend, sport),
            client: (client, dport),
        };
        let Some(key) = self.replies.get(&rk).copied() else {
            return;
        };
        let flags = tcp_flags(view, packet);
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if f.deadline <= now {
            self.remove(&key);
            return;
        }
        f.replied = true;
        if flags.is_some_and(|f| f & (TCP_FIN | TCP_RST) != 0) {
            f.closing = true;
        }
        f.deadline = now + f.timeout(key.proto == proto::TCP);
        let svc = f.svc;
        if let Some(rewrite) = Rewrite::plan(packet, view, Field::Src, key.vip.0) {
            rewrite.apply(packet);
            if let Some(st) = self.stats.get_mut(svc) {
                st.packets_in += 1;
            }
        }
    }

    /// Ends the flows idle past their deadline.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((&indexed, &key)) = self.by_deadline.first_key_value() {
            if indexed.0 > now {
                break;
            }
            self.by_deadline.pop_first();
            let Some(f) = self.flows.get_mut(&key) else {
                continue;
            };
            if f.indexed != indexed {
                continue;
            }
            if f.deadline <= now {
                self.remove(&key);
            } else {
                self.seq += 1;
                f.indexed = (f.deadline, self.seq);
                self.by_deadline.insert(f.indexed, key);
            }
        }
    }

    /// When [`Services::expire`] has something to do (a lower bound).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first_key_value().map(|((t, _), _)| *t)
    }

    /// Every service's counters, in configuration order.
    pub(super) fn status(&self) -> Vec<ServiceStatus> {
        self.stats.clone()
    }

    #[cfg(test)]
    pub(super) fn backend_of(
        &self,
        net: NetIndex,
        proto: u8,
        client: (Ipv4Addr, u16),
        vip: (Ipv4Addr, u16),
    ) -> Option<Ipv4Addr> {
        self.flows
            .get(&FlowKey {
                net,
                proto,
                client,
                vip,
            })
            .map(|f| f.backend)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }
}

fn reply_key(k: &FlowKey, backend: Ipv4Addr) -> ReplyKey {
    ReplyKey {
        net: k.net,
        proto: k.proto,
        backend: (backend, k.vip.1),
        client: k.client,
    }
}

fn proto_number(p: ServiceProto) -> u8 {
    match p {
        ServiceProto::Tcp => proto::TCP,
        ServiceProto::Udp => proto::UDP,
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A TCP packet's flags (None for other protocols or a short header).
fn tcp_flags(view: &IpView, packet: &[u8]) -> Option<u8> {
    if view.protocol != proto::TCP || view.fragment {
        return None;
    }
    packet.get(view.transport_offset + 13).copied()
}

/// Which address a [`Rewrite`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Src,
    Dst,
}

/// A planned change of an IPv4 packet's source or destination, with the
/// checksums it implies, applied to the packet's bytes wherever they are
/// (in place, or on their way into the encrypted message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewrite {
    /// Where the address is (12: source, 16: destination).
    at: usize,
    old: [u8; 4],
    new: [u8; 4],
    /// The TCP/UDP checksum's offset (None: not a first fragment or whole
    /// TCP/UDP packet, or a UDP datagram without a checksum).
    csum_at: Option<usize>,
    udp: bool,
}

impl Rewrite {
    /// The rewrite of `packet`'s source or destination to `new`, updating
    /// the header checksum and (first fragment or whole packet) the TCP or
    /// UDP checksum incrementally (RFC 1624); a UDP checksum of 0 (none)
    /// stays 0. None when the packet is not IPv4 or its transport header is
    /// cut short.
    pub(crate) fn plan(packet: &[u8], view: &IpView, which: Field, new: Ipv4Addr) -> Option<Self> {
        if !view.src.is_ipv4() || packet.len() < 20 {
            return None;
        }
        let at = match which {
            Field::Src => 12,
            Field::Dst => 16,
        };
        let t = view.transport_offset;
        let udp = view.protocol == proto::UDP;
        let csum_at = match (view.protocol, view.fragment) {
            (_, true) => None,
            (proto::TCP, false) => Some(t + 16),
            (proto::UDP, false) => Some(t + 6),
            _ => None,
        };
        let mut csum_at = csum_at;
        if let Some(c) = csum_at {
            let field = packet.get(c..c + 2).filter(|_| c + 2 <= view.total_len)?;
            if udp && field == [0, 0] {
                csum_at = None;
            }
        }
        let mut old = [0u8; 4];
        old.copy_from_slice(&packet[at..at + 4]);
        Some(Self {
            at,
            old,
            new: new.octets(),
            csum_at,
            udp,
        })
    }

    /// Applies it to `packet` (the bytes it was planned on, or a copy).
    #[inline]
    pub(crate) fn apply(&self, packet: &mut [u8]) {
        let Some(addr) = packet.get_mut(self.at..self.at + 4) else {
            return;
        };
        addr.copy_from_slice(&self.new);
        let hc = u16::from_be_bytes([packet[10], packet[11]]);
        packet[10..12]
            .copy_from_slice(&ip::checksum_replace4(hc, self.old, self.new).to_be_bytes());
        if let Some(c) = self.csum_at
            && let Some(field) = packet.get_mut(c..c + 2)
        {
            let sum = u16::from_be_bytes([field[0], field[1]]);
            let mut next = ip::checksum_replace4(sum, self.old, self.new);
            if self.udp && next == 0 {
                next = 0xffff;
            }
            field.copy_from_slice(&next.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
