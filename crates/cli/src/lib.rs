//! The `weft` command-line tool.
//!
//! One module per subcommand under [`cmd`]; this file parses arguments, sets up
//! logging and turns errors into a message and an exit code. Human output goes to
//! stdout, progress and logs to stderr, machine output with `--json`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI's job is to print; output is centralised in cmd modules"
)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod clock;
pub mod cmd;

/// Exit statuses (also in README's CLI reference).
pub mod exit {
    /// Something failed (the message says what).
    pub const ERROR: u8 = 1;
    /// Bad arguments (clap's usage errors).
    pub const USAGE: u8 = 2;
    /// The answer is no: `why-blocked` blocked, `policy check` not allowed,
    /// `identity verify` below the difficulty.
    pub const DENIED: u8 = 3;
}

const EXIT_HELP: &str = "Exit status: 0 success; 1 error; 2 usage error (bad arguments); \
3 the answer is no (why-blocked: blocked, policy check and admin policy check: not allowed, \
identity verify: rejected). With --json (before or after the subcommand), an error is \
printed to stdout as {\"error\": {\"code\": \"...\", \"message\": \"...\"}}.";

/// An error with a stable code (the agent's error codes, and the CLI's own),
/// for `--json` output.
#[derive(Debug)]
pub struct CodedError {
    /// Machine-readable code, e.g. `not_joined`, `minting`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for CodedError {}

/// weft: a self-hosted zero-trust overlay network.
///
/// Every machine runs `weftd`; `weft` manages identities and talks to the local
/// agent and the controller.
#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    propagate_version = true,
    after_help = EXIT_HELP
)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `info`, `debug`, `weft_identity=trace`).
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "warn")]
    log: String,

    /// Print the result as JSON on stdout (errors too, as {"error": {"code",
    /// "message"}}; progress stays on stderr). Accepted before or after the
    /// subcommand.
    #[arg(long, global = true)]
    json: bool,

    #[command(flatten)]
    socket: cmd::agent::SocketArg,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this node, its networks, the controller connection and every peer.
    Status,
    /// Join a controller (first time: --controller and a token) or reconnect, and
    /// wait until the node is up (registered, map received, interfaces configured).
    Up(cmd::agent::UpArgs),
    /// Leave the overlay: remove weft's interfaces, routes and sessions (stays joined).
    Down,
    /// Ping a peer over the overlay and show the round-trip time and path.
    Ping(cmd::agent::PingArgs),
    /// Explain a peer's path: its candidate addresses, what was tried, what answered.
    Why(cmd::agent::WhyArgs),
    /// Check the underlay: UDP reachability, reflexive address, whether the NAT
    /// maps endpoint-independently, latency to each relay.
    Netcheck(cmd::netcheck::NetcheckArgs),
    /// Would this node's live policy let a new connection to (or from) a peer
    /// through, and which rule decides? Exit status 3 when blocked.
    #[command(name = "why-blocked")]
    WhyBlocked(cmd::agent::WhyBlockedArgs),
    /// Print this node's Prometheus metrics (per-peer traffic, path, RTT, drops,
    /// I/O errors, batch sizes, DNS, controller link, CPU and memory), for hosts
    /// that run no scraper; `weftd --metrics-listen` serves the same text.
    Metrics(cmd::agent::MetricsArgs),
    /// Show the anomaly events this node's agent raised lately (scans,
    /// unusual outbound volume, drop spikes, slow controller), each with the
    /// baseline it broke; the controller's log is `weft admin events`.
    Events,
    /// The local resolver: `weft dns log [--follow] [-n N]` (its query log,
    /// weftd --dns-query-log) and `weft dns stats` (queries, cache hits,
    /// blocked, top names, upstream latency and health).
    #[command(subcommand)]
    Dns(cmd::agent::DnsCmd),
    /// Read what the node API serves to workloads on this node (weftd
    /// --node-api-socket): `weft node get metadata`, `data [KEY]`, `secret
    /// KEY`. Exit status 1 when refused or missing.
    Node(cmd::agent::NodeArgs),
    /// Run a command in its own network namespace, owned by weftd: `--net
    /// none` (loopback only), `host-loopback` (plus forwarded ports of this
    /// host's 127.0.0.1), `bridged` (NAT out; the overlay as this node) or
    /// `custom` (bridged, only to --allow destinations). Removed when the
    /// command ends.
    Run(cmd::agent::RunArgs),
    /// Log in to a node's `weftd --ssh` over the overlay with the system's
    /// `ssh`: `weft ssh [USER@]NODE [-- CMD...]`. Who may log in as which
    /// user comes from the policy's [[ssh]] rules; the host key comes from
    /// the map (no trust-on-first-use prompt). `weft ssh --config` prints an
    /// ssh_config snippet for scp, rsync and port forwarding by node name.
    Ssh(cmd::agent::SshArgs),
    /// Named services: `weft service list` (what this node may use, with
    /// names, virtual IPs and health, and what it provides) and `weft service
    /// advertise NAME --port 5432` (offer to provide one; an admin approves).
    #[command(subcommand)]
    Service(cmd::agent::ServiceCmd),
    /// The controller's access policy: which rule decides A -> B (admin token).
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Create and inspect node identities (Ed25519 key + proof of work).
    #[command(subcommand)]
    Identity(cmd::identity::IdentityCmd),
    /// Manage networks, join tokens, nodes, relays, routes, the policy and the
    /// audit log through the controller's admin API (admin token).
    Admin(cmd::admin::AdminArgs),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    init_logging(&cli.log);
    for note in cmd::controller::deprecated_flag_notes(std::env::args_os()) {
        eprintln!("{note}");
    }
    let json = cli.json;
    let result = match cli.command {
        Command::Status => cmd::agent::status(&cli.socket, json),
        Command::Up(a) => cmd::agent::up(&cli.socket, a, json),
        Command::Down => cmd::agent::down(&cli.socket, json),
        Command::Ping(a) => cmd::agent::ping(&cli.socket, a, json),
        Command::Run(a) => cmd::agent::run(&cli.socket, a, json),
        Command::Why(a) => cmd::agent::why(&cli.socket, a, json),
        Command::Netcheck(a) => cmd::netcheck::run(&cli.socket, a, json),
        Command::WhyBlocked(a) => cmd::agent::why_blocked(&cli.socket, a, json),
        Command::Metrics(a) => cmd::agent::metrics(&cli.socket, &a, json),
        Command::Events => cmd::agent::events(&cli.socket, json),
        Command::Dns(c) => cmd::agent::dns(&cli.socket, c, json),
        Command::Node(a) => cmd::agent::node(&a, json),
        Command::Ssh(a) => cmd::agent::ssh(&cli.socket.socket, a),
        Command::Service(c) => cmd::agent::service(&cli.socket, c, json),
        Command::Identity(c) => cmd::identity::run(c, json),
        Command::Policy(c) => cmd::policy::run(c, json),
        Command::Admin(a) => Ok(cmd::admin::run(a, json, exit::DENIED)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!("{}", error_json(&e));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(exit::ERROR)
        }
    }
}

/// `{"error": {"code": ..., "message": ...}}` for `--json`.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<CodedError>())
        .map_or("error", |c| c.code.as_str());
    serde_json::json!({ "error": { "code": code, "message": format!("{e:#}") } })
}

/// A closed pipe ends `weft` quietly, as it does any Unix tool (`weft why PEER
/// | head -1`): Rust ignores SIGPIPE, which turned the write error into a
/// panic with a backtrace in `println!`.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs the default disposition, no handler code; done first
    // thing in main, before any other thread exists.
    #[expect(unsafe_code, reason = "restoring SIGPIPE's default disposition")]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_as_json_carry_the_code() {
        let e = anyhow::Error::new(CodedError {
            code: "not_joined".into(),
            message: "this node has not joined".into(),
        })
        .context("weft up");
        let v = error_json(&e);
        assert_eq!(v["error"]["code"], "not_joined");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("has not joined")
        );
        assert_eq!(
            error_json(&anyhow::anyhow!("boom"))["error"]["code"],
            "error"
        );
    }

    /// Every command of the tree is well formed (clap's own checks: unique
    /// argument names, e.g. a `--version` of a command's own against the
    /// inherited version flag, which would make that command panic).
    #[test]
    fn the_command_tree_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_one_global_flag_before_or_after_the_subcommand() {
        for argv in [
            &["weft", "--json", "status"][..],
            &["weft", "status", "--json"],
            &[
                "weft",
                "--json",
                "admin",
                "--data-dir",
                "/d",
                "node",
                "list",
            ],
            &[
                "weft",
                "admin",
                "--data-dir",
                "/d",
                "node",
                "list",
                "--json",
            ],
            &[
                "weft",
                "policy",
                "show",
                "--json",
                "--controller",
                "https://c",
            ],
            &["weft", "identity", "show", "/k", "--json"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert!(cli.json, "{argv:?}");
        }
        assert!(!Cli::try_parse_from(["weft", "status"]).unwrap().json);
    }

    #[test]
    fn the_pin_flag_is_pin_sha256_with_the_old_spelling_hidden() {
        let help = Cli::try_parse_from(["weft", "admin", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("--pin-sha256"), "{help}");
        assert!(!help.contains("--fingerprint"), "{help}");
        assert!(
            Cli::try_parse_from(["weft", "admin", "--fingerprint", "ab", "node", "list"]).is_ok()
        );
    }

    /// Every `--controller` of `weft` reads one environment variable.
    #[test]
    fn the_controller_url_has_one_environment_variable() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_long() == Some("controller") {
                    assert_eq!(
                        arg.get_env().and_then(|e| e.to_str()),
                        Some("WEFT_CONTROLLER_URL"),
                        "{path} --controller"
                    );
                    found.push(path.to_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::command(), "weft", &mut found);
        for want in [
            "weft up",
            "weft admin",
            "weft policy check",
            "weft policy show",
        ] {
            assert!(found.iter().any(|f| f == want), "{want} in {found:?}");
        }
    }

    /// A node key is URL-safe base64, so one in 64 starts with `-`. Every
    /// argument that takes a key must accept one as it is printed, without
    /// `--` or `--node=` (a CI run failed on `node rename -01fI…`).
    #[test]
    fn every_node_key_argument_accepts_a_key_that_starts_with_a_hyphen() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string().to_lowercase());
                let takes_key = help.is_some_and(|h| {
                    ["key or name", "name or key", "names or keys", "node key"]
                        .iter()
                        .any(|k| h.contains(k))
                });
                if takes_key {
                    assert!(
                        arg.is_allow_hyphen_values_set(),
                        "{path} {}: takes a node key but refuses one starting with '-'",
                        arg.get_id()
                    );
                    found.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::command(), "weft", &mut found);
        assert!(found.len() >= 20, "{found:?}");

        let key = "-01fI0hqfs8cfkIi8TyuE6eRm-jXTfsw66EVVQXvqJU";
        assert_eq!(
            key.parse::<weft_proto::NodeKey>()
                .map(|k| k.to_string())
                .as_deref(),
            Ok(key)
        );
        for argv in [
            &["weft", "admin", "node", "rename", key, "db2", "--json"][..],
            &["weft", "admin", "node", "remove", key],
            &["weft", "admin", "node", "tag", key, "web", "db"],
            &["weft", "admin", "route", "approve", key, "10.0.0.0/24"],
            &["weft", "admin", "events", "--node", key, "--json"],
            &["weft", "admin", "audit", "--target", key],
            &[
                "weft",
                "admin",
                "service",
                "create",
                "db",
                "--network",
                "prod",
                "--node",
                key,
                "--port",
                "5432/tcp",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let dbg = format!("{:?}", cli.command);
            assert!(dbg.contains(key), "{argv:?}: {dbg}");
        }
        // Flags after the key are still flags.
        assert!(
            Cli::try_parse_from(["weft", "admin", "node", "rename", key, "db2", "--json"])
                .is_ok_and(|c| c.json)
        );
        // And a typo is still a usage error where no key is expected.
        assert!(Cli::try_parse_from(["weft", "admin", "node", "list", "-0"]).is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = Cli::try_parse_from(["weft", "up", "--advertise-routes", "0.0.0.0/0"]).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(exit::USAGE));
    }
}
