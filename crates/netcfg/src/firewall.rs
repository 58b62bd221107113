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

/// Family and name of weft's nftables table.
pub const NFT_TABLE: &str = "inet weft";

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

/// The `nft -f` script that replaces the table with `rules` atomically.
pub fn render_script(rules: &BTreeSet<NftRule>) -> String {
    let mut forward = String::new();
    let mut nat = String::new();
    for r in rules {
        match r {
            NftRule::Isolate => forward.push_str(&format!(
                "    iifname \"weft*\" oifname \"weft*\" counter drop comment \"{}\"\n",
                r.comment()
            )),
            NftRule::Masquerade { from, to } => {
                let fam = if to.addr().is_ipv4() { "ip" } else { "ip6" };
                nat.push_str(&format!(
                    "    {fam} saddr {from} {fam} daddr {to} counter masquerade comment \"{}\"\n",
                    r.comment()
                ));
            }
        }
    }
    // The NAT chain only when something is masqueraded: any chain of type nat
    // makes the kernel track connections for every packet of the host (or
    // network namespace), which an isolation-only table must not cost.
    let postrouting = if nat.is_empty() {
        String::new()
    } else {
        format!(
            "\x20 chain postrouting {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             {nat}\
             \x20 }}\n"
        )
    };
    format!(
        "table {NFT_TABLE} {{}}\n\
         delete table {NFT_TABLE}\n\
         table {NFT_TABLE} {{\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         {forward}\
         \x20 }}\n\
         {postrouting}\
         }}\n"
    )
}

/// The `nft -f` script that deletes the table (if it exists).
pub fn delete_script() -> String {
    format!("table {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n")
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
        let script = render_script(&spec.rules());
        assert!(script.contains(
            "ip saddr 100.64.0.0/24 ip daddr 10.1.0.0/24 counter masquerade comment \"weft:masq 100.64.0.0/24 10.1.0.0/24\""
        ));
        assert!(script.starts_with("table inet weft {}\ndelete table inet weft\n"));
        assert!(script.contains("type nat hook postrouting"));
        // Isolation alone needs no NAT chain (which would turn on connection
        // tracking for every packet of the host).
        let isolate_only = FirewallSpec {
            isolate: true,
            ..FirewallSpec::default()
        };
        let script = render_script(&isolate_only.rules());
        assert!(script.contains("comment \"weft:isolate\""), "{script}");
        assert!(!script.contains("postrouting"), "{script}");
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
