//! `[[ssh]]` grants: which clients may log in to which servers as whom, from
//! two nodes' facts and selections (see the crate docs, "SSH rules").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_proto::policy::SshGrant;

use crate::compile::RuleId;
use crate::inventory::NodeFacts;
use crate::matcher::{Transport, proto_ports_match, tcp_flags};
use crate::model::{Action, Policy};
use crate::select::{Entry, FROM, Restr, SideKey, TO, action, eff, find, is_ssh, opposite};

/// A node as grants see it: its facts and its selection.
#[derive(Clone, Copy)]
pub(crate) struct Party<'a> {
    pub(crate) facts: &'a NodeFacts,
    pub(crate) sel: &'a [Entry],
}

/// What the `[[ssh]]` rules give one client towards one server.
#[derive(Default)]
struct PairGrant {
    rules: BTreeSet<RuleId>,
    client: BTreeSet<IpNet>,
    server: BTreeSet<IpNet>,
    users: BTreeSet<String>,
}

/// Whether a deny rule drops TCP to `port` from `a` (on `client`) to `b` (on
/// `server`).
fn denied(
    policy: &Policy,
    client: &[Entry],
    server: &[Entry],
    a: IpAddr,
    b: IpAddr,
    port: u16,
) -> bool {
    let syn = Transport::Tcp {
        src_port: 0,
        dst_port: port,
        flags: tcp_flags::SYN,
    };
    client.iter().any(|ce| {
        ce.key.side == FROM
            && action(policy, ce.key.rule) == Some(Action::Deny)
            && ce.nets.iter().any(|n| n.contains(&a))
            && opposite(server, &ce.key).iter().any(|se| {
                eff(policy, se.key.rule, &se.key.restr).is_some_and(|e| {
                    proto_ports_match(e.proto, e.ports, &syn)
                        && se.nets.iter().any(|n| n.contains(&b))
                })
            })
    })
}

fn pair_grant(policy: &Policy, client: Party<'_>, server: Party<'_>) -> Option<PairGrant> {
    if client.facts.name == server.facts.name {
        return None;
    }
    let mut g = PairGrant::default();
    for se in server.sel {
        let (TO, Restr::Port(_, range)) = (se.key.side, se.key.restr) else {
            continue;
        };
        if !is_ssh(policy, se.key.rule) {
            continue;
        }
        let Some(ce) = find(client.sel, &SideKey::from_side(se.key.rule)) else {
            continue;
        };
        let mut any = false;
        for a in &ce.nets {
            let cnets = client.facts.networks_of(a.addr());
            for b in &se.nets {
                let snets = server.facts.networks_of(b.addr());
                if !cnets.iter().any(|n| snets.contains(n))
                    || denied(
                        policy,
                        client.sel,
                        server.sel,
                        a.addr(),
                        b.addr(),
                        range.first,
                    )
                {
                    continue;
                }
                g.client.insert(*a);
                g.server.insert(*b);
                any = true;
            }
        }
        let ssh = policy
            .ssh
            .get((se.key.rule as usize).saturating_sub(policy.rules.len()));
        if let (true, Some(ssh)) = (any, ssh) {
            g.rules.insert(RuleId(se.key.rule));
            g.users.extend(ssh.users.iter().cloned());
        }
    }
    (!g.rules.is_empty()).then_some(g)
}

fn grant(peer: &str, g: &PairGrant, addrs: &BTreeSet<IpNet>) -> SshGrant {
    SshGrant {
        rules: g.rules.iter().copied().collect(),
        peer: peer.to_owned(),
        addrs: addrs.iter().copied().collect(),
        users: g.users.iter().cloned().collect(),
    }
}

/// `me`'s grants: as a server towards `clients`, and as a client towards
/// `servers` (candidates; those without a grant are skipped), each sorted by
/// peer name.
pub(crate) fn grants<'a>(
    policy: &Policy,
    me: Party<'a>,
    clients: impl Iterator<Item = Party<'a>>,
    servers: impl Iterator<Item = Party<'a>>,
) -> (Vec<SshGrant>, Vec<SshGrant>) {
    let mut inbound = BTreeMap::new();
    for c in clients {
        if let Some(g) = pair_grant(policy, c, me) {
            inbound.insert(c.facts.name.clone(), grant(&c.facts.name, &g, &g.client));
        }
    }
    let mut outbound = BTreeMap::new();
    for s in servers {
        if let Some(g) = pair_grant(policy, me, s) {
            outbound.insert(s.facts.name.clone(), grant(&s.facts.name, &g, &g.server));
        }
    }
    (
        inbound.into_values().collect(),
        outbound.into_values().collect(),
    )
}

/// `me`'s grants given its grants `old` before some nodes changed: those
/// towards peers named in `gone` (the changed nodes' names before and now)
/// dropped, those towards the `changed` nodes decided again. Exact because a
/// grant depends only on its two nodes (and the policy).
pub(crate) fn update_grants(
    policy: &Policy,
    me: Party<'_>,
    old: &weft_proto::policy::CompiledPolicy,
    gone: &BTreeSet<&str>,
    changed: &[Party<'_>],
) -> (Vec<SshGrant>, Vec<SshGrant>) {
    let keep = |list: &[SshGrant]| -> BTreeMap<String, SshGrant> {
        list.iter()
            .filter(|g| !gone.contains(g.peer.as_str()))
            .map(|g| (g.peer.clone(), g.clone()))
            .collect()
    };
    let mut inbound = keep(&old.ssh_inbound);
    let mut outbound = keep(&old.ssh_outbound);
    for &c in changed {
        if let Some(g) = pair_grant(policy, c, me) {
            inbound.insert(c.facts.name.clone(), grant(&c.facts.name, &g, &g.client));
        }
        if let Some(g) = pair_grant(policy, me, c) {
            outbound.insert(c.facts.name.clone(), grant(&c.facts.name, &g, &g.server));
        }
    }
    (
        inbound.into_values().collect(),
        outbound.into_values().collect(),
    )
}

/// Whether `e` is an `[[ssh]]` entry (so the members opposite it are grant
/// candidates).
pub(crate) fn ssh_entry(policy: &Policy, e: &Entry) -> bool {
    is_ssh(policy, e.key.rule)
}
