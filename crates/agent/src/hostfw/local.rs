//! Node-local rules: what `firewall-allow` tasks opened on this node
//! (`STATE_DIR/firewall-local.json`, 0600, written atomically). Each is an
//! inbound accept rule with an expiry, id `task-<short task id>`, merged into
//! the map's spec before the table is built (only while a host firewall is in
//! force), so it expires like any rule (the table's guard sets) and a restart
//! keeps it until then. A damaged file is named in `weft status` and left as
//! it is: no rule is added or revoked over it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use weft_proto::hostfw::task_rule::check_task_rule_id;
use weft_proto::hostfw::{Direction, HostFirewallSpec, HostRule, MAX_RULES, RuleAction};

/// The file, in the state directory.
pub(crate) const FILE: &str = "firewall-local.json";

/// The file's form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    rules: Vec<HostRule>,
}

/// Whether `r` is a rule a task may have made: a task rule id, inbound,
/// accepting, expiring, within the host firewall's bounds.
fn task_made(r: &HostRule) -> Result<(), String> {
    check_task_rule_id(&r.id).map_err(|e| e.0)?;
    r.check().map_err(|e| e.0)?;
    if r.direction != Direction::In || r.action != RuleAction::Accept || r.expires_at_ms.is_none() {
        return Err(format!(
            "rule {} is not an inbound accept rule with an expiry",
            r.id
        ));
    }
    Ok(())
}

/// The rules in the file not yet expired at `now_ms`; `Ok(empty)`: no file.
/// A file that does not parse, or holds a rule no task could have made, is an
/// error naming it and what to do.
pub(crate) fn load(dir: &Path, now_ms: u64) -> Result<Vec<HostRule>, String> {
    const WHAT_TO_DO: &str = "the task-made firewall rules it held are not applied and no task \
         may add or revoke one; move it aside (the rules open again only when the tasks run \
         again) and restart weftd";
    let path = dir.join(FILE);
    let Some(saved) = crate::state_file::load::<Saved>(&path, WHAT_TO_DO)? else {
        return Ok(Vec::new());
    };
    for r in &saved.rules {
        task_made(r).map_err(|why| crate::state_file::damaged(&path, &why, WHAT_TO_DO))?;
    }
    Ok(live(saved.rules, now_ms))
}

/// Writes `rules` (0600, atomically: blocking, call off the async runtime).
pub(crate) fn save(dir: &Path, rules: &[HostRule]) -> Result<(), String> {
    crate::state_file::save(
        &dir.join(FILE),
        &Saved {
            rules: rules.to_vec(),
        },
    )
}

/// `rules` without those expired at `now_ms`.
fn live(mut rules: Vec<HostRule>, now_ms: u64) -> Vec<HostRule> {
    rules.retain(|r| r.expires_at_ms.is_some_and(|t| t > now_ms));
    rules
}

/// `rules` with `rule` (replacing one of the same id: a task run again
/// renews its rule), expired ones dropped, sorted by id.
pub(crate) fn with(rules: &[HostRule], rule: HostRule, now_ms: u64) -> Vec<HostRule> {
    let mut out = live(rules.to_vec(), now_ms);
    out.retain(|r| r.id != rule.id);
    out.push(rule);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// `rules` without rule `id` and without expired ones; `None`: no live rule
/// `id`.
pub(crate) fn without(rules: &[HostRule], id: &str, now_ms: u64) -> Option<Vec<HostRule>> {
    let mut out = live(rules.to_vec(), now_ms);
    let before = out.len();
    out.retain(|r| r.id != id);
    (out.len() < before).then_some(out)
}

/// `spec` with the live node-local rules after its own, as many as fit in
/// [`MAX_RULES`] (the task refuses a rule that would not fit; a map that
/// grew since keeps its own rules first).
pub(crate) fn merge(spec: &HostFirewallSpec, rules: &[HostRule], now_ms: u64) -> HostFirewallSpec {
    let mut out = spec.clone();
    let room = MAX_RULES.saturating_sub(out.rules.len());
    out.rules.extend(
        rules
            .iter()
            .filter(|r| r.expires_at_ms.is_some_and(|t| t > now_ms))
            .take(room)
            .cloned(),
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::os::unix::fs::PermissionsExt;

    use weft_proto::hostfw::task_rule::TaskRule;
    use weft_proto::hostfw::{PortRange, Proto};

    use super::*;

    fn rule(task: &str, port: u16, expires_in_s: u64, now_ms: u64) -> HostRule {
        TaskRule {
            proto: Proto::Tcp,
            ports: vec![PortRange {
                start: port,
                end: port,
            }],
            from: vec!["10.0.0.0/8".parse().unwrap()],
            comment: "t".into(),
            for_secs: expires_in_s,
        }
        .rule(task, now_ms)
    }

    #[test]
    fn rules_are_kept_across_a_restart_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 0), Ok(vec![]));
        let a = rule("tsk_aaaa", 8080, 10, 1_000);
        let b = rule("tsk_bbbb", 8081, 100, 1_000);
        let rules = with(&with(&[], b.clone(), 1_000), a.clone(), 1_000);
        assert_eq!(rules, vec![a.clone(), b.clone()], "sorted by id");
        save(dir.path(), &rules).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path(), 2_000).unwrap(), rules);
        // a (10 s from 1 s) expired at 11 s: gone after a restart then.
        assert_eq!(load(dir.path(), 11_000).unwrap(), vec![b.clone()]);
        // A task run again renews its rule; an expired one is dropped on change.
        let a2 = rule("tsk_aaaa", 9090, 10, 20_000);
        assert_eq!(with(&rules, a2.clone(), 20_000), vec![a2, b.clone()]);
        assert_eq!(with(&rules, b.clone(), 200_000), vec![b]);
    }

    #[test]
    fn revoke_removes_only_a_live_rule() {
        let a = rule("tsk_aaaa", 8080, 10, 0);
        let b = rule("tsk_bbbb", 8081, 100, 0);
        let rules = vec![a.clone(), b.clone()];
        assert_eq!(without(&rules, "task-aaaa", 0), Some(vec![b.clone()]));
        assert_eq!(without(&rules, "task-cccc", 0), None);
        assert_eq!(without(&rules, "task-aaaa", 10_000), None, "expired");
    }

    #[test]
    fn a_damaged_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, b"{").unwrap();
        let err = load(dir.path(), 0).unwrap_err();
        assert!(err.contains("firewall-local.json is damaged"), "{err}");
        assert!(err.contains("move it aside"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{", "not replaced");
        // A rule no task could have made (no expiry, or not a task id) is damage too.
        let mut forever = rule("tsk_aaaa", 80, 10, 0);
        forever.expires_at_ms = None;
        save(dir.path(), &[forever]).unwrap();
        assert!(load(dir.path(), 0).unwrap_err().contains("with an expiry"));
        let mut admin = rule("tsk_aaaa", 80, 10, 0);
        admin.id = "dyn:1".into();
        save(dir.path(), &[admin]).unwrap();
        assert!(load(dir.path(), 0).unwrap_err().contains("is damaged"));
    }

    #[test]
    fn merge_appends_live_rules_after_the_maps_within_the_bound() {
        let spec = crate::hostfw::test_spec(4);
        let a = rule("tsk_aaaa", 8080, 10, 0);
        let b = rule("tsk_bbbb", 8081, 100, 0);
        let merged = merge(&spec, &[a, b.clone()], 10_000);
        assert_eq!(merged.version, 4);
        assert_eq!(merged.rules, vec![b.clone()], "the expired one is left out");
        assert_eq!(merged.check(), Ok(()));
        let mut full = spec.clone();
        full.rules = vec![b.clone(); MAX_RULES];
        assert_eq!(merge(&full, &[b], 0).rules.len(), MAX_RULES);
    }
}
