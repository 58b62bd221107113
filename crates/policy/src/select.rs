//! What a policy selects on one node, shared by [`crate::compile()`] and
//! [`crate::LivePolicy`]: its *selection*, one entry per rule side that picks
//! it, with the prefixes picked.
//!
//! A `to` side is split by port restriction ([`Restr`]): the rule's own
//! protocol and ports for ordinary selectors, or one protocol and port for a
//! `service:` selector (each of the service's ports the rule's own cover) and
//! for an `[[ssh]]` target (TCP to its SSH port). Each (rule, `to` part) acts
//! as one rule with that protocol and those ports; its `from` side is the
//! rule's. `[[ssh]]` rules are rules `rules.len() + i`, allow, overlay
//! addresses only.

use std::collections::BTreeMap;

use ipnet::IpNet;
use weft_proto::service::ServiceProto;

use crate::compile::{PairRule, any_allowed};
use crate::inventory::{NodeFacts, endpoints};
use crate::model::{Action, Policy, PortRange, Proto, Selector, ports_cover};

/// The `from` side of a rule.
pub(crate) const FROM: u8 = 0;
/// The `to` side of a rule.
pub(crate) const TO: u8 = 1;

/// The protocol and ports a part of a `to` side stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Restr {
    /// The rule's own protocol and ports (and every `from` side).
    Plain,
    /// One protocol and port: a service's port, or an SSH server's.
    Port(Proto, PortRange),
}

/// One rule side (or part of a `to` side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SideKey {
    pub(crate) rule: u32,
    pub(crate) side: u8,
    pub(crate) restr: Restr,
}

impl SideKey {
    pub(crate) fn from_side(rule: u32) -> SideKey {
        SideKey {
            rule,
            side: FROM,
            restr: Restr::Plain,
        }
    }

    /// Whether `other` is on the opposite side of the same rule.
    pub(crate) fn faces(&self, other: &SideKey) -> bool {
        self.rule == other.rule && self.side != other.side
    }

    /// The first key of the side opposite this one (for range scans).
    pub(crate) fn opposite_start(&self) -> SideKey {
        SideKey {
            rule: self.rule,
            side: 1 - self.side,
            restr: Restr::Plain,
        }
    }
}

/// One rule side that picks a node, and the prefixes it picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: SideKey,
    pub(crate) nets: Vec<IpNet>,
}

/// A node's selection: its entries sorted by key.
pub(crate) type Selection = Vec<Entry>;

pub(crate) fn find<'a>(sel: &'a [Entry], key: &SideKey) -> Option<&'a Entry> {
    sel.binary_search_by(|e| e.key.cmp(key))
        .ok()
        .map(|i| &sel[i])
}

/// The entries of `sel` on the side opposite `key` (of the same rule).
pub(crate) fn opposite<'a>(sel: &'a [Entry], key: &SideKey) -> &'a [Entry] {
    let want = (key.rule, 1 - key.side);
    let lo = sel.partition_point(|e| (e.key.rule, e.key.side) < want);
    let hi = sel.partition_point(|e| (e.key.rule, e.key.side) <= want);
    &sel[lo..hi]
}

/// A rule's action (`[[ssh]]` rules allow); None past the last rule.
pub(crate) fn action(policy: &Policy, rule: u32) -> Option<Action> {
    let i = rule as usize;
    match policy.rules.get(i) {
        Some(r) => Some(r.action),
        None => (i - policy.rules.len() < policy.ssh.len()).then_some(Action::Allow),
    }
}

/// Whether rule `rule` is an `[[ssh]]` rule.
pub(crate) fn is_ssh(policy: &Policy, rule: u32) -> bool {
    let i = rule as usize;
    i >= policy.rules.len() && i - policy.rules.len() < policy.ssh.len()
}

/// Whether rule `rule` may have `to` parts other than [`Restr::Plain`].
pub(crate) fn restricted(policy: &Policy, rule: u32) -> bool {
    match policy.rules.get(rule as usize) {
        Some(r) => r.to.iter().any(|s| matches!(s, Selector::Service(_))),
        None => true,
    }
}

/// What the part `restr` of rule `rule`'s `to` side allows or denies.
pub(crate) struct Eff<'a> {
    pub(crate) action: Action,
    pub(crate) proto: Proto,
    pub(crate) ports: &'a [PortRange],
}

pub(crate) fn eff<'a>(policy: &'a Policy, rule: u32, restr: &'a Restr) -> Option<Eff<'a>> {
    let action = action(policy, rule)?;
    match restr {
        Restr::Plain => policy.rules.get(rule as usize).map(|r| Eff {
            action,
            proto: r.proto,
            ports: &r.ports,
        }),
        Restr::Port(proto, range) => Some(Eff {
            action,
            proto: *proto,
            ports: std::slice::from_ref(range),
        }),
    }
}

/// The `to` part of a pair: `to`'s restriction when `mine` is `from`, else
/// `mine`'s.
pub(crate) fn pair_restr<'a>(mine: &'a Entry, theirs: &'a Entry) -> &'a Restr {
    if mine.key.side == FROM {
        &theirs.key.restr
    } else {
        &mine.key.restr
    }
}

fn push_entry(out: &mut Selection, key: SideKey, buf: &mut Vec<IpNet>) {
    if !buf.is_empty() {
        buf.sort_unstable();
        buf.dedup();
        out.push(Entry {
            key,
            nets: std::mem::take(buf),
        });
    }
}

/// The selection `policy` makes on `node`, sorted by key.
pub(crate) fn selection(policy: &Policy, node: &NodeFacts) -> Selection {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let plain = |list: &[Selector], buf: &mut Vec<IpNet>| {
        for sel in list.iter().filter(|s| !matches!(s, Selector::Service(_))) {
            endpoints(policy, sel, node, 0, buf);
        }
    };
    for (r, rule) in policy.rules.iter().enumerate() {
        let Ok(rule_id) = u32::try_from(r) else { break };
        plain(&rule.from, &mut buf);
        push_entry(&mut out, SideKey::from_side(rule_id), &mut buf);
        plain(&rule.to, &mut buf);
        let to = |restr| SideKey {
            rule: rule_id,
            side: TO,
            restr,
        };
        push_entry(&mut out, to(Restr::Plain), &mut buf);
        let mut parts: BTreeMap<Restr, Vec<IpNet>> = BTreeMap::new();
        for sel in &rule.to {
            let Selector::Service(name) = sel else {
                continue;
            };
            for f in node.services.iter().filter(|f| f.name == *name) {
                let addrs: Vec<IpNet> = node.addrs_in(&f.network).map(IpNet::from).collect();
                for p in &f.ports {
                    let proto = match p.proto {
                        ServiceProto::Tcp => Proto::Tcp,
                        ServiceProto::Udp => Proto::Udp,
                    };
                    if p.port == 0
                        || (rule.proto != Proto::Any && rule.proto != proto)
                        || !ports_cover(&rule.ports, p.port)
                    {
                        continue;
                    }
                    let restr = Restr::Port(proto, PortRange::single(p.port));
                    parts
                        .entry(restr)
                        .or_default()
                        .extend(addrs.iter().copied());
                }
            }
        }
        for (restr, mut nets) in parts {
            push_entry(&mut out, to(restr), &mut nets);
        }
    }
    let overlay = |buf: &mut Vec<IpNet>| {
        buf.retain(|n| {
            n.prefix_len() == n.max_prefix_len() && node.overlay_addrs().any(|a| a == n.addr())
        });
    };
    for (i, ssh) in policy.ssh.iter().enumerate() {
        let Ok(rule_id) = u32::try_from(policy.rules.len() + i) else {
            break;
        };
        plain(&ssh.from, &mut buf);
        overlay(&mut buf);
        push_entry(&mut out, SideKey::from_side(rule_id), &mut buf);
        if let Some(port) = node.ssh_port.filter(|p| *p > 0) {
            plain(&ssh.to, &mut buf);
            overlay(&mut buf);
            let key = SideKey {
                rule: rule_id,
                side: TO,
                restr: Restr::Port(Proto::Tcp, PortRange::single(port)),
            };
            push_entry(&mut out, key, &mut buf);
        }
    }
    out
}

/// Whether some packet is allowed between the nodes with selections `a` and
/// `b`, in either direction (deny wins).
pub(crate) fn pair_visible(policy: &Policy, a: &[Entry], b: &[Entry]) -> bool {
    // Fast path (no allocation): with no deny rule relating the pair, any allow
    // rule relating it allows some packet.
    let (mut allow, mut deny) = (false, false);
    for e in a {
        if !opposite(b, &e.key).is_empty() {
            match action(policy, e.key.rule) {
                Some(Action::Allow) => allow = true,
                Some(Action::Deny) => deny = true,
                None => {}
            }
        }
    }
    if !allow {
        return false;
    }
    if !deny {
        return true;
    }
    let mut out = Vec::new();
    let mut inb = Vec::new();
    for e in a {
        for theirs in opposite(b, &e.key) {
            let Some(eff) = eff(policy, e.key.rule, pair_restr(e, theirs)) else {
                continue;
            };
            let pr = PairRule {
                action: eff.action,
                proto: eff.proto,
                ports: eff.ports,
                local: &e.nets,
                peer: &theirs.nets,
            };
            if e.key.side == FROM {
                out.push(pr);
            } else {
                inb.push(pr);
            }
        }
    }
    any_allowed(&out) || any_allowed(&inb)
}
