//! Connection tracking: the flows a rule allowed, so their packets (and replies,
//! which no rule may allow) pass until the flow goes idle.
//!
//! A flow is keyed by its normalised tuple (protocol, the two address/port
//! endpoints in sorted order; the echo identifier stands in for ports with ICMP),
//! so both directions find the same entry. The entry remembers which direction
//! and which endpoint opened it: a packet belongs to the flow when it repeats
//! the opening packet's orientation or exactly reverses it.
//!
//! Expiry is driven by `now`: an entry is dead from its deadline on (`now >=
//! deadline`), whether or not [`Conntrack::expire`] has run. The table is bounded;
//! when full, inserting evicts the entry closest to expiry.
//!
//! Each entry counts the bytes and packets of its flow in both directions (the
//! lookup that finds it adds the packet: no second pass); an entry that leaves
//! the table, for whatever reason, folds its counts into the usage totals
//! ([`crate::usage`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::compile::RuleId;
use crate::matcher::{Direction, FiveTuple, IcmpKind, Transport, tcp_flags};
use crate::usage::{Bucket, Usage, UsageCounters, UsageKey, UsageTable};

/// Timeouts and capacity of the connection table. Defaults in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most flows tracked at once [65,536]; the entry closest to expiry is
    /// evicted to make room (counted in [`crate::Counters::flows_evicted`]).
    pub capacity: usize,
    /// Idle timeout of a TCP flow that has seen a reply [2 h 4 min, RFC 5382
    /// REQ-5's minimum for established connections].
    pub tcp_established: Duration,
    /// Idle timeout once a FIN or RST was seen [4 min, RFC 5382's transitory
    /// timeout].
    pub tcp_closing: Duration,
    /// Idle timeout of a UDP flow that has seen a reply [2 min, RFC 4787 REQ-5's
    /// minimum].
    pub udp: Duration,
    /// Idle timeout of an ICMP echo flow [30 s, Linux's `nf_conntrack_icmp_timeout`].
    pub icmp: Duration,
    /// Idle timeout of another protocol's flow that has seen a reply [2 min].
    pub other: Duration,
    /// Idle timeout of any flow before its first reply [30 s]: scans and
    /// unanswered attempts leave the table quickly.
    pub unreplied: Duration,
    /// Most (peer, service port, protocol) usage buckets kept [1,024]; flows
    /// opening once it is full count in one `other` bucket
    /// ([`crate::usage`]).
    pub usage_capacity: usize,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 65_536,
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_closing: Duration::from_secs(240),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(120),
            unreplied: Duration::from_secs(30),
            usage_capacity: crate::usage::USAGE_CAPACITY,
        }
    }
}

/// Normalised flow key: `a <= b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlowKey {
    proto: u8,
    a: (IpAddr, u16),
    b: (IpAddr, u16),
}

impl FlowKey {
    /// The key of `t`, or None for packets that are never tracked (ICMP other
    /// than echo).
    pub(crate) fn of(t: &FiveTuple) -> Option<FlowKey> {
        let (sp, dp) = match t.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => (src_port, dst_port),
            Transport::Icmp {
                kind: IcmpKind::EchoRequest | IcmpKind::EchoReply,
                id,
            } => (id, id),
            Transport::Icmp { .. } => return None,
            Transport::Other(_) => (0, 0),
        };
        let (x, y) = ((t.src, sp), (t.dst, dp));
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Some(FlowKey {
            proto: t.ip_proto(),
            a,
            b,
        })
    }
}

/// One tracked flow, as the agent's live view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The packet that opened it.
    pub opened_by: FiveTuple,
    /// The direction that packet crossed.
    pub direction: Direction,
    /// The rule that allowed it (updated when the policy changes).
    pub rule: RuleId,
    /// Whether a packet in the reverse orientation was seen.
    pub replied: bool,
    /// Whether a TCP FIN or RST was seen.
    pub closing: bool,
    /// When it expires unless another packet arrives.
    pub deadline: Instant,
}

#[derive(Debug, Clone)]
struct Entry {
    flow: Flow,
    /// Its key in the deadline index; `<= flow.deadline` (refreshes that move the
    /// deadline later leave the index alone, it is corrected when popped).
    indexed: (Instant, u64),
    /// Its traffic so far.
    counts: UsageCounters,
    /// Where its counts fold when it leaves the table.
    bucket: Bucket,
}

impl Entry {
    /// Counts one packet of `bytes` crossing in `dir`: the whole per-packet
    /// cost of usage accounting.
    #[inline]
    fn count(&mut self, dir: Direction, bytes: u64) {
        match dir {
            Direction::Egress => {
                self.counts.tx_bytes += bytes;
                self.counts.tx_packets += 1;
            }
            Direction::Ingress => {
                self.counts.rx_bytes += bytes;
                self.counts.rx_packets += 1;
            }
        }
    }
}

/// Whether a packet matched a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// It belongs to a live flow allowed by this rule.
    Established(RuleId),
    /// No live flow (an expired one was removed and counted).
    Miss { expired: bool },
}

/// What [`Conntrack::insert`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Inserted {
    pub(crate) opened: bool,
    pub(crate) evicted: u64,
    pub(crate) expired: u64,
}

/// The connection table.
#[derive(Debug, Clone)]
pub(crate) struct Conntrack {
    config: ConntrackConfig,
    entries: BTreeMap<FlowKey, Entry>,
    by_deadline: BTreeMap<(Instant, u64), FlowKey>,
    seq: u64,
    usage: UsageTable,
}

impl Conntrack {
    pub(crate) fn new(config: ConntrackConfig) -> Self {
        Conntrack {
            usage: UsageTable::new(config.usage_capacity),
            config,
            entries: BTreeMap::new(),
            by_deadline: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Usage now: the totals of flows gone plus the live flows.
    pub(crate) fn usage(&self) -> Usage {
        let mut u = self.usage.usage();
        for e in self.entries.values() {
            u.add(e.bucket, &e.counts);
        }
        u
    }

    /// Ends every flow (folding its counts) and hands the totals over.
    pub(crate) fn take_usage(&mut self) -> UsageTable {
        for (_, e) in std::mem::take(&mut self.entries) {
            self.usage.fold(e.bucket, &e.counts);
        }
        self.by_deadline.clear();
        let capacity = self.usage.capacity();
        std::mem::replace(&mut self.usage, UsageTable::new(capacity))
    }

    /// Takes over the totals of an engine this one replaces.
    pub(crate) fn absorb_usage(&mut self, older: UsageTable) {
        self.usage.absorb(older);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.entries.values().map(|e| &e.flow)
    }

    /// Finds the live flow `t` belongs to, refreshes it and counts the packet
    /// (`bytes` long) in it.
    pub(crate) fn lookup(
        &mut self,
        dir: Direction,
        t: &FiveTuple,
        bytes: u64,
        now: Instant,
    ) -> Lookup {
        let Some(key) = FlowKey::of(t) else {
            return Lookup::Miss { expired: false };
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return Lookup::Miss { expired: false };
        };
        if entry.flow.deadline <= now {
            self.remove(&key);
            return Lookup::Miss { expired: true };
        }
        let Some(reply) = belongs(&entry.flow, dir, t) else {
            return Lookup::Miss { expired: false };
        };
        if let Transport::Tcp { flags, .. } = t.transport {
            let syn_only = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
            if entry.flow.closing && syn_only {
                // A new connection reusing the ports of one that closed: decide
                // it afresh.
                self.remove(&key);
                return Lookup::Miss { expired: false };
            }
            if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                entry.flow.closing = true;
            }
        }
        entry.flow.replied |= reply;
        entry.count(dir, bytes);
        let rule = entry.flow.rule;
        let deadline = now + timeout(&self.config, &entry.flow);
        entry.flow.deadline = deadline;
        if deadline < entry.indexed.0 {
            let old = entry.indexed;
            self.seq += 1;
            entry.indexed = (deadline, self.seq);
            self.by_deadline.remove(&old);
            self.by_deadline.insert(entry.indexed, key);
        }
        Lookup::Established(rule)
    }

    /// The live flow `t` belongs to, without refreshing it.
    pub(crate) fn peek(&self, dir: Direction, t: &FiveTuple, now: Instant) -> Option<&Flow> {
        let entry = self.entries.get(&FlowKey::of(t)?)?;
        belongs(&entry.flow, dir, t)?;
        let reopens = entry.flow.closing
            && matches!(t.transport, Transport::Tcp { flags, .. }
                if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN);
        (entry.flow.deadline > now && !reopens).then_some(&entry.flow)
    }

    /// Starts tracking the flow `t` opens (no-op for untracked packets and echo
    /// replies), counting `t` (`bytes` long) as its first packet and its usage
    /// under `peer` (called only when a flow opens). Returns whether a flow was
    /// opened, and how many flows were evicted (live) and expired on the way to
    /// make room.
    pub(crate) fn insert(
        &mut self,
        dir: Direction,
        t: &FiveTuple,
        rule: RuleId,
        now: Instant,
        bytes: u64,
        peer: impl FnOnce() -> u32,
    ) -> Inserted {
        let none = Inserted::default();
        let Some(key) = FlowKey::of(t) else {
            return none;
        };
        if matches!(
            t.transport,
            Transport::Icmp {
                kind: IcmpKind::EchoReply,
                ..
            }
        ) {
            // A reply opens nothing.
            return none;
        }
        self.remove(&key);
        let mut out = Inserted {
            opened: true,
            ..none
        };
        while self.entries.len() >= self.config.capacity.max(1) {
            match self.pop_earliest(now) {
                Some(true) => out.expired += 1,
                Some(false) => out.evicted += 1,
                None => break,
            }
        }
        let mut flow = Flow {
            opened_by: *t,
            direction: dir,
            rule,
            replied: false,
            closing: false,
            deadline: now,
        };
        if let Transport::Tcp { flags, .. } = t.transport
            && flags & (tcp_flags::FIN | tcp_flags::RST) != 0
        {
            flow.closing = true;
        }
        flow.deadline = now + timeout(&self.config, &flow);
        self.seq += 1;
        let indexed = (flow.deadline, self.seq);
        self.by_deadline.insert(indexed, key);
        let bucket = self.usage.reserve(UsageKey {
            peer: peer(),
            port: service_port(t),
            proto: key.proto,
        });
        let mut entry = Entry {
            flow,
            indexed,
            counts: UsageCounters {
                flows: 1,
                ..UsageCounters::default()
            },
            bucket,
        };
        entry.count(dir, bytes);
        self.entries.insert(key, entry);
        out
    }

    /// Removes the entry closest to expiry; Some(true) if it had expired,
    /// Some(false) if it was live (evicted), None if the table is empty.
    fn pop_earliest(&mut self, now: Instant) -> Option<bool> {
        loop {
            let (indexed, key) = self.by_deadline.pop_first()?;
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.indexed != indexed {
                continue;
            }
            // Index keys are lower bounds; a flow refreshed since it was indexed
            // goes back in at its real deadline and the search continues.
            if entry.flow.deadline > indexed.0 {
                self.seq += 1;
                entry.indexed = (entry.flow.deadline, self.seq);
                self.by_deadline.insert(entry.indexed, key);
                continue;
            }
            let expired = entry.flow.deadline <= now;
            if let Some(e) = self.entries.remove(&key) {
                self.usage.fold(e.bucket, &e.counts);
            }
            return Some(expired);
        }
    }

    /// Removes every flow whose deadline is at or before `now`; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        while let Some((&indexed, &key)) = self.by_deadline.first_key_value() {
            if indexed.0 > now {
                break;
            }
            self.by_deadline.pop_first();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.indexed != indexed {
                continue;
            }
            if entry.flow.deadline <= now {
                if let Some(e) = self.entries.remove(&key) {
                    self.usage.fold(e.bucket, &e.counts);
                }
                n += 1;
            } else {
                self.seq += 1;
                entry.indexed = (entry.flow.deadline, self.seq);
                self.by_deadline.insert(entry.indexed, key);
            }
        }
        n
    }

    /// The earliest instant an entry may expire (a lower bound: a refreshed flow
    /// is re-indexed when it is reached).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first_key_value().map(|(k, _)| k.0)
    }

    /// Keeps the flows for which `keep` returns a rule (updating it), removes the
    /// rest; returns how many were removed.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Flow) -> Option<RuleId>) -> u64 {
        let mut gone = Vec::new();
        for (key, entry) in &mut self.entries {
            match keep(&entry.flow) {
                Some(rule) => entry.flow.rule = rule,
                None => gone.push(*key),
            }
        }
        for key in &gone {
            self.remove(key);
        }
        gone.len() as u64
    }

    /// Removes a flow, folding its counts into the usage totals.
    fn remove(&mut self, key: &FlowKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_deadline.remove(&entry.indexed);
            self.usage.fold(entry.bucket, &entry.counts);
        }
    }
}

/// Whether `t` crossing in `dir` belongs to `flow` (same key assumed):
/// Some(false) in the opening orientation, Some(true) as a reply, else None.
/// For ICMP echo, only requests go forward and only replies come back.
fn belongs(flow: &Flow, dir: Direction, t: &FiveTuple) -> Option<bool> {
    let o = &flow.opened_by;
    let forward = dir == flow.direction && t.src == o.src && t.dst == o.dst;
    let reply = dir != flow.direction && t.src == o.dst && t.dst == o.src;
    let kind_ok = match t.transport {
        Transport::Icmp {
            kind: IcmpKind::EchoRequest,
            ..
        } => forward,
        Transport::Icmp {
            kind: IcmpKind::EchoReply,
            ..
        } => reply,
        _ => true,
    };
    match (forward, reply) {
        _ if !kind_ok => None,
        (true, _) => Some(false),
        (false, true) => Some(true),
        (false, false) => None,
    }
}

/// The service a flow reaches: the destination port of its opening packet (0
/// for ICMP and protocols without ports).
fn service_port(t: &FiveTuple) -> u16 {
    match t.transport {
        Transport::Tcp { dst_port, .. } | Transport::Udp { dst_port, .. } => dst_port,
        Transport::Icmp { .. } | Transport::Other(_) => 0,
    }
}

fn timeout(config: &ConntrackConfig, flow: &Flow) -> Duration {
    if flow.closing {
        return config.tcp_closing;
    }
    if !flow.replied {
        return config.unreplied;
    }
    match flow.opened_by.transport {
        Transport::Tcp { .. } => config.tcp_established,
        Transport::Udp { .. } => config.udp,
        Transport::Icmp { .. } => config.icmp,
        Transport::Other(_) => config.other,
    }
}
