//! Node data and secrets: key/value pairs an admin pushes to nodes, carried in
//! the network map ([`crate::netmap::NetworkMap::data`] and
//! [`crate::netmap::NetworkMap::secrets`]) and read by workloads through the
//! agent's local node API.
//!
//! - **Data** is set per node, per tag or per network ([`DataScope`]). A node's
//!   map carries the entries resolved for it: for each key, the node's own entry
//!   wins over a tag's, and a tag's over a network's; among several of its tags
//!   (or networks) that set the same key, the one whose name sorts first wins.
//! - **Secrets** are per node and sealed by the admin CLI to the node's X25519
//!   key (`weft_identity::sealed`): the controller stores and forwards only the
//!   ciphertext, base64 in [`SecretEntry::sealed`]. `--tag`/`--network` on the
//!   CLI expand to the nodes that are members when the secret is set.
//!
//! Every entry carries the map version at which it was last set
//! ([`DataEntry::version`]). Keys are `[A-Za-z0-9._-]`, 1 to [`MAX_KEY_LEN`]
//! bytes; values at most [`MAX_VALUE_BYTES`]; secrets at most
//! [`MAX_SECRET_BYTES`] of plaintext.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Largest data value, in bytes (UTF-8).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Largest secret, in bytes of plaintext.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;
/// What a sealed box adds to its plaintext (`weft_identity::sealed::SEALED_OVERHEAD`:
/// version byte, ephemeral key, tag).
pub const SEALED_OVERHEAD: usize = 1 + 32 + 16;
/// The version byte a sealed box starts with (`weft_identity::sealed::SEALED_VERSION`).
pub const SEALED_VERSION: u8 = 1;
/// Largest sealed secret, in bytes (before base64).
pub const MAX_SEALED_BYTES: usize = MAX_SECRET_BYTES + SEALED_OVERHEAD;
/// Most data keys one scope (a node, a tag, a network) may hold.
pub const MAX_KEYS_PER_SCOPE: usize = 256;
/// Most secrets one node may hold.
pub const MAX_SECRETS_PER_NODE: usize = 256;
/// Most bytes of keys and values one scope (a node, a tag, a network) may hold.
pub const MAX_SCOPE_BYTES: usize = 1024 * 1024;
/// Most bytes one node's map may carry in data (keys and values resolved for
/// it) and secrets (keys and sealed boxes), checked when data or a secret is
/// set, so a map stays far below the map stream's 16 MiB event limit.
pub const MAX_NODE_BYTES: usize = 2 * 1024 * 1024;

/// Where a data entry applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataScope {
    /// One node (by name or key in requests; by name in answers).
    Node(String),
    /// Every node with this tag.
    Tag(String),
    /// Every member of this network.
    Network(String),
}

impl DataScope {
    /// `node`, `tag` or `network`.
    pub fn kind(&self) -> &'static str {
        match self {
            DataScope::Node(_) => "node",
            DataScope::Tag(_) => "tag",
            DataScope::Network(_) => "network",
        }
    }

    /// The node, tag or network name.
    pub fn name(&self) -> &str {
        match self {
            DataScope::Node(s) | DataScope::Tag(s) | DataScope::Network(s) => s,
        }
    }
}

impl fmt::Display for DataScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

/// One data value as a node's map carries it (already resolved for the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The map version at which it was last set.
    pub version: u64,
}

/// One secret as a node's map carries it: sealed to the node's X25519 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEntry {
    /// The key.
    pub key: String,
    /// The sealed box, standard base64.
    pub sealed: String,
    /// The map version at which it was last set.
    pub version: u64,
}

impl SecretEntry {
    /// The sealed box's bytes (checked against [`MAX_SEALED_BYTES`]).
    pub fn sealed_bytes(&self) -> Result<Vec<u8>, DataError> {
        decode_sealed(&self.sealed)
    }
}

impl fmt::Display for SecretEntry {
    /// Never the ciphertext: key and version only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (version {})", self.key, self.version)
    }
}

/// A key, value or sealed secret out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The key is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid key {0:?}: 1 to {MAX_KEY_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-'")]
    Key(String),
    /// The value is longer than [`MAX_VALUE_BYTES`].
    #[error("value is {0} bytes; at most {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(usize),
    /// The secret is longer than [`MAX_SECRET_BYTES`].
    #[error("secret is {0} bytes; at most {MAX_SECRET_BYTES} bytes")]
    SecretTooLong(usize),
    /// The sealed value is not base64, or not the size of a sealed box.
    #[error("sealed secret is not valid: {0}")]
    Sealed(String),
}

/// Checks a data or secret key.
pub fn check_key(key: &str) -> Result<(), DataError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DataError::Key(key.chars().take(MAX_KEY_LEN + 1).collect()))
    }
}

/// Checks a data value's size.
pub fn check_value(value: &str) -> Result<(), DataError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(DataError::ValueTooLong(value.len()));
    }
    Ok(())
}

/// Checks a secret's plaintext size (the CLI, before sealing).
pub fn check_secret(plaintext: &[u8]) -> Result<(), DataError> {
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(DataError::SecretTooLong(plaintext.len()));
    }
    Ok(())
}

/// Decodes a base64 sealed box and checks its size (at least
/// [`SEALED_OVERHEAD`], at most [`MAX_SEALED_BYTES`]) and version byte.
pub fn decode_sealed(b64: &str) -> Result<Vec<u8>, DataError> {
    // Base64 of MAX_SEALED_BYTES, rounded up: refuse longer text before decoding.
    if b64.len() > MAX_SEALED_BYTES.div_ceil(3) * 4 {
        return Err(DataError::Sealed(format!(
            "{} bytes of base64; a sealed secret is at most {MAX_SEALED_BYTES} bytes",
            b64.len()
        )));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|e| DataError::Sealed(format!("not base64: {e}")))?;
    if bytes.len() < SEALED_OVERHEAD {
        return Err(DataError::Sealed(format!(
            "{} bytes; a sealed box has at least {SEALED_OVERHEAD}",
            bytes.len()
        )));
    }
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(DataError::Sealed(format!(
            "{} bytes; at most {MAX_SEALED_BYTES}",
            bytes.len()
        )));
    }
    // A plaintext sent by mistake is refused here rather than stored.
    if bytes[0] != SEALED_VERSION {
        return Err(DataError::Sealed(format!(
            "starts with byte {}, not a sealed box of version {SEALED_VERSION}",
            bytes[0]
        )));
    }
    Ok(bytes)
}

/// Encodes a sealed box for [`SecretEntry::sealed`] and [`SetSecretRequest::sealed`].
pub fn encode_sealed(sealed: &[u8]) -> String {
    STANDARD.encode(sealed)
}

/// `PUT /v1/admin/data`: set one key in one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDataRequest {
    /// Where it applies.
    pub scope: DataScope,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// `DELETE /v1/admin/data`: remove one key from one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsetDataRequest {
    /// Where it applied.
    pub scope: DataScope,
    /// The key.
    pub key: String,
}

/// One stored data entry, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataItem {
    /// Where it applies (a node by name).
    pub scope: DataScope,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The map version at which it was last set.
    pub version: u64,
    /// When it was last set, Unix milliseconds.
    pub updated_at_ms: u64,
}

/// `GET /v1/admin/data`, and the answer of a set or unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataList {
    /// Sorted by scope, then key.
    pub entries: Vec<DataItem>,
    /// For a set or unset: how many nodes' maps changed (0 for a list).
    #[serde(default)]
    pub nodes_changed: usize,
}

/// `PUT /v1/admin/secrets`: store one node's sealed secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSecretRequest {
    /// The node (name or key).
    pub node: String,
    /// The key.
    pub key: String,
    /// The value sealed to the node's X25519 key, standard base64.
    pub sealed: String,
}

/// `DELETE /v1/admin/secrets`: remove one node's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsetSecretRequest {
    /// The node (name or key).
    pub node: String,
    /// The key.
    pub key: String,
}

/// One stored secret as the admin API lists it: never the value, nor the
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretItem {
    /// The node's name.
    pub node: String,
    /// The node's key.
    pub node_key: crate::NodeKey,
    /// The key.
    pub key: String,
    /// Size of the sealed box, bytes.
    pub sealed_bytes: usize,
    /// The map version at which it was last set.
    pub version: u64,
    /// When it was last set, Unix milliseconds.
    pub updated_at_ms: u64,
}

/// `GET /v1/admin/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    /// Sorted by node name, then key.
    pub secrets: Vec<SecretItem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_at_under_and_over_the_bound() {
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN - 1)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("").is_err());
        assert!(check_key("db.url-2_x").is_ok());
        for bad in ["a b", "a/b", "a:b", "é", "a\n", "../x"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_and_secrets_at_under_and_over_the_bound() {
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES - 1)).is_ok());
        assert_eq!(
            check_value(&"v".repeat(MAX_VALUE_BYTES + 1)),
            Err(DataError::ValueTooLong(MAX_VALUE_BYTES + 1))
        );
        assert!(check_secret(&vec![0; MAX_SECRET_BYTES]).is_ok());
        assert!(check_secret(&vec![0; MAX_SECRET_BYTES - 1]).is_ok());
        assert!(check_secret(&vec![0; MAX_SECRET_BYTES + 1]).is_err());
    }

    #[test]
    fn sealed_sizes_at_under_and_over_the_bound() {
        let ok = |n: usize| decode_sealed(&encode_sealed(&vec![1; n]));
        assert_eq!(ok(MAX_SEALED_BYTES).unwrap().len(), MAX_SEALED_BYTES);
        assert!(ok(MAX_SEALED_BYTES - 1).is_ok());
        assert!(ok(MAX_SEALED_BYTES + 1).is_err());
        assert!(ok(SEALED_OVERHEAD).is_ok());
        assert!(ok(SEALED_OVERHEAD - 1).is_err());
        assert!(decode_sealed("not base64!").is_err());
        assert!(
            decode_sealed(&encode_sealed(&[b'p'; 64])).is_err(),
            "not a sealed box"
        );
        assert!(decode_sealed(&"A".repeat(1 << 20)).is_err());
    }

    #[test]
    fn scopes_serialize_as_one_field_objects() {
        let s = SetDataRequest {
            scope: DataScope::Tag("web".into()),
            key: "k".into(),
            value: "v".into(),
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["scope"], serde_json::json!({"tag": "web"}));
        assert_eq!(DataScope::Network("lab".into()).to_string(), "network:lab");
    }

    #[test]
    fn a_secret_entry_displays_without_its_ciphertext() {
        let e = SecretEntry {
            key: "db".into(),
            sealed: encode_sealed(&[7; 60]),
            version: 3,
        };
        assert!(!e.to_string().contains(&e.sealed));
    }
}
