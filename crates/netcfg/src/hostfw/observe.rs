//! Reading the host firewall's table back from `nft -j list table inet
//! weft_host`: chain policies, the `weft:` comments of its rules per chain, and
//! the contents of its domain sets. The planner compares that with what the
//! desired firewall renders to ([`ObservedHostFirewall::expected`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfChainPolicy;

use super::HostFirewall;
use super::render::GUARD_PREFIX;

/// Most rules and set elements read from a listing.
const MAX_ITEMS: usize = 1 << 16;

/// The table `inet weft_host` as observed (or as a desired firewall should
/// look: [`Self::expected`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedHostFirewall {
    /// Chain name → whether its policy drops.
    pub policies: BTreeMap<String, bool>,
    /// `(chain, comment)` of every rule; a rule without a `weft:` comment
    /// (someone else's, added by hand) as `(chain, "")`, which no rendering
    /// has, so the planner replaces the table: it holds only weft's rules.
    pub rules: BTreeSet<(String, String)>,
    /// Domain sets (every named set except expiry guards) → their addresses.
    pub sets: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl ObservedHostFirewall {
    /// What observation finds once `fw` is applied at `now_ms`.
    pub fn expected(fw: &HostFirewall, now_ms: u64) -> Self {
        super::render::expected(fw, now_ms)
    }
}

/// Reads `nft -j list table inet weft_host` output.
pub fn parse_listing(json: &str) -> Result<ObservedHostFirewall, String> {
    let listing: Nftables<'_> =
        serde_json::from_str(json).map_err(|e| format!("nft JSON output: {e}"))?;
    let mut out = ObservedHostFirewall::default();
    let mut items = 0usize;
    for object in listing.objects.iter() {
        items += 1;
        if items > MAX_ITEMS {
            return Err(format!("nft listing has more than {MAX_ITEMS} objects"));
        }
        let NfObject::ListObject(object) = object else {
            continue;
        };
        match object {
            NfListObject::Chain(c) => {
                let drop = c.policy == Some(NfChainPolicy::Drop);
                out.policies.insert(c.name.to_string(), drop);
            }
            NfListObject::Rule(r) => {
                let comment = r.comment.as_deref().filter(|c| c.starts_with("weft:"));
                out.rules
                    .insert((r.chain.to_string(), comment.unwrap_or_default().to_owned()));
            }
            NfListObject::Set(s) if !s.name.starts_with(GUARD_PREFIX) => {
                let mut addrs = BTreeSet::new();
                for e in s.elem.iter().flat_map(|e| e.iter()).take(MAX_ITEMS) {
                    addrs.insert(element_addr(e)?);
                }
                out.sets.insert(s.name.to_string(), addrs);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The address of a set element: `"192.0.2.1"`, or `{"elem": {"val": ...}}`.
fn element_addr(e: &Expression<'_>) -> Result<IpAddr, String> {
    match e {
        Expression::String(s) => s
            .parse()
            .map_err(|_| format!("set element {s:?} is not an address")),
        Expression::Named(NamedExpression::Elem(elem)) => element_addr(&elem.val),
        other => Err(format!("unexpected set element {other:?}")),
    }
}
