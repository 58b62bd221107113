//! `weft-controller migrate-store`: moves an installation from SQLite to
//! PostgreSQL, verifying every table's row count.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use super::database::PgOptions;
use super::out;
use crate::serve::DB_FILE;
use crate::store::postgres::copy::{CopyReport, TableCount, copy_from_sqlite};

/// Copy every table of a SQLite installation into an empty PostgreSQL
/// database, in one transaction, and check each table's row count before
/// committing. The SQLite file is only read.
///
/// Stop the controller first (a running one is refused, except with
/// --dry-run: writes after the copy would be lost), copy, then start it with
/// `serve --data-dir DIR --database URL` (the TLS pair and admin token stay
/// in DIR). The SQLite file stays as it was: keep it as a backup.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  weft-controller migrate-store --from sqlite:/var/lib/weft-controller \\\n      --to postgres://weft@db.internal/weft --database-password-file /etc/weft/db.pass --dry-run"
)]
pub(super) struct MigrateStoreArgs {
    /// The installation to copy: sqlite:DIR (the data directory holding
    /// controller.db) or sqlite:FILE.
    #[arg(long, value_name = "sqlite:DIR")]
    from: String,
    /// The database to copy into (empty; weft's schema is created):
    /// postgres://USER@HOST[:PORT]/DBNAME[?sslmode=require], no password.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Do everything (create the schema, copy, count), then roll back:
    /// nothing is written. Works while the controller runs.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pg: PgOptions,
}

pub(super) fn run(args: MigrateStoreArgs) -> anyhow::Result<()> {
    let Some(from) = args.from.strip_prefix("sqlite:") else {
        bail!(
            "--from {:?}: write sqlite:DIR (the controller's data directory)",
            args.from
        );
    };
    let from = PathBuf::from(from);
    let (dir, db) = if from.is_dir() {
        (from.clone(), from.join(DB_FILE))
    } else {
        (
            from.parent().map(PathBuf::from).unwrap_or_default(),
            from.clone(),
        )
    };
    if !db.is_file() {
        bail!(
            "{} does not exist: --from names the data directory of a SQLite controller (sqlite:DIR)",
            db.display()
        );
    }
    let target = args.pg.target(&args.to)?;
    // A running controller holds the directory's lock.
    let _lock = match weft_tls::lock_dir(&dir) {
        Ok(l) => Some(l),
        Err(weft_tls::LockError::Busy { pid, .. }) if args.dry_run => {
            out(&format!(
                "note: a controller{} is running on {}; a dry run reads a consistent snapshot\n",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                dir.display()
            ));
            None
        }
        Err(e @ weft_tls::LockError::Busy { .. }) => {
            bail!(
                "{e}: stop it first (what it writes after the copy would be lost), or run with --dry-run"
            )
        }
        Err(e) => return Err(e).context("locking the data directory"),
    };
    out(&format!(
        "{} {} into {}\n",
        if args.dry_run {
            "Dry run: copying"
        } else {
            "Copying"
        },
        db.display(),
        target.shown()
    ));
    let report = copy_from_sqlite(&db, &target, args.dry_run, |t: &TableCount| {
        out(&format!("  {:<24} {:>10} rows  ok\n", t.table, t.postgres));
    })?;
    print_summary(&report, &dir, &args.to);
    Ok(())
}

fn print_summary(report: &CopyReport, dir: &std::path::Path, url: &str) {
    let tables = report.tables.len();
    let rows = report.rows();
    if report.committed {
        out(&format!(
            "Copied {rows} rows in {tables} tables; every table's count matches.\nStart the controller with: weft-controller serve --data-dir {} --database {url}\nKeep {} as a backup; it is no longer written.\n",
            dir.display(),
            dir.join(DB_FILE).display()
        ));
    } else {
        out(&format!(
            "Dry run: {rows} rows in {tables} tables would be copied; every table's count matches. Nothing was written.\n"
        ));
    }
}
