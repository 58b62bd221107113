//! A host firewall rule a task opens on its node (`weft admin task create
//! --action firewall-allow`): always inbound, always accepting, always
//! expiring ([`MIN_TASK_RULE_SECS`]..=[`MAX_TASK_RULE_SECS`]). On the node it is
//! a node-local rule with the id [`task_rule_id`] (`task-<short task id>`),
//! merged into the map's spec, kept across restarts until it expires, and
//! removed early by the `firewall-revoke` action.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Direction, HostAddr, HostFwError, HostRule, PortRange, Proto, RuleAction};

/// Shortest lifetime of a task-made rule, in seconds.
pub const MIN_TASK_RULE_SECS: u64 = 1;
/// Longest lifetime of a task-made rule, in seconds (30 days).
pub const MAX_TASK_RULE_SECS: u64 = 30 * 24 * 3600;
/// What every task-made rule id starts with.
pub const TASK_RULE_PREFIX: &str = "task-";
/// How many characters of the task id a rule id keeps.
const SHORT_ID_LEN: usize = 12;

/// The arguments of `firewall-allow`: open `proto` `ports` to `from` for
/// `for_secs` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRule {
    /// The protocol (`any` and `icmp` take no ports).
    pub proto: Proto,
    /// Destination ports (tcp/udp; empty: every port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Sources (empty: anyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<IpNet>,
    /// Why (printable ASCII without `"`, at most [`super::MAX_COMMENT_LEN`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// The rule's lifetime from when the node runs the task, in seconds.
    pub for_secs: u64,
}

impl TaskRule {
    /// The node-local rule task `task_id` opens when run at `now_ms`.
    pub fn rule(&self, task_id: &str, now_ms: u64) -> HostRule {
        HostRule {
            id: task_rule_id(task_id),
            direction: Direction::In,
            action: RuleAction::Accept,
            proto: self.proto,
            ports: self.ports.clone(),
            peers: self.from.iter().copied().map(HostAddr::Cidr).collect(),
            comment: self.comment.clone(),
            expires_at_ms: Some(now_ms.saturating_add(self.for_secs.saturating_mul(1000))),
        }
    }

    /// Checks the lifetime and the rule's bounds ([`HostRule::check`]).
    pub fn check(&self) -> Result<(), HostFwError> {
        if !(MIN_TASK_RULE_SECS..=MAX_TASK_RULE_SECS).contains(&self.for_secs) {
            return Err(HostFwError(format!(
                "a task-made rule lives {MIN_TASK_RULE_SECS}..={MAX_TASK_RULE_SECS} seconds (30 days), got {}",
                self.for_secs
            )));
        }
        self.rule("check", 0).check()
    }
}

/// The id of the rule task `task_id` opens: [`TASK_RULE_PREFIX`] and at most
/// 12 characters of the id after its `tsk_`-style prefix (`_` is not a rule
/// id character).
pub fn task_rule_id(task_id: &str) -> String {
    let tail = task_id.rsplit('_').next().unwrap_or_default();
    let short: String = if tail.is_empty() { task_id } else { tail }
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(SHORT_ID_LEN)
        .collect();
    format!("{TASK_RULE_PREFIX}{short}")
}

/// Checks the id `firewall-revoke` names: a task-made rule's
/// (`task-` and 1..=[`SHORT_ID_LEN`] of `[A-Za-z0-9-]`).
pub fn check_task_rule_id(id: &str) -> Result<(), HostFwError> {
    let ok = id.strip_prefix(TASK_RULE_PREFIX).is_some_and(|s| {
        !s.is_empty()
            && s.len() <= SHORT_ID_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(HostFwError(format!(
            "{:?} is not a task-made rule id (task- and 1..={SHORT_ID_LEN} of [A-Za-z0-9-]); \
             the admin's rules are revoked with weft admin firewall revoke",
            id.chars().take(64).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(for_secs: u64) -> TaskRule {
        TaskRule {
            proto: Proto::Tcp,
            ports: vec![PortRange {
                start: 8080,
                end: 8080,
            }],
            from: vec!["10.0.0.0/8".parse().expect("cidr")],
            comment: "deploy".to_owned(),
            for_secs,
        }
    }

    #[test]
    fn lifetime_at_under_and_over_its_bounds() {
        assert!(allow(0).check().is_err());
        assert!(allow(1).check().is_ok());
        assert!(allow(MAX_TASK_RULE_SECS).check().is_ok());
        let e = allow(MAX_TASK_RULE_SECS + 1).check().unwrap_err();
        assert!(e.to_string().contains("30 days"), "{e}");
    }

    #[test]
    fn the_rule_is_inbound_accepting_and_expiring() {
        let r = allow(60).rule("tsk_0123456789abcdef0123", 1_000);
        assert_eq!(r.id, "task-0123456789ab");
        assert_eq!(r.direction, Direction::In);
        assert_eq!(r.action, RuleAction::Accept);
        assert_eq!(r.expires_at_ms, Some(61_000));
        assert_eq!(
            r.peers,
            vec![HostAddr::Cidr("10.0.0.0/8".parse().expect("cidr"))]
        );
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn rule_bounds_are_the_host_firewalls() {
        let mut a = allow(60);
        a.proto = Proto::Icmp;
        assert!(a.check().is_err(), "ports need tcp or udp");
        let mut a = allow(60);
        a.comment = "say \"hi\"".to_owned();
        assert!(a.check().is_err());
        let mut a = allow(60);
        a.from = vec!["10.0.0.0/8".parse().expect("cidr"); super::super::MAX_PEERS_PER_RULE + 1];
        assert!(a.check().is_err());
    }

    #[test]
    fn rule_ids() {
        assert_eq!(task_rule_id("abc"), "task-abc");
        assert_eq!(task_rule_id("x_"), "task-x");
        assert_eq!(check_task_rule_id("task-0123456789ab"), Ok(()));
        for bad in ["dyn:3", "task-", "task-0123456789abc", "task-a_b", "line:7"] {
            assert!(check_task_rule_id(bad).is_err(), "{bad}");
        }
        assert_eq!(check_task_rule_id(&task_rule_id("tsk_ffff")), Ok(()));
    }
}
