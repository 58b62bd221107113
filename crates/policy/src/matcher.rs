//! The stateless half of the agent's decision: which compiled rules match a
//! packet, looked up by the peer's address so the cost depends on the rules that
//! concern that peer, not on the size of the policy.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::compile::{CompiledPolicy, FlowRule, RuleId, RuleInfo};
use crate::model::{Action, PortRange, Proto, ports_cover};
use crate::packet::IpView;

/// Which way a packet crosses this node's tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From a peer, after decryption and the source-address check, before the TUN.
    Ingress,
    /// From the TUN towards a peer, before encryption.
    Egress,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

/// IP protocol numbers.
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// TCP header flag bits, as in the `flags` of [`Transport::Tcp`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers (connection open).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// The header fields a decision needs: addresses and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FiveTuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol and its fields.
    pub transport: Transport,
}

/// Transport protocol fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// TCP with its ports and flag bits ([`tcp_flags`]).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flag bits (FIN, SYN, RST, ACK, ...).
        flags: u8,
    },
    /// UDP with its ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP or ICMPv6.
    Icmp {
        /// Echo request, echo reply, or another message.
        kind: IcmpKind,
        /// The echo identifier (0 for other messages).
        id: u16,
    },
    /// Any other IP protocol (also non-first fragments, which carry no ports).
    Other(u8),
}

/// The ICMP messages conntrack distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpKind {
    /// Echo request (ping): opens a tracked flow.
    EchoRequest,
    /// Echo reply: passes as the reply of a tracked echo request.
    EchoReply,
    /// Any other message (type, code): not tracked, needs an `icmp` rule.
    Other(u8, u8),
}

/// Why bytes are not a packet [`FiveTuple::parse`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the headers it announces.
    #[error("truncated packet")]
    Truncated,
    /// Version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    Version,
    /// IPv4 header length below 20 bytes, or too many IPv6 extension headers.
    #[error("malformed IP header")]
    Header,
}

impl FiveTuple {
    /// A TCP packet.
    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, flags: u8) -> Self {
        FiveTuple {
            src,
            dst,
            transport: Transport::Tcp {
                src_port,
                dst_port,
                flags,
            },
        }
    }

    /// A UDP packet.
    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        FiveTuple {
            src,
            dst,
            transport: Transport::Udp { src_port, dst_port },
        }
    }

    /// An ICMP packet.
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: IcmpKind, id: u16) -> Self {
        FiveTuple {
            src,
            dst,
            transport: Transport::Icmp { kind, id },
        }
    }

    /// The same flow seen from the other end: addresses and ports swapped (an
    /// echo request becomes its reply).
    pub fn reversed(&self) -> FiveTuple {
        let transport = match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => Transport::Tcp {
                src_port: dst_port,
                dst_port: src_port,
                flags,
            },
            Transport::Udp { src_port, dst_port } => Transport::Udp {
                src_port: dst_port,
                dst_port: src_port,
            },
            Transport::Icmp {
                kind: IcmpKind::EchoRequest,
                id,
            } => Transport::Icmp {
                kind: IcmpKind::EchoReply,
                id,
            },
            Transport::Icmp {
                kind: IcmpKind::EchoReply,
                id,
            } => Transport::Icmp {
                kind: IcmpKind::EchoRequest,
                id,
            },
            other @ (Transport::Icmp { .. } | Transport::Other(_)) => other,
        };
        FiveTuple {
            src: self.dst,
            dst: self.src,
            transport,
        }
    }

    /// Reads the tuple from an IPv4 or IPv6 packet ([`IpView::parse`], then
    /// [`FiveTuple::from_view`]).
    pub fn parse(pkt: &[u8]) -> Result<FiveTuple, PacketError> {
        FiveTuple::from_view(&IpView::parse(pkt)?, pkt)
    }

    /// Reads the tuple from a packet already parsed into `view` (the same
    /// `pkt`). IPv6 extension headers are walked by the view; a non-first
    /// fragment has no transport header and is reported as [`Transport::Other`]
    /// with its protocol.
    #[inline]
    pub fn from_view(view: &IpView, pkt: &[u8]) -> Result<FiveTuple, PacketError> {
        let (src, dst, proto) = (view.src, view.dst, view.protocol);
        if view.fragment {
            return Ok(FiveTuple {
                src,
                dst,
                transport: Transport::Other(proto),
            });
        }
        let l4 = view.transport(pkt);
        let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
        let transport = match proto {
            ip_proto::TCP => {
                if l4.len() < 14 {
                    return Err(PacketError::Truncated);
                }
                Transport::Tcp {
                    src_port: port(0),
                    dst_port: port(2),
                    flags: l4[13],
                }
            }
            ip_proto::UDP => {
                if l4.len() < 4 {
                    return Err(PacketError::Truncated);
                }
                Transport::Udp {
                    src_port: port(0),
                    dst_port: port(2),
                }
            }
            ip_proto::ICMP | ip_proto::ICMPV6 => {
                if l4.len() < 2 {
                    return Err(PacketError::Truncated);
                }
                let (req, rep) = if proto == ip_proto::ICMP {
                    (8, 0)
                } else {
                    (128, 129)
                };
                let kind = match l4[0] {
                    t if t == req => IcmpKind::EchoRequest,
                    t if t == rep => IcmpKind::EchoReply,
                    t => IcmpKind::Other(t, l4[1]),
                };
                let id = match kind {
                    IcmpKind::EchoRequest | IcmpKind::EchoReply => {
                        if l4.len() < 8 {
                            return Err(PacketError::Truncated);
                        }
                        port(4)
                    }
                    IcmpKind::Other(..) => 0,
                };
                Transport::Icmp { kind, id }
            }
            other => Transport::Other(other),
        };
        Ok(FiveTuple {
            src,
            dst,
            transport,
        })
    }

    /// The IP protocol number (ICMP follows the address family).
    pub fn ip_proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => ip_proto::TCP,
            Transport::Udp { .. } => ip_proto::UDP,
            Transport::Icmp { .. } if self.src.is_ipv6() => ip_proto::ICMPV6,
            Transport::Icmp { .. } => ip_proto::ICMP,
            Transport::Other(p) => p,
        }
    }
}

impl fmt::Display for FiveTuple {
    /// `tcp 100.64.0.2:40000 -> 100.64.0.3:5432`, `icmp echo-request 100.64.0.2 -> ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |f: &mut fmt::Formatter<'_>, a: IpAddr, p: u16| match a {
            IpAddr::V4(a) => write!(f, "{a}:{p}"),
            IpAddr::V6(a) => write!(f, "[{a}]:{p}"),
        };
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => {
                let name = if matches!(self.transport, Transport::Tcp { .. }) {
                    "tcp"
                } else {
                    "udp"
                };
                write!(f, "{name} ")?;
                ep(f, self.src, src_port)?;
                f.write_str(" -> ")?;
                ep(f, self.dst, dst_port)
            }
            Transport::Icmp { kind, id } => {
                match kind {
                    IcmpKind::EchoRequest => write!(f, "icmp echo-request id {id} ")?,
                    IcmpKind::EchoReply => write!(f, "icmp echo-reply id {id} ")?,
                    IcmpKind::Other(t, c) => write!(f, "icmp type {t} code {c} ")?,
                }
                write!(f, "{} -> {}", self.src, self.dst)
            }
            Transport::Other(p) => write!(f, "ip proto {p} {} -> {}", self.src, self.dst),
        }
    }
}

/// Whether a rule's protocol and destination ports cover a packet's transport.
pub(crate) fn proto_ports_match(proto: Proto, ports: &[PortRange], t: &Transport) -> bool {
    match (proto, t) {
        (Proto::Any, _) => true,
        (Proto::Tcp, Transport::Tcp { dst_port, .. })
        | (Proto::Udp, Transport::Udp { dst_port, .. }) => ports_cover(ports, *dst_port),
        (Proto::Icmp, Transport::Icmp { .. }) => true,
        (Proto::Tcp | Proto::Udp | Proto::Icmp, _) => false,
    }
}

/// What the rules alone say about a packet (before connection tracking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleVerdict {
    /// An allow rule matches and no deny does; the earliest such allow.
    Allow(RuleId),
    /// A deny rule matches; the earliest one.
    Deny(RuleId),
    /// No rule matches: default deny.
    NoRule,
}

impl RuleVerdict {
    /// Whether the packet may pass.
    pub fn is_allow(&self) -> bool {
        matches!(self, RuleVerdict::Allow(_))
    }

    /// The deciding rule, if any.
    pub fn rule(&self) -> Option<RuleId> {
        match self {
            RuleVerdict::Allow(r) | RuleVerdict::Deny(r) => Some(*r),
            RuleVerdict::NoRule => None,
        }
    }
}

/// Accumulates matching rules under the precedence: any deny beats every allow;
/// among rules of the same action the earliest (lowest id) is reported.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Precedence {
    allow: Option<RuleId>,
    deny: Option<RuleId>,
}

impl Precedence {
    pub(crate) fn add(&mut self, action: Action, id: RuleId) {
        let slot = match action {
            Action::Allow => &mut self.allow,
            Action::Deny => &mut self.deny,
        };
        if slot.is_none_or(|cur| id < cur) {
            *slot = Some(id);
        }
    }

    pub(crate) fn verdict(&self) -> RuleVerdict {
        match (self.deny, self.allow) {
            (Some(d), _) => RuleVerdict::Deny(d),
            (None, Some(a)) => RuleVerdict::Allow(a),
            (None, None) => RuleVerdict::NoRule,
        }
    }
}

/// Why a compiled policy cannot be enforced (it did not come from [`crate::compile()`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// A flow rule names a rule missing from the `rules` list.
    #[error("flow rule refers to unknown rule #{0}")]
    UnknownRule(u32),
    /// Ports on a rule whose protocol has none, or a range with first > last.
    #[error("rule #{0} has invalid ports")]
    BadPorts(u32),
}

/// Compiled rules indexed by peer address, per direction.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    rules: BTreeMap<RuleId, RuleInfo>,
    inbound: DirIndex,
    outbound: DirIndex,
}

#[derive(Debug, Clone, Default)]
struct DirIndex {
    flows: Vec<FlowRule>,
    /// Host prefixes (/32, /128) → flows naming them.
    hosts: BTreeMap<IpAddr, Vec<u32>>,
    /// Shorter IPv4 prefixes, per prefix length: network → flows.
    v4: Vec<(u8, BTreeMap<u32, Vec<u32>>)>,
    /// Shorter IPv6 prefixes, per prefix length: network → flows.
    v6: Vec<(u8, BTreeMap<u128, Vec<u32>>)>,
}

impl Matcher {
    /// Indexes a compiled policy; fails when it is inconsistent.
    pub fn new(policy: &CompiledPolicy) -> Result<Matcher, InvalidPolicy> {
        let rules: BTreeMap<RuleId, RuleInfo> =
            policy.rules.iter().map(|r| (r.id, r.clone())).collect();
        for f in policy.inbound.iter().chain(&policy.outbound) {
            if !rules.contains_key(&f.rule) {
                return Err(InvalidPolicy::UnknownRule(f.rule.0));
            }
            let ports_ok = f.ports.iter().all(|p| p.first <= p.last)
                && (f.ports.is_empty() || matches!(f.proto, Proto::Tcp | Proto::Udp));
            if !ports_ok {
                return Err(InvalidPolicy::BadPorts(f.rule.0));
            }
        }
        Ok(Matcher {
            rules,
            inbound: DirIndex::new(&policy.inbound),
            outbound: DirIndex::new(&policy.outbound),
        })
    }

    /// What the rules say about `packet` crossing in `dir`.
    pub fn evaluate(&self, dir: Direction, packet: &FiveTuple) -> RuleVerdict {
        self.evaluate_with(dir, packet, |_| {}).0
    }

    /// The info of a rule the policy references.
    pub fn rule(&self, id: RuleId) -> Option<&RuleInfo> {
        self.rules.get(&id)
    }

    /// Evaluates and calls `on_match` for every matching flow rule; also returns
    /// how many flow rules were examined (those indexed under the peer address).
    pub(crate) fn evaluate_with(
        &self,
        dir: Direction,
        packet: &FiveTuple,
        mut on_match: impl FnMut(&FlowRule),
    ) -> (RuleVerdict, usize) {
        let (index, local, peer) = match dir {
            Direction::Egress => (&self.outbound, packet.src, packet.dst),
            Direction::Ingress => (&self.inbound, packet.dst, packet.src),
        };
        let mut prec = Precedence::default();
        let mut examined = 0;
        index.for_each_candidate(peer, |i| {
            let Some(flow) = index.flows.get(i as usize) else {
                return;
            };
            examined += 1;
            if proto_ports_match(flow.proto, &flow.ports, &packet.transport)
                && flow.local.iter().any(|n| n.contains(&local))
            {
                prec.add(flow.action, flow.rule);
                on_match(flow);
            }
        });
        (prec.verdict(), examined)
    }
}

impl DirIndex {
    fn new(flows: &[FlowRule]) -> DirIndex {
        let mut hosts: BTreeMap<IpAddr, Vec<u32>> = BTreeMap::new();
        let mut v4: BTreeMap<u8, BTreeMap<u32, Vec<u32>>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, BTreeMap<u128, Vec<u32>>> = BTreeMap::new();
        for (i, f) in flows.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for net in &f.peers {
                let net = net.trunc();
                let list = match net {
                    _ if net.prefix_len() == net.max_prefix_len() => {
                        hosts.entry(net.network()).or_default()
                    }
                    ipnet::IpNet::V4(n) => v4
                        .entry(n.prefix_len())
                        .or_default()
                        .entry(u32::from(n.network()))
                        .or_default(),
                    ipnet::IpNet::V6(n) => v6
                        .entry(n.prefix_len())
                        .or_default()
                        .entry(u128::from(n.network()))
                        .or_default(),
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        DirIndex {
            flows: flows.to_vec(),
            hosts,
            v4: v4.into_iter().collect(),
            v6: v6.into_iter().collect(),
        }
    }

    /// Calls `f` with every flow indexed under a prefix containing `peer`. Cost:
    /// one lookup per distinct prefix length, plus the flows found.
    fn for_each_candidate(&self, peer: IpAddr, mut f: impl FnMut(u32)) {
        if let Some(list) = self.hosts.get(&peer) {
            list.iter().copied().for_each(&mut f);
        }
        match peer {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                for (len, map) in &self.v4 {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(*len))
                    };
                    if let Some(list) = map.get(&(bits & mask)) {
                        list.iter().copied().for_each(&mut f);
                    }
                }
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                for (len, map) in &self.v6 {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(*len))
                    };
                    if let Some(list) = map.get(&(bits & mask)) {
                        list.iter().copied().for_each(&mut f);
                    }
                }
            }
        }
    }
}
