//! The host firewall: one versioned declared file (weft-policy's host
//! firewall TOML, [`weft_policy::hostfw`]) and dynamic rules on single nodes,
//! compiled per node into the [`HostFirewallSpec`] its map carries.
//!
//! Every node's spec is kept compiled ([`World::node_host_firewall`]). An
//! operation marks the nodes it may have changed (`Touched::hostfw`: every
//! node for a new file, one node for a dynamic rule); so does any change of a
//! node's name, tags or existence. When the batch closes,
//! [`World::refresh_host_firewalls`] recompiles exactly those nodes and keeps
//! in `Touched::hostfw` only the ones whose spec really changed: the netmap
//! compiler sends each of them one `MapChange::HostFirewall`, and nobody else
//! hears of it. A changed spec takes the batch's map version as its version;
//! an unchanged one keeps its own.
//!
//! A dynamic rule with an expiry is removed by [`SweepFirewall`] (the
//! controller's sweep) once it is due; the agent closes it at that time by
//! itself anyway, controller or not.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use weft_policy::hostfw::{HostFirewallFile, compile_firewall, parse_firewall};
use weft_proto::hostfw::{
    AllowRuleRequest, FirewallDoc, FirewallNode, FirewallRuleInfo, HostFirewallSpec, HostRule,
    MAX_RULES, RuleAction,
};

use super::{Actor, Batch, NodeId, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::hostfw::{FirewallFileRecord, FirewallRuleRecord, HostFwRows, HostFwWrite};

/// Author of version 0 (no file was ever set).
const SYSTEM: &str = "system";

/// Longest lifetime of a dynamic rule: a year.
const MAX_RULE_TTL_SECS: u64 = 365 * 24 * 3600;

/// The host firewall in memory.
#[derive(Debug)]
pub(super) struct HostFw {
    /// The file in force (version 0, empty: none).
    file: FirewallFileRecord,
    /// It, parsed.
    parsed: HostFirewallFile,
    /// Dynamic rules by id.
    rules: BTreeMap<u64, FirewallRuleRecord>,
    /// The next dynamic rule id.
    next_rule: u64,
    /// Every node's compiled spec (nodes without one are absent).
    specs: BTreeMap<NodeId, HostFirewallSpec>,
}

impl Default for HostFw {
    fn default() -> Self {
        HostFw {
            file: FirewallFileRecord {
                version: 0,
                text: String::new(),
                author: SYSTEM.into(),
                at_ms: 0,
            },
            parsed: HostFirewallFile::default(),
            rules: BTreeMap::new(),
            next_rule: 1,
            specs: BTreeMap::new(),
        }
    }
}

impl HostFw {
    /// From the stored rows (specs are compiled by [`World::compile_all_host_firewalls`]).
    pub(super) fn load(rows: HostFwRows) -> HostFw {
        let mut fw = HostFw::default();
        if let Some(file) = rows.file {
            fw.parsed = match parse_firewall(&file.text) {
                Ok(p) => p,
                Err(e) => {
                    // Validated when set; if this build reads it differently,
                    // no node gets a host firewall rather than a wrong one.
                    tracing::error!(version = file.version, error = %e, "the stored host firewall file does not parse; no node has a host firewall until it is set again");
                    HostFirewallFile::default()
                }
            };
            fw.file = file;
        }
        fw.next_rule = rows.rules.iter().map(|r| r.id + 1).max().unwrap_or(1);
        fw.rules = rows.rules.into_iter().map(|r| (r.id, r)).collect();
        fw
    }
}

/// `PUT /v1/admin/firewall`: replace the declared file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetFirewall {
    /// The new text.
    pub text: String,
    /// Refuse unless the file is at this version.
    pub expect_version: Option<u64>,
}

/// `POST /v1/admin/firewall/rules`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AllowRule(pub AllowRuleRequest);

/// `DELETE /v1/admin/firewall/rules/{id}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RevokeRule {
    /// `dyn:<n>` or `<n>`.
    pub id: String,
}

/// Removes the dynamic rules whose expiry has passed; returns their ids.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SweepFirewall;

operation!(SetFirewall => FirewallDoc, |op, w, batch, actor, now_ms| {
    w.set_firewall(batch, actor, op, now_ms)
});

operation!(AllowRule => FirewallRuleInfo, |op, w, batch, actor, now_ms| {
    w.allow_rule(batch, actor, op.0, now_ms)
});

operation!(RevokeRule => FirewallRuleInfo, |op, w, batch, actor, now_ms| {
    w.revoke_rule(batch, actor, &op.id, now_ms)
});

operation!(SweepFirewall => Vec<String>, |_op, w, batch, actor, now_ms| {
    Ok(w.sweep_firewall(batch, actor, now_ms))
});

/// Parses a file for `PUT` and `check`: 400 `firewall_invalid` with every
/// mistake rendered (line, column, the line itself).
fn validate_firewall(text: &str) -> Result<HostFirewallFile, ApiError> {
    parse_firewall(text)
        .map_err(|e| ApiError::invalid("firewall_invalid", e.render("firewall", text)))
}

fn bad_rule(message: impl Into<String>) -> ApiError {
    ApiError::invalid("invalid_rule", message)
}

impl World {
    /// Node `id`'s host firewall (`None`: it has none).
    pub fn node_host_firewall(&self, id: NodeId) -> Option<&HostFirewallSpec> {
        self.hostfw.specs.get(&id)
    }

    /// The declared file in force, with the nodes it gives a firewall.
    pub fn firewall_doc(&self) -> FirewallDoc {
        let f = &self.hostfw.file;
        FirewallDoc {
            version: f.version,
            text: f.text.clone(),
            author: f.author.clone(),
            at_ms: f.at_ms,
            nodes: self.firewall_nodes(&self.hostfw.parsed, |id| {
                self.hostfw
                    .specs
                    .get(&id)
                    .map(|s| (s.rules.len(), s.version))
            }),
        }
    }

    /// What `text` would do, without storing it: the nodes it would give a
    /// firewall (versions 0: not compiled).
    pub fn check_firewall(&self, text: &str) -> Result<FirewallDoc, ApiError> {
        let parsed = validate_firewall(text)?;
        let specs = self.compile_with(&parsed, 0)?;
        Ok(FirewallDoc {
            version: self.hostfw.file.version,
            text: text.to_owned(),
            author: String::new(),
            at_ms: 0,
            nodes: self.firewall_nodes(&parsed, |id| specs.get(&id).map(|s| (s.rules.len(), 0))),
        })
    }

    fn firewall_nodes(
        &self,
        file: &HostFirewallFile,
        spec: impl Fn(NodeId) -> Option<(usize, u64)>,
    ) -> Vec<FirewallNode> {
        let mut out: Vec<FirewallNode> = self
            .node_ids()
            .filter_map(|id| {
                let n = self.node(id)?;
                let tags: Vec<String> = n.rec.tags.iter().cloned().collect();
                let p = file.profile_for(&n.rec.name, &tags)?;
                let (rules, version) = spec(id)?;
                Some(FirewallNode {
                    node: n.rec.name.clone(),
                    profile_line: p.line,
                    rules,
                    version,
                })
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// The dynamic rules (`node`: only that node's), by id.
    pub fn firewall_rules(&self, node: Option<&str>) -> Result<Vec<FirewallRuleInfo>, ApiError> {
        let only = node.map(|sel| self.node_id_for(sel)).transpose()?;
        Ok(self
            .hostfw
            .rules
            .values()
            .filter(|r| only.is_none_or(|id| r.node_id == id))
            .map(|r| self.rule_info(r))
            .collect())
    }

    fn rule_info(&self, r: &FirewallRuleRecord) -> FirewallRuleInfo {
        FirewallRuleInfo {
            id: r.rule.id.clone(),
            node: self
                .node(r.node_id)
                .map_or_else(|| format!("#{}", r.node_id), |n| n.rec.name.clone()),
            rule: r.rule.clone(),
            created_by: r.created_by.clone(),
            created_at_ms: r.created_at_ms,
        }
    }

    /// Node `id`'s dynamic rules, by id.
    fn dynamic_rules(&self, id: NodeId) -> Vec<HostRule> {
        self.hostfw
            .rules
            .values()
            .filter(|r| r.node_id == id)
            .map(|r| r.rule.clone())
            .collect()
    }

    /// Node `id`'s spec compiled from `file` (its version is `version`).
    fn compile_node_firewall(
        &self,
        file: &HostFirewallFile,
        id: NodeId,
        version: u64,
    ) -> Option<HostFirewallSpec> {
        let n = self.node(id)?;
        let tags: Vec<String> = n.rec.tags.iter().cloned().collect();
        compile_firewall(file, &n.rec.name, &tags, &self.dynamic_rules(id), version)
    }

    /// Every node's spec from `file`, each checked against the bounds (the
    /// file's rules plus the node's dynamic rules).
    fn compile_with(
        &self,
        file: &HostFirewallFile,
        version: u64,
    ) -> Result<BTreeMap<NodeId, HostFirewallSpec>, ApiError> {
        let mut out = BTreeMap::new();
        for id in self.node_ids() {
            if let Some(spec) = self.compile_node_firewall(file, id, version) {
                if let Err(e) = spec.check() {
                    let name = self.node(id).map_or("?", |n| n.rec.name.as_str());
                    return Err(ApiError::invalid(
                        "firewall_invalid",
                        format!("node {name}: {e} (its declared and dynamic rules together)"),
                    ));
                }
                out.insert(id, spec);
            }
        }
        Ok(out)
    }

    /// Compiles every node's spec at load, at the current map version.
    pub(super) fn compile_all_host_firewalls(&mut self) {
        let ids: Vec<NodeId> = self.node_ids().collect();
        let mut specs = BTreeMap::new();
        for id in ids {
            if let Some(s) = self.compile_node_firewall(&self.hostfw.parsed, id, self.version) {
                specs.insert(id, s);
            }
        }
        self.hostfw.specs = specs;
    }

    /// Recompiles the nodes a closing batch may have changed (marked in
    /// `touched.hostfw`, plus nodes whose name, tags or existence changed) and
    /// leaves in `touched.hostfw` only those whose spec changed.
    pub(super) fn refresh_host_firewalls(&mut self, touched: &mut super::Touched) {
        let mut candidates: BTreeSet<NodeId> = std::mem::take(&mut touched.hostfw);
        candidates.extend(touched.self_changed.iter().copied());
        candidates.extend(
            touched
                .policy_nodes
                .iter()
                .filter_map(|k| self.find_node_by_key(k).map(|n| n.rec.id)),
        );
        // Removed nodes (their removal is a policy input change): their specs
        // and rules go (the store cascades).
        let gone: Vec<NodeId> = if touched.policy_nodes.is_empty() {
            Vec::new()
        } else {
            self.hostfw
                .specs
                .keys()
                .chain(self.hostfw.rules.values().map(|r| &r.node_id))
                .filter(|id| self.node(**id).is_none())
                .copied()
                .collect()
        };
        for id in gone {
            self.hostfw.specs.remove(&id);
            self.hostfw.rules.retain(|_, r| r.node_id != id);
        }
        for id in candidates {
            let new = self.compile_node_firewall(&self.hostfw.parsed, id, self.version);
            let old = self.hostfw.specs.get(&id);
            let same = match (old, &new) {
                (None, None) => true,
                (Some(o), Some(n)) => {
                    HostFirewallSpec {
                        version: o.version,
                        ..n.clone()
                    } == *o
                }
                _ => false,
            };
            if same {
                continue;
            }
            match new {
                Some(s) => self.hostfw.specs.insert(id, s),
                None => self.hostfw.specs.remove(&id),
            };
            touched.hostfw.insert(id);
        }
    }

    fn set_firewall(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: SetFirewall,
        now_ms: u64,
    ) -> Result<FirewallDoc, ApiError> {
        let current = self.hostfw.file.version;
        if let Some(v) = op.expect_version
            && v != current
        {
            return Err(ApiError::conflict(
                "firewall_version_mismatch",
                format!("the host firewall file is at version {current}, not {v}; fetch it again"),
            ));
        }
        let parsed = validate_firewall(&op.text)?;
        let specs = self.compile_with(&parsed, 0)?;
        if op.text == self.hostfw.file.text {
            return Ok(self.firewall_doc());
        }
        let rec = FirewallFileRecord {
            version: current + 1,
            text: op.text,
            author: actor.label(),
            at_ms: now_ms,
        };
        batch
            .writes
            .push(Write::HostFw(HostFwWrite::PutFile(rec.clone())));
        let detail = json!({
            "from_version": current,
            "to_version": rec.version,
            "profiles": parsed.profiles.len(),
            "rules": parsed.profiles.iter().map(|p| p.rules.len()).sum::<usize>(),
            "bytes": rec.text.len(),
        });
        // The specs as they will be once the batch closes (at the next map
        // version; an unchanged one keeps its version).
        let nodes = self.firewall_nodes(&parsed, |id| {
            let new = specs.get(&id)?;
            let version = match self.hostfw.specs.get(&id) {
                Some(old)
                    if HostFirewallSpec {
                        version: old.version,
                        ..new.clone()
                    } == *old =>
                {
                    old.version
                }
                _ => self.version + 1,
            };
            Some((new.rules.len(), version))
        });
        let doc = FirewallDoc {
            version: rec.version,
            text: rec.text.clone(),
            author: rec.author.clone(),
            at_ms: rec.at_ms,
            nodes,
        };
        self.hostfw.file = rec;
        self.hostfw.parsed = parsed;
        batch.touched.hostfw.extend(self.node_ids());
        self.audit(
            batch,
            actor,
            "firewall.set",
            "firewall".into(),
            detail,
            now_ms,
        );
        Ok(doc)
    }

    fn allow_rule(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: AllowRuleRequest,
        now_ms: u64,
    ) -> Result<FirewallRuleInfo, ApiError> {
        let node_id = self.node_id_for(&req.node)?;
        let Some(spec) = self.hostfw.specs.get(&node_id) else {
            return Err(ApiError::conflict(
                "no_host_firewall",
                format!(
                    "node {:?} has no host firewall (no [[firewall]] profile of the file selects it), so it already lets everything in; select it in the file first",
                    req.node
                ),
            ));
        };
        if spec.rules.len() >= MAX_RULES {
            return Err(ApiError::conflict(
                "too_many_rules",
                format!(
                    "node {:?} already has {MAX_RULES} rules, the most a node may have; revoke one first",
                    req.node
                ),
            ));
        }
        let ports = if req.ports.trim().is_empty() {
            Vec::new()
        } else {
            weft_policy::hostfw::parse_ports(&req.ports)
                .map_err(|e| bad_rule(format!("ports: {e}")))?
        };
        let peers = req
            .peers
            .iter()
            .map(|p| weft_policy::hostfw::host_addr(p).map_err(|e| bad_rule(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        weft_policy::hostfw::check_comment(&req.comment).map_err(|e| bad_rule(e.to_string()))?;
        let expires_at_ms = match req.ttl_secs {
            None => None,
            Some(0) => return Err(bad_rule("the rule's lifetime must be at least one second")),
            Some(s) if s > MAX_RULE_TTL_SECS => {
                return Err(bad_rule(format!(
                    "the rule's lifetime is at most {MAX_RULE_TTL_SECS} seconds (a year); leave it out for a rule that stays until revoked"
                )));
            }
            Some(s) => Some(now_ms.saturating_add(s.saturating_mul(1000))),
        };
        let id = self.hostfw.next_rule;
        let rule = HostRule {
            id: format!("dyn:{id}"),
            direction: req.direction,
            action: RuleAction::Accept,
            proto: req.proto,
            ports,
            peers,
            comment: req.comment,
            expires_at_ms,
        };
        rule.check().map_err(|e| bad_rule(e.0))?;
        let rec = FirewallRuleRecord {
            id,
            node_id,
            rule,
            created_by: actor.label(),
            created_at_ms: now_ms,
        };
        self.hostfw.next_rule += 1;
        batch
            .writes
            .push(Write::HostFw(HostFwWrite::PutRule(rec.clone())));
        batch.touched.hostfw.insert(node_id);
        let info = self.rule_info(&rec);
        self.hostfw.rules.insert(id, rec);
        self.audit(
            batch,
            actor,
            "firewall.allow",
            format!("node:{}", info.node),
            rule_detail(&info),
            now_ms,
        );
        Ok(info)
    }

    fn revoke_rule(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: &str,
        now_ms: u64,
    ) -> Result<FirewallRuleInfo, ApiError> {
        let n: Option<u64> = id.strip_prefix("dyn:").unwrap_or(id).parse().ok();
        let Some(rec) = n.and_then(|n| self.hostfw.rules.get(&n)) else {
            return Err(ApiError::not_found(
                "rule_not_found",
                format!("no dynamic firewall rule {id:?} (see weft admin firewall rules)"),
            ));
        };
        let info = self.rule_info(rec);
        self.remove_rule(batch, actor, rec.id, "firewall.revoke", now_ms);
        Ok(info)
    }

    fn remove_rule(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: u64,
        action: &str,
        now_ms: u64,
    ) {
        let Some(rec) = self.hostfw.rules.remove(&id) else {
            return;
        };
        batch
            .writes
            .push(Write::HostFw(HostFwWrite::DeleteRule(id)));
        batch.touched.hostfw.insert(rec.node_id);
        let info = self.rule_info(&rec);
        self.audit(
            batch,
            actor,
            action,
            format!("node:{}", info.node),
            rule_detail(&info),
            now_ms,
        );
    }

    fn sweep_firewall(&mut self, batch: &mut Batch, actor: &Actor, now_ms: u64) -> Vec<String> {
        let due: Vec<u64> = self
            .hostfw
            .rules
            .values()
            .filter(|r| r.rule.expires_at_ms.is_some_and(|t| t <= now_ms))
            .map(|r| r.id)
            .collect();
        for id in &due {
            self.remove_rule(batch, actor, *id, "firewall.expire", now_ms);
        }
        due.into_iter().map(|id| format!("dyn:{id}")).collect()
    }
}

fn rule_detail(info: &FirewallRuleInfo) -> serde_json::Value {
    let r = &info.rule;
    json!({
        "id": info.id,
        "direction": r.direction.to_string(),
        "proto": r.proto.to_string(),
        "ports": r.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "peers": r.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "comment": r.comment,
        "expires_at_ms": r.expires_at_ms,
    })
}

#[cfg(test)]
#[path = "hostfw_tests.rs"]
mod tests;
