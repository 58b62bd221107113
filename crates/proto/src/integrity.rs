//! Integrity of what runs on a node: the SHA-256 of weftd's own binary and of
//! every hook script, reported by the agent (`POST /v1/node/integrity`, at
//! start, every [`REPORT_EVERY_SECS`] and right after a hook was refused),
//! compared by the controller with what the admin expects
//! (`PUT /v1/admin/integrity/expect`: weftd's hash per version) and approved
//! (`PUT /v1/admin/hooks/{name}`: a hook's hash). A node's [`IntegrityState`]
//! is `ok`, `mismatch` or `unknown`; while it is `mismatch` the controller
//! refuses the node hook and script tasks.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::task::{TaskLimitError, check_hook_name, check_sha256};

/// How often the agent reports, in seconds (10 minutes).
pub const REPORT_EVERY_SECS: u64 = 600;
/// Most hooks one report lists.
pub const MAX_HOOKS: usize = 256;
/// Most approved hashes per hook name (what a leased hook task can carry).
pub const MAX_APPROVALS_PER_HOOK: usize = crate::task::MAX_APPROVED_HASHES;
/// Most hook names the admin may approve.
pub const MAX_APPROVED_HOOKS: usize = 1024;
/// Longest weftd version text, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest `hooks_error` text, in bytes.
pub const MAX_HOOKS_ERROR_LEN: usize = 1024;
/// Most versions with an expected weftd hash.
pub const MAX_EXPECTED_VERSIONS: usize = 256;

/// A node's integrity as the controller judges it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityState {
    /// Its weftd hash is the one expected for its version, and every hook it
    /// reported has an approved hash (or no approval at all: it never runs).
    Ok,
    /// Something differs from what the admin expects or approved (weftd's
    /// hash, a hook's hash, or the hooks directory was refused): the node gets
    /// no hook or script task until it is resolved.
    Mismatch,
    /// Nothing to compare: no report yet, or no expected hash for the version
    /// it runs (and nothing mismatched).
    #[default]
    Unknown,
}

impl IntegrityState {
    /// `ok`, `mismatch`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityState::Ok => "ok",
            IntegrityState::Mismatch => "mismatch",
            IntegrityState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for IntegrityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook file on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookHash {
    /// Its file name in the hooks directory.
    pub name: String,
    /// SHA-256 of its content, 64 lowercase hex digits.
    pub sha256: String,
}

/// `POST /v1/node/integrity`: what the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityReport {
    /// [`crate::api::API_VERSION`], if the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// weftd's version.
    pub weftd_version: String,
    /// SHA-256 of the weftd binary that runs (`/proc/self/exe`).
    pub weftd_sha256: String,
    /// Every hook in the hooks directory, by name (at most [`MAX_HOOKS`]);
    /// empty when the directory does not exist.
    #[serde(default)]
    pub hooks: Vec<HookHash>,
    /// Why the hooks directory or some hook in it was refused (wrong owner or
    /// mode, a symlink, a group-writable file): no hook runs while the
    /// directory is refused, and the controller counts it as a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_error: Option<String>,
}

/// Why a report or an admin request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// A hook name or a hash is malformed.
    #[error(transparent)]
    Field(#[from] TaskLimitError),
    /// A text is empty, too long or holds control characters.
    #[error("{field} {why}")]
    Text {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// Too many hooks, or a hook listed twice.
    #[error("hooks: {0}")]
    Hooks(String),
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), IntegrityError> {
    let why = if s.is_empty() {
        Some("is empty")
    } else if s.len() > max {
        Some("is too long")
    } else if crate::text::find_spoofing_char(s).is_some() {
        Some("holds control, bidirectional or zero-width characters")
    } else {
        None
    };
    why.map_or(Ok(()), |why| Err(IntegrityError::Text { field, why }))
}

/// Checks a weftd version text: 1..=[`MAX_VERSION_LEN`] bytes, no control
/// characters.
pub fn check_version(v: &str) -> Result<(), IntegrityError> {
    check_text("weftd_version", v, MAX_VERSION_LEN)
}

impl IntegrityReport {
    /// Checks what the controller stores: bounded, well-formed, each hook
    /// once.
    pub fn check(&self) -> Result<(), IntegrityError> {
        check_version(&self.weftd_version)?;
        check_sha256(&self.weftd_sha256)?;
        if self.hooks.len() > MAX_HOOKS {
            return Err(IntegrityError::Hooks(format!(
                "at most {MAX_HOOKS} (got {})",
                self.hooks.len()
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &self.hooks {
            check_hook_name(&h.name)?;
            check_sha256(&h.sha256)?;
            if !names.insert(h.name.as_str()) {
                return Err(IntegrityError::Hooks(format!("{:?} listed twice", h.name)));
            }
        }
        if let Some(e) = &self.hooks_error {
            check_text("hooks_error", e, MAX_HOOKS_ERROR_LEN)?;
        }
        Ok(())
    }
}

/// The controller's answer to a report, and a node's line in
/// `GET /v1/admin/integrity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIntegrity {
    /// The node's name.
    pub node: String,
    /// The state.
    pub state: IntegrityState,
    /// What differs (mismatch) or why nothing could be compared (unknown);
    /// empty when ok.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// When the node last reported, Unix milliseconds (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at_ms: Option<u64>,
    /// What it reported last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<IntegrityReport>,
}

/// `PUT /v1/admin/hooks/{name}`: approve one hash of a hook (several may be
/// approved at once, up to [`MAX_APPROVALS_PER_HOOK`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveHookRequest {
    /// [`crate::api::API_VERSION`], if the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

/// One approved hash of a hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookApproval {
    /// The hook's file name.
    pub name: String,
    /// The approved SHA-256.
    pub sha256: String,
    /// When it was approved, Unix milliseconds.
    pub approved_at_ms: u64,
}

/// `GET /v1/admin/hooks`, and the answer to an approve or revoke (the hook's
/// approvals after it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookApprovalList {
    /// By name, then hash.
    pub approvals: Vec<HookApproval>,
}

/// `PUT /v1/admin/integrity/expect`: the SHA-256 weftd of `version` must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRequest {
    /// [`crate::api::API_VERSION`], if the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// weftd's version (what `weftd --version` and the node's report say).
    pub version: String,
    /// 64 lowercase hex digits (`sha256sum weftd`).
    pub sha256: String,
}

impl ExpectRequest {
    /// Checks both fields.
    pub fn check(&self) -> Result<(), IntegrityError> {
        check_version(&self.version)?;
        check_sha256(&self.sha256)?;
        Ok(())
    }
}

/// One expected weftd hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedWeftd {
    /// weftd's version.
    pub version: String,
    /// The SHA-256 its binary must have.
    pub sha256: String,
    /// When the admin set it, Unix milliseconds.
    pub set_at_ms: u64,
}

/// `GET /v1/admin/integrity`: the expected hashes and every node's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityOverview {
    /// By version.
    pub expected: Vec<ExpectedWeftd>,
    /// By node name.
    pub nodes: Vec<NodeIntegrity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> IntegrityReport {
        IntegrityReport {
            api_version: None,
            weftd_version: "0.1.0".into(),
            weftd_sha256: "a".repeat(64),
            hooks: vec![HookHash {
                name: "rotate-logs".into(),
                sha256: "b".repeat(64),
            }],
            hooks_error: None,
        }
    }

    #[test]
    fn a_report_is_bounded_and_well_formed() {
        assert_eq!(report().check(), Ok(()));
        let bad_hash = IntegrityReport {
            weftd_sha256: "A".repeat(64),
            ..report()
        };
        assert!(bad_hash.check().is_err());
        let mut twice = report();
        twice.hooks.push(twice.hooks[0].clone());
        assert!(matches!(twice.check(), Err(IntegrityError::Hooks(_))));
        let mut bad_name = report();
        bad_name.hooks[0].name = ".hidden".into();
        assert!(bad_name.check().is_err());
        let spoof = IntegrityReport {
            weftd_version: "1\u{202e}".into(),
            ..report()
        };
        assert!(spoof.check().is_err());
        let long = IntegrityReport {
            hooks_error: Some("x".repeat(MAX_HOOKS_ERROR_LEN + 1)),
            ..report()
        };
        assert!(long.check().is_err());
        let at_bound = IntegrityReport {
            hooks_error: Some("x".repeat(MAX_HOOKS_ERROR_LEN)),
            ..report()
        };
        assert_eq!(at_bound.check(), Ok(()));
        let mut many = report();
        many.hooks = (0..=MAX_HOOKS)
            .map(|i| HookHash {
                name: format!("h{i}"),
                sha256: "c".repeat(64),
            })
            .collect();
        assert!(many.check().is_err());
        many.hooks.pop();
        assert_eq!(many.check(), Ok(()));
        assert!(
            serde_json::from_str::<IntegrityReport>(
                r#"{"weftd_version":"1","weftd_sha256":"x","evil":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn states_are_snake_case() {
        assert_eq!(
            serde_json::to_string(&IntegrityState::Mismatch).unwrap(),
            r#""mismatch""#
        );
        assert_eq!(IntegrityState::default(), IntegrityState::Unknown);
        assert_eq!(IntegrityState::Ok.to_string(), "ok");
    }
}
