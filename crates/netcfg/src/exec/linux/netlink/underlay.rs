//! Observing the underlay (every interface that is neither loopback nor
//! weft's, its addresses, the default routes) for the agent's link monitor.

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{DUMP_ATTEMPTS, NetlinkExecutor, link_info};
use crate::desired::{WEFT_ROUTE_PROTOCOL, is_weft_link, is_workload_link};
use crate::exec::ExecError;
use crate::underlay::{Underlay, UnderlayLink};

impl NetlinkExecutor {
    /// Dumps the underlay: links, addresses and the main table's default
    /// routes (retried when the kernel says a dump was interrupted).
    pub fn observe_underlay(&mut self) -> Result<Underlay, ExecError> {
        let mut last = None;
        for _ in 0..DUMP_ATTEMPTS {
            let (underlay, interrupted) = self.underlay_once()?;
            if !interrupted {
                return Ok(underlay);
            }
            last = Some(underlay);
        }
        // Still churning: the last picture is the best there is (the next
        // change notification brings another look).
        Ok(last.unwrap_or_default())
    }

    fn underlay_once(&mut self) -> Result<(Underlay, bool), ExecError> {
        let mut interrupted = false;
        let (links, intr) = self.request(
            "underlay: dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        interrupted |= intr;
        let mut underlay = Underlay::default();
        for message in links {
            let RouteNetlinkMessage::NewLink(link) = message else {
                continue;
            };
            let flags = link.header.flags;
            let info = link_info(&link);
            if flags.contains(LinkFlags::Loopback)
                || is_weft_link(&info.name)
                || is_workload_link(&info.name)
            {
                underlay.others.push(link.header.index);
                continue;
            }
            underlay.links.push(UnderlayLink {
                index: link.header.index,
                name: info.name,
                up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
                addrs: Vec::new(),
            });
        }
        underlay.links.sort_by_key(|l| l.index);

        let (addrs, intr) = self.request(
            "underlay: dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        interrupted |= intr;
        for message in addrs {
            let RouteNetlinkMessage::NewAddress(addr) = message else {
                continue;
            };
            let Some(link) = underlay
                .links
                .iter_mut()
                .find(|l| l.index == addr.header.index)
            else {
                continue;
            };
            if let Some(net) = any_address(&addr) {
                link.addrs.push(net);
            }
        }
        for link in &mut underlay.links {
            link.addrs.sort();
            link.addrs.dedup();
        }

        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            query.header.table = RouteHeader::RT_TABLE_MAIN;
            let (routes, intr) = self.request(
                "underlay: dump routes",
                RouteNetlinkMessage::GetRoute(query),
                NLM_F_DUMP,
            )?;
            interrupted |= intr;
            let best = routes
                .iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => default_route(r),
                    _ => None,
                })
                .filter_map(|(oif, metric)| {
                    let link = underlay.links.iter().find(|l| l.index == oif)?;
                    Some((metric, link.name.clone()))
                })
                .min();
            let name = best.map(|(_, name)| name);
            match family {
                AddressFamily::Inet => underlay.default_v4 = name,
                _ => underlay.default_v6 = name,
            }
        }
        Ok((underlay, interrupted))
    }
}

/// Any address of a dump entry (IFA_LOCAL, else IFA_ADDRESS), with its prefix.
fn any_address(message: &AddressMessage) -> Option<ipnet::IpNet> {
    let mut local = None;
    let mut address = None;
    for attr in &message.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    ipnet::IpNet::new(local.or(address)?, message.header.prefix_len).ok()
}

/// The output interface and metric of a main-table unicast default route
/// that is not weft's own and whose next hop is not link-down (for a
/// multipath route, its first live next hop).
fn default_route(route: &RouteMessage) -> Option<(u32, u32)> {
    let header = &route.header;
    if header.destination_prefix_length != 0
        || header.kind != RouteType::Unicast
        || header.table != RouteHeader::RT_TABLE_MAIN
        || u8::from(header.protocol) == WEFT_ROUTE_PROTOCOL
        || header.flags.contains(RouteFlags::Linkdown)
        || header.flags.contains(RouteFlags::Dead)
    {
        return None;
    }
    let mut oif = None;
    let mut metric = 0;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) if oif.is_none() => {
                oif = hops
                    .iter()
                    .find(|h| {
                        !h.flags.contains(RouteNextHopFlags::Linkdown)
                            && !h.flags.contains(RouteNextHopFlags::Dead)
                    })
                    .map(|h| h.interface_index);
            }
            _ => {}
        }
    }
    Some((oif?, metric))
}
