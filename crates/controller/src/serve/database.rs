//! Which database `serve` runs on: SQLite in the data directory (the
//! default), or PostgreSQL (`--database postgres://…`), where several
//! controller replicas may share one database. The data directory keeps the
//! TLS pair, the admin token written at the first start, and the address
//! files either way.

use std::future::Future;
use std::path::Path;

use tokio::net::TcpListener;
use tracing::info;
use weft_proto::netmap::Relay;

use super::{Config, DB_FILE, Prepared, ServeError, StateMode};
use crate::store::postgres::{PgStore, Target};
use crate::store::sqlite::SqliteStore;

/// The opened store and loaded state, on either driver.
pub enum Opened {
    /// `controller.db` in the data directory.
    Sqlite(Box<Prepared<SqliteStore>>),
    /// A PostgreSQL database.
    Postgres(Box<Prepared<PgStore>>),
}

impl Opened {
    /// Whether this start created the admin token.
    pub fn admin_token_created(&self) -> bool {
        match self {
            Opened::Sqlite(p) => p.admin_token_created,
            Opened::Postgres(p) => p.admin_token_created,
        }
    }

    /// Where the admin token was written.
    pub fn admin_token_path(&self) -> &Path {
        match self {
            Opened::Sqlite(p) => &p.admin_token_path,
            Opened::Postgres(p) => &p.admin_token_path,
        }
    }

    /// Where another start (another replica) wrote the admin token, when
    /// this one did not create it: `host:path` from its audit record.
    pub fn admin_token_origin(&self) -> Option<&str> {
        match self {
            Opened::Sqlite(p) => p.admin_token_origin.as_deref(),
            Opened::Postgres(p) => p.admin_token_origin.as_deref(),
        }
    }

    /// Serves until `shutdown` resolves ([`super::run`]).
    pub async fn run(
        self,
        config: Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        match self {
            Opened::Sqlite(p) => super::run(*p, config, listener, shutdown).await,
            Opened::Postgres(p) => super::run(*p, config, listener, shutdown).await,
        }
    }
}

/// Opens the database: `database` if given (PostgreSQL), else
/// `data_dir/controller.db` ([`super::prepare`]). Blocking: from async code,
/// call it inside `tokio::task::block_in_place`.
///
/// On PostgreSQL, a database without weft's schema is initialised on a
/// first start (or with `--init`); a data directory that holds state from
/// earlier starts means the database was expected to hold it too, so an
/// empty one is refused (with how to move a SQLite installation over).
pub fn prepare_database(
    data_dir: &Path,
    database: Option<&Target>,
    relays: Vec<Relay>,
    mode: StateMode,
) -> Result<Opened, ServeError> {
    let Some(target) = database else {
        return super::prepare(data_dir, relays, mode).map(|p| Opened::Sqlite(Box::new(p)));
    };
    let has_schema = PgStore::has_schema(target)?;
    if !has_schema && mode == StateMode::Existing {
        let sqlite = data_dir.join(DB_FILE);
        let hint = if sqlite.exists() {
            format!(
                "{} is still there: copy it over with `weft-controller migrate-store --from sqlite:{} --to URL` (stop this controller first)",
                sqlite.display(),
                data_dir.display()
            )
        } else {
            "restore the database from a backup".to_owned()
        };
        return Err(ServeError::Database(format!(
            "{} holds no weft schema, but {} has state from an earlier start (the admin token, TLS pair): the database was expected to hold every network, node and token. {hint}; or start with --init to create an empty one deliberately (a new admin token; every node must register again)",
            target.shown(),
            data_dir.display()
        )));
    }
    let store = PgStore::open(target.clone())?;
    if !has_schema {
        info!(database = %target.shown(), "created weft's schema");
    }
    super::finish(store, data_dir, relays).map(|p| Opened::Postgres(Box::new(p)))
}
