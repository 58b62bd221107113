//! The supervisor's side of named services: `weft service list` assembled
//! from the map, the VIP routes' state, the consumers and the local checks.

use std::net::IpAddr;

use weft_proto::service::{LocalServices, ServiceView};

use super::Agent;
use crate::services;

impl Agent {
    /// `weft service list` (and `weft status`'s `services`).
    pub(super) fn local_services(&self) -> LocalServices {
        let map = if self.down { None } else { self.map.as_ref() };
        services::local_services(
            map,
            |s| self.vip_routed(s),
            self.consumer_statuses(),
            self.services.provided(map),
        )
    }

    /// Whether `s`'s VIP route is in force: the derived map routes it through
    /// its network's interface, netlink works, and the reconciler has no
    /// failure adding it.
    fn vip_routed(&self, s: &ServiceView) -> bool {
        let wanted = self.derived.as_ref().is_some_and(|d| {
            d.interfaces
                .iter()
                .any(|i| i.network == s.network && i.routes.contains(&(IpAddr::V4(s.vip), 32)))
        });
        let vip = format!("route {}/32 ", s.vip);
        wanted
            && !self.down
            && !self
                .failures
                .list()
                .iter()
                .any(|f| f.area == "system" && f.what == "netlink")
            && !self
                .reconcile_status
                .failures
                .iter()
                .any(|f| f.contains(&vip))
    }

    /// The consumers' statuses, by the service they reach.
    fn consumer_statuses(&self) -> services::ConsumersByService {
        let s = self.consumers.statuses();
        (s.by_service, s.orphans)
    }
}
