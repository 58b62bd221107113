//! The PostgreSQL driver (`serve --database postgres://…`), for one or several
//! controller replicas sharing one database.
//!
//! Same rows as the SQLite driver (migrations in
//! `crates/controller/migrations/postgres/`, the same numbers and names), same
//! contract: [`Store::apply`] runs the batch in one transaction and returns
//! after the commit, which PostgreSQL makes durable (`synchronous_commit` on,
//! its default). Reads that must agree with each other ([`Store::load`]) run in
//! one repeatable-read, read-only transaction.
//!
//! The client is the synchronous `postgres` crate (a current-thread tokio
//! runtime of its own): the store lives on the writer's own thread and the
//! trait is synchronous. Statements are prepared once per connection. When the
//! connection is lost (PostgreSQL restarted, network cut), the failing call
//! returns [`StoreError::Unavailable`] and the next call connects again, so a
//! restart of PostgreSQL costs the requests of that moment a 503, not the
//! controller.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, Row, Statement};

use super::sqlite::{parse_json, to_i64, to_u64};
use super::{
    AuditCut, AuditQuery, AuditRecord, ChangeListener, ChangeRecord, EventQuery, EventRecord,
    PresenceRecord, ReplicaRecord, Store, StoreError, StoreSnapshot, Write,
};

mod challenges;
pub mod cluster;
pub mod conn;
pub mod copy;
mod data;
mod dns_blocklist;
mod events;
mod hostfw;
mod integrity;
mod load;
mod migrations;
mod ops;
mod replicas;
mod services;
mod ssh;
mod tasks;
mod tls;
mod usage;
mod write;

use load::load;
use write::apply_one;

pub use conn::{ConnectOptions, Target};
pub use migrations::MIGRATIONS;

/// A PostgreSQL database holding weft's tables.
pub struct PgStore {
    target: Target,
    client: Option<Client>,
    cache: StatementCache,
    /// Inside [`Store::begin_exclusive`]: a transaction holding the write
    /// lock is open on `client` (a plain `BEGIN`, so reads run in it).
    exclusive: bool,
}

/// Prepared statements of the current connection, by their SQL text.
pub(crate) type StatementCache = HashMap<&'static str, Statement>;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Db(match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            })
        }
    }
}

/// Whether `e` means the database cannot be reached right now (as opposed to
/// a statement it refused): the connection closed or failed, or the server is
/// shutting down, starting or out of connections.
pub(crate) fn is_unavailable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot
        // connect now; 53300: too many connections.
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    // No server error: an I/O or connect failure.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("connect")
}

/// One client (a connection or a transaction on it) with the connection's
/// prepared statements.
pub(crate) struct Db<'a, C: GenericClient> {
    client: &'a mut C,
    cache: &'a mut StatementCache,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) fn exec(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.execute(&st, params)?)
    }

    /// Runs a query.
    pub(crate) fn query(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.query(&st, params)?)
    }

    /// Runs a query of at most one row.
    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.query_opt(&st, params)?)
    }
}

/// Reads a column as `T`, naming the table and column when it does not fit.
pub(crate) fn col<'r, T: postgres::types::FromSql<'r>>(
    row: &'r Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("column {name}: {e}"))
    })
}

/// A `u32` the model keeps, from a BIGINT column.
pub(crate) fn to_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what}: {v} is out of range")))
}

impl PgStore {
    /// Connects to `target` and brings the schema to the newest version (under
    /// an advisory lock, so replicas starting together migrate once). A
    /// database holding no weft schema is initialised.
    pub fn open(target: Target) -> Result<Self, StoreError> {
        let mut store = PgStore {
            target,
            client: None,
            cache: StatementCache::new(),
            exclusive: false,
        };
        let client = store.client()?;
        let mut tx = client.transaction()?;
        migrations::migrate(&mut tx)?;
        tx.commit()?;
        Ok(store)
    }

    /// Connects to a `postgres://` URL with default options (tests, tools).
    pub fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::open(Target::parse(url, &ConnectOptions::default())?)
    }

    /// Whether the database holds weft's schema yet (before [`PgStore::open`]
    /// creates it): `serve` refuses to start over an empty database when the
    /// data directory says there was state.
    pub fn has_schema(target: &Target) -> Result<bool, StoreError> {
        let mut client = target.connect()?;
        let row = client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?;
        Ok(row.try_get::<_, bool>(0)?)
    }

    /// Where this store connects (no password in it).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The schema version.
    pub fn schema_version(&mut self) -> Result<u32, StoreError> {
        let client = self.client()?;
        migrations::version(client)
    }

    /// The open connection, connecting first if there is none or it closed
    /// (then the prepared statements are gone with it).
    pub(crate) fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.cache.clear();
            if self.exclusive {
                // The transaction (and its lock) died with the connection.
                self.exclusive = false;
                return Err(StoreError::Unavailable(
                    "the connection to PostgreSQL closed inside a write section".into(),
                ));
            }
            self.client = Some(self.target.connect()?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("not connected".into()))
    }

    /// Runs `f` on the connection; a failure that means the connection is
    /// gone drops it, so the next call connects again.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &mut StatementCache) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.client()?;
        let Some(c) = self.client.as_mut() else {
            return Err(StoreError::Unavailable("not connected".into()));
        };
        let r = f(c, &mut self.cache);
        if matches!(r, Err(StoreError::Unavailable(_))) {
            self.client = None;
            self.cache.clear();
            self.exclusive = false;
        }
        r
    }

    /// Runs `f` on the connection as a [`Db`]: inside the open exclusive
    /// transaction if there is one, else as its own statements.
    fn with_db<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|client, cache| f(&mut Db { client, cache }))
    }

    /// Ends the exclusive transaction with `sql` (`COMMIT` or `ROLLBACK`).
    fn end_exclusive(&mut self, sql: &str) -> Result<(), StoreError> {
        if !self.exclusive {
            return Ok(());
        }
        let r = self.with(|client, _| Ok(client.batch_execute(sql)?));
        self.exclusive = false;
        r
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The client owns a tokio runtime, which must not be dropped inside
        // another one (an error path of `serve` after opening the store):
        // there it is dropped on a thread of its own.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("weft-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl Store for PgStore {
    fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
        if self.exclusive {
            return self.with_db(load);
        }
        self.with(|client, cache| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let snap = load(&mut Db {
                client: &mut tx,
                cache,
            })?;
            tx.commit()?;
            Ok(snap)
        })
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        if self.exclusive {
            return Err(StoreError::Db(
                "Store::apply inside an exclusive write section (use commit_exclusive)".into(),
            ));
        }
        self.with(|client, cache| {
            let mut tx = client.transaction()?;
            let mut db = Db {
                client: &mut tx,
                cache,
            };
            for w in writes {
                apply_one(&mut db, w)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn begin_exclusive(&mut self) -> Result<(), StoreError> {
        if self.exclusive {
            return Ok(());
        }
        self.with(|client, _| {
            client.batch_execute("BEGIN")?;
            if let Err(e) =
                client.execute("SELECT pg_advisory_xact_lock($1)", &[&replicas::WRITE_LOCK])
            {
                let _ = client.batch_execute("ROLLBACK");
                return Err(e.into());
            }
            Ok(())
        })?;
        self.exclusive = true;
        Ok(())
    }

    fn commit_exclusive(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if !self.exclusive {
            return self.apply(writes);
        }
        let applied = self.with_db(|db| {
            for w in writes {
                apply_one(db, w)?;
            }
            Ok(())
        });
        match applied {
            Ok(()) => self.end_exclusive("COMMIT"),
            Err(e) => {
                let _ = self.end_exclusive("ROLLBACK");
                Err(e)
            }
        }
    }

    fn rollback_exclusive(&mut self) -> Result<(), StoreError> {
        self.end_exclusive("ROLLBACK")
    }

    fn changes_since(&mut self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, StoreError> {
        self.with_db(|db| replicas::changes_since(db, after, limit))
    }

    fn last_change_seq(&mut self) -> Result<u64, StoreError> {
        self.with_db(replicas::last_seq)
    }

    fn prune_changes(&mut self, through: u64) -> Result<(), StoreError> {
        self.with_db(|db| replicas::prune(db, through))
    }

    fn heartbeat(&mut self, me: &ReplicaRecord) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.with_db(|db| replicas::heartbeat(db, me))
    }

    fn load_presence(&mut self) -> Result<Vec<PresenceRecord>, StoreError> {
        self.with_db(replicas::load_presence)
    }

    fn change_listener(&mut self) -> Result<Option<Box<dyn ChangeListener>>, StoreError> {
        // Connects on a thread of its own: the engine asks from its caller's
        // thread, which may be inside an async runtime, where the client's
        // own runtime must not block.
        let target = &self.target;
        let listener = std::thread::scope(|s| {
            s.spawn(|| replicas::PgListener::start(target))
                .join()
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the thread connecting the change listener panicked".into(),
                    ))
                })
        })?;
        Ok(Some(Box::new(listener)))
    }

    fn audit_cut(
        &mut self,
        older_than_ms: Option<u64>,
        keep: Option<u64>,
    ) -> Result<Option<AuditCut>, StoreError> {
        self.with_db(|db| ops::audit_cut(db, older_than_ms, keep))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with(|client, _| {
            client.simple_query("SELECT 1")?;
            Ok(())
        })
    }

    fn start_rows(&mut self) -> Result<crate::store::challenges::StartRows, StoreError> {
        self.with_db(challenges::start_rows)
    }

    fn audit(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|client, cache| {
            let mut db = Db { client, cache };
            let rows = db.query(
                "SELECT id, at_ms, actor, action, target, detail FROM audit_log
                 WHERE ($1::BIGINT IS NULL OR id < $1) AND ($2::TEXT IS NULL OR target = $2)
                 ORDER BY id DESC LIMIT $3",
                &[&q.before_id.map(to_i64), &q.target, &i64::from(q.limit)],
            )?;
            rows.iter()
                .map(|r| {
                    let detail: String = col(r, 5)?;
                    Ok(AuditRecord {
                        id: to_u64(col(r, 0)?),
                        at_ms: to_u64(col(r, 1)?),
                        actor: col(r, 2)?,
                        action: col(r, 3)?,
                        target: col(r, 4)?,
                        detail: parse_json("audit detail", &detail)?,
                    })
                })
                .collect()
        })
    }

    fn usage_counters(
        &mut self,
        node_id: u64,
    ) -> Result<Vec<super::usage::UsageCounterRecord>, StoreError> {
        self.with(|client, cache| usage::counters_of(&mut Db { client, cache }, node_id))
    }

    fn usage_sums(&mut self, since_ms: u64) -> Result<Vec<super::usage::UsageSum>, StoreError> {
        self.with(|client, cache| usage::sums(&mut Db { client, cache }, since_ms))
    }

    fn events(&mut self, q: &EventQuery) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.with(|client, cache| events::query(&mut Db { client, cache }, q))
    }

    fn task_results(
        &mut self,
        task_id: &str,
    ) -> Result<Vec<super::tasks::TaskResultRecord>, StoreError> {
        self.with(|client, cache| tasks::results(&mut Db { client, cache }, task_id))
    }
}

#[cfg(test)]
mod tests;
