//! weft's policy: who may talk to whom, as admins write it, as the controller
//! compiles it per node, and as every agent enforces it per packet.
//!
//! Pure: no I/O, no clock (time comes in as `now: Instant`), no randomness,
//! deterministic iteration (`BTreeMap` throughout). Shared by the controller
//! ([`parse()`], [`Policy::validate`], [`Policy::run_tests`], [`compile()`],
//! [`Policy::check`]) and the agent's tunnel core ([`Engine`]).
//!
//! # Text format
//!
//! TOML. Comments and blank lines are free; errors name the line and column.
//!
//! ```toml
//! [groups]                        # named sets of selectors; may nest, no cycles
//! backend = ["tag:db", "node:cache1"]
//!
//! [[rule]]
//! name = "web to db"              # optional, unique; explanations quote it
//! action = "allow"                # or "deny"
//! from = ["tag:web"]              # initiators (a string or a list)
//! to = ["group:backend"]          # destinations
//! proto = "tcp"                   # any (default) | tcp | udp | icmp
//! ports = [5432, "6379-6380"]     # tcp/udp only; omitted = every port
//!
//! [[rule]]
//! action = "allow"
//! from = "tag:web"
//! to = "service:db"               # the providers of db, on db's ports only
//!
//! [[ssh]]                         # SSH through the mesh (weftd --ssh)
//! name = "ops"                    # optional, unique among rules and ssh rules
//! from = ["tag:ops"]              # clients
//! to = ["tag:db"]                 # servers
//! users = ["deploy", "*"]         # local users; "*" = any user but root
//!
//! [[test]]                        # the controller refuses a policy whose tests fail
//! from = "node:web1"
//! to = "node:db1"                 # or "service:db"
//! proto = "tcp"
//! port = 5432
//! expect = "allow"                # or "deny"
//! ```
//!
//! Selectors pick addresses of nodes:
//! - `*`: every node's overlay addresses and every routed subnet;
//! - `node:NAME`, `tag:TAG`: the overlay addresses (all networks) of that node /
//!   the nodes with that tag;
//! - `group:NAME`: the union of the group's members;
//! - `network:NAME`: each member's overlay addresses *in that network*;
//! - `cidr:PREFIX`: node overlay addresses inside the prefix;
//! - `subnet:PREFIX`: addresses inside the prefix that lie in a subnet some
//!   gateway node routes (the traffic goes through, and is checked by, that
//!   gateway);
//! - `service:NAME` (destinations only: a rule's or a test's `to`; refused in
//!   `from`, in groups and in `[[ssh]]`): the nodes whose facts list a service
//!   of that name ([`NodeFacts::services`], its approved instances), at their
//!   addresses in the service's network, and only on the service's ports and
//!   protocols. A rule's own `proto`/`ports` narrow that further (their
//!   intersection; an empty one contributes nothing). Consumers and providers it
//!   lets talk see each other, as with any rule. A service with the same name in
//!   two networks is both, each on its own ports.
//!
//! # SSH rules
//!
//! An `[[ssh]]` rule lets the nodes `from` selects log in to the nodes `to`
//! selects (their overlay addresses only) as one of `users`: each a login name
//! or `*` (whichever user the client asks for, except `root`, which must be
//! named). Only a target whose facts carry an SSH port
//! ([`NodeFacts::ssh_port`], it runs `weftd --ssh`) is granted anything. For
//! each client and target that share a network, the grant:
//! - allows TCP from the client to the target's SSH port (both compiled
//!   policies get the flow rule, and the two nodes see each other);
//! - is listed in the target's [`CompiledPolicy::ssh_inbound`] (peer = the
//!   client, its addresses, the users) and the client's
//!   [`CompiledPolicy::ssh_outbound`] (peer = the target). Several `[[ssh]]`
//!   rules for one pair merge into one grant: their ids, the union of users.
//!
//! Deny rules still win: a packet a deny matches is dropped, and an address
//! pair whose SSH connection a deny drops carries no grant (a grant left with
//! no address is dropped). `[[ssh]]` rules have the ids after the rules
//! (`rules.len() + i`); explanations and `policy check` name them
//! `rule "ssh: NAME"` (or `rule "ssh #N"`, counting `[[ssh]]` blocks from 1)
//! with their line.
//!
//! A new network starts with one visible rule, [`Policy::default_for_network`]
//! (`from = to = ["network:NAME"]`, any protocol); removing it closes the
//! network.
//!
//! # Precedence
//!
//! For a packet that opens a flow, from address S (of node A) to address D (of
//! another node B):
//! 1. a rule *matches* when S is selected by one of its `from` selectors on A, D
//!    by one of its `to` selectors on B, and its protocol and destination ports
//!    cover the packet;
//! 2. if **any deny rule matches, the packet is dropped**, whatever allows also
//!    match and wherever they are in the file. So a deny wins at the same scope,
//!    at a broader scope (a narrower allow inside a broader deny stays closed),
//!    and at a narrower one (a deny carves a hole in a broader allow);
//! 3. otherwise, if an allow rule matches, the packet passes and opens a flow;
//! 4. otherwise it is dropped: **default deny**.
//!
//! Rule order changes nothing but which rule an explanation names (the earliest
//! matching deny, else the earliest matching allow). Packets of a tracked flow
//! (its later packets and its replies) pass without consulting the rules, until
//! the flow idles out or a policy change stops allowing its opening packet.
//!
//! # Compile
//!
//! [`compile()`] resolves each rule's sides against an [`Inventory`] and gives
//! each node a [`CompiledPolicy`]: per direction, the [`FlowRule`]s that concern
//! it, keyed by the peers' prefixes (so the agent needs no inventory), and its
//! visible peers: the nodes with which *some* packet in either direction is
//! allowed (exactly, deny rules included). Other nodes appear in no flow rule and
//! must not appear in the node's network map.
//!
//! [`LivePolicy`] keeps the same result up to date as nodes join, change and
//! leave: a change recompiles only the changed node and the members of the rule
//! sides opposite it, each in O(its rules × log n) unless a deny rule picks it,
//! and decides visibility per pair on demand instead of storing O(n²) sets.
//!
//! # The host firewall file
//!
//! [`hostfw`] is the other document the controller keeps: `[[firewall]]`
//! profiles selecting nodes, with chain defaults and `[[firewall.rule]]`s, in
//! the same TOML style and with the same line-accurate errors
//! ([`hostfw::parse_firewall`]), compiled per node into the map's
//! `HostFirewallSpec` ([`hostfw::compile_firewall`]).
//!
//! # Drive contract of the [`Engine`]
//!
//! 1. Build it from the node's compiled policy: [`Engine::new`] (or
//!    [`Engine::deny_all`] before the first map arrives).
//! 2. For every packet: egress from the TUN before encryption, and ingress after
//!    decryption and the source-address check, call [`Engine::decide`] with its
//!    [`FiveTuple`] (from [`FiveTuple::parse`]) and `now`; forward it only on
//!    [`Verdict::Allow`]. A [`Verdict::Drop`] carries a typed [`DropReason`];
//!    count per peer and log through a [`LogLimiter`] (one line per peer per
//!    10 s), never per packet.
//! 3. When a new map brings a new compiled policy, call [`Engine::replace_policy`];
//!    flows it no longer allows end at once.
//! 4. After each input re-read [`Engine::poll_timeout`]; when that instant
//!    passes, call [`Engine::handle_timeout`] (expired flows never pass packets
//!    either way; the timer only frees memory).
//! 5. [`Engine::explain`] answers "why was this allowed/dropped" without changing
//!    state; [`Engine::counters`] and [`Engine::flows`] feed the live view.
//!
//! Per-packet cost: one conntrack lookup, then only the compiled rules indexed
//! under the peer's address (a host map plus one lookup per distinct prefix
//! length), independent of rules about other peers.

// Hash iteration order must not reach output (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

mod check;
mod compile;
mod conntrack;
mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod hostfw;
mod inventory;
mod live;
mod matcher;
mod model;
pub mod packet;
mod parse;
mod ratelimit;
mod select;
mod ssh;
pub mod usage;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod usage_tests;

pub use check::{CheckReport, MAX_CHECK_PAIRS, PairDecision, TestFailure, evaluate};
pub use compile::{
    Compiled, CompiledPolicy, FlowRule, RuleId, RuleInfo, SshGrant, allow_all, compile,
    compile_node,
};
pub use conntrack::{ConntrackConfig, Flow};
pub use engine::{Counters, DropReason, Engine, Explanation, Verdict, Via};
pub use inventory::{Inventory, InventoryError, Membership, NodeFacts, ServiceFact};
pub use ipnet::IpNet;
pub use live::{Flushed, LivePolicy, Transition, Viewpoint, VisibilityClass};
pub use matcher::{
    Direction, FiveTuple, IcmpKind, InvalidPolicy, Matcher, PacketError, RuleVerdict, Transport,
    ip_proto, tcp_flags,
};
pub use model::{
    ANY_USER, Action, Expect, Group, MAX_GROUPS, MAX_LABEL, MAX_LIST, MAX_POLICY_BYTES,
    MAX_RULE_NAME, MAX_RULES, MAX_SSH_RULES, MAX_TESTS, Policy, PolicyTest, PortRange, Proto, Rule,
    Selector, Service, SshRule,
};
pub use packet::IpView;
pub use parse::{PolicyError, PolicyErrorKind, PolicyErrors, parse, render_rule};
pub use ratelimit::{DROP_LOG_INTERVAL, LogLimiter};
pub use usage::{USAGE_CAPACITY, Usage, UsageCounters, UsageKey, UsageTable};

impl Policy {
    /// Parses policy text ([`parse()`]).
    pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
        parse(text)
    }
}
