//! The rows of hooks and integrity (migration 0009): approved hook hashes,
//! the expected weftd hash per version, and each node's last report. The
//! judgement made from them is [`crate::model`]'s `integrity` module.

use weft_proto::integrity::IntegrityReport;

/// One approved hash of a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookApprovalRecord {
    /// The hook's file name.
    pub name: String,
    /// The approved SHA-256 (64 lowercase hex digits).
    pub sha256: String,
    /// Unix milliseconds.
    pub approved_at_ms: u64,
}

/// The SHA-256 weftd of one version must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRecord {
    /// weftd's version.
    pub version: String,
    /// 64 lowercase hex digits.
    pub sha256: String,
    /// Unix milliseconds.
    pub set_at_ms: u64,
}

/// What a node last reported it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIntegrityRecord {
    /// The node.
    pub node_id: u64,
    /// Unix milliseconds.
    pub reported_at_ms: u64,
    /// The report.
    pub report: IntegrityReport,
}

/// Every integrity row, loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegritySnapshot {
    /// Approved hook hashes.
    pub approvals: Vec<HookApprovalRecord>,
    /// Expected weftd hashes.
    pub expected: Vec<ExpectedRecord>,
    /// Nodes' last reports.
    pub reports: Vec<NodeIntegrityRecord>,
}
