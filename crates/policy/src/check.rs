//! Evaluating a policy directly (the reference the compiled form must agree
//! with), `weft policy check`, and the policy's own `[[test]]` blocks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use weft_proto::service::{ServicePort, ServiceProto};

use crate::compile::{RuleId, RuleInfo, boundaries, ssh_rule_id};
use crate::inventory::{Inventory, Membership, NodeFacts, ServiceFact, endpoints, selects};
use crate::matcher::{IcmpKind, Precedence, RuleVerdict, Transport, proto_ports_match, tcp_flags};
use crate::model::{Action, Expect, Policy, PolicyTest, Selector, Service};

/// Most (source, destination) pairs one check evaluates.
pub const MAX_CHECK_PAIRS: usize = 65_536;

/// Most representative addresses taken from one prefix.
const MAX_REPRESENTATIVES: usize = 64;

/// What the policy says about a packet from `src` (an address of node `from`) to
/// `dst` (an address of node `to`), evaluated rule by rule from the policy text's
/// meaning. Packets between two addresses of the same node are never policy's
/// business and get [`RuleVerdict::NoRule`].
pub fn evaluate(
    policy: &Policy,
    from: &NodeFacts,
    src: IpAddr,
    to: &NodeFacts,
    dst: IpAddr,
    transport: &Transport,
) -> RuleVerdict {
    let mut prec = Precedence::default();
    if from.name == to.name {
        return prec.verdict();
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if proto_ports_match(rule.proto, &rule.ports, transport)
            && rule
                .from
                .iter()
                .any(|s| selects(policy, s, from, src, transport, 0))
            && rule
                .to
                .iter()
                .any(|s| selects(policy, s, to, dst, transport, 0))
        {
            prec.add(rule.action, RuleId(u32::try_from(i).unwrap_or(u32::MAX)));
        }
    }
    // An [[ssh]] rule allows TCP to the target's SSH port, between overlay
    // addresses of the nodes its sides select.
    if let Transport::Tcp { dst_port, .. } = *transport
        && to.ssh_port == Some(dst_port)
        && from.overlay_addrs().any(|a| a == src)
        && to.overlay_addrs().any(|a| a == dst)
    {
        for (i, ssh) in policy.ssh.iter().enumerate() {
            if ssh
                .from
                .iter()
                .any(|s| selects(policy, s, from, src, transport, 0))
                && ssh
                    .to
                    .iter()
                    .any(|s| selects(policy, s, to, dst, transport, 0))
            {
                prec.add(Action::Allow, ssh_rule_id(policy, i));
            }
        }
    }
    prec.verdict()
}

impl Service {
    /// The opening packet's transport for this service (source port 0).
    pub fn transport(&self) -> Transport {
        match *self {
            Service::Tcp(p) => Transport::Tcp {
                src_port: 0,
                dst_port: p,
                flags: tcp_flags::SYN,
            },
            Service::Udp(p) => Transport::Udp {
                src_port: 0,
                dst_port: p,
            },
            Service::Icmp => Transport::Icmp {
                kind: IcmpKind::EchoRequest,
                id: 0,
            },
        }
    }
}

/// The decision for one (source, destination) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDecision {
    /// Source node name (a representative's name is in parentheses).
    pub from_node: String,
    /// Source address.
    pub from_addr: IpAddr,
    /// Destination node name.
    pub to_node: String,
    /// Destination address.
    pub to_addr: IpAddr,
    /// What the rules say.
    pub verdict: RuleVerdict,
    /// The deciding rule's info.
    pub rule: Option<RuleInfo>,
}

/// The answer to `weft policy check --from A --to B --proto P --port N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Every pair of a source address selected by `from` and a destination
    /// address selected by `to` that share a network, on distinct nodes.
    pub pairs: Vec<PairDecision>,
    /// Whether a side matched no node and a representative stood in for it.
    pub representative: bool,
    /// Whether pairs were cut at [`MAX_CHECK_PAIRS`].
    pub truncated: bool,
}

impl CheckReport {
    /// Whether every pair is allowed (false when there are no pairs).
    pub fn all_allowed(&self) -> bool {
        !self.pairs.is_empty() && self.pairs.iter().all(|p| p.verdict.is_allow())
    }

    /// Whether every pair is dropped (false when there are no pairs).
    pub fn all_denied(&self) -> bool {
        !self.pairs.is_empty() && self.pairs.iter().all(|p| !p.verdict.is_allow())
    }

    /// The first pair contradicting `expect`.
    pub fn counterexample(&self, expect: Expect) -> Option<&PairDecision> {
        self.pairs
            .iter()
            .find(|p| p.verdict.is_allow() != (expect == Expect::Allow))
    }
}

/// A `[[test]]` the policy fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// The test's line.
    pub line: u32,
    /// The test's name.
    pub name: Option<String>,
    /// The test, rendered (`node:web1 -> node:db1 tcp/5432`).
    pub test: String,
    /// What it expected.
    pub expect: Expect,
    /// A pair that got the other outcome (None when no pair could be formed).
    pub counterexample: Option<PairDecision>,
    /// Whether representatives stood in for a side that matched no node.
    pub representative: bool,
}

impl Policy {
    /// Decides every pair `from` × `to` for `service`. When a side matches no node
    /// (or the sides form no pair that shares a network), a representative node
    /// stands in for it: a node matching only that selector (its tags, name,
    /// prefixes), member of every network.
    pub fn check(
        &self,
        inventory: &Inventory,
        from: &Selector,
        to: &Selector,
        service: Service,
    ) -> CheckReport {
        let cuts = self.cuts(inventory);
        let transport = service.transport();
        let networks = self.all_networks(inventory);
        let rep_from = self.representative(from, "from", 1, &networks, &cuts, service);
        let rep_to = self.representative(to, "to", 2, &networks, &cuts, service);
        let real_from = side(self, inventory.nodes(), from, &cuts);
        let real_to = side(self, inventory.nodes(), to, &cuts);
        let mut representative = false;
        let mut pairs = pairs_of(&real_from, &real_to);
        if pairs.is_empty() {
            representative = true;
            let rf = side(self, std::slice::from_ref(&rep_from), from, &cuts);
            let rt = side(self, std::slice::from_ref(&rep_to), to, &cuts);
            let f = if real_from.is_empty() {
                &rf
            } else {
                &real_from
            };
            let t = if real_to.is_empty() { &rt } else { &real_to };
            for (f, t) in [(f, t), (f, &rt), (&rf, &rt)] {
                pairs = pairs_of(f, t);
                if !pairs.is_empty() {
                    break;
                }
            }
        }
        let truncated = pairs.len() > MAX_CHECK_PAIRS;
        pairs.truncate(MAX_CHECK_PAIRS);
        let pairs = pairs
            .into_iter()
            .map(|((fnode, faddr), (tnode, taddr))| {
                let verdict = evaluate(self, fnode, faddr, tnode, taddr, &transport);
                PairDecision {
                    from_node: fnode.name.clone(),
                    from_addr: faddr,
                    to_node: tnode.name.clone(),
                    to_addr: taddr,
                    rule: verdict
                        .rule()
                        .and_then(|id| crate::compile::rule_info(self, id)),
                    verdict,
                }
            })
            .collect();
        CheckReport {
            pairs,
            representative,
            truncated,
        }
    }

    /// Runs the policy's `[[test]]` blocks against `inventory`; the controller
    /// refuses a policy for which this is not empty.
    pub fn run_tests(&self, inventory: &Inventory) -> Vec<TestFailure> {
        self.tests
            .iter()
            .filter_map(|t| self.run_test(inventory, t))
            .collect()
    }

    fn run_test(&self, inventory: &Inventory, t: &PolicyTest) -> Option<TestFailure> {
        let report = self.check(inventory, &t.from, &t.to, t.service);
        let counterexample = report.counterexample(t.expect).cloned();
        if !report.pairs.is_empty() && counterexample.is_none() {
            return None;
        }
        Some(TestFailure {
            line: t.line,
            name: t.name.clone(),
            test: format!("{} -> {} {}", t.from, t.to, t.service),
            expect: t.expect,
            counterexample,
            representative: report.representative,
        })
    }

    /// Prefixes that may split a subnet into parts the rules treat differently.
    fn cuts(&self, inventory: &Inventory) -> Vec<IpNet> {
        let mut cuts: Vec<IpNet> = inventory
            .nodes()
            .iter()
            .flat_map(|n| n.routed_subnets.iter().copied())
            .collect();
        let groups = self.groups.values().flat_map(|g| g.members.iter());
        let rules = self.rules.iter().flat_map(|r| r.from.iter().chain(&r.to));
        for s in groups.chain(rules) {
            if let Selector::Cidr(p) | Selector::Subnet(p) = s {
                cuts.push(*p);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    fn all_networks(&self, inventory: &Inventory) -> Vec<String> {
        let mut v: Vec<String> = inventory.networks().into_iter().map(String::from).collect();
        v.extend(self.networks().into_iter().map(String::from));
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            v.push("(any network)".into());
        }
        v
    }

    /// A node matching `sel` and nothing more specific, member of every network
    /// (providing a `service:` it names in every network, on the checked port).
    fn representative(
        &self,
        sel: &Selector,
        role: &str,
        host: u8,
        networks: &[String],
        cuts: &[IpNet],
        service: Service,
    ) -> NodeFacts {
        let mut node = NodeFacts {
            services: Vec::new(),
            ssh_port: None,
            name: format!("({role}: {sel})"),
            tags: Vec::new(),
            networks: networks
                .iter()
                .map(|n| Membership {
                    network: n.clone(),
                    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a real node.
                    addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, host))],
                })
                .collect(),
            routed_subnets: Vec::new(),
        };
        self.shape(sel, &mut node, cuts, service, 0);
        node
    }

    fn shape(
        &self,
        sel: &Selector,
        node: &mut NodeFacts,
        cuts: &[IpNet],
        service: Service,
        depth: usize,
    ) {
        match sel {
            Selector::Any | Selector::Network(_) => {}
            Selector::Node(n) => node.name = n.clone(),
            Selector::Tag(t) => node.tags.push(t.clone()),
            Selector::Cidr(p) => {
                let addrs = representatives(p, cuts);
                for m in &mut node.networks {
                    m.addrs.extend(addrs.iter().copied());
                }
            }
            Selector::Subnet(p) => node.routed_subnets.push(*p),
            Selector::Service(n) => {
                let port = match service {
                    Service::Tcp(port) => Some(ServicePort {
                        port,
                        proto: ServiceProto::Tcp,
                    }),
                    Service::Udp(port) => Some(ServicePort {
                        port,
                        proto: ServiceProto::Udp,
                    }),
                    Service::Icmp => None,
                };
                let facts: Vec<ServiceFact> = node
                    .networks
                    .iter()
                    .map(|m| ServiceFact {
                        name: n.clone(),
                        network: m.network.clone(),
                        ports: port.into_iter().collect(),
                    })
                    .collect();
                node.services.extend(facts);
            }
            Selector::Group(g) => {
                if depth > self.groups.len() {
                    return;
                }
                if let Some(group) = self.groups.get(g) {
                    for m in &group.members {
                        self.shape(m, node, cuts, service, depth + 1);
                    }
                }
            }
        }
    }
}

/// For each node, the addresses `sel` selects on it: overlay addresses, and
/// representatives of each routed part (one per region the cuts delimit).
fn side<'n>(
    policy: &Policy,
    nodes: &'n [NodeFacts],
    sel: &Selector,
    cuts: &[IpNet],
) -> Vec<(&'n NodeFacts, Vec<IpAddr>)> {
    let mut out = Vec::new();
    let mut nets = Vec::new();
    for node in nodes {
        nets.clear();
        endpoints(policy, sel, node, 0, &mut nets);
        let mut addrs: Vec<IpAddr> = nets.iter().flat_map(|n| representatives(n, cuts)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if !addrs.is_empty() {
            out.push((node, addrs));
        }
    }
    out
}

type Pair<'n> = ((&'n NodeFacts, IpAddr), (&'n NodeFacts, IpAddr));

/// Pairs of addresses on distinct nodes that share a network, up to one past
/// [`MAX_CHECK_PAIRS`] (so truncation can be reported).
fn pairs_of<'n>(
    froms: &[(&'n NodeFacts, Vec<IpAddr>)],
    tos: &[(&'n NodeFacts, Vec<IpAddr>)],
) -> Vec<Pair<'n>> {
    let mut out = Vec::new();
    for (fnode, faddrs) in froms {
        for (tnode, taddrs) in tos {
            if fnode.name == tnode.name {
                continue;
            }
            for &fa in faddrs {
                let fnets = fnode.networks_of(fa);
                for &ta in taddrs {
                    let tnets = tnode.networks_of(ta);
                    if fnets.iter().any(|n| tnets.contains(n)) {
                        out.push(((*fnode, fa), (*tnode, ta)));
                        if out.len() > MAX_CHECK_PAIRS {
                            return out;
                        }
                    }
                }
            }
        }
    }
    out
}

/// One address per region of `net` that the `cuts` delimit (the start of `net`
/// and of every cut boundary inside it), at most [`MAX_REPRESENTATIVES`].
fn representatives(net: &IpNet, cuts: &[IpNet]) -> Vec<IpAddr> {
    let inside = cuts.iter().filter(|c| net.contains(*c));
    let mut v: Vec<IpAddr> = boundaries(std::iter::once(net).chain(inside))
        .into_iter()
        .filter(|a| net.contains(a))
        .collect();
    v.truncate(MAX_REPRESENTATIVES);
    v
}

impl fmt::Display for PairDecision {
    /// `web1 (100.64.0.2) -> db1 (100.64.0.3): allowed by rule "x" (line 3)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) -> {} ({}): ",
            self.from_node, self.from_addr, self.to_node, self.to_addr
        )?;
        match (&self.verdict, &self.rule) {
            (RuleVerdict::Allow(_), Some(r)) => write!(f, "allowed by {r}"),
            (RuleVerdict::Deny(_), Some(r)) => write!(f, "denied by {r}"),
            (RuleVerdict::Allow(id) | RuleVerdict::Deny(id), None) => {
                write!(f, "decided by rule #{}", id.0 + 1)
            }
            (RuleVerdict::NoRule, _) => f.write_str("dropped: no rule allows it (default deny)"),
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pairs.is_empty() {
            return f.write_str("no pair of distinct nodes sharing a network matches");
        }
        for (i, p) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        if self.representative {
            f.write_str("\n(a side matched no node; a representative node stood in for it)")?;
        }
        if self.truncated {
            write!(f, "\n(only the first {MAX_CHECK_PAIRS} pairs were checked)")?;
        }
        Ok(())
    }
}

impl fmt::Display for TestFailure {
    /// `40:1: test "web reaches db" failed: expected allow for ...; but ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:1: test ", self.line)?;
        if let Some(n) = &self.name {
            write!(f, "{n:?} ")?;
        }
        write!(f, "failed: expected {} for {}", self.expect, self.test)?;
        match &self.counterexample {
            Some(c) => write!(f, ", but {c}")?,
            None => f.write_str(", but no pair of distinct nodes sharing a network matches")?,
        }
        if self.representative {
            f.write_str(" (checked against a representative node)")?;
        }
        Ok(())
    }
}
