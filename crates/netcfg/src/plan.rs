//! The pure planner: desired state + observed state → an ordered list of [`Action`]s.
//!
//! No I/O, no clock, no logging: the same inputs always give the same plan, which is
//! what the reconciler applies, what logs show and what `weft status --plan` prints.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use crate::desired::{DesiredState, LinkSpec, RouteSpec, is_managed_address, is_weft_link};
use crate::firewall::{NFT_TABLE, NftRule};
use crate::hostfw::{HOST_FAMILY, HOST_TABLE, HostFirewall, ObservedHostFirewall};
use crate::observed::{ObservedLink, ObservedState};

/// One change to the kernel. Every variant names the `weft*` interface it touches.
///
/// Later object kinds (the nftables table `weft`, DNS per link) become further
/// variants with their own phase in [`Action::phase`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Delete a weft-tagged route (stale, orphaned, or on a link desired down).
    DeleteRoute {
        /// Device of the route.
        link: String,
        /// The route as observed.
        route: RouteSpec,
    },
    /// Delete an address from a `weft*` interface.
    DeleteAddress {
        /// Interface name.
        link: String,
        /// Address with prefix length.
        addr: IpNet,
    },
    /// Set the MTU of a `weft*` interface.
    SetMtu {
        /// Interface name.
        link: String,
        /// New MTU in bytes.
        mtu: u32,
    },
    /// Turn IPv6 on or off on a `weft*` interface
    /// (`net.ipv6.conf.<link>.disable_ipv6`); off removes its IPv6 addresses.
    SetIpv6 {
        /// Interface name.
        link: String,
        /// `true` for IPv6 on.
        on: bool,
    },
    /// Set the administrative state of a `weft*` interface.
    SetLinkUp {
        /// Interface name.
        link: String,
        /// `true` for up.
        up: bool,
    },
    /// Add an address to a `weft*` interface.
    AddAddress {
        /// Interface name.
        link: String,
        /// Address with prefix length.
        addr: IpNet,
    },
    /// Add a weft-tagged route via a `weft*` interface.
    AddRoute {
        /// Interface the route points at.
        link: String,
        /// The route.
        route: RouteSpec,
    },
    /// Delete the nftables table `inet weft`.
    DeleteNftTable,
    /// Replace the nftables table `inet weft` (atomically) with these rules.
    SetNftTable {
        /// The rules.
        rules: BTreeSet<NftRule>,
    },
    /// Set `net.ipv4.ip_forward` (off only when weft turned it on).
    SetIpForward {
        /// On or off.
        on: bool,
    },
    /// Delete the host firewall's table `inet weft_host`.
    DeleteHostTable,
    /// Replace the host firewall's table `inet weft_host` (atomically) with
    /// this firewall (expired rules already left out).
    SetHostTable {
        /// The firewall.
        fw: Box<HostFirewall>,
    },
}

impl Action {
    /// The interface this action touches (empty for the host-wide firewall
    /// actions).
    pub fn link(&self) -> &str {
        match self {
            Self::DeleteRoute { link, .. }
            | Self::DeleteAddress { link, .. }
            | Self::SetMtu { link, .. }
            | Self::SetIpv6 { link, .. }
            | Self::SetLinkUp { link, .. }
            | Self::AddAddress { link, .. }
            | Self::AddRoute { link, .. } => link,
            Self::DeleteNftTable
            | Self::SetNftTable { .. }
            | Self::SetIpForward { .. }
            | Self::DeleteHostTable
            | Self::SetHostTable { .. } => "",
        }
    }

    /// Returns whether the action is host-wide (nftables, sysctl) rather than
    /// about one interface.
    pub fn is_host_wide(&self) -> bool {
        matches!(
            self,
            Self::DeleteNftTable
                | Self::SetNftTable { .. }
                | Self::SetIpForward { .. }
                | Self::DeleteHostTable
                | Self::SetHostTable { .. }
        )
    }

    /// Returns whether the action removes an object.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DeleteRoute { .. }
                | Self::DeleteAddress { .. }
                | Self::DeleteNftTable
                | Self::DeleteHostTable
        )
    }

    /// Position of the action's kind in a plan: stale routes go first, then stale
    /// addresses, MTU and IPv6 on or off, link state, new addresses, and new
    /// routes last (a route needs its link up; an address needs the MTU that lets
    /// IPv6 run, and IPv6 off before the link goes up keeps the kernel from
    /// sending anything from a link-local address).
    pub fn phase(&self) -> u8 {
        match self {
            Self::DeleteNftTable | Self::DeleteHostTable | Self::DeleteRoute { .. } => 0,
            Self::SetIpForward { on: false } | Self::DeleteAddress { .. } => 1,
            Self::SetMtu { .. } | Self::SetIpv6 { .. } => 2,
            Self::SetLinkUp { .. } => 3,
            Self::AddAddress { .. } => 4,
            Self::AddRoute { .. } => 5,
            Self::SetNftTable { .. } | Self::SetHostTable { .. } => 6,
            Self::SetIpForward { on: true } => 7,
        }
    }
}

/// The line logs and `weft status --plan` show, e.g. `add address 100.64.0.2/10 to weft0`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeleteRoute { link, route } => write!(f, "delete route {route} dev {link}"),
            Self::DeleteAddress { link, addr } => write!(f, "delete address {addr} from {link}"),
            Self::SetMtu { link, mtu } => write!(f, "set mtu {mtu} on {link}"),
            Self::SetIpv6 { link, on } => {
                write!(f, "set ipv6 {} on {link}", if *on { "on" } else { "off" })
            }
            Self::SetLinkUp { link, up } => {
                write!(f, "set link {link} {}", if *up { "up" } else { "down" })
            }
            Self::AddAddress { link, addr } => write!(f, "add address {addr} to {link}"),
            Self::AddRoute { link, route } => write!(f, "add route {route} dev {link}"),
            Self::DeleteNftTable => write!(f, "delete nftables table {NFT_TABLE}"),
            Self::SetNftTable { rules } => {
                write!(f, "set nftables table {NFT_TABLE}:")?;
                for (i, r) in rules.iter().enumerate() {
                    write!(f, "{} {r}", if i == 0 { "" } else { ";" })?;
                }
                Ok(())
            }
            Self::SetIpForward { on } => {
                write!(f, "set net.ipv4.ip_forward {}", u8::from(*on))
            }
            Self::DeleteHostTable => {
                write!(f, "delete nftables table {HOST_FAMILY} {HOST_TABLE}")
            }
            Self::SetHostTable { fw } => write!(f, "set nftables table {fw}"),
        }
    }
}

/// The outcome of [`plan`]: actions to apply in order, plus what cannot be acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Changes to apply, in this order.
    pub actions: Vec<Action>,
    /// Desired `weft*` interfaces that do not exist yet. The data plane creates them;
    /// nothing is planned for them until they appear.
    pub waiting_for: Vec<String>,
    /// Parts of the desired state that weft does not manage, each as a phrase such as
    /// `eth0: not a weft interface`: interfaces without the `weft` prefix (weft only
    /// manages what it can find again) and IPv6 link-local addresses (the kernel's).
    /// A bug in the caller.
    pub ignored: Vec<String>,
}

impl Plan {
    /// Returns whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Returns whether the kernel matches the desired state: nothing to apply and no
    /// interface to wait for.
    pub fn is_converged(&self) -> bool {
        self.actions.is_empty() && self.waiting_for.is_empty()
    }
}

/// One action per line; `up to date` when there is nothing to do.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_converged() && self.ignored.is_empty() {
            return f.write_str("up to date");
        }
        let mut first = true;
        let mut line = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            f.write_fmt(args)
        };
        for action in &self.actions {
            line(f, format_args!("{action}"))?;
        }
        for link in &self.waiting_for {
            line(f, format_args!("waiting for interface {link}"))?;
        }
        for what in &self.ignored {
            line(f, format_args!("ignoring {what}"))?;
        }
        Ok(())
    }
}

/// Computes the actions that turn `observed` into `desired`.
///
/// Deletes only weft's objects: weft-tagged routes, and addresses on `weft*`
/// interfaces (observed state contains nothing else). A `weft*` interface that is
/// observed but not desired is emptied of addresses and routes. The order is stable:
/// by [`Action::phase`], then interface name, then object.
///
/// Two kernel side effects are anticipated so that one pass converges: a link set
/// down loses its IPv6 addresses (they are re-added), and a link losing its last
/// IPv4 address loses its IPv4 routes (they are re-added). One is not: deleting a
/// primary IPv4 address also deletes its secondaries when `promote_secondaries` is
/// off; the next pass adds them back.
///
/// Expiring host firewall rules are judged at time 0 (none has expired):
/// [`plan_at`] with the wall clock is what the reconciler runs.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Plan {
    plan_at(desired, observed, 0)
}

/// [`plan`] at `now_ms` (Unix time in milliseconds): host firewall rules
/// expired by then are left out of the table.
pub fn plan_at(desired: &DesiredState, observed: &ObservedState, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    let no_addrs = BTreeSet::new();
    let owned = || desired.links.iter().filter(|(name, _)| is_weft_link(name));
    // Desired links that exist, paired with their observation.
    let present =
        || owned().filter_map(|(name, spec)| Some((name, spec, observed.links.get(name)?)));

    for name in desired.links.keys() {
        if !is_weft_link(name) {
            plan.ignored.push(format!("{name}: not a weft interface"));
        } else if !observed.links.contains_key(name) {
            plan.waiting_for.push(name.clone());
        }
    }
    for (name, spec) in owned() {
        for addr in spec.addrs.iter().filter(|a| !is_managed_address(a)) {
            plan.ignored.push(format!(
                "{addr} on {name}: IPv6 link-local addresses are the kernel's"
            ));
        }
    }

    // Phase 0: stale routes, orphans first.
    for (link, route) in &observed.orphan_routes {
        plan.actions.push(Action::DeleteRoute {
            link: link.clone(),
            route: *route,
        });
    }
    for (name, obs) in &observed.links {
        let wanted = desired.links.get(name).map_or(&NO_ROUTES, wanted_routes);
        for route in obs.routes.difference(wanted) {
            plan.actions.push(Action::DeleteRoute {
                link: name.clone(),
                route: *route,
            });
        }
    }
    // Phase 1: stale addresses.
    for (name, obs) in &observed.links {
        let wanted = desired.links.get(name).map_or(&no_addrs, |s| &s.addrs);
        for addr in obs.addrs.difference(wanted) {
            plan.actions.push(Action::DeleteAddress {
                link: name.clone(),
                addr: *addr,
            });
        }
    }
    // Phase 2: MTU.
    for (name, spec, obs) in present() {
        if let Some(mtu) = spec.mtu.filter(|&mtu| mtu != obs.mtu) {
            plan.actions.push(Action::SetMtu {
                link: name.clone(),
                mtu,
            });
        }
    }
    // Phase 2 too, after the MTU (IPv6 needs at least 1280): IPv6 only on
    // links that carry it.
    for (name, spec, obs) in present() {
        let on = spec.wants_ipv6();
        if obs.ipv6_disabled.is_some_and(|disabled| disabled == on) {
            plan.actions.push(Action::SetIpv6 {
                link: name.clone(),
                on,
            });
        }
    }
    // Phase 3: link state.
    for (name, spec, obs) in present() {
        if spec.up != obs.up {
            plan.actions.push(Action::SetLinkUp {
                link: name.clone(),
                up: spec.up,
            });
        }
    }
    // Phase 4: new addresses, including those the kernel drops in phase 3.
    for (name, spec, obs) in present() {
        let have = addrs_after_link_change(spec, obs);
        for addr in spec
            .addrs
            .difference(&have)
            .filter(|a| is_managed_address(a))
        {
            plan.actions.push(Action::AddAddress {
                link: name.clone(),
                addr: *addr,
            });
        }
    }
    // Phase 5: new routes, including those the kernel drops in phase 1.
    for (name, spec, obs) in present() {
        let have = routes_after_address_deletes(spec, obs);
        for route in wanted_routes(spec).difference(&have) {
            plan.actions.push(Action::AddRoute {
                link: name.clone(),
                route: *route,
            });
        }
    }
    plan_firewall(desired, observed, &mut plan);
    plan_host_firewall(desired, observed, now_ms, &mut plan);
    plan.actions.sort_by_key(Action::phase);
    plan
}

/// The firewall actions: the table (replaced whole when its rules differ) and
/// forwarding.
fn plan_firewall(desired: &DesiredState, observed: &ObservedState, plan: &mut Plan) {
    let rules = desired.firewall.rules();
    let comments: BTreeSet<String> = rules.iter().map(NftRule::comment).collect();
    match &observed.firewall.table {
        Some(_) if rules.is_empty() => plan.actions.push(Action::DeleteNftTable),
        Some(have) if *have == comments => {}
        None if rules.is_empty() => {}
        Some(_) | None => plan.actions.push(Action::SetNftTable { rules }),
    }
    let fw = &observed.firewall;
    if desired.firewall.forwarding() && !fw.ip_forward {
        plan.actions.push(Action::SetIpForward { on: true });
    } else if !desired.firewall.forwarding() && fw.ip_forward && fw.forward_set_by_weft {
        plan.actions.push(Action::SetIpForward { on: false });
    }
}

/// The host firewall: its table replaced whole when anything differs from
/// what the desired firewall renders to (a rule, a chain policy, a domain
/// set's contents), deleted when none is desired.
fn plan_host_firewall(
    desired: &DesiredState,
    observed: &ObservedState,
    now_ms: u64,
    plan: &mut Plan,
) {
    match (&desired.host_firewall, &observed.host_firewall) {
        (None, Some(_)) => plan.actions.push(Action::DeleteHostTable),
        (None, None) => {}
        (Some(fw), have) => {
            if have.as_ref() != Some(&ObservedHostFirewall::expected(fw, now_ms)) {
                plan.actions.push(Action::SetHostTable {
                    fw: Box::new(fw.at(now_ms)),
                });
            }
        }
    }
}

/// The routes a link should carry: none while it is desired down (see [`LinkSpec::up`]).
fn wanted_routes(spec: &LinkSpec) -> &BTreeSet<RouteSpec> {
    if spec.up { &spec.routes } else { &NO_ROUTES }
}

static NO_ROUTES: BTreeSet<RouteSpec> = BTreeSet::new();

/// The addresses a link holds after phase 3: setting it down makes the kernel drop
/// its IPv6 addresses (`keep_addr_on_down=0`, the default).
fn addrs_after_link_change(spec: &LinkSpec, obs: &ObservedLink) -> BTreeSet<IpNet> {
    let going_down = obs.up && !spec.up;
    obs.addrs
        .iter()
        .filter(|a| !going_down || a.addr().is_ipv4())
        .copied()
        .collect()
}

/// The routes a link holds after phase 1: when the plan deletes its last IPv4
/// address, the kernel flushes every IPv4 route via it (`fib_disable_ip`).
fn routes_after_address_deletes(spec: &LinkSpec, obs: &ObservedLink) -> BTreeSet<RouteSpec> {
    let mut v4 = obs.addrs.iter().filter(|a| a.addr().is_ipv4()).peekable();
    let loses_ipv4 = v4.peek().is_some() && v4.all(|a| !spec.addrs.contains(a));
    obs.routes
        .iter()
        .filter(|r| !loses_ipv4 || r.dst().addr().is_ipv6())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn route(s: &str) -> RouteSpec {
        RouteSpec::new(net(s))
    }

    fn overlay(link: &str) -> DesiredState {
        DesiredState::default().with_link(
            link,
            LinkSpec::up(1280)
                .with_addr(net("100.64.0.2/10"))
                .with_addr(net("fd7a:115c:a1e0::2/48"))
                .with_route(route("100.64.0.0/10"))
                .with_route(route("fd7a:115c:a1e0::/48")),
        )
    }

    fn lines(plan: &Plan) -> Vec<String> {
        plan.actions.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn fresh_interface_gets_everything_in_order() {
        let mut observed = ObservedState::default();
        observed
            .links
            .insert("weft0".into(), ObservedLink::new(1500));
        let plan = plan(&overlay("weft0"), &observed);
        assert_eq!(
            lines(&plan),
            [
                "set mtu 1280 on weft0",
                "set link weft0 up",
                "add address 100.64.0.2/10 to weft0",
                "add address fd7a:115c:a1e0::2/48 to weft0",
                "add route 100.64.0.0/10 dev weft0",
                "add route fd7a:115c:a1e0::/48 dev weft0",
            ]
        );
        assert!(plan.waiting_for.is_empty());
    }

    #[test]
    fn ipv6_is_off_before_the_link_goes_up_unless_the_link_carries_it() {
        // An IPv4-only network: IPv6 off first, so the kernel never sends a
        // router solicitation or MLD report into the overlay.
        let v4_only = DesiredState::default().with_link(
            "weft0",
            LinkSpec::up(1280)
                .with_addr(net("100.64.0.2/10"))
                .with_route(route("100.64.0.0/10")),
        );
        let mut observed = ObservedState::default();
        let mut link = ObservedLink::new(1280);
        link.ipv6_disabled = Some(false);
        observed.links.insert("weft0".into(), link);
        assert_eq!(
            lines(&plan(&v4_only, &observed)),
            [
                "set ipv6 off on weft0",
                "set link weft0 up",
                "add address 100.64.0.2/10 to weft0",
                "add route 100.64.0.0/10 dev weft0",
            ]
        );
        // A dual-stack network on a link where IPv6 is off: on again, before
        // the IPv6 address.
        observed.links.get_mut("weft0").unwrap().ipv6_disabled = Some(true);
        let dual = plan(&overlay("weft0"), &observed);
        assert_eq!(lines(&dual)[0], "set ipv6 on on weft0");
        // Already right, or not observable (no IPv6 in the kernel): nothing.
        assert!(
            !lines(&plan(
                &overlay("weft0"),
                &ObservedState {
                    links: [(
                        "weft0".into(),
                        ObservedLink {
                            ipv6_disabled: Some(false),
                            ..ObservedLink::new(1280)
                        }
                    )]
                    .into(),
                    ..ObservedState::default()
                }
            ))
            .iter()
            .any(|l| l.contains("ipv6"))
        );
        observed.links.get_mut("weft0").unwrap().ipv6_disabled = None;
        assert!(
            !lines(&plan(&v4_only, &observed))
                .iter()
                .any(|l| l.contains("ipv6"))
        );
    }

    #[test]
    fn missing_interface_is_waited_for_not_acted_on() {
        let plan = plan(&overlay("weft1"), &ObservedState::default());
        assert!(plan.is_empty());
        assert!(!plan.is_converged());
        assert_eq!(plan.waiting_for, ["weft1"]);
        assert_eq!(plan.to_string(), "waiting for interface weft1");
    }

    #[test]
    fn matching_state_is_up_to_date() {
        let desired = overlay("weft0");
        let spec = &desired.links["weft0"];
        let mut observed = ObservedState::default();
        observed.links.insert(
            "weft0".into(),
            ObservedLink {
                mtu: 1280,
                up: true,
                addrs: spec.addrs.clone(),
                routes: spec.routes.clone(),
                ipv6_disabled: Some(false),
            },
        );
        let plan = plan(&desired, &observed);
        assert!(plan.is_converged());
        assert_eq!(plan.to_string(), "up to date");
    }

    #[test]
    fn stale_objects_are_deleted_before_anything_is_added() {
        let mut observed = ObservedState::default();
        let mut link = ObservedLink::new(1280);
        link.up = true;
        link.addrs.insert(net("100.64.0.9/10"));
        link.routes.insert(route("100.64.0.0/10"));
        link.routes
            .insert(RouteSpec::with_metric(net("10.1.0.0/16"), 5));
        observed.links.insert("weft0".into(), link);
        observed.links.insert("weft1".into(), {
            let mut l = ObservedLink::new(1280);
            l.addrs.insert(net("100.80.0.1/12"));
            l.routes.insert(route("100.80.0.0/12"));
            l
        });
        observed
            .orphan_routes
            .insert(("eth0".into(), route("192.0.2.0/24")));
        let desired = DesiredState::default().with_link(
            "weft0",
            LinkSpec::up(1280)
                .with_addr(net("100.64.0.2/10"))
                .with_route(route("100.64.0.0/10")),
        );
        assert_eq!(
            lines(&plan(&desired, &observed)),
            [
                "delete route 192.0.2.0/24 dev eth0",
                "delete route 10.1.0.0/16 metric 5 dev weft0",
                "delete route 100.80.0.0/12 dev weft1",
                "delete address 100.64.0.9/10 from weft0",
                "delete address 100.80.0.1/12 from weft1",
                "add address 100.64.0.2/10 to weft0",
                // Deleting weft0's only IPv4 address flushes its IPv4 routes.
                "add route 100.64.0.0/10 dev weft0",
            ]
        );
    }

    #[test]
    fn a_link_desired_down_carries_no_routes() {
        let mut desired = overlay("weft0");
        desired.links.get_mut("weft0").unwrap().up = false;
        let mut observed = ObservedState::default();
        let mut link = ObservedLink::new(1280);
        link.up = true;
        link.routes.insert(route("100.64.0.0/10"));
        observed.links.insert("weft0".into(), link);
        let plan = plan(&desired, &observed);
        assert_eq!(
            lines(&plan),
            [
                "delete route 100.64.0.0/10 dev weft0",
                "set link weft0 down",
                "add address 100.64.0.2/10 to weft0",
                "add address fd7a:115c:a1e0::2/48 to weft0",
            ]
        );
    }

    #[test]
    fn foreign_names_in_the_desired_state_are_ignored() {
        let mut observed = ObservedState::default();
        observed
            .links
            .insert("weft0".into(), ObservedLink::new(1280));
        let desired = overlay("eth0");
        let plan = plan(&desired, &observed);
        assert!(plan.actions.is_empty());
        assert_eq!(plan.ignored, ["eth0: not a weft interface"]);
        assert_eq!(plan.to_string(), "ignoring eth0: not a weft interface");
    }

    #[test]
    fn mtu_none_leaves_the_mtu_alone() {
        let mut observed = ObservedState::default();
        let mut link = ObservedLink::new(9000);
        link.up = true;
        observed.links.insert("weft0".into(), link);
        let mut spec = LinkSpec::up(0);
        spec.mtu = None;
        let desired = DesiredState::default().with_link("weft0", spec);
        assert!(plan(&desired, &observed).is_converged());
    }

    #[test]
    fn a_gateway_gets_its_table_and_forwarding_and_loses_them_again() {
        use crate::exec::FakeKernel;
        use crate::reconcile::reconcile_once;
        let mut kernel = FakeKernel::new();
        kernel.add_link("weft0", 1280);
        let mut desired = overlay("weft0");
        desired.firewall.overlay.insert(net("100.64.0.0/10"));
        desired.firewall.masquerade.insert(net("10.1.0.0/24"));
        let report = reconcile_once(&mut kernel, &desired);
        assert!(report.converged, "{:?}", report.remaining);
        let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            applied[applied.len() - 2..],
            [
                "set nftables table inet weft: no forwarding between weft interfaces; masquerade 100.64.0.0/10 to 10.1.0.0/24",
                "set net.ipv4.ip_forward 1",
            ]
        );
        // Drift: someone deletes the table; the next pass puts it back.
        assert!(kernel.delete_nft_table());
        let again = reconcile_once(&mut kernel, &desired);
        assert_eq!(again.applied.len(), 1);
        assert!(kernel.nft_table().is_some());
        // The route goes: table deleted, forwarding back off (weft turned it on).
        desired.firewall.masquerade.clear();
        let report = reconcile_once(&mut kernel, &desired);
        let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            applied,
            [
                "delete nftables table inet weft",
                "set net.ipv4.ip_forward 0"
            ]
        );
        assert!(kernel.nft_table().is_none());
        assert!(!kernel.ip_forward());
        // Forwarding someone else turned on stays on.
        kernel.set_ip_forward(true);
        desired.firewall.masquerade.insert(net("10.1.0.0/24"));
        reconcile_once(&mut kernel, &desired);
        desired.firewall.masquerade.clear();
        reconcile_once(&mut kernel, &desired);
        assert!(kernel.ip_forward());
    }
}
