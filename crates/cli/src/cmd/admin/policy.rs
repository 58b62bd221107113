//! `admin policy …`: the access policy document (show, set, check).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_api_client::Client;
use weft_proto::api::{PolicyCheckRequest, PolicyCheckResponse, SetPolicyRequest};

use super::{PolicyInvalid, print_json, read_file_arg};
use crate::cmd::format::out;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Print the policy text (with `--json`: version, author, time too).
    Show,
    /// Replace the policy with the text of FILE (`-` for stdin). Refused with
    /// line numbers when it does not parse, and when one of its tests fails.
    Set {
        /// The policy file (weft-policy TOML).
        file: PathBuf,
        /// Only if the policy is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Which rule decides traffic from A to B (exit 0 if allowed, 3 if not;
    /// 1 under the deprecated `weft-controller admin`).
    Check(CheckArgs),
}

/// The flow `policy check` asks about (also `weft policy check`'s).
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Initiator: a node name or selector (`tag:web`, `network:prod`, ...).
    #[arg(long)]
    from: String,
    /// Destination, same forms.
    #[arg(long)]
    to: String,
    /// tcp, udp, icmp, or any (the default: tcp and udp at --port, and
    /// icmp; allowed only if all three are).
    #[arg(long)]
    proto: Option<String>,
    /// Destination port (tcp, udp and any).
    #[arg(long)]
    port: Option<u16>,
}

/// Runs `admin policy …`; `Ok(false)` when `check` answers "not allowed"
/// (printed, not an error).
pub(crate) async fn run(c: &Client, cmd: PolicyCmd, json: bool) -> anyhow::Result<bool> {
    match cmd {
        PolicyCmd::Show => {
            let doc = c.get_policy().await?;
            if json {
                print_json(&doc)?;
            } else {
                out(&doc.text);
                if !doc.text.ends_with('\n') {
                    out("\n");
                }
            }
            Ok(true)
        }
        PolicyCmd::Set {
            file,
            expect_version,
        } => {
            let (text, source) = read_file_arg(&file)?;
            // Refused here with the file's name on each error (the controller
            // checks again, and runs the policy's tests against its nodes).
            if let Err(e) = weft_policy::parse(&text) {
                return Err(anyhow::Error::new(PolicyInvalid(e.render(&source, &text))));
            }
            let doc = c
                .set_policy(&SetPolicyRequest {
                    api_version: None,
                    text,
                    expect_version,
                })
                .await?;
            if json {
                print_json(&doc)?;
            } else {
                out(&format!(
                    "policy version {} set by {}\n",
                    doc.version, doc.author
                ));
            }
            Ok(true)
        }
        PolicyCmd::Check(CheckArgs {
            from,
            to,
            proto,
            port,
        }) => {
            let r = c
                .check_policy(&PolicyCheckRequest {
                    api_version: None,
                    from,
                    to,
                    proto,
                    port,
                })
                .await?;
            if json {
                print_json(&r)?;
            } else {
                out(&check_text(&r));
            }
            Ok(r.allowed)
        }
    }
}

/// The human answer of `policy check`: each pair's explanation, then the verdict.
fn check_text(r: &PolicyCheckResponse) -> String {
    let mut text = String::new();
    if r.pairs.is_empty() {
        text.push_str("no pair of distinct nodes sharing a network matches\n");
    }
    for p in &r.pairs {
        text.push_str(&p.explanation);
        text.push('\n');
    }
    if r.representative {
        text.push_str("(a side matched no node; a representative node stood in for it)\n");
    }
    text.push_str(&format!(
        "policy version {}: {}\n",
        r.version,
        if r.allowed { "allowed" } else { "not allowed" }
    ));
    text
}
