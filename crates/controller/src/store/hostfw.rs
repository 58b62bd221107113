//! The host firewall's rows (migration 0011): the declared file's versions and
//! the dynamic rules. What they mean is [`crate::model`]'s `hostfw` module.

use weft_proto::hostfw::HostRule;

/// One version of the declared firewall file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallFileRecord {
    /// 1, 2, ... (0: none was ever set, never stored).
    pub version: u64,
    /// The text.
    pub text: String,
    /// Who set it (an actor label).
    pub author: String,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

/// A dynamic rule on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRuleRecord {
    /// The rule's number (its map id is `dyn:<id>`).
    pub id: u64,
    /// The node.
    pub node_id: u64,
    /// The rule as maps carry it (`rule.id` is `dyn:<id>`, action accept).
    pub rule: HostRule,
    /// Who added it (an actor label).
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_at_ms: u64,
}

/// What the store holds of the host firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFwRows {
    /// The newest file version, if one was ever set.
    pub file: Option<FirewallFileRecord>,
    /// Every dynamic rule, by id.
    pub rules: Vec<FirewallRuleRecord>,
}

/// A change to the host firewall's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFwWrite {
    /// Append a file version.
    PutFile(FirewallFileRecord),
    /// Insert a dynamic rule.
    PutRule(FirewallRuleRecord),
    /// Delete a dynamic rule.
    DeleteRule(u64),
}
