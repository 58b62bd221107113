//! `admin hook …` (approved hook hashes) and `admin integrity …` (the weftd
//! hash each version must have, and every node's integrity).

use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::integrity::{
    ExpectRequest, HookApprovalList, IntegrityOverview, IntegrityState, NodeIntegrity,
};
use weft_proto::task::{check_hook_name, check_sha256};

use super::print_json;
use crate::cmd::format::{datetime, out, safe, table};

#[derive(Debug, Subcommand)]
pub(super) enum HookCmd {
    /// Approve a hook by the SHA-256 of its file (`sha256sum
    /// /etc/weft/hooks/NAME` on a node you checked). A hook task runs only
    /// where the file's hash is an approved one; a node whose hook file has
    /// another hash is an integrity mismatch until it is approved or fixed.
    /// A hook may have up to 16 approved hashes (approve the new one before
    /// rolling it out, revoke the old one after).
    Approve {
        /// The hook's file name in the nodes' hooks directory.
        #[arg(value_parser = hook_name)]
        name: String,
        /// 64 hex digits.
        #[arg(value_parser = sha256)]
        sha256: String,
    },
    /// Revoke a hook's approved hashes (every one, or `--sha256` only): tasks
    /// of that hook are refused from now on.
    Revoke {
        /// The hook's name.
        #[arg(value_parser = hook_name)]
        name: String,
        /// Only this hash.
        #[arg(long, value_parser = sha256)]
        sha256: Option<String>,
    },
    /// List the approved hook hashes.
    List,
}

#[derive(Debug, Subcommand)]
pub(super) enum IntegrityCmd {
    /// Set the SHA-256 weftd's binary of a version must have (`sha256sum
    /// weftd` of the build you ship). Nodes running that version with
    /// another hash are a mismatch: an `integrity_mismatch` event, and no
    /// hook or script task until it is resolved. Setting it again replaces
    /// it.
    // Its own `--version` (weftd's) replaces the one every command inherits.
    #[command(disable_version_flag = true)]
    Expect {
        /// weftd's version (as `weftd --version` and `node show` say).
        #[arg(long)]
        version: String,
        /// 64 hex digits.
        #[arg(long, value_parser = sha256)]
        sha256: String,
    },
    /// The expected weftd hashes and every node's integrity (ok, mismatch,
    /// unknown) with the reasons; `--node` adds its weftd and hooks.
    Show {
        /// One node (name or key).
        #[arg(allow_hyphen_values = true, long)]
        node: Option<String>,
    },
}

/// A hook name as the controller accepts it.
fn hook_name(s: &str) -> Result<String, String> {
    check_hook_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A SHA-256 in hex (upper case accepted, sent lower case).
fn sha256(s: &str) -> Result<String, String> {
    let h = s.trim().to_ascii_lowercase();
    check_sha256(&h).map_err(|e| e.to_string())?;
    Ok(h)
}

pub(super) async fn hook(c: &Client, cmd: HookCmd, json: bool) -> anyhow::Result<()> {
    let list = match cmd {
        HookCmd::Approve { name, sha256 } => c.approve_hook(&name, &sha256).await?,
        HookCmd::Revoke { name, sha256 } => c.revoke_hook(&name, sha256.as_deref()).await?,
        HookCmd::List => c.list_hook_approvals().await?,
    };
    if json {
        return print_json(&list);
    }
    out(&approvals_table(&list));
    Ok(())
}

pub(super) async fn integrity(c: &Client, cmd: IntegrityCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        IntegrityCmd::Expect { version, sha256 } => {
            let req = ExpectRequest {
                api_version: None,
                version,
                sha256,
            };
            let e = c.expect_weftd(&req).await?;
            if json {
                return print_json(&e);
            }
            out(&format!(
                "weftd {} must have sha256 {} (since {})\n",
                safe(&e.version),
                e.sha256,
                datetime(e.set_at_ms)
            ));
        }
        IntegrityCmd::Show { node } => {
            let all = c.integrity(node.as_deref()).await?;
            if json {
                return print_json(&all);
            }
            out(&overview(&all, node.is_some()));
        }
    }
    Ok(())
}

fn approvals_table(list: &HookApprovalList) -> String {
    let rows: Vec<Vec<String>> = list
        .approvals
        .iter()
        .map(|a| vec![a.name.clone(), a.sha256.clone(), datetime(a.approved_at_ms)])
        .collect();
    table(&["HOOK", "SHA256", "APPROVED"], &rows)
}

fn overview(all: &IntegrityOverview, detail: bool) -> String {
    let expected: Vec<Vec<String>> = all
        .expected
        .iter()
        .map(|e| {
            vec![
                safe(&e.version).into_owned(),
                e.sha256.clone(),
                datetime(e.set_at_ms),
            ]
        })
        .collect();
    let mut s = if expected.is_empty() {
        "expected weftd: none (weft admin integrity expect --version V --sha256 H)\n".to_owned()
    } else {
        table(&["WEFTD VERSION", "EXPECTED SHA256", "SET"], &expected)
    };
    s.push('\n');
    let rows: Vec<Vec<String>> = all.nodes.iter().map(node_row).collect();
    s.push_str(&table(
        &["NODE", "INTEGRITY", "REPORTED", "WEFTD", "HOOKS", "REASONS"],
        &rows,
    ));
    if detail {
        for n in &all.nodes {
            s.push_str(&node_detail(n));
        }
    }
    s
}

fn node_row(n: &NodeIntegrity) -> Vec<String> {
    vec![
        safe(&n.node).into_owned(),
        n.state.to_string(),
        n.reported_at_ms.map(datetime).unwrap_or_else(|| "-".into()),
        n.report
            .as_ref()
            .map(|r| safe(&r.weftd_version).into_owned())
            .unwrap_or_else(|| "-".into()),
        n.report
            .as_ref()
            .map(|r| r.hooks.len().to_string())
            .unwrap_or_else(|| "-".into()),
        if n.reasons.is_empty() {
            "-".into()
        } else {
            safe(&n.reasons.join("; ")).into_owned()
        },
    ]
}

fn node_detail(n: &NodeIntegrity) -> String {
    let mut s = format!("\nnode {}: {}\n", safe(&n.node), n.state);
    for r in &n.reasons {
        s.push_str(&format!("  - {}\n", safe(r)));
    }
    if let Some(r) = &n.report {
        s.push_str(&format!(
            "  weftd {} sha256 {}\n",
            safe(&r.weftd_version),
            r.weftd_sha256
        ));
        for h in &r.hooks {
            s.push_str(&format!("  hook {} sha256 {}\n", h.name, h.sha256));
        }
        if let Some(e) = &r.hooks_error {
            s.push_str(&format!("  hooks refused: {}\n", safe(e)));
        }
    }
    if n.state == IntegrityState::Mismatch {
        s.push_str(
            "  hook and script tasks are refused until it is resolved (approve the new hash \
             after review, or restore the file)\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use weft_proto::integrity::{ExpectedWeftd, HookApproval, HookHash, IntegrityReport};

    use super::*;

    #[test]
    fn hashes_are_checked_before_anything_is_sent() {
        assert_eq!(sha256(&"AB".repeat(32)), Ok("ab".repeat(32)));
        assert!(sha256("abc").is_err());
        assert!(sha256(&"g".repeat(64)).is_err());
        assert!(hook_name("backup.sh").is_ok());
        assert!(hook_name("../x").is_err());
        assert!(hook_name(".hidden").is_err());
    }

    #[test]
    fn the_overview_shows_states_reasons_and_hooks() {
        let all = IntegrityOverview {
            expected: vec![ExpectedWeftd {
                version: "0.1.0".into(),
                sha256: "a".repeat(64),
                set_at_ms: 1_700_000_000_000,
            }],
            nodes: vec![
                NodeIntegrity {
                    node: "web1".into(),
                    state: IntegrityState::Mismatch,
                    reasons: vec!["hook backup is dd.. (not approved)".into()],
                    reported_at_ms: Some(1_700_000_000_000),
                    report: Some(IntegrityReport {
                        api_version: None,
                        weftd_version: "0.1.0".into(),
                        weftd_sha256: "a".repeat(64),
                        hooks: vec![HookHash {
                            name: "backup".into(),
                            sha256: "d".repeat(64),
                        }],
                        hooks_error: None,
                    }),
                },
                NodeIntegrity {
                    node: "web2".into(),
                    state: IntegrityState::Unknown,
                    reasons: vec!["no report yet".into()],
                    reported_at_ms: None,
                    report: None,
                },
            ],
        };
        let s = overview(&all, true);
        assert!(s.contains("WEFTD VERSION"), "{s}");
        let row = s.lines().find(|l| l.starts_with("web1")).unwrap();
        assert!(
            row.contains("mismatch") && row.contains("hook backup is"),
            "{row}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("web2") && l.contains("unknown"))
        );
        assert!(s.contains(&format!("  hook backup sha256 {}", "d".repeat(64))));
        assert!(s.contains("hook and script tasks are refused"));
        let list = HookApprovalList {
            approvals: vec![HookApproval {
                name: "backup".into(),
                sha256: "c".repeat(64),
                approved_at_ms: 1_700_000_000_000,
            }],
        };
        assert!(approvals_table(&list).contains("2023-11-14T22:13:20Z"));
    }
}
