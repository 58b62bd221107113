//! Node data and sealed secrets: what an admin pushes to nodes through their
//! maps (see [`weft_proto::data`]).
//!
//! Data entries live per scope (a node, a tag, a network; by id, so renames
//! keep them); a node's map carries them resolved for it ([`World::node_data`]:
//! node > tag > network, and among its tags or networks the name that sorts
//! first). Secrets are per node and opaque here: the admin CLI sealed them to
//! the node's X25519 key, and the controller only checks their size.
//!
//! A set or unset marks exactly the nodes whose resolved entry for that key
//! changed (`Touched::data`); the netmap compiler sends each of them one
//! `MapChange::Data`. A node whose tags change is marked when one of the tags
//! it gained or lost carries data ([`World::data_tags_changed`]); a node that
//! joins or leaves a network gets a fresh snapshot anyway. Setting the value an
//! entry already has changes nothing (no version, no audit entry).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use weft_proto::data::{
    self as proto, DataEntry, DataItem, DataScope, MAX_KEYS_PER_SCOPE, MAX_NODE_BYTES,
    MAX_SCOPE_BYTES, MAX_SECRETS_PER_NODE, SecretEntry, SecretItem,
};

use super::{Actor, Batch, NodeId, World};
use crate::error::ApiError;
use crate::store::data::{DataRecord, DataRows, DataWrite, ScopeRef, SecretRecord};
use crate::store::{MembershipRecord, Write};

/// The data entries and secrets in memory.
#[derive(Debug, Default)]
pub(super) struct Data {
    /// Entries per scope, by key.
    entries: BTreeMap<ScopeRef, BTreeMap<String, DataRecord>>,
    /// Secrets per node, by key.
    secrets: BTreeMap<NodeId, BTreeMap<String, SecretRecord>>,
}

impl Data {
    /// From the stored rows.
    pub(super) fn load(rows: DataRows) -> Data {
        let mut d = Data::default();
        for e in rows.entries {
            d.entries
                .entry(e.scope.clone())
                .or_default()
                .insert(e.key.clone(), e);
        }
        for s in rows.secrets {
            d.secrets
                .entry(s.node_id)
                .or_default()
                .insert(s.key.clone(), s);
        }
        d
    }

    fn get(&self, scope: &ScopeRef, key: &str) -> Option<&DataRecord> {
        self.entries.get(scope).and_then(|m| m.get(key))
    }
}

/// `PUT /v1/admin/data`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetData(pub proto::SetDataRequest);

/// `DELETE /v1/admin/data`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnsetData(pub proto::UnsetDataRequest);

/// `PUT /v1/admin/secrets`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetSecret {
    /// The node (key or name).
    pub node: String,
    /// The key.
    pub key: String,
    /// The sealed box (checked: [`proto::decode_sealed`]).
    pub sealed: Vec<u8>,
}

/// `DELETE /v1/admin/secrets`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnsetSecret(pub proto::UnsetSecretRequest);

/// What a data set or unset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChanged {
    /// The entry as stored now (`None` after an unset).
    pub item: Option<DataItem>,
    /// The nodes whose map changed.
    pub nodes: BTreeSet<NodeId>,
}

operation!(SetData => DataChanged, |op, w, batch, actor, now_ms| {
    w.set_data(batch, actor, op.0, now_ms)
});

operation!(UnsetData => DataChanged, |op, w, batch, actor, now_ms| {
    w.unset_data(batch, actor, op.0, now_ms)
});

operation!(SetSecret => SecretItem, |op, w, batch, actor, now_ms| {
    w.set_secret(batch, actor, op, now_ms)
});

operation!(UnsetSecret => (), |op, w, batch, actor, now_ms| {
    w.unset_secret(batch, actor, op.0, now_ms)
});

fn invalid(e: proto::DataError) -> ApiError {
    let code = match e {
        proto::DataError::Key(_) => "invalid_key",
        proto::DataError::ValueTooLong(_) | proto::DataError::SecretTooLong(_) => "value_too_long",
        proto::DataError::Sealed(_) => "invalid_sealed",
    };
    ApiError::invalid(code, e.to_string())
}

impl World {
    /// The data and secrets resolved for node `id`, sorted by key: for each
    /// key the node's own entry, else its tags' (the tag that sorts first),
    /// else its networks' (the network whose name sorts first).
    pub fn node_data(&self, id: NodeId) -> (Vec<DataEntry>, Vec<SecretEntry>) {
        let resolved = self.resolve(&self.scopes_of(id));
        let data = resolved
            .into_values()
            .map(|r| DataEntry {
                key: r.key.clone(),
                value: r.value.clone(),
                version: r.version,
            })
            .collect();
        let secrets = self
            .data
            .secrets
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(k, s)| SecretEntry {
                key: k.clone(),
                sealed: proto::encode_sealed(&s.sealed),
                version: s.version,
            })
            .collect();
        (data, secrets)
    }

    /// Node `id`'s scopes, in precedence order: itself, its tags (sorted),
    /// its networks (by name).
    fn scopes_of(&self, id: NodeId) -> Vec<ScopeRef> {
        match self.nodes.get(&id) {
            Some(n) => self.scopes(id, &n.rec.tags, n.memberships.keys()),
            None => Vec::new(),
        }
    }

    /// [`World::scopes_of`] for a node with these tags and networks.
    fn scopes<'a>(
        &self,
        id: NodeId,
        tags: &BTreeSet<String>,
        nets: impl Iterator<Item = &'a u64>,
    ) -> Vec<ScopeRef> {
        let mut nets: Vec<(&str, u64)> = nets
            .filter_map(|n| self.networks.get(n).map(|s| (s.rec.name.as_str(), *n)))
            .collect();
        nets.sort_unstable();
        std::iter::once(ScopeRef::Node(id))
            .chain(tags.iter().map(|t| ScopeRef::Tag(t.clone())))
            .chain(nets.into_iter().map(|(_, n)| ScopeRef::Network(n)))
            .collect()
    }

    /// Each key's entry in the first of `scopes` that has it.
    fn resolve(&self, scopes: &[ScopeRef]) -> BTreeMap<&str, &DataRecord> {
        let mut resolved: BTreeMap<&str, &DataRecord> = BTreeMap::new();
        for scope in scopes {
            for (k, r) in self.data.entries.get(scope).into_iter().flatten() {
                resolved.entry(k.as_str()).or_insert(r);
            }
        }
        resolved
    }

    /// Stored data entries, sorted by scope then key (`scope`: only that one).
    pub fn data_items(&self, scope: Option<&ScopeRef>) -> Vec<DataItem> {
        let mut out: Vec<DataItem> = self
            .data
            .entries
            .iter()
            .filter(|(s, _)| scope.is_none_or(|want| *s == want))
            .flat_map(|(_, m)| m.values())
            .filter_map(|r| self.data_item(r))
            .collect();
        out.sort_by(|a, b| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
        out
    }

    /// Stored secrets (never their values), sorted by node name then key
    /// (`node`: only that node's).
    pub fn secret_items(&self, node: Option<NodeId>) -> Vec<SecretItem> {
        let mut out: Vec<SecretItem> = self
            .data
            .secrets
            .iter()
            .filter(|(id, _)| node.is_none_or(|n| **id == n))
            .flat_map(|(_, m)| m.values())
            .filter_map(|s| self.secret_item(s))
            .collect();
        out.sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
        out
    }

    /// Resolves a scope as an admin names it (a node by key or name).
    pub fn scope_ref(&self, scope: &DataScope) -> Result<ScopeRef, ApiError> {
        match scope {
            DataScope::Node(sel) => self.node_id_for(sel).map(ScopeRef::Node),
            DataScope::Tag(t) => {
                crate::validate::tags(std::slice::from_ref(t))?;
                Ok(ScopeRef::Tag(t.clone()))
            }
            DataScope::Network(n) => self
                .network_by_name(n)
                .map(|s| ScopeRef::Network(s.rec.id))
                .ok_or_else(|| {
                    ApiError::not_found("network_not_found", format!("no network named {n:?}"))
                }),
        }
    }

    fn scope_view(&self, scope: &ScopeRef) -> Option<DataScope> {
        Some(match scope {
            ScopeRef::Node(id) => DataScope::Node(self.nodes.get(id)?.rec.name.clone()),
            ScopeRef::Tag(t) => DataScope::Tag(t.clone()),
            ScopeRef::Network(id) => DataScope::Network(self.networks.get(id)?.rec.name.clone()),
        })
    }

    fn data_item(&self, r: &DataRecord) -> Option<DataItem> {
        Some(DataItem {
            scope: self.scope_view(&r.scope)?,
            key: r.key.clone(),
            value: r.value.clone(),
            version: r.version,
            updated_at_ms: r.updated_at_ms,
        })
    }

    fn secret_item(&self, s: &SecretRecord) -> Option<SecretItem> {
        let n = self.nodes.get(&s.node_id)?;
        Some(SecretItem {
            node: n.rec.name.clone(),
            node_key: n.rec.node_key,
            key: s.key.clone(),
            sealed_bytes: s.sealed.len(),
            version: s.version,
            updated_at_ms: s.updated_at_ms,
        })
    }

    /// The enabled nodes a scope reaches.
    fn scope_nodes(&self, scope: &ScopeRef) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| !n.rec.disabled)
            .filter(|n| match scope {
                ScopeRef::Node(id) => n.rec.id == *id,
                ScopeRef::Tag(t) => n.rec.tags.contains(t),
                ScopeRef::Network(net) => n.memberships.contains_key(net),
            })
            .map(|n| n.rec.id)
            .collect()
    }

    /// What `key` resolves to for each node, to compare before and after.
    fn resolved_key(&self, ids: &[NodeId], key: &str) -> Vec<Option<(String, u64)>> {
        ids.iter()
            .map(|id| {
                self.scopes_of(*id)
                    .iter()
                    .find_map(|s| self.data.get(s, key))
                    .map(|r| (r.value.clone(), r.version))
            })
            .collect()
    }

    /// Marks the nodes of `ids` whose resolved `key` differs from `before`.
    fn mark_changed(
        &self,
        batch: &mut Batch,
        ids: &[NodeId],
        key: &str,
        before: &[Option<(String, u64)>],
    ) -> BTreeSet<NodeId> {
        let after = self.resolved_key(ids, key);
        let changed: BTreeSet<NodeId> = ids
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| b != a)
            .map(|(id, _)| *id)
            .collect();
        batch.touched.data.extend(changed.iter().copied());
        changed
    }

    fn set_data(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: proto::SetDataRequest,
        now_ms: u64,
    ) -> Result<DataChanged, ApiError> {
        proto::check_key(&req.key).map_err(invalid)?;
        proto::check_value(&req.value).map_err(invalid)?;
        let scope = self.scope_ref(&req.scope)?;
        let existing = self.data.get(&scope, &req.key);
        if let Some(r) = existing
            && r.value == req.value
        {
            return Ok(DataChanged {
                item: self.data_item(r),
                nodes: BTreeSet::new(),
            });
        }
        if existing.is_none()
            && self.data.entries.get(&scope).map_or(0, BTreeMap::len) >= MAX_KEYS_PER_SCOPE
        {
            return Err(ApiError::conflict(
                "too_many_keys",
                format!(
                    "{} already has {MAX_KEYS_PER_SCOPE} keys, the most one scope may hold; unset one first",
                    req.scope
                ),
            ));
        }
        let previous = existing.cloned();
        let ids = self.scope_nodes(&scope);
        let before = self.resolved_key(&ids, &req.key);
        let rec = DataRecord {
            scope: scope.clone(),
            key: req.key.clone(),
            value: req.value,
            // The version this batch brings the maps to.
            version: self.version + 1,
            updated_at_ms: now_ms,
        };
        self.data
            .entries
            .entry(scope.clone())
            .or_default()
            .insert(rec.key.clone(), rec.clone());
        if let Err(e) = self.check_bytes(&req.scope, &scope, &ids) {
            // Put back what was there: the operation has no effect.
            let m = self.data.entries.entry(scope.clone()).or_default();
            match previous {
                Some(p) => {
                    m.insert(p.key.clone(), p);
                }
                None => {
                    m.remove(&rec.key);
                    if m.is_empty() {
                        self.data.entries.remove(&scope);
                    }
                }
            }
            return Err(e);
        }
        batch.writes.push(Write::Data(DataWrite::Put(rec.clone())));
        let nodes = self.mark_changed(batch, &ids, &req.key, &before);
        self.audit(
            batch,
            actor,
            "data.set",
            req.scope.to_string(),
            json!({"key": rec.key, "value_bytes": rec.value.len(), "version": rec.version, "nodes_changed": nodes.len()}),
            now_ms,
        );
        Ok(DataChanged {
            item: self.data_item(&rec),
            nodes,
        })
    }

    fn unset_data(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: proto::UnsetDataRequest,
        now_ms: u64,
    ) -> Result<DataChanged, ApiError> {
        proto::check_key(&req.key).map_err(invalid)?;
        let scope = self.scope_ref(&req.scope)?;
        if self.data.get(&scope, &req.key).is_none() {
            return Err(ApiError::not_found(
                "key_not_found",
                format!("{} has no data key {:?}", req.scope, req.key),
            ));
        }
        let ids = self.scope_nodes(&scope);
        let before = self.resolved_key(&ids, &req.key);
        if let Some(m) = self.data.entries.get_mut(&scope) {
            m.remove(&req.key);
            if m.is_empty() {
                self.data.entries.remove(&scope);
            }
        }
        batch.writes.push(Write::Data(DataWrite::Delete {
            scope,
            key: req.key.clone(),
        }));
        let nodes = self.mark_changed(batch, &ids, &req.key, &before);
        self.audit(
            batch,
            actor,
            "data.unset",
            req.scope.to_string(),
            json!({"key": req.key, "nodes_changed": nodes.len()}),
            now_ms,
        );
        Ok(DataChanged { item: None, nodes })
    }

    fn set_secret(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: SetSecret,
        now_ms: u64,
    ) -> Result<SecretItem, ApiError> {
        proto::check_key(&req.key).map_err(invalid)?;
        if req.sealed.len() < proto::SEALED_OVERHEAD || req.sealed.len() > proto::MAX_SEALED_BYTES {
            return Err(invalid(proto::DataError::Sealed(format!(
                "{} bytes; a sealed secret is {} to {} bytes",
                req.sealed.len(),
                proto::SEALED_OVERHEAD,
                proto::MAX_SEALED_BYTES
            ))));
        }
        let id = self.node_id_for(&req.node)?;
        let held = self.data.secrets.get(&id);
        if !held.is_some_and(|m| m.contains_key(&req.key))
            && held.map_or(0, BTreeMap::len) >= MAX_SECRETS_PER_NODE
        {
            return Err(ApiError::conflict(
                "too_many_keys",
                format!(
                    "node {:?} already has {MAX_SECRETS_PER_NODE} secrets, the most a node may hold; unset one first",
                    req.node
                ),
            ));
        }
        let rec = SecretRecord {
            node_id: id,
            key: req.key,
            sealed: req.sealed,
            version: self.version + 1,
            updated_at_ms: now_ms,
        };
        let previous = self
            .data
            .secrets
            .entry(id)
            .or_default()
            .insert(rec.key.clone(), rec.clone());
        if let Some(bytes) = self.node_bytes(id).filter(|b| *b > MAX_NODE_BYTES) {
            let m = self.data.secrets.entry(id).or_default();
            match previous {
                Some(p) => {
                    m.insert(p.key.clone(), p);
                }
                None => {
                    m.remove(&rec.key);
                    if m.is_empty() {
                        self.data.secrets.remove(&id);
                    }
                }
            }
            return Err(too_large(&req.node, bytes));
        }
        batch
            .writes
            .push(Write::Data(DataWrite::PutSecret(rec.clone())));
        let item = self
            .secret_item(&rec)
            .ok_or_else(|| super::nodes::node_not_found(&req.node))?;
        if self.nodes.get(&id).is_some_and(|n| !n.rec.disabled) {
            batch.touched.data.insert(id);
        }
        // Never the value nor the ciphertext.
        self.audit(
            batch,
            actor,
            "secret.set",
            item.node_key.to_string(),
            json!({"node": item.node, "key": item.key, "sealed_bytes": item.sealed_bytes, "version": item.version}),
            now_ms,
        );
        Ok(item)
    }

    fn unset_secret(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: proto::UnsetSecretRequest,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        proto::check_key(&req.key).map_err(invalid)?;
        let id = self.node_id_for(&req.node)?;
        let Some(m) = self.data.secrets.get_mut(&id) else {
            return Err(secret_not_found(&req));
        };
        if m.remove(&req.key).is_none() {
            return Err(secret_not_found(&req));
        }
        if m.is_empty() {
            self.data.secrets.remove(&id);
        }
        batch.writes.push(Write::Data(DataWrite::DeleteSecret {
            node_id: id,
            key: req.key.clone(),
        }));
        let Some(n) = self.nodes.get(&id) else {
            return Err(super::nodes::node_not_found(&req.node));
        };
        let (key, name, enabled) = (n.rec.node_key, n.rec.name.clone(), !n.rec.disabled);
        if enabled {
            batch.touched.data.insert(id);
        }
        self.audit(
            batch,
            actor,
            "secret.unset",
            key.to_string(),
            json!({"node": name, "key": req.key}),
            now_ms,
        );
        Ok(())
    }

    /// Bytes of keys and values resolved for node `id` plus keys and sealed
    /// boxes of its secrets (`None`: no such node).
    fn node_bytes(&self, id: NodeId) -> Option<usize> {
        self.nodes.get(&id)?;
        let data: usize = self
            .resolve(&self.scopes_of(id))
            .iter()
            .map(|(k, r)| k.len() + r.value.len())
            .sum();
        let secrets: usize = self
            .data
            .secrets
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(k, s)| k.len() + s.sealed.len())
            .sum();
        Some(data + secrets)
    }

    /// Refuses a scope over [`MAX_SCOPE_BYTES`] or a node of `ids` over
    /// [`MAX_NODE_BYTES`].
    fn check_bytes(
        &self,
        shown: &DataScope,
        scope: &ScopeRef,
        ids: &[NodeId],
    ) -> Result<(), ApiError> {
        let held: usize = self
            .data
            .entries
            .get(scope)
            .into_iter()
            .flatten()
            .map(|(k, r)| k.len() + r.value.len())
            .sum();
        if held > MAX_SCOPE_BYTES {
            return Err(ApiError::conflict(
                "scope_too_large",
                format!(
                    "{shown} would hold {held} bytes of keys and values; at most {MAX_SCOPE_BYTES}"
                ),
            ));
        }
        for id in ids {
            if let Some(bytes) = self.node_bytes(*id).filter(|b| *b > MAX_NODE_BYTES) {
                let name = self
                    .nodes
                    .get(id)
                    .map(|n| n.rec.name.clone())
                    .unwrap_or_default();
                return Err(too_large(&name, bytes));
            }
        }
        Ok(())
    }

    /// Node `id` (with these memberships) has its tags changed from `before` to
    /// `after`: marks it when that changes its resolved data.
    pub(super) fn data_tags_changed(
        &self,
        batch: &mut Batch,
        id: NodeId,
        memberships: &BTreeMap<u64, MembershipRecord>,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
    ) {
        let carries = |t: &String| self.data.entries.contains_key(&ScopeRef::Tag(t.clone()));
        if before.symmetric_difference(after).any(carries)
            && seen(self.resolve(&self.scopes(id, before, memberships.keys())))
                != seen(self.resolve(&self.scopes(id, after, memberships.keys())))
        {
            batch.touched.data.insert(id);
        }
    }

    /// Node `id` was removed: forgets its entries and secrets (the store
    /// removes their rows with the node's).
    pub(super) fn data_forget_node(&mut self, id: NodeId) {
        self.data.entries.remove(&ScopeRef::Node(id));
        self.data.secrets.remove(&id);
    }

    /// Network `net` is being deleted: forgets the entries scoped to it and
    /// returns their rows' deletes (the caller marks its members).
    pub(super) fn data_forget_network(&mut self, net: u64) -> Vec<Write> {
        let scope = ScopeRef::Network(net);
        let keys = self.data.entries.remove(&scope).unwrap_or_default();
        keys.into_keys()
            .map(|key| {
                Write::Data(DataWrite::Delete {
                    scope: scope.clone(),
                    key,
                })
            })
            .collect()
    }
}

/// What a node sees of resolved entries: key, value, version (not where they
/// came from).
fn seen<'a>(resolved: BTreeMap<&'a str, &'a DataRecord>) -> Vec<(&'a str, &'a str, u64)> {
    resolved
        .into_iter()
        .map(|(k, r)| (k, r.value.as_str(), r.version))
        .collect()
}

fn too_large(node: &str, bytes: usize) -> ApiError {
    ApiError::conflict(
        "node_data_too_large",
        format!(
            "node {node:?} would carry {bytes} bytes of data and secrets in its map; at most {MAX_NODE_BYTES}"
        ),
    )
}

fn secret_not_found(req: &proto::UnsetSecretRequest) -> ApiError {
    ApiError::not_found(
        "key_not_found",
        format!("node {:?} has no secret {:?}", req.node, req.key),
    )
}

#[cfg(test)]
#[path = "data_tests.rs"]
pub(super) mod tests;
