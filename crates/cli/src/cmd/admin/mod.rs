//! `weft admin …`: the controller's admin API from the command line.
//!
//! Talks to a running controller only through `weft-api-client`; how it finds
//! the controller, the admin token and what to trust is in
//! [`crate::cmd::controller`]. One module per aggregate: networks (and their
//! routes), tokens, nodes, relays, policy; the audit log is here.
//!
//! `weft-controller admin …` runs this same code ([`alias_main`]) for one
//! release, with a deprecation note on stderr.

mod data;
mod dns;
mod events;
mod firewall;
mod integrity;
mod metrics;
mod networks;
mod nodes;
pub mod policy;
mod relays;
mod services;
mod tasks;
mod tokens;
mod usage;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use weft_api_client::Client;
use weft_proto::api::AuditEntry;

use super::controller::{ControllerArgs, deprecated_flag_notes};
use super::format::{datetime, out, table};
use networks::{NetworkCmd, RouteCmd};
use nodes::NodeCmd;
use policy::PolicyCmd;
use relays::RelayCmd;
use tokens::TokenCmd;

/// `weft admin [connection flags] <command>`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    ctl: ControllerArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Overlay networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Relays (registered relays are in every node's map).
    #[command(subcommand)]
    Relay(RelayCmd),
    /// The access policy (one document, versioned).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Subnet routes offered by gateway nodes (pending until approved).
    #[command(subcommand)]
    Route(RouteCmd),
    /// Usage from the data planes' connection tracking: bytes and flows by
    /// node, peer or service port, and sidecar users' bytes (`--by user`).
    Usage(usage::UsageArgs),
    /// The anomaly events agents raised (scans, unusual outbound volume,
    /// drop spikes, slow controller), oldest first, each with the baseline it
    /// broke. Thresholds: `weft admin network anomaly NET`.
    Events(events::EventsArgs),
    /// Hook scripts: approve or revoke the SHA-256 a hook's file must have
    /// to run (`weft admin hook approve NAME SHA256`).
    #[command(subcommand)]
    Hook(integrity::HookCmd),
    /// What nodes run: the SHA-256 weftd of each version must have, and
    /// every node's integrity (ok, mismatch, unknown).
    #[command(subcommand)]
    Integrity(integrity::IntegrityCmd),
    /// Key/value data for nodes, per node, tag or network, carried in their
    /// maps (node over tag over network); read on a node with `weft node get
    /// data KEY`.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Secrets for nodes: sealed here to each node's key, so the controller
    /// only ever holds ciphertext; read on a node by root (or allowed uids)
    /// with `weft node get secret KEY`.
    #[command(subcommand)]
    Secret(data::SecretCmd),
    /// Remote tasks: run a built-in action, a script or an approved hook on
    /// a node, a tag or a network, with hard limits; follow their results.
    #[command(subcommand)]
    Task(tasks::TaskCmd),
    /// DNS for every node's resolver: the blocklist (`weft admin dns
    /// blocklist set FILE [--mode nxdomain|zero]`, `show`, `clear`).
    #[command(subcommand)]
    Dns(dns::DnsCmd),
    /// The host firewall: a default-drop nftables table on the nodes a
    /// declared file selects (`show`, `set FILE`, `check FILE`), and dynamic
    /// rules on one node (`allow NODE --port 80 --from CIDR --for 2h`,
    /// `rules`, `revoke ID`).
    #[command(subcommand)]
    Firewall(firewall::FirewallCmd),
    /// Named services: a name and a stable virtual IP in a network, served
    /// by provider nodes, checked for health (`create NAME --network NET
    /// --node A,B --port 5432/tcp`, `list`, `show`, `remove`; `approve` or
    /// `reject` a node's offer).
    #[command(subcommand)]
    Service(services::ServiceCmd),
    /// The audit log (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries older than this id (paging).
        #[arg(long)]
        before: Option<u64>,
        /// Only entries about this target (network name, node key, `token:<id>`).
        #[arg(allow_hyphen_values = true, long)]
        target: Option<String>,
    },
}

/// The deprecated spelling, `weft-controller admin …`: the same arguments.
#[derive(Debug, Parser)]
#[command(
    name = "weft-controller admin",
    version,
    about = "Deprecated alias of `weft admin` (same arguments); goes in the next release."
)]
struct AliasCli {
    /// Print the result as JSON (errors too, on stdout).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    args: AdminArgs,
}

/// What `weft-controller admin` says on stderr after it ran.
pub const ALIAS_NOTE: &str = "note: `weft-controller admin` is deprecated and goes in the next release; use `weft admin` (same arguments)";

/// Entry point of `weft-controller admin …` (called by the `weft-controller`
/// binary with its arguments after `admin`): parses them like `weft admin`,
/// runs the same code, then prints [`ALIAS_NOTE`] on stderr. A policy check
/// that answers "not allowed" still exits 1 there, as it did (3 under `weft
/// admin`).
pub fn alias_main<I, S>(args: I) -> ExitCode
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = std::iter::once("weft-controller admin".into())
        .chain(args.into_iter().map(Into::into))
        .collect();
    let cli = match AliasCli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            eprintln!("{ALIAS_NOTE}");
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(crate::exit::USAGE));
        }
    };
    for note in deprecated_flag_notes(&argv) {
        eprintln!("{note}");
    }
    let code = run(cli.args, cli.json, 1);
    eprintln!("{ALIAS_NOTE}");
    code
}

/// Runs `weft admin …` and reports its errors itself: with `json`, as
/// `{"error": {"code", "message"}}` on stdout, else `error: …` on stderr;
/// exit status 1. A policy check that answers "not allowed" exits `denied`.
pub fn run(args: AdminArgs, json: bool, denied: u8) -> ExitCode {
    let result = (|| {
        let client = args.ctl.admin_client()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(dispatch(&client, args.command, json))
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(denied),
        Err(e) => {
            if json && e.is::<tasks::NotAllCompleted>() {
                // The task's JSON is on stdout already.
                eprintln!("error: {e:#}");
            } else if json {
                out(&format!("{}\n", error_json(&e)));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(crate::exit::ERROR)
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?));
    Ok(())
}

/// The text of FILE (`-`: standard input) and the name to put on its errors.
fn read_file_arg(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    if file.as_os_str() == "-" {
        let text = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
        Ok((text, "<stdin>".to_owned()))
    } else {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Ok((text, file.display().to_string()))
    }
}

/// The policy file does not parse (`policy_invalid`, as the controller says).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PolicyInvalid(String);

/// `{"error": {"code": ..., "message": ...}}`: the controller's code when it
/// answered with one, else what failed on this side.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    use weft_api_client::ClientError as E;
    let code = match e.downcast_ref::<E>() {
        Some(c) => match c {
            E::Api { body, .. } => body.code.clone(),
            E::InvalidUrl(_) => "invalid_url".into(),
            E::InsecureHttp(_) => "insecure_http".into(),
            E::Trust(_) => "tls_trust".into(),
            E::Connect { .. } => "connect_failed".into(),
            E::Timeout(_) => "timeout".into(),
            E::Decode(_) => "unexpected_response".into(),
            _ => "http_error".into(),
        },
        None if e.is::<PolicyInvalid>() => "policy_invalid".into(),
        None if e.is::<dns::BlocklistInvalid>() => "dns_blocklist_invalid".into(),
        None if e.is::<firewall::FirewallInvalid>() => "firewall_invalid".into(),
        None => "client_error".into(),
    };
    serde_json::json!({ "error": { "code": code, "message": format!("{e:#}") } })
}

/// Runs one command; `Ok(false)` only for a policy check that answered no.
async fn dispatch(c: &Client, cmd: AdminCommand, json: bool) -> anyhow::Result<bool> {
    match cmd {
        AdminCommand::Network(n) => networks::network(c, n, json).await?,
        AdminCommand::Route(r) => networks::route(c, r, json).await?,
        AdminCommand::Token(t) => tokens::run(c, t, json).await?,
        AdminCommand::Node(n) => nodes::run(c, n, json).await?,
        AdminCommand::Relay(r) => relays::run(c, r, json).await?,
        AdminCommand::Policy(p) => return policy::run(c, p, json).await,
        AdminCommand::Events(a) => events::events(c, a, json).await?,
        AdminCommand::Hook(h) => integrity::hook(c, h, json).await?,
        AdminCommand::Integrity(i) => integrity::integrity(c, i, json).await?,
        AdminCommand::Data(d) => data::data(c, d, json).await?,
        AdminCommand::Secret(s) => data::secret(c, s, json).await?,
        AdminCommand::Usage(a) => usage::usage(c, a, json).await?,
        AdminCommand::Task(t) => tasks::run(c, t, json).await?,
        AdminCommand::Dns(d) => dns::run(c, d, json).await?,
        AdminCommand::Firewall(f) => firewall::run(c, f, json).await?,
        AdminCommand::Service(s) => services::run(c, s, json).await?,
        AdminCommand::Audit {
            limit,
            before,
            target,
        } => {
            let list = c.audit(limit, before, target.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else {
                out(&audit_table(&list.entries));
            }
        }
    }
    Ok(true)
}

fn audit_table(entries: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                datetime(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_parses_what_weft_admin_parses() {
        let cli = AliasCli::try_parse_from([
            "weft-controller admin",
            "--data-dir",
            "/tmp/x",
            "--fingerprint",
            "sha256:00",
            "node",
            "list",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.args.command,
            AdminCommand::Node(NodeCmd::List { .. })
        ));
    }
}
