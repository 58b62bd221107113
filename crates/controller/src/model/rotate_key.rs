//! A node's identity key rotation (`POST /v1/node/rotate-key`): the node keeps
//! its id, name, tags, addresses, routes and credential; only its key changes.
//! Peers see the old key's entry removed and the new one added (map deltas),
//! relays' member sets drop the old key and admit the new one, and the node
//! itself gets a fresh snapshot. A retry after success (the node crashed before
//! it switched keys) succeeds and changes nothing.

use serde_json::json;
use weft_proto::NodeKey;

use crate::error::ApiError;
use crate::store::Write;

use super::{Actor, Batch, NodeId, World};

/// Agent: replace node `node`'s key `old_key` with `new_key` (the handler
/// checked the new key's signature and computed its proof-of-work bits).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RotateKey {
    /// The authenticated node.
    pub node: NodeId,
    /// The key it replaces.
    pub old_key: NodeKey,
    /// The new key.
    pub new_key: NodeKey,
    /// Proof-of-work bits the new key reaches.
    pub pow_bits: u32,
}

/// A rotation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// The node's name.
    pub name: String,
    /// Its key now.
    pub node_key: NodeKey,
    /// `false`: the key already was `new_key` (a retry); nothing changed.
    pub rotated: bool,
}

operation!(RotateKey => RotatedKey, |op, w, batch, actor, now_ms| {
    w.rotate_key(batch, actor, op, now_ms)
});

impl World {
    fn rotate_key(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: RotateKey,
        now_ms: u64,
    ) -> Result<RotatedKey, ApiError> {
        let node = self.nodes.get(&op.node).ok_or(ApiError::Unauthorized)?;
        if node.rec.disabled {
            return Err(ApiError::NodeDisabled);
        }
        let current = node.rec.node_key;
        if current == op.new_key {
            return Ok(RotatedKey {
                name: node.rec.name.clone(),
                node_key: current,
                rotated: false,
            });
        }
        if current != op.old_key {
            return Err(ApiError::conflict(
                "key_mismatch",
                format!(
                    "this node's key is {current}, neither the old key {} nor the new key {} of the request",
                    op.old_key, op.new_key
                ),
            ));
        }
        if self.nodes.id_by_key(&op.new_key).is_some() {
            return Err(ApiError::conflict(
                "key_taken",
                format!("another node has key {}", op.new_key),
            ));
        }
        let required = node
            .memberships
            .keys()
            .filter_map(|id| self.networks.get(id))
            .map(|n| n.rec.pow_difficulty)
            .max()
            .unwrap_or(0);
        if op.pow_bits < required {
            return Err(ApiError::PowTooWeak {
                achieved: op.pow_bits,
                required,
            });
        }
        let mut node = self.take_node(op.node, &current.to_string())?;
        // The old key's entries become removals, the new key's upserts; both
        // keys' policy inputs change (one leaves, one arrives).
        Self::touch_everywhere(batch, &mut node);
        batch.touched.policy_nodes.insert(current);
        node.rec.node_key = op.new_key;
        Self::touch_everywhere(batch, &mut node);
        batch.touched.policy_nodes.insert(op.new_key);
        batch.touched.resync.insert(op.node);
        batch.writes.push(Write::PutNode(node.rec.clone()));
        let name = node.rec.name.clone();
        self.nodes.put(node);
        self.audit(
            batch,
            actor,
            "node.rotate_key",
            op.new_key.to_string(),
            json!({"name": name, "from": current.to_string(), "to": op.new_key.to_string()}),
            now_ms,
        );
        Ok(RotatedKey {
            name,
            node_key: op.new_key,
            rotated: true,
        })
    }
}
