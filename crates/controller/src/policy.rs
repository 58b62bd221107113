//! The controller's access policy: one versioned document, validated on every
//! change, compiled per node after every batch that changes a policy input.
//!
//! Pure (no I/O): [`crate::model::World`] holds a [`PolicyState`] and a
//! [`weft_policy::LivePolicy`] that keeps every node's compiled policy up to
//! date incrementally (a membership change recompiles only the nodes it
//! affects; a policy edit recompiles everyone); the netmap compiler reads each
//! node's compiled policy and pairwise visibility from the world.

use std::net::IpAddr;

use weft_policy::{Inventory, Membership, NodeFacts, Policy, Rule, render_rule};
use weft_proto::NodeKey;
use weft_proto::api::PolicyDoc;

use crate::error::ApiError;
use crate::store::PolicyRecord;

/// Author of generated policy text.
pub const SYSTEM: &str = "system";

/// The head of a generated policy.
const HEADER: &str = "\
# weft access policy (weft-policy TOML). Default deny: only what a rule allows passes.
# Each network starts with a rule letting its members reach each other; edit or
# remove it (removing it closes the network).
";

/// The policy in force.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// Its version and text (version 0: generated, never stored).
    pub rec: PolicyRecord,
    /// Parsed.
    pub parsed: Policy,
}

impl Default for PolicyState {
    fn default() -> Self {
        PolicyState::generated(&[])
    }
}

impl PolicyState {
    /// The policy generated from the networks: each one's default rule.
    pub fn generated(networks: &[&str]) -> PolicyState {
        let mut text = HEADER.to_owned();
        for n in networks {
            text.push('\n');
            text.push_str(&render_rule(&Rule::network_members(n)));
        }
        let parsed = weft_policy::parse(&text).unwrap_or_default();
        PolicyState {
            rec: PolicyRecord {
                version: 0,
                text,
                author: SYSTEM.into(),
                at_ms: 0,
            },
            parsed,
        }
    }

    /// A stored version (its text was validated when it was set; if it no longer
    /// parses, fail closed: no rule, everything denied).
    pub fn from_record(rec: PolicyRecord) -> PolicyState {
        let parsed = match weft_policy::parse(&rec.text) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(version = rec.version, error = %e, "the stored policy does not parse; denying everything");
                Policy::default()
            }
        };
        PolicyState { rec, parsed }
    }

    /// The text with a new network's default rule appended, and that rule parsed;
    /// None if the result would not parse (then nothing is appended).
    pub fn with_network(&self, network: &str) -> Option<(String, Policy)> {
        let mut rule = Rule::network_members(network);
        for _ in 0..2 {
            let mut text = self.rec.text.clone();
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push('\n');
            text.push_str(&render_rule(&rule));
            if let Ok(p) = weft_policy::parse(&text) {
                return Some((text, p));
            }
            // A rule with that name exists already: append it unnamed.
            rule.name = None;
        }
        None
    }

    /// The API view.
    pub fn doc(&self) -> PolicyDoc {
        PolicyDoc {
            version: self.rec.version,
            text: self.rec.text.clone(),
            author: self.rec.author.clone(),
            at_ms: self.rec.at_ms,
        }
    }
}

/// Parses and validates policy text for `PUT /v1/admin/policy`: parse errors
/// (with line and column, and the offending line quoted) are 400; failing
/// `[[test]]` blocks against `inventory` are 422.
pub fn validate(text: &str, inventory: &Inventory) -> Result<Policy, ApiError> {
    if text.len() > weft_policy::MAX_POLICY_BYTES {
        return Err(ApiError::invalid(
            "policy_invalid",
            format!(
                "policy is {} bytes; the limit is {}",
                text.len(),
                weft_policy::MAX_POLICY_BYTES
            ),
        ));
    }
    let policy = weft_policy::parse(text)
        .map_err(|e| ApiError::invalid("policy_invalid", e.render("policy", text)))?;
    let failures = policy.run_tests(inventory);
    if !failures.is_empty() {
        let lines: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        return Err(ApiError::Unprocessable {
            code: "policy_tests_failed",
            message: format!(
                "{} policy test(s) failed:\n{}",
                failures.len(),
                lines.join("\n")
            ),
        });
    }
    Ok(policy)
}

/// One enabled node, as policy sees it.
pub struct InventoryNode<'a> {
    /// Name.
    pub name: &'a str,
    /// Key.
    pub key: NodeKey,
    /// Tags.
    pub tags: Vec<String>,
    /// Memberships: network name and addresses.
    pub networks: Vec<(String, Vec<IpAddr>)>,
    /// Approved subnet routes it is a gateway for (`subnet:` selectors).
    pub routed_subnets: Vec<weft_policy::IpNet>,
}

/// Builds the inventory (names are unique on the controller).
pub fn inventory(nodes: &[InventoryNode<'_>]) -> Inventory {
    let facts = nodes
        .iter()
        .map(|n| NodeFacts {
            name: n.name.to_owned(),
            tags: n.tags.clone(),
            networks: n
                .networks
                .iter()
                .map(|(net, addrs)| Membership {
                    network: net.clone(),
                    addrs: addrs.clone(),
                })
                .collect(),
            routed_subnets: n.routed_subnets.clone(),
        })
        .collect();
    match Inventory::new(facts) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "node names are not unique; compiling against no nodes");
            Inventory::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policy_has_one_visible_rule_per_network() {
        let p = PolicyState::generated(&["prod", "lab"]);
        assert_eq!(p.rec.version, 0);
        assert_eq!(p.parsed.rules.len(), 2);
        assert!(
            p.rec
                .text
                .contains("name = \"members of prod may reach each other\"")
        );
        let (text, parsed) = p.with_network("dev").unwrap();
        assert_eq!(parsed.rules.len(), 3);
        assert!(text.starts_with(&p.rec.text));
        // The same network again: the name is taken, the rule goes in unnamed.
        let again = PolicyState {
            rec: PolicyRecord {
                text,
                ..p.rec.clone()
            },
            parsed,
        };
        let (_, parsed) = again.with_network("dev").unwrap();
        assert_eq!(parsed.rules.len(), 4);
        assert_eq!(parsed.rules[3].name, None);
    }

    #[test]
    fn validate_reports_lines_and_failing_tests() {
        let inv = inventory(&[]);
        let e = validate("[[rule]]\naction = \"allow\"\nfrom = 3\n", &inv).unwrap_err();
        assert_eq!(e.code(), "policy_invalid");
        assert!(e.to_string().contains("3:"), "{e}");
        // The offending line with a caret, not the whole policy.
        let text = "# a long policy\n[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tpc\"\n";
        let msg = validate(text, &inv).unwrap_err().to_string();
        assert!(msg.contains("policy:6:9: unknown proto"), "{msg}");
        assert!(msg.contains("6 | proto = \"tpc\"\n  |         ^"), "{msg}");
        assert!(!msg.contains("# a long policy"), "{msg}");
        let text = "[[rule]]\naction = \"allow\"\nfrom = \"tag:web\"\nto = \"tag:db\"\n\n[[test]]\nfrom = \"tag:db\"\nto = \"tag:web\"\nproto = \"tcp\"\nport = 22\nexpect = \"allow\"\n";
        let e = validate(text, &inv).unwrap_err();
        assert_eq!(e.code(), "policy_tests_failed");
        assert_eq!(e.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().contains("6:1: test"), "{e}");
    }
}
