//! Policy glue.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use weft_policy::{CompiledPolicy, Membership, NodeFacts, Viewpoint};
use weft_proto::NodeKey;
use weft_proto::api::{PolicyCheckRequest, PolicyCheckResponse, PolicyPairDecision};

use crate::error::ApiError;
use crate::policy::{self, InventoryNode, PolicyState};
use crate::store::{PolicyRecord, Write};

use super::*;

impl World {
    // ---- policy ----

    /// Every enabled node as the policy sees it.
    pub(crate) fn inventory_nodes(&self) -> Vec<InventoryNode<'_>> {
        self.nodes
            .values()
            .filter(|n| !n.rec.disabled)
            .map(|n| InventoryNode {
                name: &n.rec.name,
                key: n.rec.node_key,
                tags: n.rec.tags.iter().cloned().collect(),
                networks: n
                    .memberships
                    .values()
                    .filter_map(|m| {
                        let net = self.networks.get(&m.network_id)?;
                        let mut addrs = vec![std::net::IpAddr::V4(m.ipv4)];
                        addrs.extend(m.ipv6.map(std::net::IpAddr::V6));
                        Some((net.rec.name.clone(), addrs))
                    })
                    .collect(),
                routed_subnets: self.routed_subnets(n.rec.id),
            })
            .collect()
    }

    /// How the policy sees an (enabled) node.
    pub(super) fn node_facts(&self, n: &NodeState) -> NodeFacts {
        NodeFacts {
            name: n.rec.name.clone(),
            tags: n.rec.tags.iter().cloned().collect(),
            networks: n
                .memberships
                .values()
                .filter_map(|m| {
                    let net = self.networks.get(&m.network_id)?;
                    let mut addrs = vec![std::net::IpAddr::V4(m.ipv4)];
                    addrs.extend(m.ipv6.map(std::net::IpAddr::V6));
                    Some(Membership {
                        network: net.rec.name.clone(),
                        addrs,
                    })
                })
                .collect(),
            routed_subnets: self.routed_subnets(n.rec.id),
        }
    }

    /// Brings the compiled policies up to date with the batch: everything after
    /// a policy edit, else only the changed nodes and those their change
    /// affects. Returns the nodes whose compiled policy changed.
    pub(super) fn recompile(&mut self, touched: &Touched) -> BTreeSet<NodeId> {
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
        self.policy_before = flushed.transition;
        flushed
            .changed
            .iter()
            .filter_map(|k| self.node_by_key.get(k).copied())
            .collect()
    }

    /// The compiled policy of an enabled node.
    pub fn node_policy(&self, id: NodeId) -> Option<&Arc<CompiledPolicy>> {
        self.live.compiled(&self.nodes.get(&id)?.rec.node_key)
    }

    /// Whether nodes `a` and `b` may see each other now.
    pub fn is_visible(&self, a: &NodeKey, b: &NodeKey) -> bool {
        self.live.is_visible(a, b)
    }

    /// Node `k` as visibility sees it now, and before the last batch.
    pub fn viewpoints<'a>(
        &'a self,
        k: &'a NodeKey,
    ) -> (
        Option<Viewpoint<'a, NodeKey>>,
        Option<Viewpoint<'a, NodeKey>>,
    ) {
        (
            self.live.viewpoint(k),
            self.policy_before.viewpoint_before(&self.live, k),
        )
    }

    /// The nodes whose visibility to others the last batch may have changed
    /// (`None`: anyone's, the policy changed).
    pub fn visibility_changed(&self) -> Option<BTreeSet<NodeKey>> {
        self.policy_before
            .changed_nodes()
            .map(|i| i.copied().collect())
    }

    /// Decides `req` against the policy in force and the current nodes.
    pub fn check_policy(&self, req: &PolicyCheckRequest) -> Result<PolicyCheckResponse, ApiError> {
        let sel = |what: &str, s: &str| {
            weft_policy::Selector::parse_or_node(s)
                .map_err(|e| ApiError::invalid("invalid_selector", format!("{what}: {e}")))
        };
        let from = sel("from", &req.from)?;
        let to = sel("to", &req.to)?;
        let proto = match req.proto.as_deref() {
            None => weft_policy::Proto::Any,
            Some(p) => p
                .parse()
                .map_err(|e| ApiError::invalid("invalid_proto", format!("proto: {e}")))?,
        };
        // `any` asks about every protocol: tcp and udp at the port, and icmp.
        let services = weft_policy::Service::for_check(proto, req.port)
            .map_err(|e| ApiError::invalid("invalid_service", e.to_string()))?;
        let inv = policy::inventory(&self.inventory_nodes());
        let reports: Vec<_> = services
            .iter()
            .map(|s| (s, self.policy.parsed.check(&inv, &from, &to, *s)))
            .collect();
        let several = reports.len() > 1;
        let pairs = reports
            .iter()
            .flat_map(|(s, r)| r.pairs.iter().map(move |p| (s, p)))
            .map(|(s, p)| PolicyPairDecision {
                from_node: p.from_node.clone(),
                from_addr: p.from_addr,
                to_node: p.to_node.clone(),
                to_addr: p.to_addr,
                verdict: if p.verdict.is_allow() {
                    "allow"
                } else {
                    "deny"
                }
                .into(),
                rule: p.rule.as_ref().and_then(|r| r.name.clone()),
                rule_number: p.rule.as_ref().map(|r| r.id.0 + 1),
                line: p.rule.as_ref().map(|r| r.line),
                explanation: if several {
                    format!("{s}: {p}")
                } else {
                    p.to_string()
                },
            })
            .collect();
        Ok(PolicyCheckResponse {
            version: self.policy.rec.version,
            allowed: reports.iter().all(|(_, r)| r.all_allowed()),
            pairs,
            representative: reports.iter().any(|(_, r)| r.representative),
            truncated: reports.iter().any(|(_, r)| r.truncated),
        })
    }

    pub(super) fn set_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        expect: Option<u64>,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
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
        let inv = policy::inventory(&self.inventory_nodes());
        let parsed = policy::validate(&text, &inv)?;
        if text == self.policy.rec.text {
            return Ok(Output::Policy(self.policy.doc()));
        }
        self.put_policy(batch, actor, text, parsed, "set", now_ms);
        Ok(Output::Policy(self.policy.doc()))
    }

    pub(super) fn put_policy(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        text: String,
        parsed: weft_policy::Policy,
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
