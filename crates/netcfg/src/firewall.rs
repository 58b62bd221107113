//! The host-wide part of weft's system state: IPv4 forwarding and the nftables
//! table `inet weft`, for subnet gateways and for nodes in several networks.
//!
//! The table holds only rules weft renders, each carrying a `weft:` comment
//! that names it, so observation reads back the set of comments and the
//! planner compares sets (drift such as a deleted rule or table is repaired by
//! replacing the whole table atomically). Nothing outside that table is read
//! or changed, except `net.ipv4.ip_forward`, which weft turns on for a gateway
//! and turns back off only if it was off before weft turned it on.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::MetaKey;
use nftables::schema::{self, NfListObject, Nftables};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::hostfw::render::{addrs, counter, eq, meta, payload, string};

/// Family and name of weft's nftables table.
pub const NFT_TABLE: &str = "inet weft";
/// The table's name (family `inet`).
const TABLE_NAME: &str = "weft";
/// `priority srcnat`.
const SRCNAT: i32 = 100;

/// What the gateway and isolation side should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Overlay prefixes (the networks' CIDRs) whose traffic to `masquerade`
    /// subnets is forwarded and source-NATed to the gateway's own address.
    pub overlay: BTreeSet<IpNet>,
    /// Subnets this node is a gateway for. Non-empty: IPv4 forwarding on.
    pub masquerade: BTreeSet<IpNet>,
    /// Drop forwarding between two `weft*` interfaces (a node in several
    /// networks never carries one network's traffic into another).
    pub isolate: bool,
}

impl FirewallSpec {
    /// The rules the table should hold (empty: no table).
    pub fn rules(&self) -> BTreeSet<NftRule> {
        let mut out = BTreeSet::new();
        if self.isolate || !self.masquerade.is_empty() {
            out.insert(NftRule::Isolate);
        }
        for to in &self.masquerade {
            for from in self
                .overlay
                .iter()
                .filter(|o| o.addr().is_ipv4() == to.addr().is_ipv4())
            {
                out.insert(NftRule::Masquerade {
                    from: *from,
                    to: *to,
                });
            }
        }
        out
    }

    /// Whether IPv4 forwarding must be on.
    pub fn forwarding(&self) -> bool {
        !self.masquerade.is_empty()
    }
}

/// One rule of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NftRule {
    /// `iifname "weft*" oifname "weft*" drop` in the forward hook.
    Isolate,
    /// `ip saddr FROM ip daddr TO masquerade` in the postrouting NAT hook.
    Masquerade {
        /// The overlay prefix.
        from: IpNet,
        /// The gateway's subnet.
        to: IpNet,
    },
}

impl NftRule {
    /// The comment that identifies the rule in the table.
    pub fn comment(&self) -> String {
        match self {
            NftRule::Isolate => "weft:isolate".to_owned(),
            NftRule::Masquerade { from, to } => format!("weft:masq {from} {to}"),
        }
    }
}

impl fmt::Display for NftRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftRule::Isolate => f.write_str("no forwarding between weft interfaces"),
            NftRule::Masquerade { from, to } => write!(f, "masquerade {from} to {to}"),
        }
    }
}

/// The firewall side as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedFirewall {
    /// The comments of the rules in table `inet weft`; `None` when the table
    /// does not exist.
    pub table: Option<BTreeSet<String>>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: bool,
    /// Whether weft turned forwarding on (it was off before).
    pub forward_set_by_weft: bool,
}

/// The typed nft JSON that replaces the table with `rules` atomically (one
/// transaction: add, delete, add again with everything).
pub fn render(rules: &BTreeSet<NftRule>) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    )));
    // The NAT chain only when something is masqueraded: any chain of type nat
    // makes the kernel track connections for every packet of the host (or
    // network namespace), which an isolation-only table must not cost.
    if rules
        .iter()
        .any(|r| matches!(r, NftRule::Masquerade { .. }))
    {
        batch.add(NfListObject::Chain(chain(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT,
        )));
    }
    for r in rules {
        let (chain, expr) = match r {
            NftRule::Isolate => (
                "forward",
                vec![
                    eq(meta(MetaKey::Iifname), string("weft*")),
                    eq(meta(MetaKey::Oifname), string("weft*")),
                    counter(),
                    Statement::Drop(None),
                ],
            ),
            NftRule::Masquerade { from, to } => {
                let fam = if to.addr().is_ipv4() { "ip" } else { "ip6" };
                (
                    "postrouting",
                    vec![
                        eq(payload(fam, "saddr"), addrs(&[*from])),
                        eq(payload(fam, "daddr"), addrs(&[*to])),
                        counter(),
                        Statement::Masquerade(None),
                    ],
                )
            }
        };
        batch.add(NfListObject::Rule(schema::Rule {
            family: NfFamily::INet,
            table: TABLE_NAME.into(),
            chain: chain.into(),
            expr: expr.into(),
            comment: Some(r.comment().into()),
            ..schema::Rule::default()
        }));
    }
    batch.to_nftables()
}

/// The typed nft JSON that deletes the table (if it exists).
pub fn delete() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: TABLE_NAME.into(),
        handle: None,
    }
}

fn chain(name: &str, ty: NfChainType, hook: NfHook, prio: i32) -> schema::Chain<'static> {
    schema::Chain {
        family: NfFamily::INet,
        table: TABLE_NAME.into(),
        name: name.to_owned().into(),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..schema::Chain::default()
    }
}

/// Reads the `weft:` rule comments out of `nft -j list table inet weft`
/// output. Bounded: at most 4096 rules are read.
pub fn parse_listing(json: &str) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("nft JSON output: {e}"))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or("nft JSON output has no \"nftables\" array")?;
    Ok(items
        .iter()
        .take(4096)
        .filter_map(|i| i.get("rule"))
        .filter_map(|r| r.get("comment").and_then(|c| c.as_str()))
        .filter(|c| c.starts_with("weft:"))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn rules_cover_every_overlay_and_subnet_pair() {
        let spec = FirewallSpec {
            overlay: [net("100.64.0.0/24"), net("fd7a::/48")].into(),
            masquerade: [net("10.1.0.0/24")].into(),
            isolate: false,
        };
        let rules: Vec<String> = spec.rules().iter().map(NftRule::comment).collect();
        assert_eq!(
            rules,
            ["weft:isolate", "weft:masq 100.64.0.0/24 10.1.0.0/24"]
        );
        assert!(spec.forwarding());
        assert!(FirewallSpec::default().rules().is_empty());
        let json = serde_json::to_string(&render(&spec.rules())).unwrap();
        assert!(json.contains(
            r#"{"rule":{"family":"inet","table":"weft","chain":"postrouting","expr":[{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"100.64.0.0","len":24}},"op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"10.1.0.0","len":24}},"op":"=="}},{"counter":null},{"masquerade":null}],"comment":"weft:masq 100.64.0.0/24 10.1.0.0/24"}}"#
        ), "{json}");
        assert!(json.starts_with(
            r#"{"nftables":[{"add":{"table":{"family":"inet","name":"weft"}}},{"delete":{"table":{"family":"inet","name":"weft"}}}"#
        ), "{json}");
        assert!(
            json.contains(r#""type":"nat","hook":"postrouting","prio":100"#),
            "{json}"
        );
        // Isolation alone needs no NAT chain (which would turn on connection
        // tracking for every packet of the host).
        let isolate_only = FirewallSpec {
            isolate: true,
            ..FirewallSpec::default()
        };
        let json = serde_json::to_string(&render(&isolate_only.rules())).unwrap();
        assert!(json.contains(r#""comment":"weft:isolate""#), "{json}");
        assert!(json.contains(r#""right":"weft*""#), "{json}");
        assert!(!json.contains("postrouting"), "{json}");
    }

    #[test]
    fn listing_yields_weft_comments_only() {
        let json = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"weft"}},
            {"rule":{"chain":"forward","comment":"weft:isolate"}},
            {"rule":{"chain":"postrouting","comment":"weft:masq 100.64.0.0/24 10.1.0.0/24"}},
            {"rule":{"chain":"postrouting","comment":"someone else"}},
            {"rule":{"chain":"postrouting"}}]}"#;
        let got = parse_listing(json).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.contains("weft:isolate"));
        assert!(parse_listing("not json").is_err());
    }
}
