//! The rows of node data and sealed secrets (migration 0010). What they mean,
//! and how a node's entries are resolved, is [`crate::model`]'s `data` module.

use std::fmt;

/// Where a stored data entry applies, by id (a node or network keeps its id
/// when renamed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopeRef {
    /// One node.
    Node(u64),
    /// Every node with this tag.
    Tag(String),
    /// Every member of this network.
    Network(u64),
}

impl ScopeRef {
    /// The stored text: `node:<id>`, `tag:<tag>`, `network:<id>`.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Parses [`ScopeRef::to_text`].
    pub fn parse(s: &str) -> Option<ScopeRef> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "node" => rest.parse().ok().map(ScopeRef::Node),
            "tag" if !rest.is_empty() => Some(ScopeRef::Tag(rest.to_owned())),
            "network" => rest.parse().ok().map(ScopeRef::Network),
            _ => None,
        }
    }

    /// The node of a node scope.
    pub fn node_id(&self) -> Option<u64> {
        match self {
            ScopeRef::Node(id) => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for ScopeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeRef::Node(id) => write!(f, "node:{id}"),
            ScopeRef::Tag(t) => write!(f, "tag:{t}"),
            ScopeRef::Network(id) => write!(f, "network:{id}"),
        }
    }
}

/// One data entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    /// Where it applies.
    pub scope: ScopeRef,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The map version at which it was last set.
    pub version: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
}

/// One node's sealed secret (never the plaintext: the controller has none).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// The node.
    pub node_id: u64,
    /// The key.
    pub key: String,
    /// The sealed box's bytes.
    pub sealed: Vec<u8>,
    /// The map version at which it was last set.
    pub version: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
}

impl fmt::Debug for SecretRecord {
    /// Without the ciphertext (it is useless without the node's key, and
    /// long): its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("node_id", &self.node_id)
            .field("key", &self.key)
            .field("sealed_bytes", &self.sealed.len())
            .field("version", &self.version)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// A change to the data or secret rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataWrite {
    /// Insert or replace a data entry.
    Put(DataRecord),
    /// Delete a data entry.
    Delete {
        /// Its scope.
        scope: ScopeRef,
        /// Its key.
        key: String,
    },
    /// Insert or replace a secret.
    PutSecret(SecretRecord),
    /// Delete a secret.
    DeleteSecret {
        /// The node.
        node_id: u64,
        /// The key.
        key: String,
    },
}

/// The data and secret rows, as loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataRows {
    /// Every data entry.
    pub entries: Vec<DataRecord>,
    /// Every secret.
    pub secrets: Vec<SecretRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_text_round_trips() {
        for s in [
            ScopeRef::Node(3),
            ScopeRef::Tag("role:db".into()),
            ScopeRef::Network(1),
        ] {
            assert_eq!(ScopeRef::parse(&s.to_text()), Some(s));
        }
        for bad in ["node:x", "tag:", "net:1", "node", ""] {
            assert_eq!(ScopeRef::parse(bad), None, "{bad:?}");
        }
    }
}
