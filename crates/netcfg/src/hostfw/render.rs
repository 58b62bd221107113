//! Rendering a [`HostFirewall`] to typed nftables JSON (the `nftables` crate),
//! and the comments it leaves in the table, which observation reads back.
//!
//! The table is replaced in one transaction (`add table`, `delete table`,
//! then everything anew), so a packet never sees half a ruleset. Per chain:
//! the base (when its policy drops), the rules' drops, the rules' accepts,
//! then a counted final drop (logged at a bounded rate when `log_drops`).
//! One [`HostFwRule`] can become several nftables rules (one per address
//! family, one per named set); they share its comment.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, Range, SetItem,
};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, Nftables, SetFlag, SetType};
use nftables::stmt::{Counter, Limit, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::observe::ObservedHostFirewall;
use super::{Chain, HOST_TABLE, HostFirewall, HostFwRule, L4, SetFamily, set_family};

/// Prefix of the guard sets of expiring rules (`x_<n>`); observation skips them.
pub(super) const GUARD_PREFIX: &str = "x_";
/// Longest part of a rule's own comment kept (nftables allows 128 bytes).
const MAX_COMMENT: usize = 110;
/// Log prefix of dropped packets.
const LOG_PREFIX: &str = "weft-host drop: ";

/// One nftables rule to render.
struct NftRule {
    chain: Chain,
    comment: String,
    stmts: Vec<Statement<'static>>,
}

/// A named set to render.
struct NftSet {
    name: String,
    ty: SetType,
    elems: Vec<Expression<'static>>,
    timeout: bool,
}

/// Everything the table holds.
struct Table {
    rules: Vec<NftRule>,
    sets: Vec<NftSet>,
}

/// The typed nft JSON that replaces the table with `fw` as it is at `now_ms`
/// (expired rules left out; an expiring rule's guard element times out at its
/// expiry, rounded up to the second).
pub fn render(fw: &HostFirewall, now_ms: u64) -> Nftables<'static> {
    let fw = fw.at(now_ms);
    let table = build(&fw, now_ms);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(host_table()));
    batch.delete(NfListObject::Table(host_table()));
    batch.add(NfListObject::Table(host_table()));
    for (chain, drop, hook) in [
        (Chain::Input, fw.input_drop, NfHook::Input),
        (Chain::Output, fw.output_drop, NfHook::Output),
        (Chain::Forward, fw.forward_drop, NfHook::Forward),
    ] {
        batch.add(NfListObject::Chain(schema::Chain {
            family: NfFamily::INet,
            table: HOST_TABLE.into(),
            name: chain.name().into(),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(0),
            policy: Some(if drop {
                NfChainPolicy::Drop
            } else {
                NfChainPolicy::Accept
            }),
            ..schema::Chain::default()
        }));
    }
    for set in table.sets {
        batch.add(NfListObject::Set(Box::new(schema::Set {
            family: NfFamily::INet,
            table: HOST_TABLE.into(),
            name: set.name.into(),
            set_type: schema::SetTypeValue::Single(set.ty),
            flags: set.timeout.then(|| HashSet::from([SetFlag::Timeout])),
            elem: (!set.elems.is_empty()).then(|| set.elems.into()),
            ..schema::Set::default()
        })));
    }
    for rule in table.rules {
        batch.add(NfListObject::Rule(schema::Rule {
            family: NfFamily::INet,
            table: HOST_TABLE.into(),
            chain: rule.chain.name().into(),
            expr: rule.stmts.into(),
            comment: Some(rule.comment.into()),
            ..schema::Rule::default()
        }));
    }
    batch.to_nftables()
}

/// What observation should find once `fw` is applied at `now_ms`.
pub(super) fn expected(fw: &HostFirewall, now_ms: u64) -> ObservedHostFirewall {
    let fw = fw.at(now_ms);
    let table = build(&fw, now_ms);
    ObservedHostFirewall {
        policies: [
            (Chain::Input.name().to_owned(), fw.input_drop),
            (Chain::Output.name().to_owned(), fw.output_drop),
            (Chain::Forward.name().to_owned(), fw.forward_drop),
        ]
        .into(),
        rules: table
            .rules
            .iter()
            .map(|r| (r.chain.name().to_owned(), r.comment.clone()))
            .collect(),
        sets: domain_sets(&fw),
    }
}

/// The typed nft JSON that deletes the table if it exists.
pub fn delete_table() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(host_table()));
    batch.delete(NfListObject::Table(host_table()));
    batch.to_nftables()
}

/// The typed nft JSON that replaces the contents of the existing named sets
/// `set4` (with `v4`) and `set6` (with `v6`) of table `family table` in one
/// transaction: flush, then add. Fails (in `nft`) when the table or a set does
/// not exist.
pub fn update_sets(
    family: NfFamily,
    table: &str,
    set4: &str,
    set6: Option<&str>,
    v4: &BTreeSet<std::net::Ipv4Addr>,
    v6: &BTreeSet<std::net::Ipv6Addr>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    let mut one = |name: &str, ty: SetType, elems: Vec<Expression<'static>>| {
        let set = schema::Set {
            family,
            table: table.to_owned().into(),
            name: name.to_owned().into(),
            set_type: schema::SetTypeValue::Single(ty),
            ..schema::Set::default()
        };
        batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set))));
        if !elems.is_empty() {
            batch.add(NfListObject::Element(schema::Element {
                family,
                table: table.to_owned().into(),
                name: name.to_owned().into(),
                elem: elems.into(),
            }));
        }
    };
    one(
        set4,
        SetType::Ipv4Addr,
        v4.iter()
            .map(|a| Expression::String(a.to_string().into()))
            .collect(),
    );
    if let Some(set6) = set6 {
        one(
            set6,
            SetType::Ipv6Addr,
            v6.iter()
                .map(|a| Expression::String(a.to_string().into()))
                .collect(),
        );
    }
    batch.to_nftables()
}

fn host_table() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: HOST_TABLE.into(),
        handle: None,
    }
}

/// The domain sets: every set of `fw.sets`, plus empty ones for names a rule
/// uses that `fw.sets` lacks.
fn domain_sets(fw: &HostFirewall) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut sets = fw.sets.clone();
    for r in &fw.rules {
        for s in &r.sets {
            sets.entry(s.clone()).or_default();
        }
    }
    sets
}

fn build(fw: &HostFirewall, now_ms: u64) -> Table {
    let mut rules = Vec::new();
    let mut sets: Vec<NftSet> = domain_sets(fw)
        .into_iter()
        .map(|(name, addrs)| {
            let ty = match set_family(&name) {
                SetFamily::V4 => SetType::Ipv4Addr,
                SetFamily::V6 => SetType::Ipv6Addr,
            };
            let elems = addrs
                .iter()
                .filter(|a| a.is_ipv4() == (ty == SetType::Ipv4Addr))
                .map(|a| Expression::String(a.to_string().into()))
                .collect();
            NftSet {
                name,
                ty,
                elems,
                timeout: false,
            }
        })
        .collect();
    for (chain, drop) in [
        (Chain::Input, fw.input_drop),
        (Chain::Output, fw.output_drop),
        (Chain::Forward, fw.forward_drop),
    ] {
        if drop {
            base(fw, chain, &mut rules);
        }
        let ordered = fw
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.chain == chain && !r.accept)
            .chain(
                fw.rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.chain == chain && r.accept),
            );
        for (i, r) in ordered {
            let guard = r.expires_at_ms.map(|at| {
                let name = format!("{GUARD_PREFIX}{i}");
                sets.push(guard_set(&name, r.proto, at, now_ms));
                name
            });
            expand(r, guard.as_deref(), &mut rules);
        }
        if drop {
            if fw.log_drops {
                rules.push(NftRule {
                    chain,
                    comment: "weft:base:log".to_owned(),
                    stmts: vec![
                        Statement::Limit(Limit {
                            rate: 10,
                            rate_unit: None,
                            per: Some("second".into()),
                            burst: Some(20),
                            burst_unit: None,
                            inv: None,
                        }),
                        Statement::Log(Some(Log {
                            prefix: Some(LOG_PREFIX.into()),
                            ..Log::new(None)
                        })),
                    ],
                });
            }
            rules.push(NftRule {
                chain,
                comment: "weft:base:drop".to_owned(),
                stmts: vec![counter(), Statement::Drop(None)],
            });
        }
    }
    Table { rules, sets }
}

/// The guard of an expiring rule: its protocols, each timing out at `at`.
fn guard_set(name: &str, proto: Option<L4>, at: u64, now_ms: u64) -> NftSet {
    let secs = at
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, u64::from(u32::MAX));
    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
    let protos: Vec<u32> = match proto {
        Some(L4::Tcp) => vec![6],
        Some(L4::Udp) => vec![17],
        Some(L4::Icmp) => vec![1, 58],
        None => (0..=255).collect(),
    };
    NftSet {
        name: name.to_owned(),
        ty: SetType::InetProto,
        elems: protos
            .into_iter()
            .map(|p| {
                Expression::Named(NamedExpression::Elem(Elem {
                    val: Box::new(Expression::Number(p)),
                    timeout: Some(secs),
                    expires: None,
                    comment: None,
                    counter: None,
                }))
            })
            .collect(),
        timeout: true,
    }
}

/// The base rules of a chain whose policy drops.
fn base(fw: &HostFirewall, chain: Chain, rules: &mut Vec<NftRule>) {
    let mut push = |what: &str, stmts: Vec<Statement<'static>>| {
        rules.push(NftRule {
            chain,
            comment: format!("weft:base:{what}"),
            stmts,
        });
    };
    let iface = match chain {
        Chain::Input => Some(MetaKey::Iifname),
        Chain::Output => Some(MetaKey::Oifname),
        Chain::Forward => None,
    };
    if let Some(key) = iface {
        push("lo", vec![eq(meta(key), string("lo")), accept()]);
    }
    push(
        "established",
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                right: Expression::List(vec![string("established"), string("related")]),
                op: Operator::IN,
            }),
            accept(),
        ],
    );
    if chain == Chain::Forward {
        return;
    }
    let echo = "echo-request";
    push(
        "icmp",
        vec![eq(payload("icmp", "type"), string(echo)), accept()],
    );
    // ICMPv6 echo, and neighbour discovery and router messages, without which
    // IPv6 stops working on the link.
    push(
        "icmpv6",
        vec![
            eq(
                payload("icmpv6", "type"),
                set_of(
                    [
                        echo,
                        "nd-neighbor-solicit",
                        "nd-neighbor-advert",
                        "nd-router-solicit",
                        "nd-router-advert",
                        "packet-too-big",
                        "destination-unreachable",
                        "time-exceeded",
                        "parameter-problem",
                        "mld-listener-query",
                    ]
                    .into_iter()
                    .map(string)
                    .collect(),
                ),
            ),
            accept(),
        ],
    );
    match chain {
        Chain::Input => {
            if !fw.management.is_empty() && !fw.management_ports.is_empty() {
                let ports: Vec<(u16, u16)> = fw.management_ports.iter().map(|&p| (p, p)).collect();
                let digest = digest(&format!("{:?}{:?}", fw.management, fw.management_ports));
                for (family, nets) in by_family(&fw.management) {
                    push(
                        &format!("mgmt {digest:08x}"),
                        vec![
                            eq(payload(family, "saddr"), addrs(&nets)),
                            eq(payload("tcp", "dport"), ports_expr(&ports)),
                            accept(),
                        ],
                    );
                }
            }
        }
        Chain::Output => {
            push(
                "out-udp",
                vec![
                    eq(payload("udp", "dport"), ports_expr(&[(53, 53), (123, 123)])),
                    accept(),
                ],
            );
            push(
                "out-tcp",
                vec![
                    eq(payload("tcp", "dport"), ports_expr(&[(53, 53), (443, 443)])),
                    accept(),
                ],
            );
        }
        Chain::Forward => {}
    }
}

/// The nftables rules of one [`HostFwRule`]: one per address family its
/// prefixes fall in and one per named set (any address when it names none).
fn expand(r: &HostFwRule, guard: Option<&str>, rules: &mut Vec<NftRule>) {
    let own: String = r.comment.chars().take(MAX_COMMENT).collect();
    let comment = format!("{own} {:08x}", digest(&format!("{r:?}")));
    let mut common = Vec::new();
    if let Some(name) = &r.iface {
        let key = if r.chain == Chain::Input {
            MetaKey::Iifname
        } else {
            MetaKey::Oifname
        };
        common.push(eq(meta(key), string(name)));
    }
    match (guard, r.proto) {
        (Some(g), _) => common.push(eq(meta(MetaKey::L4proto), string(&format!("@{g}")))),
        (None, Some(L4::Icmp)) => common.push(eq(
            meta(MetaKey::L4proto),
            set_of(vec![string("icmp"), string("ipv6-icmp")]),
        )),
        (None, Some(L4::Tcp)) if r.ports.is_empty() && r.sport.is_empty() => {
            common.push(eq(meta(MetaKey::L4proto), string("tcp")));
        }
        (None, Some(L4::Udp)) if r.ports.is_empty() && r.sport.is_empty() => {
            common.push(eq(meta(MetaKey::L4proto), string("udp")));
        }
        (None, _) => {}
    }
    // Ports without TCP or UDP (the proto spec refuses them, but a rule
    // must never match more than it says): the transport header's ports,
    // which ICMP does not have, so such a rule matches less, never more.
    let l4 = match r.proto {
        Some(L4::Tcp) => "tcp",
        Some(L4::Udp) => "udp",
        Some(L4::Icmp) | None => "th",
    };
    if !r.sport.is_empty() {
        common.push(eq(payload(l4, "sport"), ports_expr(&r.sport)));
    }
    if !r.ports.is_empty() {
        common.push(eq(payload(l4, "dport"), ports_expr(&r.ports)));
    }
    if r.no_syn && r.proto == Some(L4::Tcp) {
        // `tcp flags & (syn | ack) == ack`: ACK without SYN, a segment of a
        // connection already open. (nft lists `tcp flags & syn == 0` with an
        // operator the nftables crate cannot read back.)
        common.push(eq(
            Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                payload("tcp", "flags"),
                Expression::List(vec![string("syn"), string("ack")]),
            ))),
            string("ack"),
        ));
    }
    let field = if r.chain == Chain::Input {
        "saddr"
    } else {
        "daddr"
    };
    let mut peers: Vec<Statement<'static>> = by_family(&r.addrs)
        .into_iter()
        .map(|(family, nets)| eq(payload(family, field), addrs(&nets)))
        .collect();
    for s in &r.sets {
        let family = match set_family(s) {
            SetFamily::V4 => "ip",
            SetFamily::V6 => "ip6",
        };
        peers.push(eq(payload(family, field), string(&format!("@{s}"))));
    }
    let verdict = if r.accept {
        vec![accept()]
    } else {
        vec![counter(), Statement::Drop(None)]
    };
    let mut one = |peer: Option<Statement<'static>>| {
        let mut stmts = common.clone();
        stmts.extend(peer);
        stmts.extend(verdict.iter().cloned());
        rules.push(NftRule {
            chain: r.chain,
            comment: comment.clone(),
            stmts,
        });
    };
    if peers.is_empty() {
        one(None);
    } else {
        for p in peers {
            one(Some(p));
        }
    }
}

/// Prefixes split by family: `("ip", v4...)`, `("ip6", v6...)`, non-empty only.
fn by_family(nets: &[IpNet]) -> Vec<(&'static str, Vec<IpNet>)> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets.iter().partition(|n| n.addr().is_ipv4());
    [("ip", v4), ("ip6", v6)]
        .into_iter()
        .filter(|(_, n)| !n.is_empty())
        .collect()
}

/// FNV-1a, 32 bits: a short fingerprint of a rule's content in its comment,
/// so a rule whose content changed under the same id is replaced.
fn digest(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub(crate) fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

pub(crate) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(crate) fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_owned().into(),
            field: field.to_owned().into(),
        },
    )))
}

pub(crate) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub(crate) fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn set_of(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

/// One port or range as is; several as an anonymous set.
fn ports_expr(ports: &[(u16, u16)]) -> Expression<'static> {
    let one = |&(a, b): &(u16, u16)| {
        if a == b {
            Expression::Number(u32::from(a))
        } else {
            Expression::Range(Box::new(Range {
                range: [
                    Expression::Number(u32::from(a)),
                    Expression::Number(u32::from(b)),
                ],
            }))
        }
    };
    match ports {
        [p] => one(p),
        _ => set_of(ports.iter().map(one).collect()),
    }
}

/// One prefix as is (a host address bare); several as an anonymous set.
pub(crate) fn addrs(nets: &[IpNet]) -> Expression<'static> {
    let one = |n: &IpNet| {
        let n = n.trunc();
        if n.prefix_len() == n.max_prefix_len() {
            string(&n.addr().to_string())
        } else {
            Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(string(&n.addr().to_string())),
                len: u32::from(n.prefix_len()),
            }))
        }
    };
    match nets {
        [n] => one(n),
        _ => set_of(nets.iter().map(one).collect()),
    }
}
