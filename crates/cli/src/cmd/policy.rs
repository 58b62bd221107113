//! `weft policy ...`: the controller's access policy, through its admin API
//! (the same code as `weft admin policy ...`).
//!
//! Needs the admin token; how the controller, the token and the trust are
//! found is in [`super::controller`] (`--controller`, `--token-file`,
//! `--pin-sha256`, ...).

use std::process::ExitCode;

use clap::Subcommand;

use super::admin::policy::{PolicyCmd as AdminPolicyCmd, run as run_admin_policy};
use super::controller::ControllerArgs;

/// `weft policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Which rule of the controller's policy decides traffic from A to B (exit 0
    /// if allowed, 3 if not).
    Check {
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
        PolicyCmd::Check {
            from,
            to,
            proto,
            port,
            ctl,
        } => (
            ctl,
            AdminPolicyCmd::Check {
                from,
                to,
                proto,
                port,
            },
        ),
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
