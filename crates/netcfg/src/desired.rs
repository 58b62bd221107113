//! The desired state: what the agent wants on the `weft*` interfaces, computed from the
//! controller's network map. Plain ordered values, so plans print in a stable order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;

/// Name prefix of every interface weft manages. The data plane names its TUN devices
/// `weft0`, `weft1`, …; anything else on the host is never touched.
pub const WEFT_LINK_PREFIX: &str = "weft";

/// Route protocol number (`rtm_protocol`, `ip route … proto 119`) that tags every route
/// weft installs. 119 = 0x77 = ASCII `w`; it is unassigned in the kernel's
/// `include/uapi/linux/rtnetlink.h` (which stops at `RTPROT_EIGRP` = 192 with gaps) and in
/// iproute2's `rt_protos`. Observation only ever reports routes carrying it, so a route
/// without it is never changed or deleted.
pub const WEFT_ROUTE_PROTOCOL: u8 = 0x77;

/// Kernel default metric of an IPv6 route added with metric 0 (`IP6_RT_PRIO_USER`).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// Returns whether an interface name belongs to weft (starts with [`WEFT_LINK_PREFIX`]).
pub fn is_weft_link(name: &str) -> bool {
    name.starts_with(WEFT_LINK_PREFIX)
}

/// The bridge of `weft run`'s bridged workloads. Not `weft*`: the reconciler
/// does not manage it (the agent's workload module does).
pub const WORKLOAD_BRIDGE: &str = "wfbr0";
/// Name prefix of the node's ends of workload veths (`wfwl` + 8 hex digits).
pub const WORKLOAD_VETH_PREFIX: &str = "wfwl";

/// Returns whether an interface is one of `weft run`'s (its bridge or a
/// workload veth): weft's, but not the underlay and not the reconciler's.
pub fn is_workload_link(name: &str) -> bool {
    name == WORKLOAD_BRIDGE || name.starts_with(WORKLOAD_VETH_PREFIX)
}

/// Returns whether weft manages an address of this kind: any but IPv6 link-local
/// (`fe80::/10`), which the kernel configures by itself when a link comes up (as a
/// permanent address, so flags cannot tell it from a user's).
pub fn is_managed_address(addr: &IpNet) -> bool {
    match addr {
        IpNet::V4(_) => true,
        IpNet::V6(net) => !net.addr().is_unicast_link_local(),
    }
}

/// Everything weft wants the kernel to hold, keyed by interface name.
///
/// Links not named `weft*` and IPv6 link-local addresses are ignored by the planner
/// (reported in [`Plan::ignored`](crate::Plan::ignored)). Observed `weft*` links absent from
/// `links` are cleaned: their addresses and weft routes are deleted.
///
/// Later object kinds (the nftables table `weft`, DNS per link) become further fields
/// here, each with its own `Action` variants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Interface name → what should be on it.
    pub links: BTreeMap<String, LinkSpec>,
    /// Forwarding and the nftables table `inet weft` (gateways, isolation
    /// between networks).
    pub firewall: crate::firewall::FirewallSpec,
    /// The host firewall, table `inet weft_host`; `None`: no table (deleted
    /// if present).
    pub host_firewall: Option<crate::hostfw::HostFirewall>,
}

impl DesiredState {
    /// Adds (or replaces) the spec of one link; returns `self` for chaining.
    #[must_use]
    pub fn with_link(mut self, name: impl Into<String>, spec: LinkSpec) -> Self {
        self.links.insert(name.into(), spec);
        self
    }
}

/// What should sit on one `weft*` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// MTU in bytes; `None` leaves the kernel's value alone. Keep it ≥ 1280 when the
    /// link carries IPv6 (below that the kernel disables IPv6 on the link).
    pub mtu: Option<u32>,
    /// Administrative state (`IFF_UP`). A link desired down carries no routes: the
    /// kernel refuses routes via a down device (`ENETDOWN`) and flushes them on link
    /// down, so the planner does not ask for them.
    pub up: bool,
    /// Interface addresses with their prefix length, e.g. `100.64.0.2/10`; IPv6
    /// link-local ones are the kernel's (see [`is_managed_address`]). Added with
    /// `IFA_F_NOPREFIXROUTE` (and `IFA_F_NODAD` for IPv6): the kernel creates no prefix
    /// route of its own, every route on the link is an explicit, weft-tagged
    /// [`RouteSpec`].
    pub addrs: BTreeSet<IpNet>,
    /// Routes whose next hop is this interface (the overlay CIDR, routed subnets).
    pub routes: BTreeSet<RouteSpec>,
}

impl LinkSpec {
    /// An up link with the given MTU and nothing on it yet.
    pub fn up(mtu: u32) -> Self {
        Self {
            mtu: Some(mtu),
            up: true,
            addrs: BTreeSet::new(),
            routes: BTreeSet::new(),
        }
    }

    /// Whether the link carries IPv6: it has an IPv6 address or route. A link
    /// without is kept IPv6-free (`disable_ipv6`), so the kernel sends nothing
    /// of its own into the overlay (router solicitations, MLD reports from the
    /// link-local address it would otherwise make) that the data plane could
    /// only drop.
    pub fn wants_ipv6(&self) -> bool {
        self.addrs.iter().any(|a| a.addr().is_ipv6())
            || self.routes.iter().any(|r| r.dst().addr().is_ipv6())
    }

    /// Adds an address; returns `self` for chaining.
    #[must_use]
    pub fn with_addr(mut self, addr: IpNet) -> Self {
        self.addrs.insert(addr);
        self
    }

    /// Adds a route; returns `self` for chaining.
    #[must_use]
    pub fn with_route(mut self, route: RouteSpec) -> Self {
        self.routes.insert(route);
        self
    }
}

/// A weft route: destination via the interface it is attached to, with a metric.
///
/// Always normalised the way the kernel stores it, so desired and observed routes
/// compare equal: the destination is truncated to its network (`100.64.0.2/10` →
/// `100.64.0.0/10`) and an IPv6 metric of 0 becomes [`IPV6_DEFAULT_METRIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    dst: IpNet,
    metric: u32,
}

impl RouteSpec {
    /// A route to `dst` with the kernel's default metric (0 for IPv4, 1024 for IPv6).
    pub fn new(dst: IpNet) -> Self {
        Self::with_metric(dst, 0)
    }

    /// A route to `dst` with an explicit metric (`ip route … metric N`).
    pub fn with_metric(dst: IpNet, metric: u32) -> Self {
        let metric = match dst {
            IpNet::V6(_) if metric == 0 => IPV6_DEFAULT_METRIC,
            IpNet::V4(_) | IpNet::V6(_) => metric,
        };
        Self {
            dst: dst.trunc(),
            metric,
        }
    }

    /// The destination network.
    pub fn dst(&self) -> IpNet {
        self.dst
    }

    /// The metric (route priority) as the kernel stores it.
    pub fn metric(&self) -> u32 {
        self.metric
    }

    fn default_metric(&self) -> u32 {
        match self.dst {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => IPV6_DEFAULT_METRIC,
        }
    }
}

/// `100.64.0.0/10`, or `100.64.0.0/10 metric 50` when the metric is not the default.
impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if self.metric != self.default_metric() {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_spec_normalises_like_the_kernel() {
        let r = RouteSpec::new("100.64.0.2/10".parse().unwrap());
        assert_eq!(r.dst().to_string(), "100.64.0.0/10");
        assert_eq!(r.metric(), 0);
        assert_eq!(r.to_string(), "100.64.0.0/10");

        let r6 = RouteSpec::new("fd7a::1/48".parse().unwrap());
        assert_eq!(r6.metric(), IPV6_DEFAULT_METRIC);
        assert_eq!(r6.to_string(), "fd7a::/48");
        assert_eq!(
            RouteSpec::with_metric("fd7a::/48".parse().unwrap(), 7).to_string(),
            "fd7a::/48 metric 7"
        );
    }

    #[test]
    fn only_weft_names_are_owned() {
        assert!(is_weft_link("weft0"));
        assert!(!is_weft_link("eth0"));
        assert!(!is_weft_link("wef"));
        assert!(is_managed_address(&"fd7a::1/48".parse().unwrap()));
        assert!(is_managed_address(&"169.254.1.1/16".parse().unwrap()));
        assert!(!is_managed_address(&"fe80::1/64".parse().unwrap()));
    }
}
