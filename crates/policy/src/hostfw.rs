//! The host firewall file: what an admin declares on the controller
//! (`weft admin firewall set FILE`), parsed with line-accurate errors
//! ([`parse_firewall`]) and compiled per node ([`compile_firewall`]) into the
//! [`HostFirewallSpec`] that node's map carries.
//!
//! Pure, like the rest of the crate. The format is TOML in the policy's style:
//!
//! ```toml
//! [[firewall]]                      # a profile; opt-in: only the nodes it selects
//! nodes = ["tag:web", "db1"]        # "*", "tag:TAG", "node:NAME" or a bare NAME
//! input = "drop"                    # drop (default) | accept
//! output = "accept"                 # accept (default) | drop
//! forward = "accept"                # accept (default) | drop
//! management = ["10.0.0.0/8"]       # prefixes the management ports are open to
//! management_ports = [22]           # TCP; default [22]
//! log_drops = true                  # count and log drops (rate-limited); default true
//!
//! [[firewall.rule]]                 # belongs to the profile above it
//! direction = "in"                  # in (default) | out | forward
//! action = "accept"                 # accept (default) | drop; drops are checked first
//! proto = "tcp"                     # any (default) | tcp | udp | icmp
//! port = "80,443,8000-8080"         # tcp/udp only: a number, a list, or "a,b,c-d"
//! from = ["192.0.2.0/24"]           # direction in: sources (CIDRs, IPs, "domain:NAME")
//! # to = ["domain:api.example.com"] # direction out/forward: destinations
//! comment = "public web"
//! ```
//!
//! The first profile that selects a node wins; a node no profile selects has
//! no host firewall. Each declared rule's id is `line:<n>`, the line of its
//! `[[firewall.rule]]` header; dynamic rules (`weft admin firewall allow`)
//! come in from the controller with ids `dyn:<n>` and follow the declared ones.

use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use weft_proto::hostfw::{
    ChainPolicy, DEFAULT_MANAGEMENT_PORTS, Direction, HostAddr, HostFirewallSpec, HostRule,
    MAX_COMMENT_LEN, MAX_MANAGEMENT, MAX_PEERS_PER_RULE, MAX_PORTS_PER_RULE, PortRange, Proto,
    RuleAction, is_domain,
};

use crate::model::{check_label, check_tag, parse_port_range};
use crate::parse::{
    List, PolicyError, PolicyErrorKind, PolicyErrors, PortSpec, from_toml, position,
};

/// Longest firewall file, in bytes.
pub const MAX_FIREWALL_BYTES: usize = 256 * 1024;
/// Most profiles one file may declare.
pub const MAX_PROFILES: usize = 256;

/// A parsed firewall file: its profiles in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFirewallFile {
    /// The `[[firewall]]` profiles; the first that selects a node wins.
    pub profiles: Vec<Profile>,
}

/// One `[[firewall]]` profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The line of its `[[firewall]]` header.
    pub line: u32,
    /// The nodes it selects.
    pub nodes: Vec<NodeSelector>,
    /// The input hook's default.
    pub input: ChainPolicy,
    /// The output hook's default.
    pub output: ChainPolicy,
    /// The forward hook's default.
    pub forward: ChainPolicy,
    /// Prefixes the management ports are open to.
    pub management: Vec<IpNet>,
    /// The management ports (TCP).
    pub management_ports: Vec<u16>,
    /// Count and log drops.
    pub log_drops: bool,
    /// Its rules in file order (ids `line:<n>`).
    pub rules: Vec<HostRule>,
}

/// Which nodes a profile selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSelector {
    /// `*`: every node.
    All,
    /// `node:NAME` or a bare `NAME`.
    Node(String),
    /// `tag:TAG`.
    Tag(String),
}

impl NodeSelector {
    /// Whether it selects the node with this name and these tags.
    pub fn selects(&self, name: &str, tags: &[String]) -> bool {
        match self {
            NodeSelector::All => true,
            NodeSelector::Node(n) => n == name,
            NodeSelector::Tag(t) => tags.iter().any(|x| x == t),
        }
    }
}

impl HostFirewallFile {
    /// The profile that applies to a node: the first that selects it.
    pub fn profile_for(&self, name: &str, tags: &[String]) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.nodes.iter().any(|s| s.selects(name, tags)))
    }
}

/// Compiles the spec of one node: its profile (the first that selects it)
/// and then `dynamic` (its `dyn:<n>` rules, in id order). `None`: no profile
/// selects the node, it has no host firewall (its dynamic rules do nothing).
pub fn compile_firewall(
    file: &HostFirewallFile,
    node_name: &str,
    node_tags: &[String],
    dynamic: &[HostRule],
    version: u64,
) -> Option<HostFirewallSpec> {
    let p = file.profile_for(node_name, node_tags)?;
    let mut rules = p.rules.clone();
    rules.extend(dynamic.iter().cloned());
    Some(HostFirewallSpec {
        version,
        input: p.input,
        output: p.output,
        forward: p.forward,
        management: p.management.clone(),
        management_ports: p.management_ports.clone(),
        log_drops: p.log_drops,
        rules,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(default)]
    firewall: Vec<Spanned<RawProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    nodes: Option<Spanned<List<String>>>,
    input: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    management: Option<Spanned<List<String>>>,
    management_ports: Option<Spanned<List<PortSpec>>>,
    log_drops: Option<bool>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    direction: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    port: Option<Spanned<List<PortSpec>>>,
    from: Option<Spanned<List<String>>>,
    to: Option<Spanned<List<String>>>,
    comment: Option<Spanned<String>>,
}

/// Parses a firewall file, reporting every mistake with its line and column.
pub fn parse_firewall(text: &str) -> Result<HostFirewallFile, PolicyErrors> {
    if text.len() > MAX_FIREWALL_BYTES {
        return Err(PolicyErrors::one(
            1,
            1,
            PolicyErrorKind::Syntax(format!(
                "the firewall file is larger than {MAX_FIREWALL_BYTES} bytes"
            )),
        ));
    }
    let doc: RawDoc = from_toml(text)?;
    let mut cx = Cx {
        text,
        errors: Vec::new(),
    };
    if doc.firewall.len() > MAX_PROFILES {
        cx.err(
            &doc.firewall[MAX_PROFILES].span(),
            PolicyErrorKind::TooMany("[[firewall]] profiles", MAX_PROFILES),
        );
    }
    let profiles = doc
        .firewall
        .into_iter()
        .take(MAX_PROFILES)
        .map(|p| cx.profile(p))
        .collect();
    PolicyErrors::from_vec(cx.errors)?;
    Ok(HostFirewallFile { profiles })
}

struct Cx<'a> {
    text: &'a str,
    errors: Vec<PolicyError>,
}

fn msg(s: impl Into<String>) -> PolicyErrorKind {
    PolicyErrorKind::Syntax(s.into())
}

impl Cx<'_> {
    fn err(&mut self, span: &Range<usize>, kind: PolicyErrorKind) {
        let (line, column) = position(self.text, span.start);
        self.errors.push(PolicyError { line, column, kind });
    }

    /// The line of a table's header: the span of a `[[x]]` element starts at
    /// its first key, so look back for the header line.
    fn header_line(&self, span: &Range<usize>, header: &str) -> u32 {
        let (line, _) = position(self.text, span.start);
        let lines: Vec<&str> = self.text.lines().collect();
        let mut l = line as usize;
        while l >= 1 {
            if lines
                .get(l - 1)
                .is_some_and(|s| s.trim_start().starts_with(header))
            {
                return u32::try_from(l).unwrap_or(line);
            }
            l -= 1;
        }
        line
    }

    fn chain(&mut self, v: Option<Spanned<String>>, default: ChainPolicy) -> ChainPolicy {
        let Some(v) = v else { return default };
        match v.get_ref().as_str() {
            "drop" => ChainPolicy::Drop,
            "accept" => ChainPolicy::Accept,
            other => {
                let other = other.chars().take(40).collect::<String>();
                self.err(
                    &v.span(),
                    msg(format!(
                        "unknown chain policy {other:?} (expected \"drop\" or \"accept\")"
                    )),
                );
                default
            }
        }
    }

    /// Each item of a list with its own span (or the list's for a single item).
    fn items<T>(list: Spanned<List<T>>) -> Vec<(T, Range<usize>)> {
        let outer = list.span();
        list.into_inner()
            .0
            .into_iter()
            .map(|(v, s)| (v, s.unwrap_or_else(|| outer.clone())))
            .collect()
    }

    fn profile(&mut self, p: Spanned<RawProfile>) -> Profile {
        let span = p.span();
        let line = self.header_line(&span, "[[firewall]]");
        let p = p.into_inner();
        let mut nodes = Vec::new();
        match p.nodes {
            None => self.err(
                &span,
                PolicyErrorKind::Missing("nodes (which nodes this profile selects)"),
            ),
            Some(list) => {
                let lspan = list.span();
                let items = Self::items(list);
                if items.is_empty() {
                    self.err(&lspan, PolicyErrorKind::EmptyList("nodes"));
                }
                for (s, sp) in items {
                    match node_selector(&s) {
                        Ok(sel) => nodes.push(sel),
                        Err(k) => self.err(&sp, k),
                    }
                }
            }
        }
        let input = self.chain(p.input, ChainPolicy::Drop);
        let output = self.chain(p.output, ChainPolicy::Accept);
        let forward = self.chain(p.forward, ChainPolicy::Accept);
        let mut management = Vec::new();
        if let Some(list) = p.management {
            let lspan = list.span();
            let items = Self::items(list);
            if items.len() > MAX_MANAGEMENT {
                self.err(
                    &lspan,
                    PolicyErrorKind::TooMany("management prefixes", MAX_MANAGEMENT),
                );
            }
            for (s, sp) in items.into_iter().take(MAX_MANAGEMENT) {
                match cidr(&s) {
                    Ok(n) => management.push(n),
                    Err(k) => self.err(&sp, k),
                }
            }
        }
        let management_ports = match p.management_ports {
            None => DEFAULT_MANAGEMENT_PORTS.to_vec(),
            Some(list) => {
                let lspan = list.span();
                let items = Self::items(list);
                if items.len() > MAX_MANAGEMENT {
                    self.err(
                        &lspan,
                        PolicyErrorKind::TooMany("management ports", MAX_MANAGEMENT),
                    );
                }
                let mut ports = Vec::new();
                for (spec, sp) in items.into_iter().take(MAX_MANAGEMENT) {
                    match single_port(spec) {
                        Ok(port) => ports.push(port),
                        Err(k) => self.err(&sp, k),
                    }
                }
                ports.sort_unstable();
                ports.dedup();
                ports
            }
        };
        let rules = p.rule.into_iter().filter_map(|r| self.rule(r)).collect();
        Profile {
            line,
            nodes,
            input,
            output,
            forward,
            management,
            management_ports,
            log_drops: p.log_drops.unwrap_or(true),
            rules,
        }
    }

    fn rule(&mut self, r: Spanned<RawRule>) -> Option<HostRule> {
        let span = r.span();
        let line = self.header_line(&span, "[[firewall.rule]]");
        let before = self.errors.len();
        let r = r.into_inner();
        let direction = match r.direction {
            None => Direction::In,
            Some(d) => match d.get_ref().as_str() {
                "in" => Direction::In,
                "out" => Direction::Out,
                "forward" => Direction::Forward,
                other => {
                    let other = other.chars().take(40).collect::<String>();
                    self.err(
                        &d.span(),
                        msg(format!(
                            "unknown direction {other:?} (expected \"in\", \"out\" or \"forward\")"
                        )),
                    );
                    Direction::In
                }
            },
        };
        let action = match r.action {
            None => RuleAction::Accept,
            Some(a) => match a.get_ref().as_str() {
                "accept" | "allow" => RuleAction::Accept,
                "drop" | "deny" => RuleAction::Drop,
                other => {
                    let other = other.chars().take(40).collect::<String>();
                    self.err(
                        &a.span(),
                        msg(format!(
                            "unknown action {other:?} (expected \"accept\" or \"drop\")"
                        )),
                    );
                    RuleAction::Accept
                }
            },
        };
        let proto_span = r.proto.as_ref().map(Spanned::span);
        let proto = match r.proto {
            None => Proto::Any,
            Some(p) => match parse_proto(p.get_ref()) {
                Some(p) => p,
                None => {
                    let other = p.get_ref().chars().take(40).collect::<String>();
                    self.err(
                        &p.span(),
                        msg(format!(
                            "unknown proto {other:?} (expected \"any\", \"tcp\", \"udp\" or \"icmp\")"
                        )),
                    );
                    Proto::Any
                }
            },
        };
        let mut ports = Vec::new();
        if let Some(list) = r.port {
            let lspan = list.span();
            if !matches!(proto, Proto::Tcp | Proto::Udp) {
                self.err(
                    &proto_span.unwrap_or(lspan.clone()),
                    msg("port needs proto = \"tcp\" or \"udp\""),
                );
            }
            for (spec, sp) in Self::items(list) {
                match port_ranges(spec) {
                    Ok(rs) => ports.extend(rs),
                    Err(k) => self.err(&sp, k),
                }
            }
            ports.sort_unstable();
            ports.dedup();
            if ports.len() > MAX_PORTS_PER_RULE {
                self.err(
                    &lspan,
                    PolicyErrorKind::TooMany("port ranges", MAX_PORTS_PER_RULE),
                );
            }
        }
        let mut peers = Vec::new();
        for (key, list, wanted) in [
            ("from", r.from, direction == Direction::In),
            ("to", r.to, direction != Direction::In),
        ] {
            let Some(list) = list else { continue };
            let lspan = list.span();
            if !wanted {
                let why = if key == "from" {
                    "from names sources: it needs direction = \"in\" (use to for out and forward)"
                } else {
                    "to names destinations: it needs direction = \"out\" or \"forward\" (use from for in)"
                };
                self.err(&lspan, msg(why));
                continue;
            }
            let items = Self::items(list);
            if items.is_empty() {
                self.err(
                    &lspan,
                    PolicyErrorKind::EmptyList(if key == "from" { "from" } else { "to" }),
                );
            }
            if items.len() > MAX_PEERS_PER_RULE {
                self.err(
                    &lspan,
                    PolicyErrorKind::TooMany("addresses", MAX_PEERS_PER_RULE),
                );
            }
            for (s, sp) in items {
                match host_addr(&s) {
                    Ok(a) => peers.push(a),
                    Err(k) => self.err(&sp, k),
                }
            }
        }
        let comment = match r.comment {
            None => String::new(),
            Some(c) => {
                if let Err(k) = check_comment(c.get_ref()) {
                    self.err(&c.span(), k);
                }
                c.into_inner()
            }
        };
        if self.errors.len() > before {
            return None;
        }
        let rule = HostRule {
            id: format!("line:{line}"),
            direction,
            action,
            proto,
            ports,
            peers,
            comment,
            expires_at_ms: None,
        };
        if let Err(e) = rule.check() {
            self.err(&span, msg(e.0));
            return None;
        }
        Some(rule)
    }
}

/// A node selector: `*`, `tag:TAG`, `node:NAME` or a bare `NAME`.
pub fn node_selector(s: &str) -> Result<NodeSelector, PolicyErrorKind> {
    if s == "*" {
        return Ok(NodeSelector::All);
    }
    if let Some(t) = s.strip_prefix("tag:") {
        check_tag(t)?;
        return Ok(NodeSelector::Tag(t.to_owned()));
    }
    let name = s.strip_prefix("node:").unwrap_or(s);
    if name.contains(':') {
        return Err(msg(format!(
            "unknown node selector {:?} (expected \"*\", \"tag:TAG\", \"node:NAME\" or a node name)",
            s.chars().take(40).collect::<String>()
        )));
    }
    check_label("node", name)?;
    Ok(NodeSelector::Node(name.to_owned()))
}

/// A protocol name (`any`, `tcp`, `udp`, `icmp`).
pub fn parse_proto(s: &str) -> Option<Proto> {
    s.parse().ok()
}

/// A prefix, or one address (a /32 or /128). Host bits must be clear.
pub fn cidr(s: &str) -> Result<IpNet, PolicyErrorKind> {
    let short = || s.chars().take(60).collect::<String>();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|e: ipnet::AddrParseError| PolicyErrorKind::BadCidr(short(), e.to_string()))?;
    if net.trunc() != net {
        return Err(PolicyErrorKind::BadCidr(
            short(),
            format!("host bits are set (did you mean {}?)", net.trunc()),
        ));
    }
    Ok(net)
}

/// A rule address: a prefix or address, or `domain:NAME` (lowercased).
pub fn host_addr(s: &str) -> Result<HostAddr, PolicyErrorKind> {
    if let Some(d) = s.strip_prefix("domain:") {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(&d) {
            return Err(msg(format!(
                "{:?} is not a domain name (labels of a-z 0-9 -, at least two)",
                s.chars().take(60).collect::<String>()
            )));
        }
        return Ok(HostAddr::Domain(d));
    }
    cidr(s).map(HostAddr::Cidr)
}

/// Port ranges written as a number or `"80,443,8000-8080"`.
fn port_ranges(spec: PortSpec) -> Result<Vec<PortRange>, PolicyErrorKind> {
    match spec {
        PortSpec::Number(n) => Ok(vec![number_port(n)?]),
        PortSpec::Text(t) => {
            let mut out = Vec::new();
            for part in t.split(',') {
                let r = parse_port_range(part.trim())?;
                out.push(PortRange {
                    start: r.first,
                    end: r.last,
                });
            }
            Ok(out)
        }
    }
}

/// Parses `"80,443,8000-8080"` (the CLI's `--port`).
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, PolicyErrorKind> {
    let mut v = port_ranges(PortSpec::Text(s.to_owned()))?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn number_port(n: i64) -> Result<PortRange, PolicyErrorKind> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(PortRange { start: p, end: p }),
        _ => Err(PolicyErrorKind::BadPort(n.to_string())),
    }
}

fn single_port(spec: PortSpec) -> Result<u16, PolicyErrorKind> {
    let rs = port_ranges(spec)?;
    match rs.as_slice() {
        [r] if r.start == r.end => Ok(r.start),
        _ => Err(msg("a management port is one port number")),
    }
}

/// A rule comment: at most [`MAX_COMMENT_LEN`] printable ASCII characters
/// without `"`.
pub fn check_comment(c: &str) -> Result<(), PolicyErrorKind> {
    if c.len() > MAX_COMMENT_LEN || !c.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"') {
        return Err(msg(format!(
            "a comment is at most {MAX_COMMENT_LEN} printable ASCII characters without '\"'"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "hostfw_tests.rs"]
mod tests;
