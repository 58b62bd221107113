//! The reference model: what the world looked like over time (written down by
//! the runner as it applies each operation), a policy evaluator of its own
//! (not weft-policy's matcher), and the oracle that judges every packet.
//!
//! # Oracle
//!
//! Safety, for every packet a TUN received:
//! - it is a packet some host sent, received by the host it was addressed
//!   to, byte for byte, and at most once;
//! - it was not spoofed (its inner source is its sender's own address);
//! - the policy allowed it when it was sent (unless the sender is the rogue)
//!   and when it arrived (unless the receiver is the rogue). The rogue is a
//!   node whose configuration lies (`Control::rogue`): its policy allows
//!   everything, from any node's address or a stranger's, so its spoofed and
//!   unauthorized packets leave it and only the receiver's checks stop them;
//! - the receiver had the sender in its map when it arrived;
//! - the receiver's session with the sender was not older than
//!   REJECT_AFTER_TIME (180 s): no data flows on expired keys.
//!
//! Liveness, on lossless links: a packet sent from `a` to `b` at `ts` must
//! arrive (exactly once) when
//! - the two have had each other in their maps continuously since some `tv`
//!   with `tv + SETTLE <= ts`, until the packet's last possible arrival
//!   `ts + FLIGHT`;
//! - over all of `[max(tv, ts - RETRY), ts + FLIGHT]` some path the nodes
//!   can find works: both connected to the relay, or both public (no NAT)
//!   with links up and the pair not cut. WireGuard retries a handshake every
//!   5 s (plus up to 1/3 s of jitter) while packets wait, so an attempt that
//!   was under way when the path came back has completed by `ts`; with none
//!   under way, the packet starts one. Sessions that expired during an outage
//!   are renewed the same way;
//! - nothing changed how `a` or `b` is reached (link, cut, relay, NAT rebind
//!   or mapping expiry, advertised endpoints) within `[ts - SETTLE,
//!   ts + FLIGHT]`: a node learns that its direct path died only after
//!   `DIRECT_TRUST` (3 s), and packets sent meanwhile are lost by design;
//! - the policy allowed it throughout `[ts, ts + FLIGHT]`.
//!
//! One carve-out, for a weft-tunnel bug this test found (see
//! `timers::a_one_way_direct_path_does_not_starve_handshakes_over_a_working_relay`):
//! no liveness is asked of a pair where a direct path may work one way only,
//! both behind NATs with one filtering by address and port and the other
//! mapping per destination. Safety is checked for them as for everyone.
//!
//! The liveness clause holds only with WireGuard's timers on virtual time
//! (weft-tunnel's own `wg` since d97eb3a): with boringtun they ran on the real
//! clock, a handshake lost on a dead path was never retried in a simulation,
//! and the clause had to ask for a path ever since the pair met.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weft_sim::packet::Proto;
use weft_sim::{Arrival, Filtering, Mapping};

/// A node learns its direct path died within `DIRECT_TRUST` (3 s); probing
/// and path switches settle within this.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// Longest a packet can take: a handshake round trip plus the packet, over
/// the slowest links the strategies make (each one-way crossing under
/// 150 ms), with room.
pub(crate) const FLIGHT: Duration = Duration::from_secs(2);
/// WireGuard's REJECT_AFTER_TIME: no data on keys older than this.
pub(crate) const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// WireGuard's handshake retry interval (REKEY_TIMEOUT, 5 s, plus at most
/// 1/3 s of jitter), with room.
pub(crate) const RETRY: Duration = Duration::from_secs(6);

/// Who a rule side selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sel {
    /// `*`.
    Any,
    /// `node:nI`.
    Node(usize),
}

impl Sel {
    fn matches(self, i: usize) -> bool {
        match self {
            Sel::Any => true,
            Sel::Node(n) => n == i,
        }
    }

    fn toml(self) -> String {
        match self {
            Sel::Any => "\"*\"".into(),
            Sel::Node(n) => format!("\"node:n{n}\""),
        }
    }
}

/// One policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Allow (else deny).
    pub(crate) allow: bool,
    /// Initiators.
    pub(crate) from: Sel,
    /// Destinations.
    pub(crate) to: Sel,
    /// `None`: any protocol.
    pub(crate) proto: Option<Proto>,
    /// `None`: every port.
    pub(crate) port: Option<u16>,
}

impl Rule {
    fn matches(&self, a: usize, b: usize, proto: Proto, port: u16) -> bool {
        self.from.matches(a)
            && self.to.matches(b)
            && self.proto.is_none_or(|p| p == proto)
            && self.port.is_none_or(|p| p == port)
    }
}

/// The policy text for `rules`.
pub(crate) fn toml(rules: &[Rule]) -> String {
    let mut s = String::new();
    for r in rules {
        s.push_str("[[rule]]\n");
        s.push_str(if r.allow {
            "action = \"allow\"\n"
        } else {
            "action = \"deny\"\n"
        });
        s.push_str(&format!(
            "from = [{}]\nto = [{}]\n",
            r.from.toml(),
            r.to.toml()
        ));
        match (r.proto, r.port) {
            (Some(p), Some(port)) => {
                s.push_str(&format!("proto = \"{}\"\nports = [{port}]\n", p.as_str()));
            }
            (Some(p), None) => s.push_str(&format!("proto = \"{}\"\n", p.as_str())),
            // A port needs a protocol; the strategies never make this.
            (None, _) => {}
        }
    }
    s
}

/// Deny wins; otherwise an allow must match; otherwise denied.
pub(crate) fn allowed(rules: &[Rule], a: usize, b: usize, proto: Proto, port: u16) -> bool {
    let hits = |allow: bool| {
        rules
            .iter()
            .any(|r| r.allow == allow && r.matches(a, b, proto, port))
    };
    !hits(false) && hits(true)
}

/// What the world looked like from one instant until the next snapshot.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// From when.
    pub(crate) at: Duration,
    /// Policy rules.
    pub(crate) rules: Vec<Rule>,
    /// Ordered pairs (a, b): b is in a's map.
    pub(crate) in_map: BTreeSet<(usize, usize)>,
    /// Access links up, per host.
    pub(crate) link: Vec<bool>,
    /// Relay connection per host (relay up, link up, wanted).
    pub(crate) relay: Vec<bool>,
    /// Cut pairs (smaller index first).
    pub(crate) cut: BTreeSet<(usize, usize)>,
}

/// A packet some host sent.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// When.
    pub(crate) at: Duration,
    /// Sender.
    pub(crate) from: usize,
    /// Addressed to.
    pub(crate) to: usize,
    /// Transport.
    pub(crate) proto: Proto,
    /// Destination port.
    pub(crate) port: u16,
    /// Its inner source is not the sender's address.
    pub(crate) spoofed: bool,
    /// The bytes.
    pub(crate) bytes: Vec<u8>,
}

/// Everything the runner wrote down.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Hosts without a NAT.
    pub(crate) public: Vec<bool>,
    /// Each host's NAT behaviour.
    pub(crate) nats: Vec<Option<(Mapping, Filtering)>>,
    /// The host whose configuration lies (a permissive policy claiming every
    /// address).
    pub(crate) rogue: Option<usize>,
    /// Snapshots, in time order.
    pub(crate) states: Vec<State>,
    /// Sent packets by id.
    pub(crate) sent: BTreeMap<u64, Sent>,
    /// Path events: (when, host).
    pub(crate) events: Vec<(Duration, usize)>,
    /// Deliveries: (receiving host, what its TUN got).
    pub(crate) delivered: Vec<(usize, Arrival)>,
    /// Links lose nothing.
    pub(crate) lossless: bool,
}

impl Record {
    /// The snapshots in force at some instant of `[from, to]` (closed: a
    /// change at an end counts).
    fn touching(&self, from: Duration, to: Duration) -> impl Iterator<Item = &State> {
        let n = self.states.len();
        self.states
            .iter()
            .enumerate()
            .filter(move |(k, s)| {
                let end = if k + 1 < n {
                    self.states[k + 1].at
                } else {
                    Duration::MAX
                };
                s.at <= to && end >= from
            })
            .map(|(_, s)| s)
    }

    fn covered(&self, s: &State, a: usize, b: usize) -> bool {
        let relay = s.relay[a] && s.relay[b];
        let direct = self.public[a]
            && self.public[b]
            && s.link[a]
            && s.link[b]
            && !s.cut.contains(&(a.min(b), a.max(b)));
        relay || direct
    }

    /// Whether a direct path between `a` and `b` may pass datagrams one way
    /// only: the answer to a datagram leaves the responder's NAT from a new
    /// port (its mapping depends on the destination), which the initiator's
    /// NAT refuses (it filters by address and port).
    fn one_way_direct_possible(&self, a: usize, b: usize) -> bool {
        let one_way = |x: usize, y: usize| match (self.nats[x], self.nats[y]) {
            (Some((_, fx)), Some((my, _))) => {
                fx == Filtering::AddressAndPortDependent && my != Mapping::EndpointIndependent
            }
            _ => false,
        };
        one_way(a, b) || one_way(b, a)
    }

    /// When the pair last came into both maps, if they are in both at `t`
    /// and stay there until `until`.
    fn met(&self, a: usize, b: usize, t: Duration, until: Duration) -> Option<Duration> {
        let both = |s: &State| s.in_map.contains(&(a, b)) && s.in_map.contains(&(b, a));
        if !self.touching(t, until).all(both) {
            return None;
        }
        let mut since = None;
        for s in self.states.iter().take_while(|s| s.at <= t) {
            if both(s) {
                since.get_or_insert(s.at);
            } else {
                since = None;
            }
        }
        since
    }

    /// Whether the oracle requires packet `p` to arrive: `Ok`, or the first
    /// clause that does not hold.
    pub(crate) fn must_arrive(&self, p: &Sent) -> Result<(), &'static str> {
        if !self.lossless {
            return Err("lossy links");
        }
        if p.spoofed {
            return Err("spoofed");
        }
        if p.from == p.to {
            return Err("to itself");
        }
        let (a, b) = (p.from, p.to);
        if self.one_way_direct_possible(a, b) {
            return Err("one-way direct path possible (known bug)");
        }
        let end = p.at + FLIGHT;
        let tv = self
            .met(a, b, p.at, end)
            .ok_or("not in both maps throughout")?;
        if tv + SETTLE > p.at {
            return Err("met too recently");
        }
        let path_from = tv.max(p.at.saturating_sub(RETRY));
        if !self.touching(path_from, end).all(|s| self.covered(s, a, b)) {
            return Err("no working path for a retry interval");
        }
        let quiet_from = p.at.saturating_sub(SETTLE);
        if self
            .events
            .iter()
            .any(|(t, h)| (*h == a || *h == b) && *t >= quiet_from && *t <= end)
        {
            return Err("paths changed around the send");
        }
        if !self
            .touching(p.at, end)
            .all(|s| allowed(&s.rules, a, b, p.proto, p.port))
        {
            return Err("policy denies");
        }
        Ok(())
    }

    /// Every violation of the oracle, in words.
    pub(crate) fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for (host, arrival) in &self.delivered {
            let Arrival {
                at,
                id,
                packet: bytes,
                key_age,
            } = arrival;
            if key_age.is_some_and(|a| a > REJECT_AFTER_TIME) {
                v.push(format!(
                    "n{host} took data at {at:?} on keys {key_age:?} old"
                ));
            }
            let Some(id) = id else {
                v.push(format!("n{host} received a packet nobody sent at {at:?}"));
                continue;
            };
            *count.entry(*id).or_default() += 1;
            let Some(p) = self.sent.get(id) else {
                v.push(format!("n{host} received unknown packet #{id}"));
                continue;
            };
            if p.to != *host || p.bytes != *bytes {
                v.push(format!("#{id} for n{} arrived at n{host} or altered", p.to));
            }
            if p.spoofed {
                v.push(format!(
                    "spoofed #{id} from n{} delivered to n{host} at {at:?}",
                    p.from
                ));
            }
            let ok_then = |t: Duration, enforced: bool| {
                !enforced
                    || self
                        .touching(t, t)
                        .any(|s| allowed(&s.rules, p.from, p.to, p.proto, p.port))
            };
            if !ok_then(p.at, self.rogue != Some(p.from)) {
                v.push(format!(
                    "#{id} n{}->n{host} left though the policy denied it at {:?}",
                    p.from, p.at
                ));
            }
            if !ok_then(*at, self.rogue != Some(*host)) {
                v.push(format!(
                    "#{id} n{}->n{host} delivered though the policy denied it at {at:?}",
                    p.from
                ));
            }
            if !self
                .touching(*at, *at)
                .any(|s| s.in_map.contains(&(*host, p.from)))
            {
                v.push(format!(
                    "#{id} delivered to n{host} from n{}, not in its map at {at:?}",
                    p.from
                ));
            }
        }
        for (id, c) in &count {
            if *c > 1 {
                v.push(format!("#{id} delivered {c} times"));
            }
        }
        for (id, p) in &self.sent {
            if self.must_arrive(p).is_ok() && !count.contains_key(id) {
                v.push(format!(
                    "#{id} n{}->n{} {:?}/{} sent at {:?} should have arrived",
                    p.from, p.to, p.proto, p.port, p.at
                ));
            }
        }
        v
    }

    /// Why packets were not required to arrive ("required" for those that were).
    pub(crate) fn tally(&self, into: &mut BTreeMap<&'static str, usize>) {
        for p in self.sent.values() {
            let k = self.must_arrive(p).err().unwrap_or("required");
            *into.entry(k).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_default_is_deny() {
        let allow = Rule {
            allow: true,
            from: Sel::Any,
            to: Sel::Node(1),
            proto: Some(Proto::Tcp),
            port: None,
        };
        let deny = Rule {
            allow: false,
            from: Sel::Node(0),
            to: Sel::Any,
            proto: None,
            port: None,
        };
        assert!(allowed(std::slice::from_ref(&allow), 0, 1, Proto::Tcp, 22));
        assert!(!allowed(std::slice::from_ref(&allow), 0, 1, Proto::Udp, 22));
        assert!(!allowed(&[allow.clone(), deny], 0, 1, Proto::Tcp, 22));
        assert!(!allowed(&[], 0, 1, Proto::Tcp, 22));
    }
}
