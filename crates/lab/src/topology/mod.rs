//! The declarative side of the lab: a [`Topology`] says which hosts and routers
//! exist and where they attach; [`Topology::plan`] turns it, without touching the
//! system, into a [`Plan`] with every namespace, interface, address, route and
//! NAT profile spelled out. [`crate::Lab::build`] then applies the plan.
//!
//! Address plan (all of it exists only inside the run's namespaces):
//! - the internet segment is `198.18.0.0/16` (RFC 2544 benchmarking space); nodes
//!   attached to it get `198.18.0.10`, `.11`, ... in declaration order;
//! - a NAT router's LAN is `10.<n>.0.0/24`, an `open` router's LAN is public
//!   `198.19.<n>.0/24` (routed from the internet), a CGNAT carrier's LAN is
//!   `100.64.<n>.0/24` (RFC 6598 shared space), an isolated LAN is `192.168.<n>.0/24`;
//!   routers are `.1` on their LAN, hosts `.10` upwards.

mod plan;
mod planner;

use std::fmt;
use std::str::FromStr;

use crate::error::Result;
use crate::names::INTERNET;
use crate::netem::Impairment;
use planner::Planner;

pub use plan::{Cidr, Iface, Node, Plan, Role, Route, Segment};
pub use planner::{INTERNET_CIDR, SHARED_CIDR};

/// Where a node attaches: the shared internet segment or a named LAN.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Net {
    /// The internet segment (public addresses, no NAT).
    Internet,
    /// The LAN with this name: a router's LAN (named like the router) or an isolated LAN.
    Lan(String),
}

impl Net {
    /// The LAN called `name`.
    pub fn lan(name: impl Into<String>) -> Self {
        Self::Lan(name.into())
    }

    fn segment_name(&self) -> &str {
        match self {
            Self::Internet => INTERNET,
            Self::Lan(name) => name,
        }
    }
}

/// A router's NAT profile, applied on its upstream interface with nftables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Nat {
    /// No NAT: the router forwards, its LAN has public addresses routed from upstream.
    Open,
    /// Masquerade: endpoint-independent mapping (source port kept), address-and-port
    /// dependent filtering (Linux conntrack).
    Easy,
    /// `masquerade random,fully-random`: endpoint-dependent mapping, a new mapped
    /// port per destination.
    Hard,
    /// Endpoint-independent mapping and filtering: the mapped port forwards inbound
    /// UDP from anyone to the inner host (a dynamic nft map, mapped port to inner address).
    FullCone,
    /// Easy NAT, but UDP from the LAN is dropped at the router: only TCP leaves.
    UdpBlocked,
    /// Two NATs stacked: the hosts' home router (easy NAT) sits in a carrier LAN in
    /// `100.64.0.0/10` behind a carrier router (easy NAT) named `<router>-isp`.
    Cgnat,
}

impl Nat {
    /// Every profile, in the order the self-test shows them.
    pub const ALL: [Self; 6] = [
        Self::Open,
        Self::Easy,
        Self::Hard,
        Self::FullCone,
        Self::UdpBlocked,
        Self::Cgnat,
    ];

    /// The profile's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Easy => "easy",
            Self::Hard => "hard",
            Self::FullCone => "fullcone",
            Self::UdpBlocked => "udp-blocked",
            Self::Cgnat => "cgnat",
        }
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Nat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|nat| nat.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|n| n.name()).collect();
                format!("unknown NAT profile `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// The suffix of the carrier router a [`Nat::Cgnat`] router gets in front of it.
pub const CGNAT_CARRIER_SUFFIX: &str = "-isp";

#[derive(Clone, Debug)]
enum Decl {
    Host {
        name: String,
        net: Net,
    },
    Router {
        name: String,
        upstream: Net,
        nat: Nat,
    },
    Lan {
        name: String,
    },
}

/// A declared lab topology. Build it by chaining, then hand it to [`crate::Lab::build`]:
///
/// ```
/// use weft_lab::{Nat, Net, Topology};
/// let topo = Topology::new()
///     .host("controller", Net::Internet)
///     .router("home", Net::Internet, Nat::Hard)
///     .host("a", Net::lan("home"))
///     .host("b", Net::lan("home"));
/// let plan = topo.plan().unwrap();
/// assert_eq!(plan.node("a").unwrap().uplink().addr.to_string(), "10.1.0.10");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Topology {
    decls: Vec<Decl>,
    impairments: Vec<(String, Impairment)>,
}

impl Topology {
    /// An empty topology (the internet segment always exists).
    pub fn new() -> Self {
        Self::default()
    }

    /// The lab most end-to-end tests use: a host `controller` on the internet and
    /// `nodes` on the LAN of an easy-NAT router `office`.
    pub fn office<S: AsRef<str>>(nodes: &[S]) -> Self {
        nodes.iter().fold(
            Self::new().host("controller", Net::Internet).router(
                "office",
                Net::Internet,
                Nat::Easy,
            ),
            |t, n| t.host(n.as_ref(), Net::lan("office")),
        )
    }

    /// Adds a host attached to `net` (its interface is `eth0`).
    #[must_use]
    pub fn host(mut self, name: impl Into<String>, net: Net) -> Self {
        self.decls.push(Decl::Host {
            name: name.into(),
            net,
        });
        self
    }

    /// Adds a router attached upstream to `net` (`eth0`) that owns a LAN named like
    /// the router (`eth1`), with the NAT profile `nat` on its upstream interface.
    /// [`Nat::Cgnat`] adds a second router, `<name>-isp`, between this one and `net`.
    #[must_use]
    pub fn router(mut self, name: impl Into<String>, upstream: Net, nat: Nat) -> Self {
        self.decls.push(Decl::Router {
            name: name.into(),
            upstream,
            nat,
        });
        self
    }

    /// Adds an isolated LAN (a switch with no router): hosts on it reach only each other.
    #[must_use]
    pub fn lan(mut self, name: impl Into<String>) -> Self {
        self.decls.push(Decl::Lan { name: name.into() });
        self
    }

    /// Impairs `node`'s uplink (`eth0`, both directions) from the start; change it
    /// later with [`crate::Lab::impair`].
    #[must_use]
    pub fn impair(mut self, node: impl Into<String>, impairment: Impairment) -> Self {
        self.impairments.push((node.into(), impairment));
        self
    }

    /// Checks the topology and assigns every name, address and route. Pure.
    pub fn plan(&self) -> Result<Plan> {
        Planner::default().plan(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_names_round_trip() {
        for nat in Nat::ALL {
            assert_eq!(nat.name().parse::<Nat>().unwrap(), nat);
        }
        assert!("symmetric".parse::<Nat>().is_err());
    }
}
