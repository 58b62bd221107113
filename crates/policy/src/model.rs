//! The policy as admins write it: groups, ordered allow/deny rules and tests.
//!
//! Values here are what [`crate::parse()`] produces and [`Policy::to_text`] renders;
//! [`Policy::validate`] holds every rule a policy must satisfy, so a policy built
//! in code is checked the same way as one parsed from text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::parse::{PolicyError, PolicyErrorKind, PolicyErrors};
pub use weft_proto::policy::{Action, PortRange, Proto};

/// Largest policy text accepted, in bytes (1 MiB: thousands of rules with room to
/// spare, small enough that parsing stays in the milliseconds).
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Most rules in one policy.
pub const MAX_RULES: usize = 16_384;
/// Most groups in one policy.
pub const MAX_GROUPS: usize = 1024;
/// Most tests in one policy.
pub const MAX_TESTS: usize = 1024;
/// Most `[[ssh]]` rules in one policy.
pub const MAX_SSH_RULES: usize = 1024;
/// Most entries in one list (`from`, `to`, `ports`, a group's members).
pub const MAX_LIST: usize = 256;
/// Longest rule or test name, in bytes.
pub const MAX_RULE_NAME: usize = 128;
/// Longest node, network, tag or group name (a DNS label's limit).
pub const MAX_LABEL: usize = 63;

/// A whole policy: named groups, rules in file order, and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Named sets of selectors, by name.
    pub groups: BTreeMap<String, Group>,
    /// Rules in file order (order only decides which rule an explanation names;
    /// the verdict does not depend on it, see the crate docs).
    pub rules: Vec<Rule>,
    /// Assertions the policy must satisfy before the controller accepts it.
    pub tests: Vec<PolicyTest>,
    /// `[[ssh]]` rules in file order: who may log in where, as which users.
    /// Their [`RuleId`](crate::RuleId)s follow the rules' (`rules.len() + i`).
    pub ssh: Vec<SshRule>,
}

/// One `[[ssh]]` rule: the nodes `from` selects may log in over SSH to the
/// nodes `to` selects that run `weftd --ssh`, as one of `users`. It also opens
/// TCP to each such target's SSH port (deny rules still win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRule {
    /// Optional name, unique within the policy (shared with rule names).
    pub name: Option<String>,
    /// The clients (overlay addresses only; `service:` is refused).
    pub from: Vec<Selector>,
    /// The servers (overlay addresses only; `service:` is refused).
    pub to: Vec<Selector>,
    /// Local users on the server (`deploy`), or `*`: whichever user the
    /// client asks for except `root` (which must be named). Never empty.
    pub users: Vec<String>,
    /// Line of the `[[ssh]]` header (1-based; 0 when built in code).
    pub line: u32,
}

/// The user entry of an `[[ssh]]` rule that means "any user but root".
pub const ANY_USER: &str = "*";

/// Checks one `users` entry: `*` or a valid login name
/// ([`weft_proto::ssh::check_user`]).
pub(crate) fn check_ssh_user(u: &str) -> Result<(), PolicyErrorKind> {
    if u == ANY_USER || weft_proto::ssh::check_user(u) {
        Ok(())
    } else {
        Err(PolicyErrorKind::BadUser(u.chars().take(40).collect()))
    }
}

/// Where a selector is written, for the places `service:` may not go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A group's members (used on both sides).
    Group,
    /// A rule's `from`.
    RuleFrom,
    /// A rule's `to`.
    RuleTo,
    /// An `[[ssh]]` rule's `from` or `to`.
    Ssh,
    /// A test's `from`.
    TestFrom,
    /// A test's `to`.
    TestTo,
}

/// Whether `sel` may be written at `place`: `service:` only in `to` of a rule
/// or a test.
pub(crate) fn check_place(sel: &Selector, place: Place) -> Result<(), PolicyErrorKind> {
    match (sel, place) {
        (Selector::Service(n), Place::Group | Place::RuleFrom | Place::Ssh | Place::TestFrom) => {
            Err(PolicyErrorKind::ServiceNotHere(
                n.clone(),
                match place {
                    Place::Group => "a group",
                    Place::Ssh => "an [[ssh]] rule",
                    _ => "from",
                },
            ))
        }
        _ => Ok(()),
    }
}

/// A named set of selectors (`backend = ["tag:db", "node:cache1"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its members; `group:` members nest (cycles are rejected).
    pub members: Vec<Selector>,
    /// Line of its definition (1-based; 0 when built in code).
    pub line: u32,
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Optional name, unique within the policy; explanations quote it.
    pub name: Option<String>,
    /// Allow or deny.
    pub action: Action,
    /// Who initiates: the packet's source must match one of these.
    pub from: Vec<Selector>,
    /// Who is reached: the packet's destination must match one of these.
    pub to: Vec<Selector>,
    /// Transport protocol.
    pub proto: Proto,
    /// Destination port ranges; empty means every port. Only for `tcp`/`udp`.
    pub ports: Vec<PortRange>,
    /// Line of the rule's `[[rule]]` header (1-based; 0 when built in code).
    pub line: u32,
}

/// Which endpoints a rule side names. See the crate docs for exact meanings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `*`: every node's overlay addresses and every routed subnet.
    Any,
    /// `node:NAME`: that node's overlay addresses.
    Node(String),
    /// `tag:TAG`: the overlay addresses of nodes carrying the tag.
    Tag(String),
    /// `group:NAME`: the union of the group's members.
    Group(String),
    /// `network:NAME`: members' overlay addresses in that network.
    Network(String),
    /// `cidr:PREFIX`: node overlay addresses inside the prefix.
    Cidr(IpNet),
    /// `subnet:PREFIX`: addresses inside the prefix behind a gateway that routes
    /// a subnet overlapping it.
    Subnet(IpNet),
    /// `service:NAME` (destinations only): the nodes providing that service, at
    /// their addresses in its network, on its ports only.
    Service(String),
}

/// A test: one connection attempt and the verdict it must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// Optional name for failure messages.
    pub name: Option<String>,
    /// Initiator.
    pub from: Selector,
    /// Destination.
    pub to: Selector,
    /// What is attempted.
    pub service: Service,
    /// The required outcome.
    pub expect: Expect,
    /// Line of the test's `[[test]]` header (1-based; 0 when built in code).
    pub line: u32,
}

/// The outcome a test requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Every matching pair is allowed.
    Allow,
    /// Every matching pair is dropped (by a deny or by no rule).
    Deny,
}

/// A concrete service a connection attempt targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// TCP to a destination port.
    Tcp(u16),
    /// UDP to a destination port.
    Udp(u16),
    /// ICMP echo (ping).
    Icmp,
}

impl Policy {
    /// A policy holding only the default rule of a new network: its members may
    /// reach each other. Removing that rule closes the network (default deny).
    pub fn default_for_network(network: &str) -> Policy {
        Policy {
            rules: vec![Rule::network_members(network)],
            ..Policy::default()
        }
    }

    /// Checks everything a policy must satisfy: names, unique rule names, known
    /// groups, no group cycles, ports only with tcp/udp, non-empty sides, limits.
    /// [`crate::parse()`] runs it; errors carry the lines stored in the values.
    pub fn validate(&self) -> Result<(), PolicyErrors> {
        let mut errors = Vec::new();
        let mut push = |line: u32, kind: PolicyErrorKind| {
            errors.push(PolicyError {
                line,
                column: 1,
                kind,
            });
        };
        if self.rules.len() > MAX_RULES {
            push(0, PolicyErrorKind::TooMany("rules", MAX_RULES));
        }
        if self.groups.len() > MAX_GROUPS {
            push(0, PolicyErrorKind::TooMany("groups", MAX_GROUPS));
        }
        if self.tests.len() > MAX_TESTS {
            push(0, PolicyErrorKind::TooMany("tests", MAX_TESTS));
        }
        if self.ssh.len() > MAX_SSH_RULES {
            push(0, PolicyErrorKind::TooMany("ssh rules", MAX_SSH_RULES));
        }
        for (name, group) in &self.groups {
            if let Err(e) = check_group_name(name) {
                push(group.line, e);
            }
            if group.members.is_empty() {
                push(group.line, PolicyErrorKind::EmptyList("group"));
            }
            if group.members.len() > MAX_LIST {
                push(
                    group.line,
                    PolicyErrorKind::TooMany("group members", MAX_LIST),
                );
            }
            for m in &group.members {
                if let Err(e) = self.check_selector(m).and(check_place(m, Place::Group)) {
                    push(group.line, e);
                }
            }
        }
        if let Some((line, cycle)) = self.group_cycle() {
            push(line, PolicyErrorKind::GroupCycle(cycle));
        }
        let mut names: BTreeMap<&str, u32> = BTreeMap::new();
        for rule in &self.rules {
            if let Some(name) = &rule.name {
                if let Err(e) = check_rule_name(name) {
                    push(rule.line, e);
                }
                if let Some(first) = names.insert(name, rule.line) {
                    names.insert(name, first);
                    push(
                        rule.line,
                        PolicyErrorKind::DuplicateName(name.clone(), first),
                    );
                }
            }
            for (side, list, place) in [
                ("from", &rule.from, Place::RuleFrom),
                ("to", &rule.to, Place::RuleTo),
            ] {
                if list.is_empty() {
                    push(rule.line, PolicyErrorKind::EmptyList(side));
                }
                if list.len() > MAX_LIST {
                    push(rule.line, PolicyErrorKind::TooMany(side, MAX_LIST));
                }
                for s in list {
                    if let Err(e) = self.check_selector(s).and(check_place(s, place)) {
                        push(rule.line, e);
                    }
                }
            }
            if !rule.ports.is_empty() && !matches!(rule.proto, Proto::Tcp | Proto::Udp) {
                push(rule.line, PolicyErrorKind::PortsNeedTcpOrUdp(rule.proto));
            }
            if rule.ports.len() > MAX_LIST {
                push(rule.line, PolicyErrorKind::TooMany("ports", MAX_LIST));
            }
            for p in &rule.ports {
                if p.first == 0 || p.first > p.last {
                    push(rule.line, PolicyErrorKind::BadPort(p.to_string()));
                }
            }
        }
        for ssh in &self.ssh {
            if let Some(name) = &ssh.name {
                if let Err(e) = check_rule_name(name) {
                    push(ssh.line, e);
                }
                if let Some(first) = names.insert(name, ssh.line) {
                    names.insert(name, first);
                    push(
                        ssh.line,
                        PolicyErrorKind::DuplicateName(name.clone(), first),
                    );
                }
            }
            for (side, list) in [("from", &ssh.from), ("to", &ssh.to)] {
                if list.is_empty() {
                    push(ssh.line, PolicyErrorKind::EmptyList(side));
                }
                if list.len() > MAX_LIST {
                    push(ssh.line, PolicyErrorKind::TooMany(side, MAX_LIST));
                }
                for s in list {
                    if let Err(e) = self.check_selector(s).and(check_place(s, Place::Ssh)) {
                        push(ssh.line, e);
                    }
                }
            }
            if ssh.users.is_empty() {
                push(ssh.line, PolicyErrorKind::EmptyList("users"));
            }
            if ssh.users.len() > MAX_LIST {
                push(ssh.line, PolicyErrorKind::TooMany("users", MAX_LIST));
            }
            for u in &ssh.users {
                if let Err(e) = check_ssh_user(u) {
                    push(ssh.line, e);
                }
            }
        }
        for test in &self.tests {
            if let Some(name) = &test.name
                && let Err(e) = check_rule_name(name)
            {
                push(test.line, e);
            }
            for (s, place) in [(&test.from, Place::TestFrom), (&test.to, Place::TestTo)] {
                if let Err(e) = self.check_selector(s).and(check_place(s, place)) {
                    push(test.line, e);
                }
            }
            if let Service::Tcp(0) | Service::Udp(0) = test.service {
                push(test.line, PolicyErrorKind::BadPort("0".into()));
            }
        }
        PolicyErrors::from_vec(errors)
    }

    fn check_selector(&self, s: &Selector) -> Result<(), PolicyErrorKind> {
        match s {
            Selector::Any | Selector::Cidr(_) | Selector::Subnet(_) => Ok(()),
            Selector::Node(n) => check_label("node", n),
            Selector::Network(n) => check_label("network", n),
            Selector::Tag(t) => check_tag(t),
            Selector::Service(n) => check_service(n),
            Selector::Group(g) => {
                check_group_name(g)?;
                if self.groups.contains_key(g) {
                    Ok(())
                } else {
                    Err(PolicyErrorKind::UnknownGroup(
                        g.clone(),
                        crate::parse::suggest(g, self.groups.keys().map(String::as_str)),
                    ))
                }
            }
        }
    }

    /// The first group cycle in name order, as the line of its first group and the
    /// path `a -> b -> a`.
    fn group_cycle(&self) -> Option<(u32, Vec<String>)> {
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        for start in self.groups.keys() {
            let mut path = Vec::new();
            if let Some(cycle) = self.visit(start, &mut state, &mut path) {
                let line = self.groups.get(&cycle[0]).map_or(0, |g| g.line);
                return Some((line, cycle));
            }
        }
        None
    }

    fn visit<'a>(
        &'a self,
        name: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(name) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| *p == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        let group = self.groups.get(name)?;
        state.insert(name, 1);
        path.push(name);
        for m in &group.members {
            if let Selector::Group(g) = m
                && let Some(c) = self.visit(g, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state.insert(name, 2);
        None
    }

    /// Renders the policy in the text format [`crate::parse()`] reads. Parsing the
    /// result gives back an equal policy (up to line numbers).
    pub fn to_text(&self) -> String {
        crate::parse::render(self)
    }

    /// Network names the policy mentions (`network:` selectors), sorted.
    pub fn networks(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let groups = self.groups.values().flat_map(|g| g.members.iter());
        let rules = self.rules.iter().flat_map(|r| r.from.iter().chain(&r.to));
        let tests = self.tests.iter().flat_map(|t| [&t.from, &t.to]);
        let ssh = self.ssh.iter().flat_map(|r| r.from.iter().chain(&r.to));
        for s in groups.chain(rules).chain(tests).chain(ssh) {
            if let Selector::Network(n) = s {
                out.insert(n.as_str());
            }
        }
        out
    }
}

impl Rule {
    /// The rule a new network starts with: its members may reach each other on
    /// every protocol and port.
    pub fn network_members(network: &str) -> Rule {
        Rule {
            name: Some(format!("members of {network} may reach each other")),
            action: Action::Allow,
            from: vec![Selector::Network(network.to_string())],
            to: vec![Selector::Network(network.to_string())],
            proto: Proto::Any,
            ports: Vec::new(),
            line: 0,
        }
    }

    /// Whether the rule's protocol and ports cover `service`.
    pub fn covers(&self, service: Service) -> bool {
        match service {
            Service::Tcp(p) => {
                matches!(self.proto, Proto::Any | Proto::Tcp) && ports_cover(&self.ports, p)
            }
            Service::Udp(p) => {
                matches!(self.proto, Proto::Any | Proto::Udp) && ports_cover(&self.ports, p)
            }
            Service::Icmp => matches!(self.proto, Proto::Any | Proto::Icmp),
        }
    }
}

/// Whether `ports` (empty = all) contains `port`.
pub(crate) fn ports_cover(ports: &[PortRange], port: u16) -> bool {
    ports.is_empty() || ports.iter().any(|r| r.contains(port))
}

/// Parses a port range, `22` or `1000-2000` (ports 1 to 65535, first ≤ last).
pub(crate) fn parse_port_range(s: &str) -> Result<PortRange, PolicyErrorKind> {
    let bad = || PolicyErrorKind::BadPort(s.chars().take(40).collect());
    let port = |p: &str| -> Result<u16, PolicyErrorKind> {
        let p = p.trim();
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(n) => Ok(n),
        }
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if first > last {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Tcp(p) => write!(f, "tcp/{p}"),
            Service::Udp(p) => write!(f, "udp/{p}"),
            Service::Icmp => f.write_str("icmp"),
        }
    }
}

impl Service {
    /// Builds a service from a protocol and port as the CLI takes them
    /// (`--proto tcp --port 5432`); `icmp` takes no port, `tcp`/`udp` need one.
    pub fn new(proto: Proto, port: Option<u16>) -> Result<Service, PolicyErrorKind> {
        match (proto, port) {
            (Proto::Tcp, Some(p)) if p > 0 => Ok(Service::Tcp(p)),
            (Proto::Udp, Some(p)) if p > 0 => Ok(Service::Udp(p)),
            (Proto::Tcp | Proto::Udp, Some(p)) => Err(PolicyErrorKind::BadPort(p.to_string())),
            (Proto::Tcp | Proto::Udp, None) => Err(PolicyErrorKind::MissingPort(proto)),
            (Proto::Icmp, None) => Ok(Service::Icmp),
            (Proto::Icmp, Some(_)) => Err(PolicyErrorKind::PortsNeedTcpOrUdp(proto)),
            (Proto::Any, _) => Err(PolicyErrorKind::TestProto),
        }
    }

    /// The services a check of `proto` (and `port`) asks about: the one service
    /// for tcp, udp or icmp; for `any`, every protocol a rule can name: tcp and
    /// udp at `port`, and icmp. `any` therefore needs a port.
    pub fn for_check(proto: Proto, port: Option<u16>) -> Result<Vec<Service>, PolicyErrorKind> {
        match (proto, port) {
            (Proto::Any, Some(p)) => Ok(vec![
                Service::new(Proto::Tcp, Some(p))?,
                Service::new(Proto::Udp, Some(p))?,
                Service::Icmp,
            ]),
            (Proto::Any, None) => Err(PolicyErrorKind::AnyNeedsPort),
            _ => Ok(vec![Service::new(proto, port)?]),
        }
    }

    /// The protocol part.
    pub fn proto(&self) -> Proto {
        match self {
            Service::Tcp(_) => Proto::Tcp,
            Service::Udp(_) => Proto::Udp,
            Service::Icmp => Proto::Icmp,
        }
    }

    /// The destination port, for tcp/udp.
    pub fn port(&self) -> Option<u16> {
        match self {
            Service::Tcp(p) | Service::Udp(p) => Some(*p),
            Service::Icmp => None,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Node(n) => write!(f, "node:{n}"),
            Selector::Tag(t) => write!(f, "tag:{t}"),
            Selector::Group(g) => write!(f, "group:{g}"),
            Selector::Network(n) => write!(f, "network:{n}"),
            Selector::Cidr(c) => write!(f, "cidr:{c}"),
            Selector::Subnet(c) => write!(f, "subnet:{c}"),
            Selector::Service(n) => write!(f, "service:{n}"),
        }
    }
}

impl FromStr for Selector {
    type Err = PolicyErrorKind;

    /// Parses `*`, `node:NAME`, `tag:TAG`, `group:NAME`, `network:NAME`,
    /// `cidr:PREFIX`, `subnet:PREFIX` or `service:NAME`, checking names and
    /// prefixes (not where the selector may be written).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(Selector::Any);
        }
        let unknown = || PolicyErrorKind::UnknownSelector(s.chars().take(70).collect());
        let (kind, rest) = s.split_once(':').ok_or_else(unknown)?;
        match kind {
            "node" => check_label("node", rest).map(|()| Selector::Node(rest.to_string())),
            "network" => check_label("network", rest).map(|()| Selector::Network(rest.to_string())),
            "tag" => check_tag(rest).map(|()| Selector::Tag(rest.to_string())),
            "group" => check_group_name(rest).map(|()| Selector::Group(rest.to_string())),
            "cidr" => parse_prefix(rest).map(Selector::Cidr),
            "subnet" => parse_prefix(rest).map(Selector::Subnet),
            "service" => check_service(rest).map(|()| Selector::Service(rest.to_string())),
            _ => Err(unknown()),
        }
    }
}

impl Selector {
    /// Parses a selector as the CLI takes it: a bare name (`web1`) means
    /// `node:web1`; anything else is [`Selector::from_str`].
    pub fn parse_or_node(s: &str) -> Result<Selector, PolicyErrorKind> {
        if s != "*" && !s.contains(':') {
            check_label("node", s)?;
            return Ok(Selector::Node(s.to_string()));
        }
        s.parse()
    }
}

/// Parses a prefix strictly: no host bits set (a typo is reported, not widened).
fn parse_prefix(s: &str) -> Result<IpNet, PolicyErrorKind> {
    let bad = |why: String| PolicyErrorKind::BadCidr(s.chars().take(60).collect(), why);
    if s.len() > 50 {
        return Err(bad("too long".into()));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| bad("expected ADDRESS/PREFIX, for example 10.1.0.0/16".into()))?;
    if net.trunc() != net {
        return Err(bad(format!(
            "host bits are set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

pub(crate) fn check_label(kind: &'static str, s: &str) -> Result<(), PolicyErrorKind> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PolicyErrorKind::BadName(
            kind,
            s.chars().take(70).collect(),
            "1 to 63 lowercase letters, digits or '-', not starting or ending with '-'",
        ))
    }
}

pub(crate) fn check_service(s: &str) -> Result<(), PolicyErrorKind> {
    weft_proto::service::check_service_name(s).map_err(|_| {
        PolicyErrorKind::BadName(
            "service",
            s.chars().take(70).collect(),
            "1 to 63 lowercase letters, digits or '-', not starting or ending with '-'",
        )
    })
}

pub(crate) fn check_tag(s: &str) -> Result<(), PolicyErrorKind> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b':' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(PolicyErrorKind::BadName(
            "tag",
            s.chars().take(70).collect(),
            "1 to 63 of a-z 0-9 - _ : .",
        ))
    }
}

pub(crate) fn check_group_name(s: &str) -> Result<(), PolicyErrorKind> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PolicyErrorKind::BadName(
            "group",
            s.chars().take(70).collect(),
            "1 to 63 of a-z 0-9 - _",
        ))
    }
}

pub(crate) fn check_rule_name(s: &str) -> Result<(), PolicyErrorKind> {
    if s.trim().is_empty() || s.len() > MAX_RULE_NAME || s.chars().any(char::is_control) {
        return Err(PolicyErrorKind::BadName(
            "rule",
            s.chars().take(70).collect(),
            "1 to 128 bytes of printable text",
        ));
    }
    Ok(())
}
