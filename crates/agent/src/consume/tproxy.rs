//! Transparent interception (`weft service intercept`): the `IP_TRANSPARENT`
//! listener and the system state that sends it the intercepted streams.
//!
//! - nft table `inet weft_tproxy`: a set of the original destinations (IPv4
//!   address . TCP port); its prerouting chain (priority mangle) marks
//!   segments to them with [`MARK`] and hands them to the listener (TPROXY, on
//!   `127.0.0.1`), its output chain (type route) marks this host's own
//!   segments to them, which makes the kernel route them again;
//! - `ip rule fwmark MARK lookup TABLE pref PREF` and `local 0.0.0.0/0 dev lo
//!   table TABLE`: marked segments are delivered locally; this host's own
//!   re-enter through `lo` and meet the prerouting chain.
//!
//! The table is replaced atomically (`nft -f -`) when the set of originals
//! changes; everything is removed when the last interception goes, on `weft
//! down` and at shutdown, and swept at start (a crash leaves nothing behind
//! for long). Table [`TABLE`], mark [`MARK`] and preference [`PREF`] are
//! weft's own: weft's routes live in `main` (protocol 119) and it uses no
//! other table, rule or mark.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

use crate::workload::sys::{run, run_gone_ok};

/// The nft table (family and name).
pub(crate) const NFT_TABLE: &str = "inet weft_tproxy";
/// The fwmark of intercepted segments (0x7719, "w" and 19 for the issue
/// that brought it).
pub(crate) const MARK: u32 = 0x7719;
/// The routing table that delivers marked segments locally.
pub(crate) const TABLE: u32 = 7719;
/// The preference of the `ip rule` that selects [`TABLE`] (before `main`
/// at 32766).
pub(crate) const PREF: u32 = 7719;

/// The ruleset for `nft -f -`: replaces the table with one that intercepts
/// `originals` to the transparent listener on `127.0.0.1:port`.
pub(crate) fn script(port: u16, originals: &BTreeSet<SocketAddrV4>) -> String {
    let mut elements = String::new();
    for (i, o) in originals.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(elements, "{sep}{} . {}", o.ip(), o.port());
    }
    let elements = if originals.is_empty() {
        String::new()
    } else {
        format!("\n        elements = {{ {elements} }}")
    };
    format!(
        "table {NFT_TABLE} {{}}\n\
         delete table {NFT_TABLE}\n\
         table {NFT_TABLE} {{\n\
         \x20   set originals {{\n\
         \x20       type ipv4_addr . inet_service{elements}\n\
         \x20   }}\n\
         \x20   chain prerouting {{\n\
         \x20       type filter hook prerouting priority mangle; policy accept;\n\
         \x20       meta l4proto tcp ip daddr . tcp dport @originals meta mark set {MARK:#x} \
         tproxy ip to 127.0.0.1:{port} counter accept comment \"weft: intercepted service streams\"\n\
         \x20   }}\n\
         \x20   chain output {{\n\
         \x20       type route hook output priority mangle; policy accept;\n\
         \x20       meta l4proto tcp ip daddr . tcp dport @originals meta mark set {MARK:#x} \
         counter comment \"weft: this host's streams to intercepted destinations, routed via lo\"\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Installs (or updates) the table for `originals` and, with `routing`, the
/// rule and the local route. Blocking: call off the runtime.
pub(crate) fn install(
    port: u16,
    originals: &BTreeSet<SocketAddrV4>,
    routing: bool,
) -> Result<(), String> {
    run("nft", &["-f", "-"], Some(&script(port, originals)))?;
    if routing {
        remove_rules()?;
        let (mark, table, pref) = (format!("{MARK:#x}"), TABLE.to_string(), PREF.to_string());
        run(
            "ip",
            &[
                "-4", "rule", "add", "fwmark", &mark, "lookup", &table, "pref", &pref,
            ],
            None,
        )?;
        run(
            "ip",
            &[
                "-4",
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )?;
    }
    Ok(())
}

/// Removes the table, the rule and the route; what is already gone is fine.
/// Blocking: call off the runtime.
pub(crate) fn remove() -> Result<(), String> {
    let mut errors = Vec::new();
    let mut args = vec!["delete", "table"];
    args.extend(NFT_TABLE.split(' '));
    if let Err(e) = run_gone_ok("nft", &args, None) {
        errors.push(e);
    }
    if let Err(e) = remove_rules() {
        errors.push(e);
    }
    let table = TABLE.to_string();
    match run(
        "ip",
        &[
            "-4",
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
        None,
    ) {
        // No such route ("No such process"), or no such table ("No such
        // file", or "FIB table does not exist").
        Err(e)
            if !e.contains("No such process")
                && !e.contains("No such file")
                && !e.contains("does not exist") =>
        {
            errors.push(e)
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Deletes every rule at [`PREF`] (there is one unless someone added more).
fn remove_rules() -> Result<(), String> {
    let pref = PREF.to_string();
    for _ in 0..16 {
        match run("ip", &["-4", "rule", "del", "pref", &pref], None) {
            Ok(()) => {}
            Err(e) if e.contains("No such file or directory") => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(format!(
        "more than 16 ip rules at preference {PREF}: remove them (ip rule del pref {PREF})"
    ))
}

/// A TCP listener with `IP_TRANSPARENT` on `127.0.0.1` (any port): it accepts
/// the streams TPROXY hands it, each with its original destination as its
/// local address. Needs `CAP_NET_ADMIN`.
pub(crate) fn transparent_listener() -> Result<tokio::net::TcpListener, String> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("creating the transparent listener's socket: {e}"))?;
    socket::setsockopt(&fd, sockopt::IpTransparent, &true)
        .map_err(|e| format!("setting IP_TRANSPARENT (needs CAP_NET_ADMIN): {e}"))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| format!("setting SO_REUSEADDR: {e}"))?;
    let at = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    socket::bind(fd.as_raw_fd(), &at)
        .map_err(|e| format!("binding the transparent listener on 127.0.0.1: {e}"))?;
    let backlog = socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN);
    socket::listen(&fd, backlog).map_err(|e| format!("listening (transparent): {e}"))?;
    let std = std::net::TcpListener::from(fd);
    tokio::net::TcpListener::from_std(std)
        .map_err(|e| format!("registering the transparent listener: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn the_script_replaces_the_table_and_lists_the_originals() {
        let originals: BTreeSet<SocketAddrV4> = ["10.1.2.3:5432", "10.9.0.1:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = script(40000, &originals);
        assert!(s.starts_with(
            "table inet weft_tproxy {}\ndelete table inet weft_tproxy\ntable inet weft_tproxy {\n"
        ));
        assert!(
            s.contains("elements = { 10.1.2.3 . 5432, 10.9.0.1 . 80 }"),
            "{s}"
        );
        assert!(
            s.contains("meta mark set 0x7719 tproxy ip to 127.0.0.1:40000"),
            "{s}"
        );
        assert!(s.contains("type route hook output priority mangle"), "{s}");
        assert!(!script(1, &BTreeSet::new()).contains("elements"));
    }
}
