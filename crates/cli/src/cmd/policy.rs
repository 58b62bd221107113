//! `weft policy ...`: the controller's access policy, through its admin API
//! (the same calls as `weft-controller admin policy ...`).
//!
//! Needs the admin token: `--token-file`, else `$WEFT_ADMIN_TOKEN`. Controller:
//! `--controller`, else `$WEFT_CONTROLLER_URL`. Trust: `--pin-sha256` (the
//! fingerprint the controller printed) or `--ca-file`, else the system roots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_proto::api::PolicyCheckRequest;

/// How to reach the controller's admin API.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Controller URL, for example `https://ctl.example.net:8443`.
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL")]
    controller: Option<String>,
    /// File holding the admin token (else $WEFT_ADMIN_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust exactly the controller certificate with this SHA-256.
    #[arg(long, value_name = "HEX", conflicts_with = "ca_file")]
    pin_sha256: Option<String>,
    /// CA certificate(s) to trust (PEM).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

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
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctl: ControllerArgs,
    },
    /// Print the controller's policy text.
    Show {
        /// JSON output (version, author, time, text).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctl: ControllerArgs,
    },
}

fn client(a: &ControllerArgs) -> anyhow::Result<Client> {
    let Some(url) = a.controller.clone() else {
        bail!("pass --controller URL (or set WEFT_CONTROLLER_URL)");
    };
    let token = match &a.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("WEFT_ADMIN_TOKEN")
            .context("no admin token: pass --token-file or set WEFT_ADMIN_TOKEN")?
            .trim()
            .to_owned(),
    };
    let trust = match (&a.pin_sha256, &a.ca_file) {
        (Some(fp), _) => Trust::Fingerprint(parse_fingerprint(fp)?),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => Trust::SystemRoots,
    };
    let cfg = ClientConfig {
        trust,
        ..ClientConfig::new(url)
    };
    Ok(Client::new(cfg)?.with_bearer(&token)?)
}

/// Runs `weft policy ...`.
impl PolicyCmd {
    /// Whether `--json` was given.
    pub(crate) fn json(&self) -> bool {
        match self {
            PolicyCmd::Check { json, .. } | PolicyCmd::Show { json, .. } => *json,
        }
    }
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        PolicyCmd::Show { json, ctl } => {
            let c = client(&ctl)?;
            let doc = rt.block_on(c.get_policy())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", doc.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Check {
            from,
            to,
            proto,
            port,
            json,
            ctl,
        } => {
            let c = client(&ctl)?;
            let r = rt.block_on(c.check_policy(&PolicyCheckRequest {
                api_version: None,
                from,
                to,
                proto,
                port,
            }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if r.pairs.is_empty() {
                    println!("no pair of distinct nodes sharing a network matches");
                }
                for p in &r.pairs {
                    println!("{}", p.explanation);
                }
                if r.representative {
                    println!("(a side matched no node; a representative node stood in for it)");
                }
                println!(
                    "policy version {}: {}",
                    r.version,
                    if r.allowed { "allowed" } else { "not allowed" }
                );
            }
            Ok(if r.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(crate::exit::DENIED)
            })
        }
    }
}
