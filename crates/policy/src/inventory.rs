//! The facts about nodes a policy is evaluated against, and what each selector
//! means for one node.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use weft_proto::service::ServiceProto;

use crate::matcher::Transport;
use crate::model::{Policy, Selector};

/// What the controller knows about one node, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Its name (unique; a DNS label).
    pub name: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The networks it is a member of, with its overlay addresses in each.
    #[serde(default)]
    pub networks: Vec<Membership>,
    /// Subnets it routes for (approved routes), reachable through it.
    #[serde(default)]
    pub routed_subnets: Vec<IpNet>,
    /// The named services it provides (approved instances): `service:NAME`
    /// selects it, on the service's ports, in the service's network.
    #[serde(default)]
    pub services: Vec<ServiceFact>,
    /// The port of its SSH server (`weftd --ssh`), when it runs one: `[[ssh]]`
    /// rules naming it open TCP to this port and grant logins.
    #[serde(default)]
    pub ssh_port: Option<u16>,
}

/// A named service a node provides, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFact {
    /// The service's name.
    pub name: String,
    /// Its network (the node's addresses there are the instance's).
    pub network: String,
    /// Its ports.
    pub ports: Vec<weft_proto::service::ServicePort>,
}

/// A node's membership in one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The network's name.
    pub network: String,
    /// The node's overlay addresses in it (IPv4 and optionally IPv6).
    pub addrs: Vec<IpAddr>,
}

/// All nodes, sorted by name; names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    nodes: Vec<NodeFacts>,
}

/// Why an inventory could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Two nodes share a name; selectors and visibility are by name.
    #[error("two nodes are named {0:?}")]
    DuplicateName(String),
}

impl Inventory {
    /// Builds an inventory; fails when two nodes share a name.
    pub fn new(mut nodes: Vec<NodeFacts>) -> Result<Self, InventoryError> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for w in nodes.windows(2) {
            if w[0].name == w[1].name {
                return Err(InventoryError::DuplicateName(w[0].name.clone()));
            }
        }
        Ok(Inventory { nodes })
    }

    /// The nodes, sorted by name.
    pub fn nodes(&self) -> &[NodeFacts] {
        &self.nodes
    }

    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Network names the nodes are members of, sorted and deduplicated.
    pub fn networks(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.networks.iter().map(|m| m.network.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl NodeFacts {
    /// The node's overlay addresses in `network` (none when not a member).
    pub fn addrs_in<'a>(&'a self, network: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.networks
            .iter()
            .filter(move |m| m.network == network)
            .flat_map(|m| m.addrs.iter().copied())
    }

    /// Every overlay address of the node, in all networks.
    pub fn overlay_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.networks.iter().flat_map(|m| m.addrs.iter().copied())
    }

    /// The networks an address of this node is usable in: its membership for an
    /// overlay address, every network for an address behind a routed subnet.
    pub(crate) fn networks_of(&self, addr: IpAddr) -> Vec<&str> {
        let direct: Vec<&str> = self
            .networks
            .iter()
            .filter(|m| m.addrs.contains(&addr))
            .map(|m| m.network.as_str())
            .collect();
        if direct.is_empty() && self.routed_subnets.iter().any(|s| s.contains(&addr)) {
            return self.networks.iter().map(|m| m.network.as_str()).collect();
        }
        direct
    }
}

/// Appends the prefixes `sel` selects on `node` to `out`: host prefixes (/32,
/// /128) for overlay addresses, subnet prefixes for routed subnets.
///
/// `depth` bounds group nesting so a hand-built policy with a cycle (which
/// [`Policy::validate`] rejects) cannot recurse forever.
pub(crate) fn endpoints(
    policy: &Policy,
    sel: &Selector,
    node: &NodeFacts,
    depth: usize,
    out: &mut Vec<IpNet>,
) {
    match sel {
        Selector::Any => {
            out.extend(node.overlay_addrs().map(IpNet::from));
            out.extend(node.routed_subnets.iter().copied());
        }
        Selector::Node(n) => {
            if node.name == *n {
                out.extend(node.overlay_addrs().map(IpNet::from));
            }
        }
        Selector::Tag(t) => {
            if node.tags.contains(t) {
                out.extend(node.overlay_addrs().map(IpNet::from));
            }
        }
        Selector::Network(n) => {
            for m in node.networks.iter().filter(|m| m.network == *n) {
                out.extend(m.addrs.iter().copied().map(IpNet::from));
            }
        }
        Selector::Cidr(c) => {
            out.extend(
                node.overlay_addrs()
                    .filter(|a| c.contains(a))
                    .map(IpNet::from),
            );
        }
        Selector::Subnet(p) => {
            for r in &node.routed_subnets {
                // Prefixes either nest or are disjoint: the overlap is the longer one.
                if r.contains(p) {
                    out.push(*p);
                } else if p.contains(r) {
                    out.push(*r);
                }
            }
        }
        Selector::Service(n) => {
            for f in node.services.iter().filter(|f| f.name == *n) {
                out.extend(node.addrs_in(&f.network).map(IpNet::from));
            }
        }
        Selector::Group(g) => {
            if depth > policy.groups.len() {
                return;
            }
            if let Some(group) = policy.groups.get(g) {
                for m in &group.members {
                    endpoints(policy, m, node, depth + 1, out);
                }
            }
        }
    }
}

/// Whether `sel` selects address `addr` on `node` for a packet with
/// `transport` (the naive form of [`endpoints`], used by the reference
/// evaluator; only `service:` looks at the transport).
pub(crate) fn selects(
    policy: &Policy,
    sel: &Selector,
    node: &NodeFacts,
    addr: IpAddr,
    transport: &Transport,
    depth: usize,
) -> bool {
    match sel {
        Selector::Any => {
            node.overlay_addrs().any(|a| a == addr)
                || node.routed_subnets.iter().any(|s| s.contains(&addr))
        }
        Selector::Node(n) => node.name == *n && node.overlay_addrs().any(|a| a == addr),
        Selector::Tag(t) => node.tags.contains(t) && node.overlay_addrs().any(|a| a == addr),
        Selector::Network(n) => node
            .networks
            .iter()
            .any(|m| m.network == *n && m.addrs.contains(&addr)),
        Selector::Cidr(c) => c.contains(&addr) && node.overlay_addrs().any(|a| a == addr),
        Selector::Subnet(p) => {
            p.contains(&addr) && node.routed_subnets.iter().any(|s| s.contains(&addr))
        }
        Selector::Service(n) => node.services.iter().any(|f| {
            f.name == *n
                && node.addrs_in(&f.network).any(|a| a == addr)
                && f.ports.iter().any(|p| match *transport {
                    Transport::Tcp { dst_port, .. } => {
                        p.proto == ServiceProto::Tcp && p.port == dst_port
                    }
                    Transport::Udp { dst_port, .. } => {
                        p.proto == ServiceProto::Udp && p.port == dst_port
                    }
                    _ => false,
                })
        }),
        Selector::Group(g) => {
            depth <= policy.groups.len()
                && policy.groups.get(g).is_some_and(|group| {
                    group
                        .members
                        .iter()
                        .any(|m| selects(policy, m, node, addr, transport, depth + 1))
                })
        }
    }
}
