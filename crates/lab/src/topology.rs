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

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{LabError, Result};
use crate::names::{self, INTERNET};
use crate::netem::Impairment;

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

    fn size(self) -> u32 {
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

/// The internet segment's prefix.
pub const INTERNET_CIDR: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 16);
/// The space CGNAT carrier LANs are cut from (RFC 6598).
pub const SHARED_CIDR: Cidr = Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10);
/// First host offset on the internet segment.
const INTERNET_FIRST_HOST: u32 = 10;
/// First host offset on a LAN (the router is `.1`).
const LAN_FIRST_HOST: u32 = 10;

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Private,
    Public,
    Shared,
    Isolated,
}

#[derive(Default)]
struct Planner {
    segments: Vec<Segment>,
    /// Next host offset and next port number per segment (same index as `segments`).
    next: Vec<(u32, u32)>,
    pool_counters: [u32; 4],
}

struct Expanded {
    name: String,
    attach: Net,
    router: Option<(Nat, Pool)>,
}

impl Planner {
    fn plan(mut self, topo: &Topology) -> Result<Plan> {
        let expanded = expand(topo)?;
        self.add_segment(
            INTERNET,
            INTERNET.to_owned(),
            INTERNET_CIDR,
            None,
            INTERNET_FIRST_HOST,
        );
        for decl in &topo.decls {
            if let Decl::Lan { name } = decl {
                let subnet = self.lan_subnet(Pool::Isolated)?;
                self.add_segment(name, format!("lan-{name}"), subnet, None, LAN_FIRST_HOST);
            }
        }
        for e in &expanded {
            if let Some((_, pool)) = e.router {
                let subnet = self.lan_subnet(pool)?;
                self.add_segment(
                    &e.name,
                    format!("lan-{}", e.name),
                    subnet,
                    Some(e.name.clone()),
                    LAN_FIRST_HOST,
                );
            }
        }
        let mut nodes = Vec::new();
        for e in &expanded {
            let mut ifaces = vec![self.attach(&e.name, "eth0", e.attach.segment_name(), None)?];
            let role = match e.router {
                Some((nat, _)) => {
                    ifaces.push(self.attach(&e.name, "eth1", &e.name, Some(1))?);
                    Role::Router {
                        nat,
                        lan: e.name.clone(),
                    }
                }
                None => Role::Host,
            };
            nodes.push(Node {
                name: e.name.clone(),
                role,
                ifaces,
                routes: Vec::new(),
                impairment: None,
            });
        }
        add_routes(&mut nodes, &self.segments);
        for (node, impairment) in &topo.impairments {
            let n = nodes.iter_mut().find(|n| &n.name == node).ok_or_else(|| {
                LabError::Topology(format!("impairment for unknown node `{node}`"))
            })?;
            n.impairment = Some(*impairment);
        }
        Ok(Plan {
            segments: self.segments,
            nodes,
        })
    }

    fn add_segment(
        &mut self,
        name: &str,
        netns_suffix: String,
        subnet: Cidr,
        router: Option<String>,
        first: u32,
    ) {
        self.segments.push(Segment {
            name: name.to_owned(),
            netns_suffix,
            subnet,
            router,
        });
        self.next.push((first, 1));
    }

    fn lan_subnet(&mut self, pool: Pool) -> Result<Cidr> {
        let idx = match pool {
            Pool::Private => 0,
            Pool::Public => 1,
            Pool::Shared => 2,
            Pool::Isolated => 3,
        };
        self.pool_counters[idx] += 1;
        let n = u8::try_from(self.pool_counters[idx])
            .ok()
            .filter(|n| *n < 255)
            .ok_or_else(|| LabError::Topology("more than 254 LANs of one kind".to_owned()))?;
        let addr = match pool {
            Pool::Private => Ipv4Addr::new(10, n, 0, 0),
            Pool::Public => Ipv4Addr::new(198, 19, n, 0),
            Pool::Shared => Ipv4Addr::new(100, 64, n, 0),
            Pool::Isolated => Ipv4Addr::new(192, 168, n, 0),
        };
        Ok(Cidr::new(addr, 24))
    }

    /// Plugs `node`'s interface `ifname` into `segment`, at host offset `fixed` or
    /// the segment's next free one.
    fn attach(
        &mut self,
        node: &str,
        ifname: &str,
        segment: &str,
        fixed: Option<u32>,
    ) -> Result<Iface> {
        let idx = self
            .segments
            .iter()
            .position(|s| s.name == segment)
            .ok_or_else(|| {
                LabError::Topology(format!("node `{node}` attaches to unknown LAN `{segment}`"))
            })?;
        let subnet = self.segments[idx].subnet;
        let (next_host, next_port) = &mut self.next[idx];
        let offset = match fixed {
            Some(offset) => offset,
            None => {
                let offset = *next_host;
                *next_host += 1;
                offset
            }
        };
        if offset + 1 >= subnet.size() {
            return Err(LabError::Topology(format!(
                "segment `{segment}` ({subnet}) is full"
            )));
        }
        let port = format!("p{next_port}");
        *next_port += 1;
        names::validate_ifname(&port)?;
        names::validate_ifname(ifname)?;
        Ok(Iface {
            name: ifname.to_owned(),
            segment: segment.to_owned(),
            port,
            addr: subnet.nth(offset),
            prefix: subnet.prefix,
        })
    }
}

/// Expands CGNAT routers into carrier + home router and checks names.
fn expand(topo: &Topology) -> Result<Vec<Expanded>> {
    let mut out: Vec<Expanded> = Vec::new();
    let mut lans: Vec<String> = Vec::new();
    for decl in &topo.decls {
        match decl {
            Decl::Host { name, net } => out.push(Expanded {
                name: name.clone(),
                attach: net.clone(),
                router: None,
            }),
            Decl::Router {
                name,
                upstream,
                nat,
            } => {
                if *nat == Nat::Cgnat {
                    let carrier = format!("{name}{CGNAT_CARRIER_SUFFIX}");
                    out.push(Expanded {
                        name: carrier.clone(),
                        attach: upstream.clone(),
                        router: Some((Nat::Easy, Pool::Shared)),
                    });
                    out.push(Expanded {
                        name: name.clone(),
                        attach: Net::Lan(carrier.clone()),
                        router: Some((Nat::Easy, Pool::Private)),
                    });
                    lans.push(carrier);
                } else {
                    let pool = if *nat == Nat::Open {
                        Pool::Public
                    } else {
                        Pool::Private
                    };
                    out.push(Expanded {
                        name: name.clone(),
                        attach: upstream.clone(),
                        router: Some((*nat, pool)),
                    });
                }
                lans.push(name.clone());
            }
            Decl::Lan { name } => lans.push(name.clone()),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in out.iter().map(|e| &e.name) {
        names::validate_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(LabError::Topology(format!("node `{name}` declared twice")));
        }
    }
    let mut seen_lans = std::collections::BTreeSet::new();
    for lan in &lans {
        names::validate_name(lan)?;
        if !seen_lans.insert(lan.as_str()) {
            return Err(LabError::Topology(format!("LAN `{lan}` declared twice")));
        }
    }
    if out.is_empty() {
        return Err(LabError::Topology("no nodes declared".to_owned()));
    }
    Ok(out)
}

/// Default routes towards each LAN's router, and routes to `open` routers' public
/// LANs on the segment upstream of them.
fn add_routes(nodes: &mut [Node], segments: &[Segment]) {
    let gateway_of = |segment: &str, nodes: &[Node]| -> Option<Ipv4Addr> {
        let router = segments
            .iter()
            .find(|s| s.name == segment)?
            .router
            .as_ref()?;
        Some(nodes.iter().find(|n| &n.name == router)?.lan_iface()?.addr)
    };
    let defaults: Vec<Option<Ipv4Addr>> = nodes
        .iter()
        .map(|n| gateway_of(&n.uplink().segment, nodes))
        .collect();
    let open: Vec<(String, Cidr, Ipv4Addr, String)> = nodes
        .iter()
        .filter(|n| n.nat() == Some(Nat::Open))
        .filter_map(|n| {
            let lan = n.lan_iface()?;
            let subnet = segments.iter().find(|s| s.name == lan.segment)?.subnet;
            Some((
                n.name.clone(),
                subnet,
                n.uplink().addr,
                n.uplink().segment.clone(),
            ))
        })
        .collect();
    for (node, default) in nodes.iter_mut().zip(defaults) {
        if let Some(via) = default {
            node.routes.push(Route { dest: None, via });
        }
        for (router, subnet, via, segment) in &open {
            if &node.name != router && node.ifaces.iter().any(|i| &i.segment == segment) {
                node.routes.push(Route {
                    dest: Some(*subnet),
                    via: *via,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_profiles() -> Topology {
        let mut t = Topology::new()
            .host("o1", Net::Internet)
            .host("o2", Net::Internet);
        for nat in Nat::ALL {
            let r = format!("r-{nat}");
            t = t
                .router(&r, Net::Internet, nat)
                .host(format!("h-{nat}"), Net::lan(&r));
        }
        t
    }

    #[test]
    fn addresses_follow_the_documented_plan() {
        let plan = all_profiles().plan().unwrap();
        assert_eq!(
            plan.node("o1").unwrap().uplink().addr,
            Ipv4Addr::new(198, 18, 0, 10)
        );
        assert_eq!(
            plan.node("o2").unwrap().uplink().addr,
            Ipv4Addr::new(198, 18, 0, 11)
        );
        let open = plan.node("r-open").unwrap();
        assert_eq!(open.lan_iface().unwrap().addr, Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(
            plan.node("h-open").unwrap().uplink().addr,
            Ipv4Addr::new(198, 19, 1, 10)
        );
        assert_eq!(
            plan.node("h-easy").unwrap().uplink().addr,
            Ipv4Addr::new(10, 1, 0, 10)
        );
        // CGNAT: carrier on the internet, home router in 100.64/10, host behind it.
        let carrier = plan.node("r-cgnat-isp").unwrap();
        assert!(INTERNET_CIDR.contains(carrier.uplink().addr));
        let home = plan.node("r-cgnat").unwrap();
        assert!(
            SHARED_CIDR.contains(home.uplink().addr),
            "{}",
            home.uplink().addr
        );
        assert_eq!(
            home.routes,
            vec![Route {
                dest: None,
                via: carrier.lan_iface().unwrap().addr
            }]
        );
        let h = plan.node("h-cgnat").unwrap();
        assert_eq!(h.routes[0].via, home.lan_iface().unwrap().addr);
    }

    #[test]
    fn open_lans_are_routed_from_the_internet() {
        let plan = all_profiles().plan().unwrap();
        let open = plan.node("r-open").unwrap();
        let o1 = plan.node("o1").unwrap();
        assert_eq!(
            o1.routes,
            vec![Route {
                dest: Some(Cidr::new(Ipv4Addr::new(198, 19, 1, 0), 24)),
                via: open.uplink().addr
            }]
        );
        assert!(open.routes.is_empty());
        // A router on the internet reaches the open LAN too (for the return path of its NAT).
        assert_eq!(plan.node("r-easy").unwrap().routes.len(), 1);
    }

    #[test]
    fn every_interface_name_fits() {
        let plan = all_profiles().plan().unwrap();
        for node in &plan.nodes {
            for iface in &node.ifaces {
                names::validate_ifname(&iface.name).unwrap();
                names::validate_ifname(&iface.port).unwrap();
            }
        }
        // Ports are unique per segment.
        for seg in &plan.segments {
            let mut ports: Vec<_> = plan
                .nodes
                .iter()
                .flat_map(|n| &n.ifaces)
                .filter(|i| i.segment == seg.name)
                .map(|i| i.port.clone())
                .collect();
            let len = ports.len();
            ports.sort();
            ports.dedup();
            assert_eq!(ports.len(), len, "{}", seg.name);
        }
    }

    #[test]
    fn bad_topologies_are_rejected() {
        assert!(Topology::new().plan().is_err());
        assert!(
            Topology::new()
                .host("a", Net::Internet)
                .host("a", Net::Internet)
                .plan()
                .is_err()
        );
        assert!(
            Topology::new()
                .host("a", Net::lan("nowhere"))
                .plan()
                .is_err()
        );
        assert!(
            Topology::new()
                .host("internet", Net::Internet)
                .plan()
                .is_err()
        );
        assert!(
            Topology::new()
                .router("x", Net::Internet, Nat::Easy)
                .lan("x")
                .host("a", Net::Internet)
                .plan()
                .is_err()
        );
        assert!(
            Topology::new()
                .host("a", Net::Internet)
                .impair("b", Impairment::loss(1.0))
                .plan()
                .is_err()
        );
    }

    #[test]
    fn isolated_lans_use_192_168() {
        let plan = Topology::new()
            .lan("office")
            .host("a", Net::lan("office"))
            .host("b", Net::lan("office"))
            .plan()
            .unwrap();
        assert_eq!(
            plan.node("b").unwrap().uplink().addr,
            Ipv4Addr::new(192, 168, 1, 11)
        );
        assert!(plan.node("a").unwrap().routes.is_empty());
        assert_eq!(plan.segment("office").unwrap().netns_suffix, "lan-office");
    }

    #[test]
    fn nat_names_round_trip() {
        for nat in Nat::ALL {
            assert_eq!(nat.name().parse::<Nat>().unwrap(), nat);
        }
        assert!("symmetric".parse::<Nat>().is_err());
    }
}
