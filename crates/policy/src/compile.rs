//! Compiling a policy per node: the rules that concern the node, keyed by peer
//! prefixes, and the peers it may see.
//!
//! The controller runs [`compile()`] over its inventory and ships each node's
//! [`CompiledPolicy`] in that node's network map; the agent builds an
//! [`crate::Engine`] from it and needs no inventory. Cost: resolving the selectors
//! is O(rules × nodes); the output for a node is proportional to the rules that
//! concern it times the peers they name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::inventory::Inventory;
use crate::matcher::{Transport, proto_ports_match};
use crate::model::{Action, Policy, PortRange, Proto};
use crate::select::{FROM, Selection, SideKey, TO, action, eff, find, pair_visible, selection};
use crate::ssh::{Party, grants, ssh_entry};
pub use weft_proto::policy::{CompiledPolicy, FlowRule, RuleId, RuleInfo, SshGrant};

/// The info of rule `id` of `policy` (None when it has no such rule). Ids
/// past the rules are `[[ssh]]` rules (see [`ssh_rule_id`]); their info is
/// named `ssh: NAME` (or `ssh #N`, N counting `[[ssh]]` blocks from 1) so an
/// explanation says which block decided.
pub(crate) fn rule_info(policy: &Policy, id: RuleId) -> Option<RuleInfo> {
    let i = usize::try_from(id.0).ok()?;
    if let Some(rule) = policy.rules.get(i) {
        return Some(RuleInfo {
            id,
            name: rule.name.clone(),
            line: rule.line,
            action: rule.action,
        });
    }
    let k = i - policy.rules.len();
    let ssh = policy.ssh.get(k)?;
    Some(RuleInfo {
        id,
        name: Some(match &ssh.name {
            Some(n) => format!("ssh: {n}"),
            None => format!("ssh #{}", k + 1),
        }),
        line: ssh.line,
        action: Action::Allow,
    })
}

/// The rule id of `policy.ssh[i]`: after every `[[rule]]`.
pub(crate) fn ssh_rule_id(policy: &Policy, i: usize) -> RuleId {
    RuleId(u32::try_from(policy.rules.len() + i).unwrap_or(u32::MAX))
}

/// Every node's compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    nodes: BTreeMap<String, CompiledPolicy>,
}

impl Compiled {
    /// The compiled policy of `node` (None for a node not in the inventory).
    pub fn node(&self, node: &str) -> Option<&CompiledPolicy> {
        self.nodes.get(node)
    }

    /// The names of the nodes `node` may see (empty for an unknown node).
    pub fn visible_peers(&self, node: &str) -> &[String] {
        self.nodes.get(node).map_or(&[], |c| &c.visible_peers)
    }

    /// All compiled policies, by node name.
    pub fn into_nodes(self) -> BTreeMap<String, CompiledPolicy> {
        self.nodes
    }
}

/// A compiled policy that allows every packet in both directions (still
/// stateful): for tests, benchmarks and simulations of a node that ignores its
/// policy. The controller never sends it; a node's policy comes from
/// [`compile()`].
pub fn allow_all(node: &str) -> CompiledPolicy {
    let everything: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let flow = FlowRule {
        rule: RuleId(0),
        action: Action::Allow,
        proto: Proto::Any,
        ports: vec![],
        local: everything.clone(),
        peers: everything,
    };
    CompiledPolicy {
        node: node.to_owned(),
        rules: vec![RuleInfo {
            id: RuleId(0),
            name: Some("allow all".to_owned()),
            line: 0,
            action: Action::Allow,
        }],
        inbound: vec![flow.clone()],
        outbound: vec![flow],
        visible_peers: vec![],
        ssh_inbound: Vec::new(),
        ssh_outbound: Vec::new(),
    }
}

/// Compiles `policy` for every node of `inventory`. The policy should be valid
/// ([`Policy::validate`]); a hand-built invalid one compiles its well-formed parts.
pub fn compile(policy: &Policy, inventory: &Inventory) -> Compiled {
    let world = World::new(policy, inventory);
    let nodes = (0..inventory.nodes().len())
        .map(|x| (inventory.nodes()[x].name.clone(), world.compile_node(x)))
        .collect();
    Compiled { nodes }
}

/// Compiles `policy` for the one node named `node` (None if it is not in the
/// inventory). Resolving selectors still visits every node.
pub fn compile_node(policy: &Policy, inventory: &Inventory, node: &str) -> Option<CompiledPolicy> {
    let x = inventory
        .nodes()
        .binary_search_by(|n| n.name.as_str().cmp(node))
        .ok()?;
    Some(World::new(policy, inventory).compile_node(x))
}

/// Every node's selection, and every rule side's members.
struct World<'a> {
    policy: &'a Policy,
    inventory: &'a Inventory,
    sels: Vec<Selection>,
    /// Members (node indices, ascending) of each rule side (or `to` part).
    sides: BTreeMap<SideKey, Vec<usize>>,
}

/// One rule's view of one (node, peer) pair: its local and peer prefixes.
pub(crate) struct PairRule<'a> {
    pub(crate) action: Action,
    pub(crate) proto: Proto,
    pub(crate) ports: &'a [PortRange],
    pub(crate) local: &'a [IpNet],
    pub(crate) peer: &'a [IpNet],
}

impl<'a> World<'a> {
    fn new(policy: &'a Policy, inventory: &'a Inventory) -> Self {
        let sels: Vec<Selection> = inventory
            .nodes()
            .iter()
            .map(|n| selection(policy, n))
            .collect();
        let mut sides: BTreeMap<SideKey, Vec<usize>> = BTreeMap::new();
        for (x, sel) in sels.iter().enumerate() {
            for e in sel {
                sides.entry(e.key).or_default().push(x);
            }
        }
        World {
            policy,
            inventory,
            sels,
            sides,
        }
    }

    /// The parts of the side opposite `key`, with their members.
    fn opposite_sides(&self, key: &SideKey) -> impl Iterator<Item = (&SideKey, &Vec<usize>)> {
        self.sides
            .range(key.opposite_start()..)
            .take_while(move |(k, _)| key.faces(k))
    }

    fn compile_node(&self, x: usize) -> CompiledPolicy {
        let sel = &self.sels[x];
        let mut candidates = BTreeSet::new();
        for e in sel {
            if action(self.policy, e.key.rule) == Some(Action::Allow) {
                for (_, members) in self.opposite_sides(&e.key) {
                    candidates.extend(members.iter().copied().filter(|&y| y != x));
                }
            }
        }
        let visible: BTreeSet<usize> = candidates
            .into_iter()
            .filter(|&y| pair_visible(self.policy, sel, &self.sels[y]))
            .collect();

        let outbound = self.flow_rules(x, FROM, &visible);
        let inbound = self.flow_rules(x, TO, &visible);

        let mut clients = BTreeSet::new();
        let mut servers = BTreeSet::new();
        for e in sel.iter().filter(|e| ssh_entry(self.policy, e)) {
            let into = if e.key.side == FROM {
                &mut servers
            } else {
                &mut clients
            };
            for (_, members) in self.opposite_sides(&e.key) {
                into.extend(members.iter().copied().filter(|&y| y != x));
            }
        }
        let party = |y: usize| Party {
            facts: &self.inventory.nodes()[y],
            sel: &self.sels[y],
        };
        let (ssh_inbound, ssh_outbound) = grants(
            self.policy,
            party(x),
            clients.into_iter().map(party),
            servers.into_iter().map(party),
        );
        CompiledPolicy {
            node: self.inventory.nodes()[x].name.clone(),
            rules: rule_infos(
                self.policy,
                &outbound,
                &inbound,
                &ssh_inbound,
                &ssh_outbound,
            ),
            inbound,
            outbound,
            visible_peers: visible
                .iter()
                .map(|&y| self.inventory.nodes()[y].name.clone())
                .collect(),
            ssh_inbound,
            ssh_outbound,
        }
    }

    /// Node `x`'s flow rules for the entries on side `mine` (`FROM`: outbound).
    fn flow_rules(&self, x: usize, mine: u8, visible: &BTreeSet<usize>) -> Vec<FlowRule> {
        let mut out = Vec::new();
        for e in self.sels[x].iter().filter(|e| e.key.side == mine) {
            for (key, members) in self.opposite_sides(&e.key) {
                let peers: Vec<IpNet> = members
                    .iter()
                    .filter(|y| visible.contains(y))
                    .filter_map(|&y| find(&self.sels[y], key))
                    .flat_map(|t| t.nets.iter().copied())
                    .collect();
                if peers.is_empty() {
                    continue;
                }
                let restr = if mine == FROM {
                    &key.restr
                } else {
                    &e.key.restr
                };
                let Some(eff) = eff(self.policy, e.key.rule, restr) else {
                    continue;
                };
                // Exact CIDR aggregation (sibling prefixes merge only when both
                // halves are present): sequentially allocated members collapse to
                // a few prefixes, so a rule naming a whole network stays O(log n)
                // in size and a join does not grow every member's policy by one
                // address.
                out.push(FlowRule {
                    rule: RuleId(e.key.rule),
                    action: eff.action,
                    proto: eff.proto,
                    ports: eff.ports.to_vec(),
                    local: e.nets.clone(),
                    peers: IpNet::aggregate(&peers),
                });
            }
        }
        out
    }
}

/// The infos of every rule the flow rules and grants name, sorted by id.
pub(crate) fn rule_infos(
    policy: &Policy,
    outbound: &[FlowRule],
    inbound: &[FlowRule],
    ssh_inbound: &[SshGrant],
    ssh_outbound: &[SshGrant],
) -> Vec<RuleInfo> {
    let ids: BTreeSet<RuleId> = outbound
        .iter()
        .chain(inbound)
        .map(|f| f.rule)
        .chain(
            ssh_inbound
                .iter()
                .chain(ssh_outbound)
                .flat_map(|g| g.rules.iter().copied()),
        )
        .collect();
    ids.into_iter()
        .filter_map(|id| rule_info(policy, id))
        .collect()
}

/// Whether some packet is allowed by `rules` (deny wins). Exact: membership in
/// the rules' prefixes and port ranges only changes at their boundaries, so it
/// suffices to try each boundary (and each protocol class).
pub(crate) fn any_allowed(rules: &[PairRule<'_>]) -> bool {
    if !rules.iter().any(|r| r.action == Action::Allow) {
        return false;
    }
    // Fast path: with no deny in play, any allow rule (non-empty sides, some
    // protocol and port) allows some packet. This is the common case (the
    // default "members may reach each other" rule) and keeps a recompile over
    // thousands of nodes cheap.
    if !rules.iter().any(|r| r.action == Action::Deny) {
        return true;
    }
    let locals = boundaries(rules.iter().flat_map(|r| r.local.iter()));
    let peers = boundaries(rules.iter().flat_map(|r| r.peer.iter()));
    let mut ports: Vec<u16> = vec![0];
    for r in rules {
        for p in r.ports {
            ports.push(p.first);
            if let Some(next) = p.last.checked_add(1) {
                ports.push(next);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    let mut transports: Vec<Transport> = Vec::new();
    for &port in &ports {
        transports.push(Transport::Tcp {
            src_port: 0,
            dst_port: port,
            flags: 0,
        });
        transports.push(Transport::Udp {
            src_port: 0,
            dst_port: port,
        });
    }
    transports.push(Transport::Icmp {
        kind: crate::matcher::IcmpKind::EchoRequest,
        id: 0,
    });
    transports.push(Transport::Other(0));
    for &l in &locals {
        for &p in &peers {
            for t in &transports {
                let mut allow = false;
                let mut deny = false;
                for r in rules {
                    if proto_ports_match(r.proto, r.ports, t)
                        && r.local.iter().any(|n| n.contains(&l))
                        && r.peer.iter().any(|n| n.contains(&p))
                    {
                        match r.action {
                            Action::Allow => allow = true,
                            Action::Deny => deny = true,
                        }
                    }
                }
                if allow && !deny {
                    return true;
                }
            }
        }
    }
    false
}

/// The first address of each prefix and the address just past it, sorted.
pub(crate) fn boundaries<'n>(nets: impl Iterator<Item = &'n IpNet>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for n in nets {
        out.push(n.network());
        if let Some(next) = next_addr(n.broadcast()) {
            out.push(next);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn next_addr(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v4) => u32::from(v4).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}
