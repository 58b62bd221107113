//! The resolved topology a [`super::Topology`] plans to: segments, nodes, their
//! interfaces, addresses and routes.

use std::fmt;
use std::net::Ipv4Addr;

use super::Nat;
use crate::netem::Impairment;

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// `addr/prefix`.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// The `n`th address of the prefix (0 is the network address).
    pub fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }

    pub(super) fn size(self) -> u32 {
        1_u32
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(u32::MAX)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// An end host.
    Host,
    /// A router forwarding between its uplink and its LAN.
    Router {
        /// The NAT profile on its uplink (never [`Nat::Cgnat`]: that expands to two routers).
        nat: Nat,
        /// The name of the LAN it owns.
        lan: String,
    },
}

/// One side of a veth pair: an interface of a node on a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// The interface name inside the node's namespace (`eth0`, `eth1`).
    pub name: String,
    /// The segment it plugs into.
    pub segment: String,
    /// The peer's name inside the segment's switch namespace (`p1`, `p2`, ...).
    pub port: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The segment's prefix length.
    pub prefix: u8,
}

/// A static route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination; `None` is the default route.
    pub dest: Option<Cidr>,
    /// The gateway.
    pub via: Ipv4Addr,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dest {
            Some(dest) => write!(f, "{dest} via {}", self.via),
            None => write!(f, "default via {}", self.via),
        }
    }
}

/// A node (a namespace running things): a host or a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Host or router.
    pub role: Role,
    /// Its interfaces; the first is the uplink.
    pub ifaces: Vec<Iface>,
    /// Its static routes.
    pub routes: Vec<Route>,
    /// The uplink impairment applied at build time.
    pub impairment: Option<Impairment>,
}

impl Node {
    /// The uplink (`eth0`).
    pub fn uplink(&self) -> &Iface {
        // Every planned node has an uplink; `plan` never builds one without.
        &self.ifaces[0]
    }

    /// The interface called `name`.
    pub fn iface(&self, name: &str) -> Option<&Iface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    /// The router's LAN-side interface (`eth1`), `None` for hosts.
    pub fn lan_iface(&self) -> Option<&Iface> {
        self.ifaces.get(1)
    }

    /// The router's NAT profile, `None` for hosts.
    pub fn nat(&self) -> Option<Nat> {
        match &self.role {
            Role::Router { nat, .. } => Some(*nat),
            Role::Host => None,
        }
    }
}

/// An L2 segment: a bridge `br0` in its own switch namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `internet` or the LAN's name.
    pub name: String,
    /// The switch namespace's name within the run (`internet` or `lan-<name>`).
    pub netns_suffix: String,
    /// The segment's prefix.
    pub subnet: Cidr,
    /// The router that owns it, if any.
    pub router: Option<String>,
}

/// A fully resolved topology: what [`crate::Lab::build`] creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The segments, the internet first.
    pub segments: Vec<Segment>,
    /// The nodes, in declaration order (a CGNAT carrier just before its home router).
    pub nodes: Vec<Node>,
}

impl Plan {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The segment called `name`.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }
}
