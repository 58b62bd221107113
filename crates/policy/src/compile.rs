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

use crate::inventory::{Inventory, resolve};
use crate::matcher::{Transport, proto_ports_match};
use crate::model::{Action, Policy, PortRange, Proto};
pub use weft_proto::policy::{CompiledPolicy, FlowRule, RuleId, RuleInfo};

/// The info of rule `id` of `policy` (None when it has no such rule). Ids
/// past the rules are `[[ssh]]` rules (see [`ssh_rule_id`]); their info is
/// named `ssh "NAME"` (or `ssh #N`, N counting `[[ssh]]` blocks from 1) so an
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
            Some(n) => format!("ssh {n:?}"),
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
    let sides = Sides::new(policy, inventory);
    let nodes = (0..inventory.nodes().len())
        .map(|x| (inventory.nodes()[x].name.clone(), sides.compile_node(x)))
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
    Some(Sides::new(policy, inventory).compile_node(x))
}

/// Every rule's sides resolved to prefixes per node index.
struct Sides<'a> {
    policy: &'a Policy,
    inventory: &'a Inventory,
    from: Vec<BTreeMap<usize, Vec<IpNet>>>,
    to: Vec<BTreeMap<usize, Vec<IpNet>>>,
}

/// One rule's view of one (node, peer) pair: its local and peer prefixes.
pub(crate) struct PairRule<'a> {
    pub(crate) action: Action,
    pub(crate) proto: Proto,
    pub(crate) ports: &'a [PortRange],
    pub(crate) local: &'a [IpNet],
    pub(crate) peer: &'a [IpNet],
}

impl<'a> Sides<'a> {
    fn new(policy: &'a Policy, inventory: &'a Inventory) -> Self {
        let from = policy
            .rules
            .iter()
            .map(|r| resolve(policy, inventory, &r.from))
            .collect();
        let to = policy
            .rules
            .iter()
            .map(|r| resolve(policy, inventory, &r.to))
            .collect();
        Sides {
            policy,
            inventory,
            from,
            to,
        }
    }

    fn compile_node(&self, x: usize) -> CompiledPolicy {
        // Rules where x initiates (outbound) or is reached (inbound).
        let out: Vec<usize> = (0..self.policy.rules.len())
            .filter(|&r| self.from[r].contains_key(&x))
            .collect();
        let inb: Vec<usize> = (0..self.policy.rules.len())
            .filter(|&r| self.to[r].contains_key(&x))
            .collect();

        let mut candidates = BTreeSet::new();
        for &r in &out {
            if self.policy.rules[r].action == Action::Allow {
                candidates.extend(self.to[r].keys().filter(|&&y| y != x));
            }
        }
        for &r in &inb {
            if self.policy.rules[r].action == Action::Allow {
                candidates.extend(self.from[r].keys().filter(|&&y| y != x));
            }
        }
        let visible: BTreeSet<usize> = candidates
            .into_iter()
            .filter(|&y| {
                any_allowed(&self.pair_rules(&out, &self.from, &self.to, x, y))
                    || any_allowed(&self.pair_rules(&inb, &self.to, &self.from, x, y))
            })
            .collect();

        let outbound = self.flow_rules(&out, &self.from, &self.to, x, &visible);
        let inbound = self.flow_rules(&inb, &self.to, &self.from, x, &visible);
        let ids: BTreeSet<RuleId> = outbound.iter().chain(&inbound).map(|f| f.rule).collect();
        CompiledPolicy {
            node: self.inventory.nodes()[x].name.clone(),
            rules: ids
                .into_iter()
                .filter_map(|id| rule_info(self.policy, id))
                .collect(),
            inbound,
            outbound,
            visible_peers: visible
                .iter()
                .map(|&y| self.inventory.nodes()[y].name.clone())
                .collect(),
            ssh_inbound: Vec::new(),
            ssh_outbound: Vec::new(),
        }
    }

    /// The rules among `rules` that relate local node `x` (on side `mine`) to
    /// peer `y` (on side `theirs`).
    fn pair_rules<'s>(
        &'s self,
        rules: &[usize],
        mine: &'s [BTreeMap<usize, Vec<IpNet>>],
        theirs: &'s [BTreeMap<usize, Vec<IpNet>>],
        x: usize,
        y: usize,
    ) -> Vec<PairRule<'s>> {
        rules
            .iter()
            .filter_map(|&r| {
                let rule = &self.policy.rules[r];
                Some(PairRule {
                    action: rule.action,
                    proto: rule.proto,
                    ports: &rule.ports,
                    local: mine[r].get(&x)?,
                    peer: theirs[r].get(&y)?,
                })
            })
            .collect()
    }

    fn flow_rules(
        &self,
        rules: &[usize],
        mine: &[BTreeMap<usize, Vec<IpNet>>],
        theirs: &[BTreeMap<usize, Vec<IpNet>>],
        x: usize,
        visible: &BTreeSet<usize>,
    ) -> Vec<FlowRule> {
        let mut out = Vec::new();
        for &r in rules {
            let Some(local) = mine[r].get(&x) else {
                continue;
            };
            let peers: Vec<IpNet> = theirs[r]
                .iter()
                .filter(|(y, _)| visible.contains(y))
                .flat_map(|(_, nets)| nets.iter().copied())
                .collect();
            if peers.is_empty() {
                continue;
            }
            // Exact CIDR aggregation (sibling prefixes merge only when both halves
            // are present): sequentially allocated members collapse to a few
            // prefixes, so a rule naming a whole network stays O(log n) in size
            // and a join does not grow every member's policy by one address.
            let peers = IpNet::aggregate(&peers);
            let rule = &self.policy.rules[r];
            out.push(FlowRule {
                rule: RuleId(u32::try_from(r).unwrap_or(u32::MAX)),
                action: rule.action,
                proto: rule.proto,
                ports: rule.ports.clone(),
                local: local.clone(),
                peers,
            });
        }
        out
    }
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
