//! The embedded SQLite driver (the default).
//!
//! Durability: WAL journal with `synchronous=FULL`, so every committed transaction
//! has been fsynced to the WAL before [`Store::apply`] returns. That survives a
//! `kill -9` of the controller (which alone would only need the page cache) and
//! also an OS crash or power loss, provided the disk honours flushes. (`NORMAL`
//! would survive `kill -9` too, but could lose the last transactions on power
//! loss; acknowledged writes must not be lost, so `FULL` it is. Batching several
//! requests per transaction keeps the fsync cost per request low.)
//!
//! Migrations are SQL files in `crates/controller/migrations/`, applied in order,
//! each in its own transaction, and recorded in `schema_migrations`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    AuditQuery, AuditRecord, EventQuery, EventRecord, MembershipRecord, NetworkRecord, NodeRecord,
    PolicyRecord, RelayRecord, RouteRecord, RouteSource, RouteState, Store, StoreError,
    StoreSnapshot, TokenRecord, Write,
};
use crate::secret::SecretHash;

mod usage;

mod challenges;

mod replicas;

mod data;

mod dns_blocklist;

mod hostfw;

mod events;

mod integrity;

mod services;

mod ssh;

mod tasks;

mod migrations;
mod ops;
use migrations::MIGRATIONS;

// Row checks the PostgreSQL driver shares.
pub(super) use dns_blocklist::checked as checked_blocklist;
pub(super) use hostfw::rule_from_row;
pub(super) use services::{instance_from_row, service_from_row};

/// A SQLite database file.
pub struct SqliteStore {
    conn: Connection,
    /// The cross-process write lock (replicas on one file).
    writer: replicas::WriterLock,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub(super) fn corrupt(what: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn json_list<T: serde::Serialize>(v: impl IntoIterator<Item = T>) -> String {
    serde_json::to_string(&v.into_iter().collect::<Vec<T>>()).unwrap_or_else(|_| "[]".into())
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sets WAL and full sync,
    /// and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let mut store = Self::init(conn)?;
        store.writer = replicas::WriterLock::beside(path);
        Ok(store)
    }

    /// Opens an existing weft database, refusing (with [`StoreError::NotWeft`]) a
    /// missing or empty file, a file that is not SQLite, and a SQLite file without
    /// weft's schema: nothing is created.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        use std::io::Read as _;
        let not_weft = |why: &str| StoreError::NotWeft {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_weft("is missing"),
            _ => not_weft(&format!("cannot be read ({e})")),
        })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(not_weft("is empty (0 bytes)"));
        }
        let mut header = [0u8; 16];
        if f.read_exact(&mut header).is_err() || &header != b"SQLite format 3\0" {
            return Err(not_weft("is not a SQLite database"));
        }
        drop(f);
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_URI
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let writer = replicas::WriterLock::beside(path);
        let tables: u32 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| not_weft(&format!("is not a readable SQLite database ({e})")))?;
        if tables == 0 {
            return Err(not_weft(
                "is a SQLite database but not weft's (no schema_migrations table)",
            ));
        }
        let mut store = Self::init(conn)?;
        store.writer = writer;
        Ok(store)
    }

    /// Creates a new database at `path` (mode 0600; SQLite gives its -wal and
    /// -shm files the same mode). Fails if the file exists.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Db(format!("creating {}: {e}", path.display())))?;
        Self::open(path)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            return Err(StoreError::Db(format!(
                "could not enable WAL journal (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        let mut store = Self {
            conn,
            writer: replicas::WriterLock::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version after migration.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v: Option<u32> =
            self.conn
                .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                    r.get(0)
                })?;
        Ok(v.unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )?;
        let current = self.schema_version()?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, strftime('%s','now'))",
                params![version, name],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
        let mut snap = StoreSnapshot {
            map_version: match self.meta("map_version")? {
                Some(v) => parse("map_version", &v)?,
                None => 0,
            },
            admin_hash: match self.meta("admin_hash")? {
                Some(v) => Some(parse::<SecretHash>("admin_hash", &v)?),
                None => None,
            },
            ..StoreSnapshot::default()
        };
        let c = &self.conn;

        let mut st = c.prepare(
            "SELECT id, name, ipv4_cidr, ipv6_prefix, dns_domain, pow_difficulty, created_at, anomaly FROM networks ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        for row in rows {
            let (id, name, v4, v6, dns, pow, created, anomaly) = row?;
            snap.networks.push(NetworkRecord {
                id: to_u64(id),
                name,
                ipv4_cidr: parse("network ipv4_cidr", &v4)?,
                ipv6_prefix: v6.map(|s| parse("network ipv6_prefix", &s)).transpose()?,
                dns_domain: dns,
                pow_difficulty: pow,
                created_at: to_u64(created),
                anomaly: anomaly
                    .map(|a| parse_json("network anomaly", &a))
                    .transpose()?,
            });
        }

        let mut st = c.prepare(
            "SELECT id, node_key, name, hostname, tags, disabled, credential_hash, endpoints, last_seen, created_at, facts, facts_changed_ms, seen_published FROM nodes ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<i64>>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        })?;
        for row in rows {
            let (
                id,
                key,
                name,
                hostname,
                tags,
                disabled,
                cred,
                endpoints,
                seen,
                created,
                facts,
                facts_ms,
                published,
            ) = row?;
            snap.nodes.push(NodeRecord {
                id: to_u64(id),
                node_key: parse("node_key", &key)?,
                name,
                hostname,
                tags: parse_json("node tags", &tags)?,
                disabled,
                credential_hash: parse("credential_hash", &cred)?,
                endpoints: parse_json("node endpoints", &endpoints)?,
                last_seen: seen.map(to_u64),
                created_at: to_u64(created),
                facts: facts
                    .map(|f| parse_json("node facts", &f).map(Box::new))
                    .transpose()?,
                facts_changed_ms: facts_ms.map(to_u64),
                seen_published: published.map(to_u64),
            });
        }

        let mut st = c.prepare(
            "SELECT node_id, network_id, ipv4, ipv6, token_id, joined_at FROM memberships ORDER BY node_id, network_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (node, net, v4, v6, token, joined) = row?;
            snap.memberships.push(MembershipRecord {
                node_id: to_u64(node),
                network_id: to_u64(net),
                ipv4: parse("membership ipv4", &v4)?,
                ipv6: v6.map(|s| parse("membership ipv6", &s)).transpose()?,
                token_id: token.map(to_u64),
                joined_at: to_u64(joined),
            });
        }

        let mut st = c.prepare(
            "SELECT id, token_hash, description, tags, networks, max_uses, uses, expires_at, revoked, created_at FROM join_tokens ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<u32>>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, i64>(9)?,
            ))
        })?;
        for row in rows {
            let (id, hash, description, tags, networks, max_uses, uses, expires, revoked, created) =
                row?;
            snap.tokens.push(TokenRecord {
                id: to_u64(id),
                token_hash: parse("token_hash", &hash)?,
                description,
                tags: parse_json("token tags", &tags)?,
                networks: parse_json("token networks", &networks)?,
                max_uses,
                uses,
                expires_at: to_u64(expires),
                revoked,
                created_at: to_u64(created),
            });
        }
        let mut st = c.prepare(
            "SELECT node_id, network_id, prefix, state, source, approved_at, created_at FROM routes ORDER BY network_id, prefix, node_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let (node, net, prefix, state, source, approved, created) = row?;
            snap.routes.push(RouteRecord {
                node_id: to_u64(node),
                network_id: to_u64(net),
                prefix: parse("routes.prefix", &prefix)?,
                state: RouteState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("routes.state {state:?}")))?,
                source: RouteSource::parse(&source)
                    .ok_or_else(|| StoreError::Corrupt(format!("routes.source {source:?}")))?,
                approved_at: approved.map(to_u64),
                created_at: to_u64(created),
            });
        }
        let mut st = c.prepare(
            "SELECT id, name, url, token_hash, tls_fingerprint, stun_port, created_at, last_seen FROM relays ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<u16>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })?;
        for row in rows {
            let (id, name, url, hash, fingerprint, stun_port, created, seen) = row?;
            snap.relays.push(RelayRecord {
                id: to_u64(id),
                name,
                url,
                token_hash: parse("relay token_hash", &hash)?,
                tls_fingerprint: fingerprint,
                stun_port,
                created_at: to_u64(created),
                last_seen: seen.map(to_u64),
            });
        }
        snap.policy = c
            .query_row(
                "SELECT version, text, author, at_ms FROM policy_versions ORDER BY version DESC LIMIT 1",
                [],
                |r| {
                    Ok(PolicyRecord {
                        version: to_u64(r.get::<_, i64>(0)?),
                        text: r.get(1)?,
                        author: r.get(2)?,
                        at_ms: to_u64(r.get::<_, i64>(3)?),
                    })
                },
            )
            .optional()?;
        let max_audit: Option<i64> =
            c.query_row("SELECT MAX(id) FROM audit_log", [], |r| r.get(0))?;
        snap.max_audit_id = max_audit.map_or(0, to_u64);
        snap.tasks = tasks::load(c)?;
        snap.data = data::load(c)?;
        snap.dns_blocklist = dns_blocklist::load(c)?;
        snap.hostfw = hostfw::load(c)?;
        snap.ssh = ssh::load(c)?;
        snap.services = services::load(c)?;
        snap.challenge_key = challenges::key(c)?;
        snap.used_challenges = challenges::used(c)?;
        snap.integrity = integrity::load(c)?;
        Ok(snap)
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::PutNetwork(n) => {
                    tx.prepare_cached(
                        "INSERT INTO networks (id, name, ipv4_cidr, ipv6_prefix, dns_domain, pow_difficulty, created_at, anomaly)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, ipv4_cidr = excluded.ipv4_cidr,
                           ipv6_prefix = excluded.ipv6_prefix, dns_domain = excluded.dns_domain,
                           pow_difficulty = excluded.pow_difficulty, anomaly = excluded.anomaly",
                    )?
                    .execute(params![
                        to_i64(n.id),
                        n.name,
                        n.ipv4_cidr.to_string(),
                        n.ipv6_prefix.map(|p| p.to_string()),
                        n.dns_domain,
                        n.pow_difficulty,
                        to_i64(n.created_at),
                        n.anomaly.and_then(|a| serde_json::to_string(&a).ok())
                    ])?;
                }
                Write::PutNode(n) => {
                    tx.prepare_cached(
                        "INSERT INTO nodes (id, node_key, name, hostname, tags, disabled, credential_hash, endpoints, last_seen, created_at, facts, facts_changed_ms, seen_published)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                         ON CONFLICT (id) DO UPDATE SET node_key = excluded.node_key, name = excluded.name, hostname = excluded.hostname,
                           tags = excluded.tags, disabled = excluded.disabled,
                           credential_hash = excluded.credential_hash, endpoints = excluded.endpoints,
                           last_seen = excluded.last_seen, facts = excluded.facts,
                           facts_changed_ms = excluded.facts_changed_ms, seen_published = excluded.seen_published",
                    )?
                    .execute(params![
                        to_i64(n.id),
                        n.node_key.to_string(),
                        n.name,
                        n.hostname,
                        json_list(&n.tags),
                        n.disabled,
                        n.credential_hash.to_string(),
                        json_list(&n.endpoints),
                        n.last_seen.map(to_i64),
                        to_i64(n.created_at),
                        n.facts.as_ref().and_then(|f| serde_json::to_string(f).ok()),
                        n.facts_changed_ms.map(to_i64),
                        n.seen_published.map(to_i64)
                    ])?;
                }
                Write::DeleteNode(id) => {
                    tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?
                        .execute([to_i64(*id)])?;
                }
                Write::PutMembership(m) => {
                    tx.prepare_cached(
                        "INSERT INTO memberships (node_id, network_id, ipv4, ipv6, token_id, joined_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (node_id, network_id) DO UPDATE SET ipv4 = excluded.ipv4,
                           ipv6 = excluded.ipv6, token_id = excluded.token_id",
                    )?
                    .execute(params![
                        to_i64(m.node_id),
                        to_i64(m.network_id),
                        m.ipv4.to_string(),
                        m.ipv6.map(|a| a.to_string()),
                        m.token_id.map(to_i64),
                        to_i64(m.joined_at)
                    ])?;
                }
                Write::PutToken(t) => {
                    tx.prepare_cached(
                        "INSERT INTO join_tokens (id, token_hash, description, tags, networks, max_uses, uses, expires_at, revoked, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                         ON CONFLICT (id) DO UPDATE SET uses = excluded.uses, revoked = excluded.revoked,
                           description = excluded.description, networks = excluded.networks",
                    )?
                    .execute(params![
                        to_i64(t.id),
                        t.token_hash.to_string(),
                        t.description,
                        json_list(&t.tags),
                        json_list(&t.networks),
                        t.max_uses,
                        t.uses,
                        to_i64(t.expires_at),
                        t.revoked,
                        to_i64(t.created_at)
                    ])?;
                }
                Write::PutRelay(r) => {
                    tx.prepare_cached(
                        "INSERT INTO relays (id, name, url, token_hash, tls_fingerprint, stun_port, created_at, last_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (id) DO UPDATE SET url = excluded.url,
                           tls_fingerprint = excluded.tls_fingerprint, stun_port = excluded.stun_port,
                           last_seen = excluded.last_seen",
                    )?
                    .execute(params![
                        to_i64(r.id),
                        r.name,
                        r.url,
                        r.token_hash.to_string(),
                        r.tls_fingerprint,
                        r.stun_port,
                        to_i64(r.created_at),
                        r.last_seen.map(to_i64)
                    ])?;
                }
                Write::PutRoute(r) => {
                    tx.prepare_cached(
                        "INSERT INTO routes (node_id, network_id, prefix, state, source, approved_at, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (node_id, network_id, prefix) DO UPDATE SET state = excluded.state,
                           source = excluded.source, approved_at = excluded.approved_at",
                    )?
                    .execute(params![
                        to_i64(r.node_id),
                        to_i64(r.network_id),
                        r.prefix.to_string(),
                        r.state.as_str(),
                        r.source.as_str(),
                        r.approved_at.map(to_i64),
                        to_i64(r.created_at)
                    ])?;
                }
                Write::DeleteRoute {
                    node_id,
                    network_id,
                    prefix,
                } => {
                    tx.prepare_cached(
                        "DELETE FROM routes WHERE node_id = ?1 AND network_id = ?2 AND prefix = ?3",
                    )?
                    .execute(params![
                        to_i64(*node_id),
                        to_i64(*network_id),
                        prefix.to_string()
                    ])?;
                }
                Write::DeleteMembership {
                    node_id,
                    network_id,
                } => {
                    tx.prepare_cached("DELETE FROM routes WHERE node_id = ?1 AND network_id = ?2")?
                        .execute(params![to_i64(*node_id), to_i64(*network_id)])?;
                    tx.prepare_cached(
                        "DELETE FROM memberships WHERE node_id = ?1 AND network_id = ?2",
                    )?
                    .execute(params![to_i64(*node_id), to_i64(*network_id)])?;
                }
                Write::DeleteRelay(id) => {
                    tx.prepare_cached("DELETE FROM relays WHERE id = ?1")?
                        .execute([to_i64(*id)])?;
                }
                Write::PutPolicy(p) => {
                    tx.prepare_cached(
                        "INSERT INTO policy_versions (version, text, author, at_ms) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![to_i64(p.version), p.text, p.author, to_i64(p.at_ms)])?;
                }
                Write::Audit(a) => {
                    tx.prepare_cached(
                        "INSERT INTO audit_log (id, at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        to_i64(a.id),
                        to_i64(a.at_ms),
                        a.actor,
                        a.action,
                        a.target,
                        a.detail.to_string()
                    ])?;
                }
                Write::AuditPrune { through_id } => ops::audit_prune(&tx, *through_id)?,
                Write::DeleteNetwork(id) => ops::delete_network(&tx, *id)?,
                Write::Events(records) => events::insert(&tx, records)?,
                Write::PutHookApproval(r) => integrity::put_approval(&tx, r)?,
                Write::DeleteHookApproval { name, sha256 } => {
                    integrity::delete_approval(&tx, name, sha256.as_deref())?
                }
                Write::PutExpected(r) => integrity::put_expected(&tx, r)?,
                Write::PutNodeIntegrity(r) => integrity::put_report(&tx, r)?,
                Write::PutTask(t) => tasks::put_task(&tx, t)?,
                Write::PutTaskRun(r) => tasks::put_run(&tx, r)?,
                Write::PutTaskResult(r) => tasks::put_result(&tx, r)?,
                Write::DeleteTask(id) => tasks::delete_task(&tx, id)?,
                Write::Data(w) => data::apply(&tx, w)?,
                Write::DnsBlocklist(r) => dns_blocklist::put(&tx, r.as_ref())?,
                Write::HostFw(w) => hostfw::apply(&tx, w)?,
                Write::Ssh(w) => ssh::apply(&tx, w)?,
                Write::Services(w) => services::apply(&tx, w)?,
                Write::UsageCounter(r) => usage::put_counter(&tx, r)?,
                Write::UsageAdd(r) => usage::add_bucket(&tx, r)?,
                Write::UsagePrune(before) => usage::prune(&tx, *before)?,
                Write::SetMapVersion(v) => {
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ('map_version', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute([v.to_string()])?;
                }
                Write::SetAdminHash(h) => {
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ('admin_hash', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute([h.to_string()])?;
                }
                Write::Challenge(w) => challenges::apply(&tx, w)?,
                Write::Presence {
                    replica,
                    node_id,
                    online,
                } => replicas::put_presence(&tx, replica, *node_id, *online)?,
                Write::ReplicaGone(id) => replicas::replica_gone(&tx, id)?,
                Write::Change(c) => replicas::put_change(&tx, c)?,
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn begin_exclusive(&mut self) -> Result<(), StoreError> {
        self.writer.lock()
    }

    fn commit_exclusive(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let r = self.apply(writes);
        self.writer.unlock();
        r
    }

    fn rollback_exclusive(&mut self) -> Result<(), StoreError> {
        self.writer.unlock();
        Ok(())
    }

    fn changes_since(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<super::ChangeRecord>, StoreError> {
        replicas::changes_since(&self.conn, after, limit)
    }

    fn last_change_seq(&mut self) -> Result<u64, StoreError> {
        replicas::last_seq(&self.conn)
    }

    fn prune_changes(&mut self, through: u64) -> Result<(), StoreError> {
        replicas::prune(&self.conn, through)
    }

    fn heartbeat(
        &mut self,
        me: &super::ReplicaRecord,
    ) -> Result<Vec<super::ReplicaRecord>, StoreError> {
        replicas::heartbeat(&self.conn, me)
    }

    fn load_presence(&mut self) -> Result<Vec<super::PresenceRecord>, StoreError> {
        replicas::load_presence(&self.conn)
    }

    fn usage_counters(
        &mut self,
        node_id: u64,
    ) -> Result<Vec<super::usage::UsageCounterRecord>, StoreError> {
        usage::counters_of(&self.conn, node_id)
    }

    fn usage_sums(&mut self, since_ms: u64) -> Result<Vec<super::usage::UsageSum>, StoreError> {
        usage::sums(&self.conn, since_ms)
    }

    fn audit(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at_ms, actor, action, target, detail FROM audit_log
             WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR target = ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![q.before_id.map(to_i64), q.target, i64::from(q.limit)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, actor, action, target, detail) = row?;
            out.push(AuditRecord {
                id: to_u64(id),
                at_ms: to_u64(at),
                actor,
                action,
                target,
                detail: serde_json::from_str(&detail)
                    .map_err(|e| corrupt("audit detail")(e.to_string()))?,
            });
        }
        Ok(out)
    }

    fn events(&mut self, q: &EventQuery) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        events::query(&self.conn, q)
    }

    fn task_results(
        &mut self,
        task_id: &str,
    ) -> Result<Vec<super::tasks::TaskResultRecord>, StoreError> {
        tasks::results(&self.conn, task_id)
    }

    fn audit_cut(
        &mut self,
        older_than_ms: Option<u64>,
        keep: Option<u64>,
    ) -> Result<Option<super::AuditCut>, StoreError> {
        ops::audit_cut(&self.conn, older_than_ms, keep)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        ops::ping(&self.conn)
    }

    fn start_rows(&mut self) -> Result<crate::store::challenges::StartRows, StoreError> {
        challenges::start_rows(&self.conn)
    }
}

/// The newest schema version this build knows.
#[cfg(test)]
pub(crate) fn newest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store_suite;

    #[test]
    fn sqlite_passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        store_suite(|| SqliteStore::open(&path).unwrap());
    }

    #[test]
    fn sqlite_deletes_a_network_and_prunes_the_audit_log() {
        use crate::store::ops_tests::{audit_retention_suite, delete_network_suite};
        delete_network_suite(SqliteStore::open_in_memory().unwrap());
        audit_retention_suite(SqliteStore::open_in_memory().unwrap());
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), newest());
        s.conn
            .execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)", [])
            .unwrap();
        drop(s);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, known }) if known == newest()
        ));
    }
}

#[cfg(test)]
mod open_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn why(r: Result<SqliteStore, StoreError>) -> String {
        match r {
            Err(e @ StoreError::NotWeft { .. }) => e.to_string(),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn open_existing_refuses_what_is_not_a_weft_database_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let e = why(SqliteStore::open_existing(&path));
        assert!(
            e.contains("controller.db is missing") && e.contains("--init"),
            "{e}"
        );
        assert!(!path.exists(), "nothing created");
        std::fs::write(&path, b"").unwrap();
        assert!(why(SqliteStore::open_existing(&path)).contains("is empty (0 bytes)"));
        std::fs::write(&path, b"hello, this is not a database at all").unwrap();
        assert!(why(SqliteStore::open_existing(&path)).contains("is not a SQLite database"));
        std::fs::remove_file(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        assert!(why(SqliteStore::open_existing(&path)).contains("not weft's"));
        std::fs::remove_file(&path).unwrap();

        let s = SqliteStore::create(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), newest());
        drop(s);
        for f in ["controller.db", "controller.db-wal", "controller.db-shm"] {
            let p = dir.path().join(f);
            if p.exists() {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
        }
        assert!(SqliteStore::open_existing(&path).is_ok());
        assert!(
            SqliteStore::create(&path).is_err(),
            "never over an existing file"
        );
    }
}
