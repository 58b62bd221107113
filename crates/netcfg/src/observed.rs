//! The observed state: what the kernel holds of weft's objects, as reported by an
//! [`Executor`](crate::Executor). Same shapes as the desired state, so the planner is a
//! set difference.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::desired::RouteSpec;

/// The weft-owned part of the kernel's state.
///
/// Contains only: interfaces named `weft*`; their permanent addresses except IPv6
/// link-local ones (kernel-made addresses are left out: weft never created them, see
/// [`is_managed_address`](crate::is_managed_address)); and main-table unicast routes
/// tagged with
/// [`WEFT_ROUTE_PROTOCOL`](crate::WEFT_ROUTE_PROTOCOL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedState {
    /// `weft*` interfaces by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// Weft-tagged routes whose device is not a `weft*` interface, as
    /// `(device name, route)`. weft never creates these; they are deleted.
    pub orphan_routes: BTreeSet<(String, RouteSpec)>,
    /// Forwarding and the nftables table `inet weft`.
    pub firewall: crate::firewall::ObservedFirewall,
    /// The host firewall's table `inet weft_host`; `None` when it does not exist.
    pub host_firewall: Option<crate::hostfw::ObservedHostFirewall>,
}

/// One `weft*` interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    /// Current MTU in bytes.
    pub mtu: u32,
    /// Administrative state (`IFF_UP`), not carrier.
    pub up: bool,
    /// Managed addresses with their prefix length.
    pub addrs: BTreeSet<IpNet>,
    /// Weft-tagged routes via this interface.
    pub routes: BTreeSet<RouteSpec>,
    /// `net.ipv6.conf.<link>.disable_ipv6`: whether IPv6 is off on the link;
    /// `None` when the kernel has no IPv6 (or the setting cannot be read), and
    /// then nothing is planned for it.
    pub ipv6_disabled: Option<bool>,
}

impl ObservedLink {
    /// A link as the data plane creates it: down, nothing on it.
    pub fn new(mtu: u32) -> Self {
        Self {
            mtu,
            up: false,
            addrs: BTreeSet::new(),
            routes: BTreeSet::new(),
            ipv6_disabled: None,
        }
    }
}

impl ObservedState {
    /// Returns whether weft holds nothing in the kernel beyond bare interfaces (no
    /// address, no route): what [`teardown`](crate::teardown) leaves behind.
    pub fn is_clean(&self) -> bool {
        self.orphan_routes.is_empty()
            && self.firewall.table.is_none()
            && self.host_firewall.is_none()
            && !self.firewall.forward_set_by_weft
            && self
                .links
                .values()
                .all(|l| l.addrs.is_empty() && l.routes.is_empty())
    }
}
