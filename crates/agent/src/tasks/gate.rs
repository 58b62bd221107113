//! What the agent does with a leased task, decided before anything runs
//! (pure): the limits checked again with the contract's own checks (a
//! controller is not trusted to have done it), then this node's settings:
//! scripts only with `weftd --allow-exec`, actions only those in
//! `--allow-actions`. A refusal is a result too (`status: refused`, the
//! error says why and which flag would change it).

use weft_proto::task::{Action, LeasedTask, TaskKind};

use super::TaskSettings;

/// The decision for one leased task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Not run: why.
    Refuse(String),
    /// A built-in action.
    Action(Action),
    /// `interpreter` over `body`.
    Script { interpreter: String, body: String },
    /// The hook `name`, if its file's sha256 is one of `approved`.
    Hook { name: String, approved: Vec<String> },
}

/// Decides what to do with `task` under `settings`.
pub(crate) fn plan(task: &LeasedTask, settings: &TaskSettings) -> Plan {
    if let Err(e) = task.check() {
        return Plan::Refuse(format!("the task is over this node's limits, not run: {e}"));
    }
    match &task.kind {
        TaskKind::Action(a) => {
            if settings.allow_actions.contains(&a.name()) {
                Plan::Action(a.clone())
            } else {
                Plan::Refuse(format!(
                    "action {} is not allowed here (--allow-actions)",
                    a.name()
                ))
            }
        }
        TaskKind::Script { interpreter, body } => {
            if settings.allow_exec {
                Plan::Script {
                    interpreter: interpreter.clone(),
                    body: body.clone(),
                }
            } else {
                Plan::Refuse("exec is off on this node (weftd --allow-exec)".into())
            }
        }
        TaskKind::Hook {
            name,
            approved_sha256,
        } => {
            if approved_sha256.is_empty() {
                Plan::Refuse(format!(
                    "hook {name} has no approved sha256 (weft admin hook approve {name} SHA256)"
                ))
            } else {
                Plan::Hook {
                    name: name.clone(),
                    approved: approved_sha256.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::task::{
        MAX_OUTPUT_CAP, MAX_SCRIPT_BYTES, MAX_TIMEOUT_SECS, MIN_OUTPUT_CAP, MIN_TIMEOUT_SECS,
        READ_ONLY_ACTIONS, TaskLimits,
    };

    use super::*;

    fn task(kind: TaskKind, limits: TaskLimits) -> LeasedTask {
        LeasedTask {
            task_id: "t1".into(),
            lease_id: "l1".into(),
            lease_expires_at_ms: 1,
            deadline_ms: 2,
            kind,
            limits,
        }
    }

    fn script(body: &str) -> TaskKind {
        TaskKind::Script {
            interpreter: "sh".into(),
            body: body.into(),
        }
    }

    fn exec_on() -> TaskSettings {
        TaskSettings {
            allow_exec: true,
            ..TaskSettings::default()
        }
    }

    fn refused(p: &Plan) -> bool {
        matches!(p, Plan::Refuse(_))
    }

    fn limits(timeout_secs: u32, output_cap_bytes: u32) -> TaskLimits {
        TaskLimits {
            timeout_secs,
            output_cap_bytes,
        }
    }

    #[test]
    fn each_limit_at_just_under_and_just_over_its_bound() {
        let s = exec_on();
        let ok = |l: TaskLimits| !refused(&plan(&task(script("true"), l), &s));
        let cap = TaskLimits::default().output_cap_bytes;
        let t = TaskLimits::default().timeout_secs;
        // Timeout: 1..=600 s.
        assert!(ok(limits(MAX_TIMEOUT_SECS, cap)));
        assert!(ok(limits(MAX_TIMEOUT_SECS - 1, cap)));
        assert!(!ok(limits(MAX_TIMEOUT_SECS + 1, cap)));
        assert!(ok(limits(MIN_TIMEOUT_SECS, cap)));
        assert!(!ok(limits(MIN_TIMEOUT_SECS - 1, cap)));
        // Output cap: 1..=256 KiB.
        assert!(ok(limits(t, MAX_OUTPUT_CAP)));
        assert!(ok(limits(t, MAX_OUTPUT_CAP - 1)));
        assert!(!ok(limits(t, MAX_OUTPUT_CAP + 1)));
        assert!(ok(limits(t, MIN_OUTPUT_CAP)));
        assert!(!ok(limits(t, MIN_OUTPUT_CAP - 1)));
        // Script size: 1..=64 KiB.
        let size_ok = |n: usize| !refused(&plan(&task(script(&"x".repeat(n)), limits(t, cap)), &s));
        assert!(size_ok(MAX_SCRIPT_BYTES));
        assert!(size_ok(MAX_SCRIPT_BYTES - 1));
        assert!(!size_ok(MAX_SCRIPT_BYTES + 1));
        assert!(!size_ok(0));
        // Interpreters: the allowlist only.
        for (i, allowed) in [
            ("sh", true),
            ("bash", true),
            ("python3", true),
            ("node", true),
            ("perl", false),
            ("/bin/sh", false),
        ] {
            let k = TaskKind::Script {
                interpreter: i.into(),
                body: "x".into(),
            };
            assert_eq!(
                !refused(&plan(&task(k, limits(t, cap)), &s)),
                allowed,
                "{i}"
            );
        }
        let over = plan(&task(script("true"), limits(MAX_TIMEOUT_SECS + 1, cap)), &s);
        let Plan::Refuse(why) = over else {
            panic!("{over:?}")
        };
        assert!(why.contains("timeout_secs") && why.contains("601"), "{why}");
    }

    #[test]
    fn scripts_need_allow_exec_and_actions_the_allow_list() {
        let l = TaskLimits::default();
        let off = TaskSettings::default();
        assert_eq!(
            plan(&task(script("true"), l), &off),
            Plan::Refuse("exec is off on this node (weftd --allow-exec)".into())
        );
        assert!(matches!(
            plan(&task(script("true"), l), &exec_on()),
            Plan::Script { .. }
        ));
        // The read-only actions are on by default, the others are not.
        assert_eq!(off.allow_actions, READ_ONLY_ACTIONS.to_vec());
        assert_eq!(
            plan(&task(TaskKind::Action(Action::Netcheck), l), &off),
            Plan::Action(Action::Netcheck)
        );
        assert_eq!(
            plan(&task(TaskKind::Action(Action::RotateKey), l), &off),
            Plan::Refuse("action rotate-key is not allowed here (--allow-actions)".into())
        );
        let revoke = TaskKind::Action(Action::FirewallRevoke {
            id: "task-abc".into(),
        });
        assert_eq!(
            plan(&task(revoke.clone(), l), &off),
            Plan::Refuse("action firewall-revoke is not allowed here (--allow-actions)".into())
        );
        let fw_on = TaskSettings {
            allow_actions: Action::parse_list("firewall-allow,firewall-revoke").unwrap(),
            ..TaskSettings::default()
        };
        assert!(matches!(
            plan(&task(revoke, l), &fw_on),
            Plan::Action(Action::FirewallRevoke { .. })
        ));
        let none = TaskSettings {
            allow_actions: Vec::new(),
            ..TaskSettings::default()
        };
        assert!(refused(&plan(
            &task(TaskKind::Action(Action::Diagnostics), l),
            &none
        )));
        // A hook without an approved hash is never run.
        let hook = |approved: Vec<String>| TaskKind::Hook {
            name: "backup".into(),
            approved_sha256: approved,
        };
        assert!(refused(&plan(&task(hook(vec![]), l), &off)));
        assert_eq!(
            plan(&task(hook(vec!["a".repeat(64)]), l), &off),
            Plan::Hook {
                name: "backup".into(),
                approved: vec!["a".repeat(64)]
            }
        );
        assert!(refused(&plan(&task(hook(vec!["A".repeat(64)]), l), &off)));
    }
}
