//! An in-memory kernel: the [`Executor`] twin used by tests and dry runs.
//!
//! It holds foreign objects too (non-weft interfaces, routes of other protocols,
//! kernel-made addresses) so tests can check weft never touches them, mimics the
//! kernel behaviours the planner relies on, and can simulate drift (its mutators
//! are "someone ran `ip` by hand") and failures ([`FakeKernel::fail`]).
//!
//! Kernel behaviours mimicked: a link going down loses its routes and its IPv6
//! addresses (`keep_addr_on_down=0`); a link losing its last IPv4 address loses its
//! IPv4 routes; adding a route via a down or missing link fails (`ENETDOWN`,
//! `ENODEV`); adding an identical route fails with `EEXIST`. Not mimicked: IPv4
//! secondary addresses vanishing with their primary (the next pass re-adds them),
//! IPv6 being disabled below MTU 1280.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::desired::{RouteSpec, WEFT_ROUTE_PROTOCOL, is_managed_address, is_weft_link};
use crate::exec::{ExecError, Executor};
use crate::firewall::{NftRule, ObservedFirewall};
use crate::hostfw::{HostFirewall, ObservedHostFirewall};
use crate::observed::{ObservedLink, ObservedState};
use crate::plan::Action;

/// An interface in the fake kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    /// MTU in bytes.
    pub mtu: u32,
    /// Administrative state.
    pub up: bool,
    /// Addresses, each with whether it is permanent.
    pub addrs: BTreeMap<IpNet, Permanence>,
    /// `disable_ipv6` (`None`: a kernel without IPv6).
    pub ipv6_disabled: Option<bool>,
}

/// Lifetime of an address. Observation reports permanent addresses only, and of those
/// not IPv6 link-local ones (see [`is_managed_address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanence {
    /// `IFA_F_PERMANENT`: added through netlink (by weft or a user), or a link-local
    /// address the kernel configured.
    Permanent,
    /// With a lifetime (SLAAC, privacy addresses): made by the kernel.
    Kernel,
}

/// A route in the fake kernel's main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FakeRoute {
    /// Output device.
    pub dev: String,
    /// Destination and metric.
    pub route: RouteSpec,
    /// `rtm_protocol`.
    pub protocol: u8,
}

/// The objects weft must never touch, as returned by [`FakeKernel::foreign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Interfaces not named `weft*`, with everything on them.
    pub links: BTreeMap<String, FakeLink>,
    /// Routes of protocols other than weft's, on any interface.
    pub routes: BTreeSet<FakeRoute>,
    /// Unmanaged addresses on `weft*` interfaces (kernel-made, or IPv6 link-local),
    /// as `(interface, address)`.
    pub kernel_addrs: BTreeSet<(String, IpNet)>,
}

/// The in-memory kernel. Mutators return `&mut Self` for chaining where it helps.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    links: BTreeMap<String, FakeLink>,
    routes: BTreeSet<FakeRoute>,
    faults: Vec<Fault>,
    observe_faults: u32,
    journal: Vec<Action>,
    nft: Option<BTreeSet<NftRule>>,
    /// The table `inet weft_host`: the firewall applied and what it lists as.
    host: Option<(HostFirewall, ObservedHostFirewall)>,
    /// The wall clock it reports; `None`: the system's.
    wall_ms: Option<u64>,
    ip_forward: bool,
    forward_set_by_weft: bool,
}

#[derive(Debug, Clone)]
struct Fault {
    action: Action,
    errno: i32,
    remaining: u32,
}

impl FakeKernel {
    /// An empty kernel: no interfaces, no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates an interface, down and empty (as the data plane's TUN starts). Replaces
    /// an existing one of that name.
    pub fn add_link(&mut self, name: &str, mtu: u32) -> &mut Self {
        self.remove_link(name);
        let link = FakeLink {
            mtu,
            up: false,
            addrs: BTreeMap::new(),
            ipv6_disabled: Some(false),
        };
        self.links.insert(name.to_owned(), link);
        self
    }

    /// Removes an interface with its addresses and routes (the data plane closed the
    /// TUN). Returns whether it existed.
    pub fn remove_link(&mut self, name: &str) -> bool {
        self.routes.retain(|r| r.dev != name);
        self.links.remove(name).is_some()
    }

    /// Adds an address to an interface, as `ip address add` or the kernel's link-local
    /// configuration (`Permanent`) or SLAAC (`Kernel`) would. Returns whether the
    /// interface exists.
    pub fn add_address(&mut self, link: &str, addr: IpNet, permanence: Permanence) -> bool {
        self.links
            .get_mut(link)
            .map(|l| l.addrs.insert(addr, permanence))
            .is_some()
    }

    /// Removes an address, as `ip address del` would, with the kernel's side effect.
    /// Returns whether it existed.
    pub fn remove_address(&mut self, link: &str, addr: IpNet) -> bool {
        let Some(l) = self.links.get_mut(link) else {
            return false;
        };
        let existed = l.addrs.remove(&addr).is_some();
        if addr.addr().is_ipv4() && !l.addrs.keys().any(|a| a.addr().is_ipv4()) {
            // fib_disable_ip(): no IPv4 address left, no IPv4 route via the link.
            self.routes
                .retain(|r| r.dev != link || r.route.dst().addr().is_ipv6());
        }
        existed
    }

    /// Adds a route with any protocol, as `ip route add … proto N` would (no checks).
    pub fn add_route(&mut self, dev: &str, route: RouteSpec, protocol: u8) -> &mut Self {
        self.routes.insert(FakeRoute {
            dev: dev.to_owned(),
            route,
            protocol,
        });
        self
    }

    /// Removes a route, as `ip route del` would. Returns whether it existed.
    pub fn remove_route(&mut self, dev: &str, route: RouteSpec, protocol: u8) -> bool {
        self.routes.remove(&FakeRoute {
            dev: dev.to_owned(),
            route,
            protocol,
        })
    }

    /// Sets an interface's MTU by hand. Returns whether it exists.
    pub fn set_mtu(&mut self, link: &str, mtu: u32) -> bool {
        self.links.get_mut(link).map(|l| l.mtu = mtu).is_some()
    }

    /// Sets an interface up or down by hand, with the kernel's side effects. Returns
    /// whether it exists.
    pub fn set_up(&mut self, link: &str, up: bool) -> bool {
        let Some(l) = self.links.get_mut(link) else {
            return false;
        };
        if l.up && !up {
            l.addrs.retain(|a, _| matches!(a, IpNet::V4(_)));
            self.routes.retain(|r| r.dev != link);
        }
        if let Some(l) = self.links.get_mut(link) {
            l.up = up;
        }
        true
    }

    /// Makes the next `times` applications of `action` fail with `errno`.
    pub fn fail(&mut self, action: Action, errno: i32, times: u32) -> &mut Self {
        self.faults.push(Fault {
            action,
            errno,
            remaining: times,
        });
        self
    }

    /// Makes the next `times` observations fail (`EBUSY`).
    pub fn fail_observe(&mut self, times: u32) -> &mut Self {
        self.observe_faults = times;
        self
    }

    /// All interfaces, weft's or not.
    pub fn links(&self) -> &BTreeMap<String, FakeLink> {
        &self.links
    }

    /// All routes in the main table, of any protocol.
    pub fn routes(&self) -> &BTreeSet<FakeRoute> {
        &self.routes
    }

    /// The rules of the nftables table `inet weft`, if it exists.
    pub fn nft_table(&self) -> Option<&BTreeSet<NftRule>> {
        self.nft.as_ref()
    }

    /// Deletes the table `inet weft` by hand (drift).
    pub fn delete_nft_table(&mut self) -> bool {
        self.nft.take().is_some()
    }

    /// The host firewall applied (table `inet weft_host`), if the table exists.
    pub fn host_table(&self) -> Option<&HostFirewall> {
        self.host.as_ref().map(|(fw, _)| fw)
    }

    /// `nft flush table inet weft_host` by hand (drift): the chains stay,
    /// their rules and the sets' elements go.
    pub fn flush_host_table(&mut self) -> bool {
        let Some((_, listed)) = &mut self.host else {
            return false;
        };
        listed.rules.clear();
        listed.sets.values_mut().for_each(BTreeSet::clear);
        true
    }

    /// Sets the wall clock this kernel reports (Unix milliseconds), for
    /// expiry tests; without it the system clock.
    pub fn set_wall_ms(&mut self, now_ms: u64) -> &mut Self {
        self.wall_ms = Some(now_ms);
        self
    }

    /// `net.ipv4.ip_forward`.
    pub fn ip_forward(&self) -> bool {
        self.ip_forward
    }

    /// Sets `net.ipv4.ip_forward` by hand (someone else's choice: weft does not
    /// turn it off later).
    pub fn set_ip_forward(&mut self, on: bool) -> &mut Self {
        self.ip_forward = on;
        self.forward_set_by_weft = false;
        self
    }

    /// Every action applied successfully so far, in order.
    pub fn journal(&self) -> &[Action] {
        &self.journal
    }

    /// Everything weft must never touch: non-weft interfaces with all their
    /// addresses, kernel-made addresses on weft interfaces, and routes of other
    /// protocols. Tests compare it before and after.
    pub fn foreign(&self) -> Foreign {
        let links = self
            .links
            .iter()
            .filter(|(name, _)| !is_weft_link(name))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let routes = self
            .routes
            .iter()
            .filter(|r| r.protocol != WEFT_ROUTE_PROTOCOL)
            .cloned()
            .collect();
        let kernel_addrs = self
            .links
            .iter()
            .filter(|(name, _)| is_weft_link(name))
            .flat_map(|(n, l)| {
                l.addrs
                    .iter()
                    .filter(|(a, p)| !is_observed(a, **p))
                    .map(move |(a, _)| (n.clone(), *a))
            })
            .collect();
        Foreign {
            links,
            routes,
            kernel_addrs,
        }
    }

    fn take_fault(&mut self, action: &Action) -> Option<i32> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.action == *action)?;
        fault.remaining -= 1;
        Some(fault.errno)
    }

    fn apply_inner(&mut self, action: &Action) -> Result<(), ExecError> {
        match action {
            Action::DeleteNftTable => {
                self.nft = None;
                return Ok(());
            }
            Action::SetNftTable { rules } => {
                self.nft = Some(rules.clone());
                return Ok(());
            }
            Action::DeleteHostTable => {
                self.host = None;
                return Ok(());
            }
            Action::SetHostTable { fw } => {
                let listed = ObservedHostFirewall::expected(fw, self.wall_ms());
                self.host = Some(((**fw).clone(), listed));
                return Ok(());
            }
            Action::SetIpForward { on } => {
                if *on && !self.ip_forward {
                    self.forward_set_by_weft = true;
                }
                if !*on {
                    self.forward_set_by_weft = false;
                }
                self.ip_forward = *on;
                return Ok(());
            }
            _ => {}
        }
        let op = || action.to_string();
        let link_name = action.link();
        let Some(link) = self.links.get_mut(link_name) else {
            if action.is_delete() {
                return Ok(()); // gone with its interface
            }
            return Err(ExecError::NoSuchLink {
                op: op(),
                link: link_name.to_owned(),
            });
        };
        match action {
            Action::SetMtu { mtu, .. } => {
                if *mtu < 68 {
                    return Err(ExecError::kernel(op(), libc::EINVAL));
                }
                link.mtu = *mtu;
            }
            Action::SetIpv6 { link: dev, on } => {
                if link.ipv6_disabled.is_none() {
                    return Err(ExecError::kernel(op(), libc::ENOENT));
                }
                link.ipv6_disabled = Some(!on);
                if !on {
                    // addrconf_ifdown(): every IPv6 address and route goes.
                    link.addrs.retain(|a, _| a.addr().is_ipv4());
                    let dev = dev.clone();
                    self.routes
                        .retain(|r| r.dev != dev || r.route.dst().addr().is_ipv4());
                }
            }
            Action::SetLinkUp { link, up } => {
                let link = link.clone();
                self.set_up(&link, *up);
            }
            Action::AddAddress { addr, .. } => {
                if addr.addr().is_ipv6() && link.ipv6_disabled != Some(false) {
                    return Err(ExecError::kernel(op(), libc::EACCES));
                }
                link.addrs.insert(*addr, Permanence::Permanent);
            }
            Action::DeleteAddress { link, addr } => {
                let link = link.clone();
                self.remove_address(&link, *addr);
            }
            Action::AddRoute { link: dev, route } => {
                if !link.up {
                    return Err(ExecError::kernel(op(), libc::ENETDOWN));
                }
                let new = FakeRoute {
                    dev: dev.clone(),
                    route: *route,
                    protocol: WEFT_ROUTE_PROTOCOL,
                };
                if !self.routes.insert(new) {
                    return Err(ExecError::kernel(op(), libc::EEXIST));
                }
            }
            Action::DeleteRoute { link: dev, route } => {
                self.remove_route(dev, *route, WEFT_ROUTE_PROTOCOL);
            }
            Action::DeleteNftTable
            | Action::SetNftTable { .. }
            | Action::SetIpForward { .. }
            | Action::DeleteHostTable
            | Action::SetHostTable { .. } => {}
        }
        Ok(())
    }
}

/// Whether observation reports an address (as the netlink executor decides).
fn is_observed(addr: &IpNet, permanence: Permanence) -> bool {
    permanence == Permanence::Permanent && is_managed_address(addr)
}

impl Executor for FakeKernel {
    fn observe(&mut self) -> Result<ObservedState, ExecError> {
        if self.observe_faults > 0 {
            self.observe_faults -= 1;
            return Err(ExecError::kernel("observe", libc::EBUSY));
        }
        let mut observed = ObservedState::default();
        for (name, link) in self.links.iter().filter(|(n, _)| is_weft_link(n)) {
            let mut obs = ObservedLink::new(link.mtu);
            obs.up = link.up;
            obs.ipv6_disabled = link.ipv6_disabled;
            obs.addrs = link
                .addrs
                .iter()
                .filter(|(a, p)| is_observed(a, **p))
                .map(|(a, _)| *a)
                .collect();
            observed.links.insert(name.clone(), obs);
        }
        for r in self
            .routes
            .iter()
            .filter(|r| r.protocol == WEFT_ROUTE_PROTOCOL)
        {
            match observed.links.get_mut(&r.dev) {
                Some(link) => {
                    link.routes.insert(r.route);
                }
                None => {
                    observed.orphan_routes.insert((r.dev.clone(), r.route));
                }
            }
        }
        observed.firewall = ObservedFirewall {
            table: self
                .nft
                .as_ref()
                .map(|rules| rules.iter().map(NftRule::comment).collect()),
            ip_forward: self.ip_forward,
            forward_set_by_weft: self.forward_set_by_weft,
        };
        observed.host_firewall = self.host.as_ref().map(|(_, listed)| listed.clone());
        Ok(observed)
    }

    fn apply(&mut self, action: &Action) -> Result<(), ExecError> {
        if let Some(errno) = self.take_fault(action) {
            return Err(ExecError::kernel(action.to_string(), errno));
        }
        self.apply_inner(action)?;
        self.journal.push(action.clone());
        Ok(())
    }

    fn wall_ms(&self) -> u64 {
        self.wall_ms.unwrap_or_else(super::system_wall_ms)
    }
}
