//! The host firewall: the ruleset the controller compiled for one node, carried
//! in its network map ([`crate::netmap::NetworkMap::host_firewall`]; absent: the
//! node has no host firewall and the agent removes its table).
//!
//! The agent turns a [`HostFirewallSpec`] into the nftables table
//! `inet weft_host` (weft-netcfg's `hostfw`): default-drop where the spec says
//! so, a fixed base (loopback, established and related, ICMP echo, SSH and the
//! management ports from the management prefixes, outbound DNS/HTTPS/NTP when
//! output drops, and always weft's own UDP port and control connections), then
//! the [`HostRule`]s: every `drop` rule before every `accept` rule (deny wins,
//! as in the overlay policy). A rule with [`HostRule::expires_at_ms`] is
//! removed by the agent itself at that time, with or without the controller.
//!
//! Bounds: at most [`MAX_RULES`] rules, [`MAX_PEERS_PER_RULE`] addresses or
//! domains and [`MAX_PORTS_PER_RULE`] port ranges per rule, comments of at most
//! [`MAX_COMMENT_LEN`] printable ASCII characters. [`HostFirewallSpec::check`]
//! enforces them on both sides.

use std::fmt;

use ipnet::IpNet;

pub mod task_rule;
use serde::{Deserialize, Serialize};

/// Most rules one node's spec may carry (declared and dynamic together).
pub const MAX_RULES: usize = 1024;
/// Most addresses and domains one rule may name.
pub const MAX_PEERS_PER_RULE: usize = 64;
/// Most port ranges one rule may name.
pub const MAX_PORTS_PER_RULE: usize = 32;
/// Most management prefixes and management ports.
pub const MAX_MANAGEMENT: usize = 64;
/// Longest rule comment, in bytes (printable ASCII).
pub const MAX_COMMENT_LEN: usize = 128;
/// Longest rule id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest domain name a rule may name.
pub const MAX_DOMAIN_LEN: usize = 253;
/// The management port when the spec names none: SSH.
pub const DEFAULT_MANAGEMENT_PORTS: [u16; 1] = [22];

/// What a chain does with a packet no rule accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainPolicy {
    /// Let it through.
    Accept,
    /// Drop it (counted, and logged at a bounded rate when `log_drops`).
    Drop,
}

/// Which way a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Packets to this host (the input hook); [`HostRule::peers`] are sources.
    In,
    /// Packets from this host (the output hook); [`HostRule::peers`] are destinations.
    Out,
    /// Packets this host forwards; [`HostRule::peers`] are destinations.
    Forward,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Let the packet through.
    Accept,
    /// Drop it. Every drop rule is checked before every accept rule.
    Drop,
}

/// The transport protocol a rule matches: the access policy's
/// ([`crate::policy::Proto`]: `any` (then the rule names no ports), `tcp`,
/// `udp`, `icmp` (ICMP and ICMPv6, no ports)).
pub use crate::policy::Proto;

/// An inclusive range of ports (`start == end` for one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port, 1..=65535.
    pub start: u16,
    /// Last port, `start..=65535`.
    pub end: u16,
}

/// An address a rule names: a prefix, or a domain whose A/AAAA answers the agent
/// keeps in an nftables set, refreshed by the records' TTLs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAddr {
    /// An IPv4 or IPv6 prefix.
    Cidr(IpNet),
    /// A fully qualified domain name without the trailing dot, lowercase.
    Domain(String),
}

/// One rule of a node's host firewall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRule {
    /// Stable id: `line:<n>` for a rule declared in the firewall file (its line),
    /// `dyn:<id>` for a dynamic rule (`weft admin firewall allow`).
    pub id: String,
    /// Which hook the rule sits in.
    pub direction: Direction,
    /// Accept or drop.
    pub action: RuleAction,
    /// The protocol.
    pub proto: Proto,
    /// Destination ports (TCP/UDP only); empty: any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Sources (`In`) or destinations (`Out`, `Forward`); empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<HostAddr>,
    /// The admin's comment (printable ASCII).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// When the rule stops applying (Unix ms); `None`: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// A node's host firewall as the controller compiled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFirewallSpec {
    /// The controller's map version at which this node's spec last changed
    /// (the declared file, or a dynamic rule added, revoked or expired): a
    /// changed spec always comes with a higher version, an unchanged one keeps
    /// its version. The agent names it in `weft status` and in a rollback
    /// report.
    pub version: u64,
    /// The input hook's default.
    pub input: ChainPolicy,
    /// The output hook's default.
    pub output: ChainPolicy,
    /// The forward hook's default.
    pub forward: ChainPolicy,
    /// Prefixes the management ports are open to (empty: nobody).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub management: Vec<IpNet>,
    /// The management ports (TCP); [`DEFAULT_MANAGEMENT_PORTS`] when the file names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub management_ports: Vec<u16>,
    /// Count and log dropped packets (logging rate-limited).
    pub log_drops: bool,
    /// The rules, declared ones in file order, then dynamic ones by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HostRule>,
}

/// A spec outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host firewall: {0}")]
pub struct HostFwError(pub String);

impl HostFirewallSpec {
    /// Checks every bound and form; the controller before shipping, the agent
    /// before applying (an invalid spec is reported, never applied).
    pub fn check(&self) -> Result<(), HostFwError> {
        if self.rules.len() > MAX_RULES {
            return Err(HostFwError(format!(
                "{} rules, at most {MAX_RULES}",
                self.rules.len()
            )));
        }
        if self.management.len() > MAX_MANAGEMENT || self.management_ports.len() > MAX_MANAGEMENT {
            return Err(HostFwError(format!(
                "more than {MAX_MANAGEMENT} management prefixes or ports"
            )));
        }
        if self.management_ports.contains(&0) {
            return Err(HostFwError("management port 0".to_owned()));
        }
        for rule in &self.rules {
            rule.check()?;
        }
        Ok(())
    }
}

impl HostRule {
    /// Checks one rule's bounds and form.
    pub fn check(&self) -> Result<(), HostFwError> {
        let id = &self.id;
        if id.is_empty()
            || id.len() > MAX_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return Err(HostFwError(format!(
                "rule id {id:?} is not 1..={MAX_ID_LEN} of [A-Za-z0-9._:-]"
            )));
        }
        if self.ports.len() > MAX_PORTS_PER_RULE {
            return Err(HostFwError(format!(
                "rule {id}: {} port ranges, at most {MAX_PORTS_PER_RULE}",
                self.ports.len()
            )));
        }
        if !self.ports.is_empty() && !matches!(self.proto, Proto::Tcp | Proto::Udp) {
            return Err(HostFwError(format!(
                "rule {id}: ports need proto tcp or udp"
            )));
        }
        for p in &self.ports {
            if p.start == 0 || p.end < p.start {
                return Err(HostFwError(format!("rule {id}: bad port range {p}")));
            }
        }
        if self.peers.len() > MAX_PEERS_PER_RULE {
            return Err(HostFwError(format!(
                "rule {id}: {} addresses, at most {MAX_PEERS_PER_RULE}",
                self.peers.len()
            )));
        }
        for peer in &self.peers {
            if let HostAddr::Domain(d) = peer
                && !is_domain(d)
            {
                return Err(HostFwError(format!(
                    "rule {id}: {d:?} is not a domain name"
                )));
            }
        }
        if self.comment.len() > MAX_COMMENT_LEN
            || !self
                .comment
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"')
        {
            return Err(HostFwError(format!(
                "rule {id}: comment must be at most {MAX_COMMENT_LEN} printable ASCII characters without '\"'"
            )));
        }
        Ok(())
    }
}

/// Whether `name` is a lowercase domain name without the trailing dot: labels
/// of 1..=63 `[a-z0-9-]` (not starting or ending with `-`), at least two labels,
/// at most [`MAX_DOMAIN_LEN`] bytes.
pub fn is_domain(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_DOMAIN_LEN {
        return false;
    }
    let mut labels = 0;
    for label in name.split('.') {
        labels += 1;
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return false;
        }
    }
    labels >= 2
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::Cidr(net) => write!(f, "{net}"),
            HostAddr::Domain(d) => write!(f, "domain:{d}"),
        }
    }
}

/// `GET /v1/admin/firewall`: the declared firewall file in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallDoc {
    /// Version: 0 while none was ever set (no node has a host firewall), then
    /// +1 per change.
    pub version: u64,
    /// The file's text (weft-policy's host firewall TOML).
    pub text: String,
    /// Who set this version (`admin`, or `system` for version 0).
    pub author: String,
    /// When, Unix milliseconds (0 for version 0).
    pub at_ms: u64,
    /// The nodes the file gives a host firewall, by name.
    #[serde(default)]
    pub nodes: Vec<FirewallNode>,
}

/// One node with a host firewall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallNode {
    /// The node's name.
    pub node: String,
    /// The line of the `[[firewall]]` profile that selects it.
    pub profile_line: u32,
    /// Its rules, declared and dynamic.
    pub rules: usize,
    /// Its spec's version (the map version at which it last changed).
    pub version: u64,
}

/// `PUT /v1/admin/firewall` and `POST /v1/admin/firewall/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFirewallRequest {
    /// The new file. Refused (400 `firewall_invalid`, every mistake with its
    /// line and column) when it does not parse.
    pub text: String,
    /// Only store if the current version is this one (optimistic locking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
}

/// `POST /v1/admin/firewall/rules`: open something on one node, on top of
/// the declared file (`weft admin firewall allow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRuleRequest {
    /// The node (name or key). Refused (409 `no_host_firewall`) when no
    /// profile of the file selects it.
    pub node: String,
    /// Which hook (default in).
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// The protocol (default any).
    #[serde(default = "default_proto")]
    pub proto: Proto,
    /// Ports, `"80,443,8000-8080"` (tcp/udp only; empty: every port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ports: String,
    /// Sources (in) or destinations (out, forward): CIDRs, addresses or
    /// `domain:NAME`; empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Why (printable ASCII, at most [`MAX_COMMENT_LEN`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// Remove the rule this many seconds from now (the agent closes it by
    /// itself at that time, controller or not); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

fn default_direction() -> Direction {
    Direction::In
}

fn default_proto() -> Proto {
    Proto::Any
}

/// A dynamic rule as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRuleInfo {
    /// Its id, `dyn:<n>` (what `revoke` takes, also with the `dyn:` left out).
    pub id: String,
    /// The node's name.
    pub node: String,
    /// The rule as the node's map carries it.
    pub rule: HostRule,
    /// Who added it (an actor label).
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_at_ms: u64,
}

/// `GET /v1/admin/firewall/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRuleList {
    /// The dynamic rules, by id.
    pub rules: Vec<FirewallRuleInfo>,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Forward => "forward",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> HostRule {
        HostRule {
            id: "line:7".to_owned(),
            direction: Direction::In,
            action: RuleAction::Accept,
            proto: Proto::Tcp,
            ports: vec![PortRange { start: 80, end: 80 }],
            peers: vec![HostAddr::Cidr("10.0.0.0/8".parse().expect("cidr"))],
            comment: "web".to_owned(),
            expires_at_ms: None,
        }
    }

    fn spec(rules: Vec<HostRule>) -> HostFirewallSpec {
        HostFirewallSpec {
            version: 3,
            input: ChainPolicy::Drop,
            output: ChainPolicy::Accept,
            forward: ChainPolicy::Accept,
            management: vec![],
            management_ports: vec![22],
            log_drops: true,
            rules,
        }
    }

    #[test]
    fn a_valid_spec_passes_and_round_trips() {
        let s = spec(vec![rule()]);
        assert_eq!(s.check(), Ok(()));
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            serde_json::from_str::<HostFirewallSpec>(&json).expect("back"),
            s
        );
    }

    #[test]
    fn bounds_are_enforced_at_and_over() {
        assert!(spec(vec![rule(); MAX_RULES]).check().is_ok());
        assert!(spec(vec![rule(); MAX_RULES + 1]).check().is_err());
        let mut r = rule();
        r.comment = "x".repeat(MAX_COMMENT_LEN);
        assert!(r.check().is_ok());
        r.comment.push('x');
        assert!(r.check().is_err());
        let mut r = rule();
        r.proto = Proto::Icmp;
        assert!(r.check().is_err(), "ports need tcp or udp");
        let mut r = rule();
        r.ports = vec![PortRange { start: 0, end: 1 }];
        assert!(r.check().is_err());
        let mut r = rule();
        r.peers = vec![HostAddr::Domain("Example.com".to_owned())];
        assert!(r.check().is_err(), "domains are lowercase");
        r.peers = vec![HostAddr::Domain("api.example.com".to_owned())];
        assert!(r.check().is_ok());
    }

    #[test]
    fn domains() {
        assert!(is_domain("a.b"));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("a..b"));
        assert!(!is_domain("-a.b"));
        assert!(!is_domain("a.b."));
        assert!(!is_domain(&format!("{}.com", "a".repeat(64))));
    }
}
