//! `--database postgres://…` and its password and TLS options, shared by
//! `serve` and `migrate-store`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use tracing::warn;

use crate::store::postgres::{ConnectOptions, Target};

/// How to reach PostgreSQL besides the URL.
#[derive(Debug, Args)]
pub(super) struct PgOptions {
    /// File holding the database password (its first line; keep it mode
    /// 0600). Without it: $WEFT_DATABASE_PASSWORD, else $PGPASSWORD, else
    /// none (trust, peer or certificate authentication). Never put the
    /// password in the URL: the command line is visible to every user.
    #[arg(long, value_name = "FILE")]
    database_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the database server's certificate;
    /// without it, the system's roots. With TLS (sslmode=require, the default
    /// for a host that is not loopback) the chain and the host name are
    /// always verified.
    #[arg(long, value_name = "FILE")]
    database_ca: Option<PathBuf>,
    /// Allow sslmode=disable to a host that is not loopback: the password
    /// and every row cross the network unencrypted. Only for labs.
    #[arg(long)]
    database_insecure: bool,
}

impl PgOptions {
    /// Parses `url` with these options and the password from its file or the
    /// environment.
    pub(super) fn target(&self, url: &str) -> anyhow::Result<Target> {
        let password = match &self.database_password_file {
            Some(f) => Some(read_password(f)?),
            None => ["WEFT_DATABASE_PASSWORD", "PGPASSWORD"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty())),
        };
        let opts = ConnectOptions {
            password,
            ca_file: self.database_ca.clone(),
            insecure: self.database_insecure,
        };
        Ok(Target::parse(url, &opts)?)
    }

    /// Whether any of these options was given (they need a database URL).
    pub(super) fn any(&self) -> bool {
        self.database_password_file.is_some()
            || self.database_ca.is_some()
            || self.database_insecure
    }
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --database-password-file {}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_owned();
    if pw.is_empty() {
        bail!(
            "--database-password-file {}: the first line is empty; write the password there",
            path.display()
        );
    }
    if let Some(mode) = weft_tls::loose_mode(path) {
        warn!(file = %path.display(), mode = format!("{mode:04o}"), "the database password file is readable by other users (chmod 600 it)");
    }
    Ok(pw)
}
