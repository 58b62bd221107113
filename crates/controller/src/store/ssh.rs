//! The rows of SSH through the mesh (migration 0014): each node's reported
//! SSH server, and the session records already audited (idempotency keys).

/// A node's SSH server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshServerRecord {
    /// The node.
    pub node_id: u64,
    /// The port on its overlay addresses.
    pub port: u16,
    /// Its host key (one OpenSSH public key line).
    pub host_key: String,
    /// Unix milliseconds.
    pub reported_at_ms: u64,
}

/// A session record already audited.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SshSeenRecord {
    /// The server node.
    pub node_id: u64,
    /// The record's id (unique per node).
    pub record_id: String,
    /// Whether it was the end record.
    pub ended: bool,
    /// When it was audited (Unix milliseconds).
    pub at_ms: u64,
}

/// Every SSH row, loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshRows {
    /// The servers.
    pub servers: Vec<SshServerRecord>,
    /// The audited records' keys.
    pub seen: Vec<SshSeenRecord>,
}

/// One SSH row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshWrite {
    /// Insert or replace a node's server.
    PutServer(SshServerRecord),
    /// Forget a node's server (it stopped serving).
    DeleteServer(u64),
    /// Remember an audited record.
    Seen(SshSeenRecord),
}
