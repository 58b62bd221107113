//! Link monitoring: the host's own network (its underlay) as it changes.
//!
//! A `NETLINK_ROUTE` socket subscribed to link, IPv4/IPv6 address and
//! IPv4/IPv6 route notifications wakes the monitor when the kernel reports a
//! change: nothing is polled. Notifications about weft's own interfaces
//! (`weft*`), loopback, weft's routes (protocol 119) and tables other than
//! the main one are ignored; the others start a short debounce window
//! ([`DEBOUNCE`]: one link going down sends a burst of link, address and route
//! messages), after which the underlay is dumped again
//! ([`weft_netcfg::Underlay`]) and compared with the last picture. When
//! something that matters for paths changed (an interface's state or
//! addresses, the default route's interface), at once:
//! - the data plane's node is told ([`crate::dataplane::Probe::underlay_changed`]):
//!   STUN is asked again, every peer's paths are probed again, and every peer
//!   with a session gets an authenticated keepalive from the host's new
//!   source address, so it roams to it instead of waiting for its trust in
//!   the old one to lapse;
//! - the controller link ([`crate::ctl`]) re-gathers and re-reports the
//!   endpoints (addresses of the interfaces that are up); when the default
//!   route moved or an address went away ([`path_lost`]) it replaces its
//!   connection, made over the old path, at once (the new one's first report
//!   carries the endpoints); a link waiting to retry tries at once.
//!
//! The subscription is read by a thread of its own (`weft-linkmon`, blocked
//! in `recv`), which wakes the monitor's task only for a notification that
//! matters.
//!
//! The data plane's UDP socket is bound to the wildcard address
//! (`Dataplane::start`), so an address going away never invalidates it: there
//! is nothing to rebind, and each send takes the source address of the route
//! in force. `weft status` shows the picture ([`LinkMon::status`]).

use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAttribute, RouteHeader};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::libc;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_netcfg::exec::linux::NetlinkExecutor;
use weft_netcfg::{Underlay, WEFT_ROUTE_PROTOCOL, is_weft_link};
use weft_proto::local::{UnderlayInterfaceStatus, UnderlayStatus};

use crate::clock;
use crate::dataplane::Probe;

/// How long after the first notification of a burst the underlay is looked
/// at again.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);

/// What the monitor knows (read by `weft status` and the controller link).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// The last picture (`None`: not observed yet, or the monitor failed).
    pub(crate) underlay: Option<Underlay>,
    /// Changes seen since the start.
    pub(crate) changes: u64,
    /// The last change: when (Unix ms) and what.
    pub(crate) last_change: Option<(u64, Vec<String>)>,
    /// Why the monitor is not working.
    pub(crate) error: Option<String>,
    /// When the monitor stopped (Unix ms), with [`Self::error`].
    pub(crate) failed_at_ms: u64,
}

/// The monitor's failure, if it stopped.
fn failure_of(s: &Seen) -> Option<weft_proto::local::FailureStatus> {
    s.error
        .as_ref()
        .map(|error| weft_proto::local::FailureStatus {
            area: "linkmon".into(),
            what: "link monitoring (netlink)".into(),
            error: error.clone(),
            since_unix_ms: s.failed_at_ms,
        })
}

/// The running monitor.
pub(crate) struct LinkMon {
    seen: watch::Receiver<Seen>,
    task: JoinHandle<()>,
}

impl LinkMon {
    /// Starts watching; every change found is told to `dp` at once.
    pub(crate) fn start(dp: Probe) -> Self {
        let (tx, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            if let Err(e) = run(&tx, &dp).await {
                tracing::error!(error = %format!("{e:#}"), "link monitoring stopped");
                tx.send_modify(|s| {
                    s.error = Some(format!("{e:#}"));
                    s.failed_at_ms = clock::unix_ms();
                });
            }
        });
        Self { seen, task }
    }

    /// The monitor's failure for `weft status`'s failure list: underlay
    /// changes are no longer noticed, so paths recover only at their own pace.
    pub(crate) fn failure(&self) -> Option<weft_proto::local::FailureStatus> {
        failure_of(&self.seen.borrow())
    }

    /// Changes as they are found (for the controller link).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Seen> {
        self.seen.clone()
    }

    /// The `underlay` part of `weft status`.
    pub(crate) fn status(&self) -> UnderlayStatus {
        status_of(&self.seen.borrow())
    }
}

impl Drop for LinkMon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The addresses (with their interface's name) of the underlay interfaces
/// that are up: what the controller link reports as host candidates.
pub(crate) fn up_addresses(u: &Underlay) -> Vec<(String, std::net::IpAddr)> {
    u.links
        .iter()
        .filter(|l| l.up)
        .flat_map(|l| l.addrs.iter().map(|a| (l.name.clone(), a.addr())))
        .collect()
}

/// Whether going from `before` to `after` may have cut connections made on
/// `before`: the default route moved to another interface (or went away),
/// or an address of an interface that was up is no longer on one that is up.
/// A new interface or address alone cuts nothing.
pub(crate) fn path_lost(before: &Underlay, after: &Underlay) -> bool {
    if before.default_v4 != after.default_v4 || before.default_v6 != after.default_v6 {
        return true;
    }
    let now = up_addresses(after);
    up_addresses(before)
        .iter()
        .any(|(_, ip)| !now.iter().any(|(_, n)| n == ip))
}

fn status_of(s: &Seen) -> UnderlayStatus {
    let u = s.underlay.clone().unwrap_or_default();
    UnderlayStatus {
        interfaces: u
            .links
            .iter()
            .map(|l| UnderlayInterfaceStatus {
                name: l.name.clone(),
                up: l.up,
                addresses: l.addrs.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        default_route_v4: u.default_v4,
        default_route_v6: u.default_v6,
        changes: s.changes,
        last_change_ms: s.last_change.as_ref().map(|(at, _)| *at),
        last_change: s
            .last_change
            .as_ref()
            .map(|(_, what)| what.clone())
            .unwrap_or_default(),
        error: s.error.clone(),
    }
}

/// The kernel's multicast groups for link, address and route changes.
fn groups() -> u32 {
    [
        libc::RTMGRP_LINK,
        libc::RTMGRP_IPV4_IFADDR,
        libc::RTMGRP_IPV6_IFADDR,
        libc::RTMGRP_IPV4_ROUTE,
        libc::RTMGRP_IPV6_ROUTE,
    ]
    .into_iter()
    .fold(0u32, |g, x| g | x as u32)
}

/// Opens the subscription (a blocking socket: its reader is a thread).
fn subscribe() -> anyhow::Result<Socket> {
    use anyhow::Context as _;
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, groups()))
        .context("subscribing to link, address and route changes")?;
    // A burst (many routes at once) should not overrun the queue; if it does,
    // ENOBUFS says so and the next look covers it.
    let _ = socket.set_rx_buf_sz(1 << 20);
    Ok(socket)
}

/// The subscription's reader: a thread blocked in `recv` that wakes the
/// monitor through `wake` when a notification may change the underlay
/// (judged against the last picture in `seen`). It ends when the monitor is
/// gone (at the next notification) or the socket fails.
fn spawn_reader(
    socket: Socket,
    seen: watch::Receiver<Seen>,
    wake: mpsc::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("weft-linkmon".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let matters = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => {
                        let current = seen.borrow().underlay.clone().unwrap_or_default();
                        datagram_matters(buf.get(..n).unwrap_or_default(), &current)
                    }
                    // Notifications were lost: look again to be sure.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
                    Err(e) => {
                        tracing::error!(error = %e, "link monitoring: reading netlink notifications failed");
                        return;
                    }
                };
                if matters && matches!(wake.try_send(()), Err(TrySendError::Closed(()))) {
                    return;
                }
                if wake.is_closed() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// Takes a fresh picture (the dump is blocking: off the runtime). The outer
/// error: the dump task itself failed (the monitor stops).
async fn observe(
    exec: NetlinkExecutor,
) -> anyhow::Result<(NetlinkExecutor, anyhow::Result<Underlay>)> {
    let (exec, r) = tokio::task::spawn_blocking(move || {
        let mut exec = exec;
        let r = exec.observe_underlay();
        (exec, r)
    })
    .await
    .map_err(|e| anyhow::anyhow!("observing the underlay failed: {e}"))?;
    Ok((exec, r.map_err(anyhow::Error::from)))
}

async fn run(tx: &watch::Sender<Seen>, dp: &Probe) -> anyhow::Result<()> {
    let socket = subscribe()?;
    let exec = NetlinkExecutor::new()?;
    let (mut exec, first) = observe(exec).await?;
    let mut current = first?;
    tracing::info!(
        default_v4 = ?current.default_v4,
        default_v6 = ?current.default_v6,
        interfaces = current.links.len(),
        "link monitoring: watching the underlay"
    );
    tx.send_modify(|s| s.underlay = Some(current.clone()));
    let (wake_tx, mut wake) = mpsc::channel(1);
    spawn_reader(socket, tx.subscribe(), wake_tx)?;
    loop {
        // Wait for a relevant notification, then let the burst settle.
        if wake.recv().await.is_none() {
            anyhow::bail!("the netlink notification reader stopped (see the log)");
        }
        tokio::time::sleep(DEBOUNCE).await;
        while wake.try_recv().is_ok() {}
        let observed;
        (exec, observed) = observe(exec).await?;
        let now = match observed {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "link monitoring: cannot observe the underlay");
                continue;
            }
        };
        let what = now.changes_since(&current);
        current = now;
        if what.is_empty() {
            // Nothing that matters for paths: kept without waking anyone.
            tx.send_if_modified(|s| {
                s.underlay = Some(current.clone());
                false
            });
            continue;
        }
        tracing::info!(changes = ?what, "underlay changed: re-checking paths and endpoints now");
        if dp.underlay_changed().is_err() {
            tracing::warn!("the data plane did not take the underlay change");
        }
        tx.send_modify(|s| {
            s.underlay = Some(current.clone());
            s.changes += 1;
            s.last_change = Some((clock::unix_ms(), what));
        });
    }
}

/// Whether a datagram of notifications holds one that may change the
/// underlay.
fn datagram_matters(mut bytes: &[u8], current: &Underlay) -> bool {
    const HEADER: usize = 16;
    while bytes.len() >= HEADER {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < HEADER || len > bytes.len() {
            // Undecodable: look again rather than miss a change.
            return true;
        }
        let (msg, rest) = bytes.split_at(len);
        bytes = rest
            .get(len.next_multiple_of(4) - len..)
            .unwrap_or_default();
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
            Ok(m) => {
                if let NetlinkPayload::InnerMessage(inner) = m.payload
                    && matters(&inner, current)
                {
                    return true;
                }
            }
            Err(_) => return true,
        }
    }
    false
}

/// Whether one notification may change the underlay: not about loopback,
/// weft's own interfaces or routes, or a table other than the main one.
pub(crate) fn matters(m: &RouteNetlinkMessage, current: &Underlay) -> bool {
    let other = |index: u32| current.others.contains(&index);
    match m {
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
            let weft = l.attributes.iter().any(|a| match a {
                LinkAttribute::IfName(n) => is_weft_link(n) || weft_netcfg::is_workload_link(n),
                _ => false,
            });
            !weft && !l.header.flags.contains(LinkFlags::Loopback)
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            !other(a.header.index)
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            let oif_other = r.attributes.iter().any(|a| match a {
                RouteAttribute::Oif(i) => other(*i),
                _ => false,
            });
            u8::from(r.header.protocol) != WEFT_ROUTE_PROTOCOL
                && table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && !oif_other
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::route::{RouteMessage, RouteProtocol};
    use weft_netcfg::UnderlayLink;

    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            links: vec![UnderlayLink {
                index: 2,
                name: "eth0".into(),
                up: true,
                addrs: vec!["192.0.2.10/24".parse().unwrap()],
            }],
            default_v4: Some("eth0".into()),
            default_v6: None,
            others: vec![1, 7],
        }
    }

    fn link(name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    fn route(protocol: u8, table: u8, oif: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.protocol = RouteProtocol::from(protocol);
        r.header.table = table;
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    #[test]
    fn weft_links_routes_loopback_and_other_tables_are_ignored() {
        let u = underlay();
        assert!(matters(&RouteNetlinkMessage::NewLink(link("eth1")), &u));
        assert!(matters(&RouteNetlinkMessage::DelLink(link("eth0")), &u));
        assert!(!matters(&RouteNetlinkMessage::NewLink(link("weft0")), &u));
        let mut lo = link("lo");
        lo.header.flags = LinkFlags::Loopback;
        assert!(!matters(&RouteNetlinkMessage::NewLink(lo), &u));

        let mut addr = AddressMessage::default();
        addr.header.index = 2;
        assert!(matters(&RouteNetlinkMessage::NewAddress(addr.clone()), &u));
        addr.header.index = 7;
        assert!(
            !matters(&RouteNetlinkMessage::DelAddress(addr), &u),
            "an address on weft's own interface"
        );

        let main = RouteHeader::RT_TABLE_MAIN;
        assert!(matters(
            &RouteNetlinkMessage::NewRoute(route(4, main, 2)),
            &u
        ));
        assert!(matters(
            &RouteNetlinkMessage::DelRoute(route(3, main, 2)),
            &u
        ));
        assert!(
            !matters(
                &RouteNetlinkMessage::NewRoute(route(WEFT_ROUTE_PROTOCOL, main, 2)),
                &u
            ),
            "weft's own route"
        );
        assert!(
            !matters(&RouteNetlinkMessage::NewRoute(route(4, 255, 2)), &u),
            "the local table"
        );
        assert!(
            !matters(&RouteNetlinkMessage::NewRoute(route(4, main, 7)), &u),
            "a route through weft's interface"
        );
    }

    #[test]
    fn a_notification_datagram_is_judged_by_its_messages() {
        let u = underlay();
        let mut bytes = Vec::new();
        for m in [
            RouteNetlinkMessage::NewRoute(route(WEFT_ROUTE_PROTOCOL, 254, 2)),
            RouteNetlinkMessage::NewLink(link("weft1")),
        ] {
            let mut nl = NetlinkMessage::from(m);
            nl.finalize();
            let mut b = vec![0; nl.buffer_len()];
            nl.serialize(&mut b);
            bytes.extend_from_slice(&b);
        }
        assert!(!datagram_matters(&bytes, &u), "only weft's own changes");
        let mut nl = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link("eth0")));
        nl.finalize();
        let mut b = vec![0; nl.buffer_len()];
        nl.serialize(&mut b);
        bytes.extend_from_slice(&b);
        assert!(datagram_matters(&bytes, &u));
        assert!(datagram_matters(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
            &u
        ));
    }

    #[test]
    fn connections_are_cut_by_a_moved_default_route_or_a_lost_address() {
        let before = underlay();
        let mut added = before.clone();
        added.links.push(UnderlayLink {
            index: 3,
            name: "docker0".into(),
            up: true,
            addrs: vec!["172.17.0.1/16".parse().unwrap()],
        });
        assert!(!path_lost(&before, &added), "a new interface cuts nothing");
        assert!(path_lost(&added, &before), "an address went away");
        let mut moved = added.clone();
        moved.default_v4 = Some("docker0".into());
        assert!(path_lost(&added, &moved));
        let mut down = before.clone();
        down.links[0].up = false;
        assert!(path_lost(&before, &down), "its interface went down");
    }

    #[test]
    fn endpoints_come_from_interfaces_that_are_up() {
        let mut u = underlay();
        u.links.push(UnderlayLink {
            index: 3,
            name: "eth1".into(),
            up: false,
            addrs: vec!["198.51.100.10/24".parse().unwrap()],
        });
        assert_eq!(
            up_addresses(&u),
            vec![("eth0".to_owned(), "192.0.2.10".parse().unwrap())]
        );
        let st = status_of(&Seen {
            underlay: Some(u),
            changes: 2,
            last_change: Some((5, vec!["eth1 down".into()])),
            error: None,
            failed_at_ms: 0,
        });
        assert_eq!(st.interfaces.len(), 2);
        assert!(!st.interfaces[1].up);
        assert_eq!(st.default_route_v4.as_deref(), Some("eth0"));
        assert_eq!(st.last_change, vec!["eth1 down"]);
    }

    #[test]
    fn a_stopped_monitor_is_a_failure_in_status() {
        assert_eq!(failure_of(&Seen::default()), None);
        let f = failure_of(&Seen {
            error: Some("netlink socket: permission denied".into()),
            failed_at_ms: 42,
            ..Seen::default()
        })
        .unwrap();
        assert_eq!(
            (f.area.as_str(), f.error.as_str(), f.since_unix_ms),
            ("linkmon", "netlink socket: permission denied", 42)
        );
    }
}
