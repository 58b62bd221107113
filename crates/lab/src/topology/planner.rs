//! [`super::Topology::plan`]: names, subnets, addresses and routes, assigned by
//! the address plan in the module docs of [`crate::topology`]. Pure.

use std::net::Ipv4Addr;

use super::{
    CGNAT_CARRIER_SUFFIX, Cidr, Decl, Iface, Nat, Net, Node, Plan, Role, Route, Segment, Topology,
};
use crate::error::{LabError, Result};
use crate::names::{self, INTERNET};

/// The internet segment's prefix.
pub const INTERNET_CIDR: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 16);
/// The space CGNAT carrier LANs are cut from (RFC 6598).
pub const SHARED_CIDR: Cidr = Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10);
/// First host offset on the internet segment.
const INTERNET_FIRST_HOST: u32 = 10;
/// First host offset on a LAN (the router is `.1`).
const LAN_FIRST_HOST: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Private,
    Public,
    Shared,
    Isolated,
}

#[derive(Default)]
pub(super) struct Planner {
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
    pub(super) fn plan(mut self, topo: &Topology) -> Result<Plan> {
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
    use crate::netem::Impairment;

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
}
