//! The simulated controller: who is a member, what the policy says, which
//! endpoints each node advertises; from these, each node's [`NodeConfig`], as
//! the real controller and `netmap::derive` would build it (peers are the
//! members the compiled policy makes visible).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use weft_policy::{CompiledPolicy, Inventory, Membership, NodeFacts};
use weft_tunnel::{NetworkConfig, NodeConfig, PeerConfig};

/// An endpoint no host answers on, for maps that advertise a stale address.
pub const BOGUS_ENDPOINT: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 250)), 9);

/// Which underlay endpoints the map advertises for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Advertised {
    /// Its own address and the reflexive addresses its STUN queries found
    /// (what a real node reports).
    Reported,
    /// Only its own (possibly private) address.
    LocalOnly,
    /// An address nobody answers on, before the reported ones.
    WithBogus,
}

/// What the controller knows about one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its name (`n0`, `n1`, …).
    pub name: String,
    /// Its key.
    pub key: weft_proto::NodeKey,
    /// Its overlay address.
    pub overlay: IpAddr,
    /// Its own underlay address.
    pub local: SocketAddr,
    /// The reflexive addresses it reported.
    pub reflexive: Vec<SocketAddr>,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct Control {
    /// Members of the one network.
    pub members: BTreeSet<usize>,
    /// The policy text (TOML); every member's policy is compiled from it.
    pub policy: String,
    /// Nodes whose configuration lies (a compromised node, to test the other
    /// side's checks): their policy allows every packet, from any of their own
    /// addresses, every other node's and [`Control::rogue_claims`], to every
    /// node, and they see every member.
    pub rogue: BTreeSet<usize>,
    /// Further source addresses a rogue node's policy lets it send from.
    pub rogue_claims: Vec<IpAddr>,
    /// Which endpoints each node advertises.
    pub advertised: Vec<Advertised>,
}

/// What a rogue node's policy says.
const ROGUE_POLICY: &str = "[[rule]]\naction = \"allow\"\nfrom = [\"*\"]\nto = [\"*\"]\n";

/// Why a policy text could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl Control {
    /// Every node a member, no policy rule (deny all), real endpoints.
    pub fn new(nodes: usize) -> Self {
        Self {
            members: (0..nodes).collect(),
            policy: String::new(),
            rogue: BTreeSet::new(),
            rogue_claims: Vec::new(),
            advertised: vec![Advertised::Reported; nodes],
        }
    }

    /// The endpoints the map advertises for `v`.
    pub fn endpoints(&self, i: usize, v: &NodeView) -> Vec<SocketAddr> {
        let mut e = Vec::new();
        match self
            .advertised
            .get(i)
            .copied()
            .unwrap_or(Advertised::Reported)
        {
            Advertised::Reported => {
                e.push(v.local);
                e.extend(v.reflexive.iter().copied());
            }
            Advertised::LocalOnly => e.push(v.local),
            Advertised::WithBogus => {
                e.push(BOGUS_ENDPOINT);
                e.push(v.local);
                e.extend(v.reflexive.iter().copied());
            }
        }
        e.dedup();
        e
    }

    /// Compiles `text` over the members; with `liar`, that node also claims
    /// every other node's address and [`Control::rogue_claims`].
    fn compile(
        &self,
        nodes: &[NodeView],
        text: &str,
        liar: Option<usize>,
    ) -> Result<weft_policy::Compiled, PolicyError> {
        let facts = self
            .members
            .iter()
            .filter_map(|i| nodes.get(*i).map(|v| (*i, v)))
            .map(|(i, v)| {
                let mut addrs = vec![v.overlay];
                if liar == Some(i) {
                    addrs.extend(nodes.iter().map(|o| o.overlay).filter(|a| *a != v.overlay));
                    addrs.extend(self.rogue_claims.iter().copied());
                }
                NodeFacts {
                    services: Vec::new(),
                    ssh_port: None,
                    name: v.name.clone(),
                    tags: vec![],
                    networks: vec![Membership {
                        network: "sim".into(),
                        addrs,
                    }],
                    routed_subnets: vec![],
                }
            })
            .collect();
        let inventory = Inventory::new(facts).map_err(|e| PolicyError(e.to_string()))?;
        let policy = weft_policy::parse(text).map_err(|e| PolicyError(e.to_string()))?;
        Ok(weft_policy::compile(&policy, &inventory))
    }

    /// Every node's configuration (non-members get no peers and a policy that
    /// allows nothing).
    pub fn configs(&self, nodes: &[NodeView]) -> Result<Vec<NodeConfig>, PolicyError> {
        let compiled = self.compile(nodes, &self.policy, None)?;
        let mut out = Vec::with_capacity(nodes.len());
        for (i, v) in nodes.iter().enumerate() {
            let network = NetworkConfig {
                local_addresses: vec![v.overlay],
                serves: vec![],
            };
            if !self.members.contains(&i) {
                out.push(NodeConfig {
                    networks: vec![network],
                    peers: vec![],
                    policy: Some(CompiledPolicy::default()),
                    services: Vec::new(),
                });
                continue;
            }
            let rogue = self.rogue.contains(&i);
            let lie = if rogue {
                Some(self.compile(nodes, ROGUE_POLICY, Some(i))?)
            } else {
                None
            };
            let view = lie.as_ref().unwrap_or(&compiled);
            let visible = view.visible_peers(&v.name);
            let peers = nodes
                .iter()
                .enumerate()
                .filter(|(j, p)| *j != i && self.members.contains(j) && visible.contains(&p.name))
                .map(|(j, p)| PeerConfig {
                    key: p.key,
                    name: p.name.clone(),
                    addresses: vec![(0, p.overlay)],
                    endpoints: self.endpoints(j, p),
                    routes: vec![],
                })
                .collect();
            out.push(NodeConfig {
                networks: vec![network],
                peers,
                policy: Some(view.node(&v.name).cloned().unwrap_or_default()),
                services: Vec::new(),
            });
        }
        Ok(out)
    }
}
