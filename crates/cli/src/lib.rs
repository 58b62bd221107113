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

pub mod cmd;

/// weft: a self-hosted zero-trust overlay network.
///
/// Every machine runs `weftd`; `weft` manages identities and talks to the local
/// agent and the controller.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `info`, `debug`, `weft_identity=trace`).
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "warn")]
    log: String,

    #[command(flatten)]
    socket: cmd::agent::SocketArg,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this node, its networks, the controller connection and every peer.
    Status(cmd::agent::StatusArgs),
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
    /// through, and which rule decides? Exit status 1 when blocked.
    #[command(name = "why-blocked")]
    WhyBlocked(cmd::agent::WhyBlockedArgs),
    /// The controller's access policy: which rule decides A -> B (admin token).
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Create and inspect node identities (Ed25519 key + proof of work).
    #[command(subcommand)]
    Identity(cmd::identity::IdentityCmd),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Status(a) => cmd::agent::status(&cli.socket, a),
        Command::Up(a) => cmd::agent::up(&cli.socket, a),
        Command::Down => cmd::agent::down(&cli.socket),
        Command::Ping(a) => cmd::agent::ping(&cli.socket, a),
        Command::Why(a) => cmd::agent::why(&cli.socket, a),
        Command::Netcheck(a) => cmd::netcheck::run(&cli.socket, a),
        Command::WhyBlocked(a) => cmd::agent::why_blocked(&cli.socket, a),
        Command::Identity(c) => cmd::identity::run(c),
        Command::Policy(c) => cmd::policy::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
