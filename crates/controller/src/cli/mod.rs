//! The `weft-controller` command line: `serve`, `migrate-store`.
//!
//! `weft-controller admin …` is a deprecated alias of `weft admin …` for one
//! release; the `weft-controller` binary hands it to `weft-cli` before this
//! parser sees it.

mod database;
mod migrate_store;
mod serve;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weft controller: holds the desired state of weft overlay networks and
/// streams each node its network map.
#[derive(Debug, Parser)]
#[command(
    name = "weft-controller",
    version,
    after_help = "Manage networks, join tokens and nodes with `weft admin …` \
(`weft-controller admin …` still works for this release, deprecated)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (HTTPS API and map streams).
    Serve(Box<serve::ServeArgs>),
    /// Copy a SQLite installation into an empty PostgreSQL database, with
    /// every table's row count verified (--dry-run: copy, count, roll back).
    MigrateStore(migrate_store::MigrateStoreArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::MigrateStore(args) => migrate_store::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout, ignoring a closed pipe.
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
