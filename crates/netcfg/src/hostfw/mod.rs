//! The host firewall: the nftables table `inet weft_host`, weft's own
//! default-drop firewall for the host itself (issue 18).
//!
//! [`DesiredState::host_firewall`](crate::DesiredState::host_firewall) holds a
//! [`HostFirewall`]; `None` means no table (an existing one is deleted, and
//! teardown deletes it too). The table holds only what weft renders:
//! - a fixed base per chain ([`HostFirewall`] flags): loopback, established and
//!   related, ICMP/ICMPv6 echo and ICMPv6 neighbour discovery, and (when output
//!   drops) outbound DNS, HTTPS and NTP;
//! - the [`HostFwRule`]s, every drop before every accept, each carrying its
//!   `weft:` comment, which is how observation recognises it;
//! - the named address sets ([`HostFirewall::sets`], the domain sets);
//! - counted drops, logged at a bounded rate when [`HostFirewall::log_drops`].
//!
//! A rule with [`HostFwRule::expires_at_ms`] is guarded by an nftables set
//! whose only element carries a timeout: the kernel removes the element at the
//! expiry, and the rule stops matching then, even when weftd is not running.
//! The planner also leaves expired rules out of the table it wants, so the
//! next pass removes the rule itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

mod observe;
pub(crate) mod render;

pub use observe::{ObservedHostFirewall, parse_listing};
pub use render::{delete_table, render, update_sets};

/// Name of the host firewall's table (family `inet`).
pub const HOST_TABLE: &str = "weft_host";
/// Family of the host firewall's table.
pub const HOST_FAMILY: &str = "inet";

/// The host firewall as weft wants it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostFirewall {
    /// Input hook policy drop (else accept).
    pub input_drop: bool,
    /// Output hook policy drop (else accept). Adds the outbound DNS (53),
    /// HTTPS (443) and NTP (123) base rules.
    pub output_drop: bool,
    /// Forward hook policy drop (else accept).
    pub forward_drop: bool,
    /// Log dropped packets (`log` with `limit rate 10/second`); drops are
    /// counted either way.
    pub log_drops: bool,
    /// Management prefixes: SSH and [`Self::management_ports`] are accepted
    /// from them on input. Empty: from nowhere (add a rule instead).
    pub management: Vec<IpNet>,
    /// TCP ports reachable from [`Self::management`] (e.g. 22).
    pub management_ports: Vec<u16>,
    /// Rendered in this order after the base rules: drops, then accepts.
    pub rules: Vec<HostFwRule>,
    /// Named address sets (domain sets), filled by the agent: name ->
    /// addresses. Names `d4_<n>` hold IPv4 addresses, `d6_<n>` IPv6 ones
    /// ([`set_family`] tells from the name).
    pub sets: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// The chain (hook) a rule sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// Packets to this host; [`HostFwRule::addrs`] are sources.
    Input,
    /// Packets from this host; [`HostFwRule::addrs`] are destinations.
    Output,
    /// Packets this host forwards; [`HostFwRule::addrs`] are destinations.
    Forward,
}

impl Chain {
    /// The chain's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::Forward => "forward",
        }
    }
}

/// The transport protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6 (no ports).
    Icmp,
}

/// One rule of the host firewall.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostFwRule {
    /// The chain.
    pub chain: Chain,
    /// Accept (else drop).
    pub accept: bool,
    /// The protocol; `None`: any (then no ports).
    pub proto: Option<L4>,
    /// Destination port ranges (inclusive); empty: any.
    pub ports: Vec<(u16, u16)>,
    /// Peer prefixes: the source for [`Chain::Input`], the destination
    /// otherwise. Empty and no [`Self::sets`]: any address.
    pub addrs: Vec<IpNet>,
    /// Named sets from [`HostFirewall::sets`] (domains) matched like
    /// [`Self::addrs`] (either matches).
    pub sets: Vec<String>,
    /// `iifname` for [`Chain::Input`], `oifname` otherwise; a trailing `*`
    /// is a wildcard (`"weft*"`).
    pub iface: Option<String>,
    /// Source port ranges (e.g. weft's own UDP port on output); empty: any.
    pub sport: Vec<(u16, u16)>,
    /// TCP only: match only segments with ACK and without SYN, i.e. of a
    /// connection that is already open (`tcp flags & (syn | ack) == ack`). A rule that lets a peer's
    /// answers in by source address and port sets it, so a spoofed source can
    /// never open a connection to a listening port through it.
    pub no_syn: bool,
    /// `weft:<id>`: identifies the rule on observation, so it must be unique
    /// within the firewall and start with `weft:`.
    pub comment: String,
    /// Unix time in milliseconds after which the rule no longer applies.
    pub expires_at_ms: Option<u64>,
}

impl HostFwRule {
    /// Whether the rule has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// The address family of a named set by its name: `d6_*` IPv6, anything
/// else IPv4.
pub fn set_family(name: &str) -> SetFamily {
    if name.starts_with("d6_") {
        SetFamily::V6
    } else {
        SetFamily::V4
    }
}

/// The address family of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetFamily {
    /// `ipv4_addr`.
    V4,
    /// `ipv6_addr`.
    V6,
}

impl HostFirewall {
    /// The firewall as it should be at `now_ms`: expired rules left out.
    pub fn at(&self, now_ms: u64) -> HostFirewall {
        let mut fw = self.clone();
        fw.rules.retain(|r| !r.expired(now_ms));
        fw
    }

    /// The earliest expiry of a rule not yet expired at `now_ms`.
    pub fn next_expiry(&self, now_ms: u64) -> Option<u64> {
        self.rules
            .iter()
            .filter_map(|r| r.expires_at_ms)
            .filter(|&t| t > now_ms)
            .min()
    }
}

/// `inet weft_host: input drop, output accept, forward accept, 3 rules, 2 sets`.
impl fmt::Display for HostFirewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |drop: bool| if drop { "drop" } else { "accept" };
        write!(
            f,
            "{HOST_FAMILY} {HOST_TABLE}: input {}, output {}, forward {}, {} rules, {} sets",
            p(self.input_drop),
            p(self.output_drop),
            p(self.forward_drop),
            self.rules.len(),
            self.sets.len()
        )
    }
}

#[cfg(test)]
mod tests;
