//! The real executor: a blocking `NETLINK_ROUTE` socket speaking rtnetlink.
//!
//! Messages are built and parsed with `netlink-packet-route`; the socket is
//! `netlink-sys`'s plain blocking one. One request is in flight at a time, matched
//! to its replies by sequence number (replies to an abandoned request are skipped).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::desired::{RouteSpec, WEFT_ROUTE_PROTOCOL, is_managed_address, is_weft_link};
use crate::exec::{ExecError, Executor};
use crate::observed::{ObservedLink, ObservedState};
use crate::plan::Action;

mod underlay;

/// How often an observation is retried when the kernel flags a dump as interrupted
/// (`NLM_F_DUMP_INTR`: the tables changed while being read). Each dump takes
/// microseconds, so more than one retry in a row means something is churning.
const DUMP_ATTEMPTS: usize = 3;

/// `NLMSGERR_ATTR_MSG`: the extended-ack attribute holding the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Size of `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;

/// Applies actions and observes state through rtnetlink.
///
/// The socket belongs to the network namespace of the thread that called
/// [`NetlinkExecutor::new`], for its whole life: an agent opens it once at start
/// (in its own namespace); a test opens it on a thread that has entered the test's
/// namespace, and may then use it from any thread. The sysctls it reads and
/// writes (`net.ipv4.ip_forward`, `net.ipv6.conf.weft*.disable_ipv6`) and `nft`
/// are the calling thread's namespace's: use it from a thread in that namespace
/// when those matter.
#[derive(Debug)]
pub struct NetlinkExecutor {
    socket: Socket,
    seq: u32,
    firewall: super::nft::Firewall,
    host_firewall: super::hostfw::HostTable,
}

/// Objects collected by one observation, before filtering.
struct LinkInfo {
    name: String,
    mtu: u32,
    up: bool,
}

impl NetlinkExecutor {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    ///
    /// Changing state needs `CAP_NET_ADMIN`; that is checked per request, so an
    /// unprivileged executor can still observe.
    pub fn new() -> Result<Self, ExecError> {
        let op = "open netlink socket";
        let socket_err = |source| ExecError::Socket {
            op: op.to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_err)?;
        socket.bind_auto().map_err(socket_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(socket_err)?;
        // Best effort (kernels ≥ 4.12): shorter error replies, with the kernel's text.
        if let Err(e) = socket.set_cap_ack(true).and(socket.set_ext_ack(true)) {
            tracing::debug!(error = %e, "netlink extended acks unavailable");
        }
        // Best effort (kernels ≥ 4.20): the kernel honours the protocol and table
        // filters of route dumps, so a host with a large routing table is not read
        // in full every pass. Without it the same filter runs here.
        if let Err(e) = socket.set_netlink_get_strict_chk(true) {
            tracing::debug!(error = %e, "netlink strict checking unavailable");
        }
        Ok(Self {
            socket,
            seq: 0,
            firewall: super::nft::Firewall::default(),
            host_firewall: super::hostfw::HostTable::default(),
        })
    }

    /// Keeps "weft turned IPv4 forwarding on" in the file `path` (in the
    /// agent's state directory), so that after a crash and restart weft still
    /// turns forwarding off again when the node stops being a gateway. The
    /// marker names the boot and network namespace that wrote it; anywhere
    /// else it is ignored and removed. Without it that knowledge lives only in
    /// memory.
    pub fn remember_forwarding_in(&mut self, path: std::path::PathBuf) {
        self.firewall.remember_in(path);
    }

    fn observe_once(&mut self) -> Result<Option<ObservedState>, ExecError> {
        let mut interrupted = false;
        let mut all_links = BTreeMap::new();
        let (links, intr) = self.request(
            "observe: dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        interrupted |= intr;
        for message in links {
            if let RouteNetlinkMessage::NewLink(link) = message {
                all_links.insert(link.header.index, link_info(&link));
            }
        }
        let mut observed = ObservedState::default();
        for info in all_links.values().filter(|l| is_weft_link(&l.name)) {
            let mut link = ObservedLink::new(info.mtu);
            link.up = info.up;
            link.ipv6_disabled = observe_ipv6_disabled(&info.name);
            observed.links.insert(info.name.clone(), link);
        }

        let (addrs, intr) = self.request(
            "observe: dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        interrupted |= intr;
        for message in addrs {
            let RouteNetlinkMessage::NewAddress(addr) = message else {
                continue;
            };
            let Some(link) = all_links
                .get(&addr.header.index)
                .and_then(|info| observed.links.get_mut(&info.name))
            else {
                continue;
            };
            if let Some(net) = permanent_address(&addr).filter(is_managed_address) {
                link.addrs.insert(net);
            }
        }

        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            query.header.table = RouteHeader::RT_TABLE_MAIN;
            query.header.protocol = RouteProtocol::from(WEFT_ROUTE_PROTOCOL);
            let (routes, intr) = self.request(
                "observe: dump routes",
                RouteNetlinkMessage::GetRoute(query),
                NLM_F_DUMP,
            )?;
            interrupted |= intr;
            for message in routes {
                let RouteNetlinkMessage::NewRoute(route) = message else {
                    continue;
                };
                let Some((oif, spec)) = weft_route(&route) else {
                    continue;
                };
                let dev = all_links
                    .get(&oif)
                    .map_or_else(|| format!("if#{oif}"), |l| l.name.clone());
                match observed.links.get_mut(&dev) {
                    Some(link) => {
                        link.routes.insert(spec);
                    }
                    None => {
                        observed.orphan_routes.insert((dev, spec));
                    }
                }
            }
        }
        Ok((!interrupted).then_some(observed))
    }

    /// Resolves an interface name to its index (fresh each time: the data plane may
    /// have recreated the interface since the last observation).
    fn link_index(&mut self, op: &str, name: &str) -> Result<u32, ExecError> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let replies = match self.request(op, RouteNetlinkMessage::GetLink(query), NLM_F_ACK) {
            Ok((replies, _)) => replies,
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                return Err(ExecError::NoSuchLink {
                    op: op.to_owned(),
                    link: name.to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| ExecError::Decode {
                op: op.to_owned(),
                detail: format!("no link in the reply to a lookup of {name}"),
            })
    }

    fn apply_to(&mut self, op: &str, action: &Action, index: u32) -> Result<(), ExecError> {
        let (message, flags) = match action {
            Action::SetMtu { mtu, .. } => {
                let mut link = LinkMessage::default();
                link.header.index = index;
                link.attributes.push(LinkAttribute::Mtu(*mtu));
                (RouteNetlinkMessage::SetLink(link), 0)
            }
            Action::SetLinkUp { up, .. } => {
                let mut link = LinkMessage::default();
                link.header.index = index;
                link.header.flags = if *up {
                    LinkFlags::Up
                } else {
                    LinkFlags::empty()
                };
                link.header.change_mask = LinkFlags::Up;
                (RouteNetlinkMessage::SetLink(link), 0)
            }
            Action::AddAddress { addr, .. } => {
                let mut message = address_message(index, *addr);
                let mut flags = AddressFlags::Noprefixroute;
                if addr.addr().is_ipv6() {
                    flags |= AddressFlags::Nodad;
                }
                message.attributes.push(AddressAttribute::Flags(flags));
                (
                    RouteNetlinkMessage::NewAddress(message),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            }
            Action::DeleteAddress { addr, .. } => (
                RouteNetlinkMessage::DelAddress(address_message(index, *addr)),
                0,
            ),
            Action::AddRoute { route, .. } => (
                RouteNetlinkMessage::NewRoute(route_message(index, *route, false)),
                // No NLM_F_EXCL: an equal route of another protocol may coexist (IPv4).
                NLM_F_CREATE,
            ),
            Action::DeleteRoute { route, .. } => (
                RouteNetlinkMessage::DelRoute(route_message(index, *route, true)),
                0,
            ),
            Action::DeleteNftTable
            | Action::SetNftTable { .. }
            | Action::SetIpForward { .. }
            | Action::DeleteHostTable
            | Action::SetHostTable { .. }
            | Action::SetIpv6 { .. } => {
                return Err(ExecError::Decode {
                    op: op.to_owned(),
                    detail: "not a netlink action".to_owned(),
                });
            }
        };
        self.request(op, message, NLM_F_ACK | flags).map(drop)
    }

    /// Sends one request and collects its replies until the closing ACK (or
    /// `NLMSG_DONE` for a dump). Returns the replies and whether the kernel flagged
    /// the dump as interrupted.
    fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), ExecError> {
        let socket_err = |source| ExecError::Socket {
            op: op.to_owned(),
            source,
        };
        let decode_err = |detail: String| ExecError::Decode {
            op: op.to_owned(),
            detail,
        };
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        retry_eintr(|| self.socket.send(&buf, 0)).map_err(socket_err)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let (datagram, _) = retry_eintr(|| self.socket.recv_from_full()).map_err(socket_err)?;
            let mut rest = datagram.as_slice();
            while rest.len() >= NLMSG_HEADER_LEN {
                let len = read_u32(rest, 0) as usize;
                if len < NLMSG_HEADER_LEN || len > rest.len() {
                    return Err(decode_err(format!("bad message length {len}")));
                }
                let (bytes, next) = rest.split_at(len);
                rest = next
                    .get(len.next_multiple_of(4) - len..)
                    .unwrap_or_default();
                if read_u32(bytes, 8) != self.seq {
                    continue; // a late reply to an earlier request that was given up
                }
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| decode_err(e.to_string()))?;
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Done(_) => return Ok((replies, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((replies, interrupted)),
                        Some(code) => {
                            return Err(kernel_error(op, &reply.header, -code.get(), &e.header));
                        }
                    },
                    NetlinkPayload::Overrun(_) => {
                        return Err(decode_err("kernel reported an overrun".to_owned()));
                    }
                    _ => {} // NOOP and future kinds carry nothing for us
                }
            }
        }
    }
}

impl Executor for NetlinkExecutor {
    fn observe(&mut self) -> Result<ObservedState, ExecError> {
        for _ in 0..DUMP_ATTEMPTS {
            if let Some(mut observed) = self.observe_once()? {
                observed.firewall = self.firewall.observe()?;
                observed.host_firewall = self.host_firewall.observe()?;
                return Ok(observed);
            }
            tracing::debug!("netlink dump interrupted by a concurrent change; observing again");
        }
        Err(ExecError::Decode {
            op: "observe".to_owned(),
            detail: format!("dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"),
        })
    }

    fn apply(&mut self, action: &Action) -> Result<(), ExecError> {
        let op = action.to_string();
        match action {
            Action::SetNftTable { rules } => return self.firewall.set_table(&op, rules),
            Action::DeleteNftTable => return self.firewall.delete_table(&op),
            Action::SetIpForward { on } => return self.firewall.set_forward(&op, *on),
            Action::SetHostTable { fw } => return self.host_firewall.set(&op, fw),
            Action::DeleteHostTable => return self.host_firewall.delete(&op),
            Action::SetIpv6 { link, on } => {
                let path = disable_ipv6_path(link);
                return std::fs::write(&path, if *on { "0\n" } else { "1\n" }).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        ExecError::NoSuchLink {
                            op: op.clone(),
                            link: link.clone(),
                        }
                    } else {
                        ExecError::Kernel {
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                            message: format!("{path}: {e}"),
                            op: op.clone(),
                        }
                    }
                });
            }
            _ => {}
        }
        let result = self
            .link_index(&op, action.link())
            .and_then(|index| self.apply_to(&op, action, index));
        match result {
            // Deleting what is already gone (or went with its interface) succeeds.
            Err(e) if action.is_delete() && is_gone(&e) => {
                tracing::debug!(%action, error = %e, "already gone");
                Ok(())
            }
            other => other,
        }
    }
}

/// The sysctl that turns IPv6 off on `link` (in this thread's network namespace).
fn disable_ipv6_path(link: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
}

/// Whether IPv6 is off on `link`; `None` (nothing planned) without IPv6 in the
/// kernel, or where weft could not change it (a read-only `/proc/sys`, as in
/// unprivileged containers): a setting weft cannot apply must not fail every pass.
fn observe_ipv6_disabled(link: &str) -> Option<bool> {
    let path = disable_ipv6_path(link);
    // Opening for writing writes nothing (the sysctl runs on write).
    std::fs::OpenOptions::new().write(true).open(&path).ok()?;
    std::fs::read_to_string(&path).ok().map(|v| v.trim() == "1")
}

fn is_gone(e: &ExecError) -> bool {
    matches!(e, ExecError::NoSuchLink { .. })
        || matches!(
            e.errno(),
            Some(libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ENODEV)
        )
}

fn link_info(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        mtu: 0,
        up: link.header.flags.contains(LinkFlags::Up),
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            _ => {}
        }
    }
    info
}

/// The address of a dump entry if it is permanent (added through netlink, by weft or
/// a user) rather than made by the kernel (link-local autoconfiguration, SLAAC).
fn permanent_address(message: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    let mut permanent = message.header.flags.contains(AddressHeaderFlags::Permanent);
    for attr in &message.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(flags) => permanent |= flags.contains(AddressFlags::Permanent),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equals IFA_LOCAL otherwise (IPv6 may omit IFA_LOCAL).
    let ip = local.or(address)?;
    permanent
        .then(|| IpNet::new(ip, message.header.prefix_len).ok())
        .flatten()
}

/// The output interface and spec of a main-table unicast route tagged as weft's.
fn weft_route(message: &RouteMessage) -> Option<(u32, RouteSpec)> {
    let header = &message.header;
    if u8::from(header.protocol) != WEFT_ROUTE_PROTOCOL || header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut dst = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = match (dst, header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => Ipv4Addr::UNSPECIFIED.into(),
        (None, AddressFamily::Inet6) => Ipv6Addr::UNSPECIFIED.into(),
        (None, _) => return None,
    };
    let net = IpNet::new(dst, header.destination_prefix_length).ok()?;
    Some((oif?, RouteSpec::with_metric(net, metric)))
}

fn family_of(net: IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family_of(addr);
    message.header.prefix_len = addr.prefix_len();
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::Local(addr.addr()));
    message
        .attributes
        .push(AddressAttribute::Address(addr.addr()));
    message
}

fn route_message(index: u32, route: RouteSpec, delete: bool) -> RouteMessage {
    let dst = route.dst();
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = family_of(dst);
    header.destination_prefix_length = dst.prefix_len();
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.protocol = RouteProtocol::from(WEFT_ROUTE_PROTOCOL);
    header.kind = RouteType::Unicast;
    header.scope = match (delete, dst) {
        // A delete matches any scope only with RT_SCOPE_NOWHERE (as `ip route del`).
        (true, _) => RouteScope::NoWhere,
        // A route without gateway is on-link (as `ip route add … dev X`).
        (false, IpNet::V4(_)) => RouteScope::Link,
        (false, IpNet::V6(_)) => RouteScope::Universe,
    };
    message
        .attributes
        .push(RouteAttribute::Destination(dst.network().into()));
    message.attributes.push(RouteAttribute::Oif(index));
    message
        .attributes
        .push(RouteAttribute::Priority(route.metric()));
    message
}

/// An `ExecError::Kernel` from an `NLMSG_ERROR`, with the extended-ack text if any.
fn kernel_error(op: &str, header: &NetlinkHeader, errno: i32, payload: &[u8]) -> ExecError {
    let mut message = io::Error::from_raw_os_error(errno).to_string();
    if let Some(text) = ext_ack_message(header.flags, payload) {
        message = format!("{message}: {text}");
    }
    ExecError::Kernel {
        op: op.to_owned(),
        errno,
        message,
    }
}

/// The `NLMSGERR_ATTR_MSG` text of an error reply: its attributes follow the echoed
/// request (just its header when `NLM_F_CAPPED`).
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HEADER_LEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HEADER_LEN
    } else {
        (read_u32(payload, 0) as usize).next_multiple_of(4)
    };
    for nla in NlasIterator::new(payload.get(echoed..)?) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let text = nla.value().split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
