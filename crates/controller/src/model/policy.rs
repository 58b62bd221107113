//! The access policy: one versioned document, validated on every change,
//! compiled per node after every batch that changes a policy input.
//!
//! [`World`] holds the [`PolicyState`] in force and a
//! [`weft_policy::LivePolicy`] that keeps every enabled node's compiled
//! policy up to date incrementally (a membership change recompiles only the
//! nodes it affects; a policy edit recompiles everyone). How the policy sees a
//! node ([`NodeFacts`]) is built in one place, [`World::node_facts`], for the
//! live compile, for `[[test]]` blocks and for `policy check`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use weft_policy::{
    CompiledPolicy, Inventory, Membership, NodeFacts, Policy, Rule, Transition, Viewpoint,
    render_rule,
};
use weft_proto::NodeKey;

use super::{Actor, Batch, NodeId, NodeState, Touched, World};
use crate::error::ApiError;
use crate::store::{PolicyRecord, Write};

/// Author of generated policy text.
const SYSTEM: &str = "system";

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
}

/// Parses and validates policy text for `PUT /v1/admin/policy`: parse errors
/// (with line and column, and the offending line quoted) are 400; failing
/// `[[test]]` blocks against `inventory` are 422.
fn validate(text: &str, inventory: &Inventory) -> Result<Policy, ApiError> {
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

/// Admin: replace the policy text (validated against the current nodes),
/// optionally only if the current version is `expect_version`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetPolicy {
    /// The new text.
    pub text: String,
    /// Refuse unless the policy is at this version.
    pub expect_version: Option<u64>,
}

operation!(SetPolicy => PolicyRecord, |op, w, batch, actor, now_ms| {
    w.set_policy(batch, actor, op.text, op.expect_version, now_ms)
});

impl World {
    /// How the policy sees a node: the one builder of its facts.
    pub(super) fn node_facts(&self, n: &NodeState) -> NodeFacts {
        NodeFacts {
            services: self.service_facts(n),
            ssh_port: self.ssh_port(n.rec.id),
            name: n.rec.name.clone(),
            tags: n.rec.tags.iter().cloned().collect(),
            networks: n
                .memberships
                .values()
                .filter_map(|m| {
                    let net = self.networks.get(&m.network_id)?;
                    let mut addrs = vec![IpAddr::V4(m.ipv4)];
                    addrs.extend(m.ipv6.map(IpAddr::V6));
                    Some(Membership {
                        network: net.rec.name.clone(),
                        addrs,
                    })
                })
                .collect(),
            routed_subnets: self.routed_subnets(n.rec.id),
        }
    }

    /// Every enabled node as the policy sees it (names are unique on the
    /// controller).
    pub fn inventory(&self) -> Inventory {
        let facts = self
            .nodes
            .values()
            .filter(|n| !n.rec.disabled)
            .map(|n| self.node_facts(n))
            .collect();
        match Inventory::new(facts) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "node names are not unique; compiling against no nodes");
                Inventory::default()
            }
        }
    }

    /// Brings the compiled policies up to date with the batch: everything after
    /// a policy edit, else only the changed nodes and those their change
    /// affects. Returns the nodes whose compiled policy changed, and
    /// visibility before.
    pub(super) fn recompile(
        &mut self,
        touched: &Touched,
    ) -> (BTreeSet<NodeId>, Transition<NodeKey>) {
        for key in &touched.policy_nodes {
            match self.find_node_by_key(key).filter(|n| !n.rec.disabled) {
                Some(n) => {
                    let f = self.node_facts(n);
                    self.live.upsert(*key, f);
                }
                None => self.live.remove(key),
            }
        }
        // (Also when the policy changed in a batch that was never closed.)
        let flushed = if touched.recompile || self.live.policy() != &self.policy.parsed {
            // Recompiles everyone (with the changes above); the transition still
            // knows the state before the batch.
            self.live.set_policy(self.policy.parsed.clone())
        } else {
            self.live.flush()
        };
        let changed = flushed
            .changed
            .iter()
            .filter_map(|k| self.nodes.id_by_key(k))
            .collect();
        (changed, flushed.transition)
    }

    /// The compiled policy of an enabled node.
    pub fn node_policy(&self, id: NodeId) -> Option<&Arc<CompiledPolicy>> {
        self.live.compiled(&self.nodes.get(&id)?.rec.node_key)
    }

    /// Whether nodes `a` and `b` may see each other now.
    pub fn is_visible(&self, a: &NodeKey, b: &NodeKey) -> bool {
        self.live.is_visible(a, b)
    }

    /// Node `k` as visibility sees it now (before a batch:
    /// [`Outcome::viewpoints`](super::Outcome::viewpoints)).
    pub fn viewpoint<'a>(&'a self, k: &'a NodeKey) -> Option<Viewpoint<'a, NodeKey>> {
        self.live.viewpoint(k)
    }

    fn set_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        expect: Option<u64>,
        now_ms: u64,
    ) -> Result<PolicyRecord, ApiError> {
        if let Some(v) = expect
            && v != self.policy.rec.version
        {
            return Err(ApiError::conflict(
                "policy_version_mismatch",
                format!(
                    "the policy is at version {}, not {v}; fetch it again",
                    self.policy.rec.version
                ),
            ));
        }
        let parsed = validate(&text, &self.inventory())?;
        if text != self.policy.rec.text {
            self.put_policy(batch, actor, text, parsed, "set", now_ms);
        }
        Ok(self.policy.rec.clone())
    }

    pub(super) fn put_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        parsed: Policy,
        reason: &str,
        now_ms: u64,
    ) {
        let from = self.policy.rec.version;
        let rec = PolicyRecord {
            version: from + 1,
            text,
            author: actor.label(),
            at_ms: now_ms,
        };
        batch.writes.push(Write::PutPolicy(rec.clone()));
        let rules: Vec<String> = parsed
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("#{}", i + 1)))
            .collect();
        let detail = json!({"from_version": from, "to_version": rec.version, "reason": reason, "rules": rules, "bytes": rec.text.len()});
        self.policy = PolicyState { rec, parsed };
        batch.touched.recompile = true;
        self.audit(
            batch,
            actor,
            "policy.update",
            "policy".into(),
            detail,
            now_ms,
        );
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
        let inv = Inventory::default();
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
