//! `weft policy ...`: the controller's access policy, through its admin API
//! (the same code as `weft admin policy ...`).
//!
//! Needs the admin token; how the controller, the token and the trust are
//! found is in [`super::controller`] (`--controller`, `--token-file`,
//! `--pin-sha256`, ...).

use std::process::ExitCode;

use clap::Subcommand;

use super::admin::policy::{CheckArgs, PolicyCmd as AdminPolicyCmd, run as run_admin_policy};
use super::controller::ControllerArgs;

/// `weft policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Which rule of the controller's policy decides traffic from A to B (exit 0
    /// if allowed, 3 if not).
    Check {
        #[command(flatten)]
        check: CheckArgs,
        #[command(flatten)]
        ctl: ControllerArgs,
    },
    /// Print the controller's policy text (with --json: version, author, time too).
    Show {
        #[command(flatten)]
        ctl: ControllerArgs,
    },
}

/// Runs `weft policy ...`.
pub fn run(cmd: PolicyCmd, json: bool) -> anyhow::Result<ExitCode> {
    let (ctl, cmd) = match cmd {
        PolicyCmd::Show { ctl } => (ctl, AdminPolicyCmd::Show),
        PolicyCmd::Check { check, ctl } => (ctl, AdminPolicyCmd::Check(check)),
    };
    let c = ctl.admin_client()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(if rt.block_on(run_admin_policy(&c, cmd, json))? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::DENIED)
    })
}
