//! The PostgreSQL schema migrations, one SQL file each in
//! `crates/controller/migrations/postgres/`: the same numbers and names as
//! the SQLite ones (a test keeps them in step). Add a new one as the last
//! entry; never change or reorder a shipped one.

use postgres::Transaction;

use crate::store::StoreError;

/// Schema migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "relays",
        include_str!("../../../migrations/postgres/0002_relays.sql"),
    ),
    (
        3,
        "policy",
        include_str!("../../../migrations/postgres/0003_policy.sql"),
    ),
    (
        4,
        "routes",
        include_str!("../../../migrations/postgres/0004_routes.sql"),
    ),
    (
        5,
        "facts",
        include_str!("../../../migrations/postgres/0005_facts.sql"),
    ),
    (
        6,
        "usage",
        include_str!("../../../migrations/postgres/0006_usage.sql"),
    ),
    (
        7,
        "events",
        include_str!("../../../migrations/postgres/0007_events.sql"),
    ),
    (
        8,
        "tasks",
        include_str!("../../../migrations/postgres/0008_tasks.sql"),
    ),
    (
        9,
        "integrity",
        include_str!("../../../migrations/postgres/0009_integrity.sql"),
    ),
    (
        10,
        "data",
        include_str!("../../../migrations/postgres/0010_data.sql"),
    ),
    (
        11,
        "hostfw",
        include_str!("../../../migrations/postgres/0011_hostfw.sql"),
    ),
    (
        12,
        "dns_blocklist",
        include_str!("../../../migrations/postgres/0012_dns_blocklist.sql"),
    ),
    (
        13,
        "services",
        include_str!("../../../migrations/postgres/0013_services.sql"),
    ),
    (
        14,
        "ssh",
        include_str!("../../../migrations/postgres/0014_ssh.sql"),
    ),
    (
        15,
        "replicas",
        include_str!("../../../migrations/postgres/0015_replicas.sql"),
    ),
    (
        16,
        "challenges",
        include_str!("../../../migrations/postgres/0016_challenges.sql"),
    ),
    (
        17,
        "seen_published",
        include_str!("../../../migrations/postgres/0017_seen_published.sql"),
    ),
];

/// The advisory lock key replicas take while migrating (and migrate-store
/// while copying): "weftmigr" as a number.
pub(crate) const MIGRATION_LOCK: i64 = 0x7765_6674_6d69_6772;

/// The newest version this build knows.
pub(crate) fn newest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The schema version of the database (0: none yet).
pub(super) fn version<C: postgres::GenericClient>(c: &mut C) -> Result<u32, StoreError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = c
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])?
        .try_get(0)?;
    u32::try_from(v.unwrap_or(0))
        .map_err(|_| StoreError::Corrupt(format!("schema_migrations version {v:?}")))
}

/// Applies the pending migrations inside `tx`, holding the migration lock
/// until it ends: two replicas starting at once migrate once. Refuses a
/// schema newer than this build.
pub(crate) fn migrate(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )?;
    let current = version(tx)?;
    let known = newest();
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (v, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .map_err(|e| StoreError::Db(format!("migration {v:04}_{name}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at)
             VALUES ($1, $2, EXTRACT(EPOCH FROM now())::BIGINT)",
            &[&i64::from(*v), name],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::BTreeSet;

    fn sql_files(dir: &std::path::Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect()
    }

    #[test]
    fn both_dialects_have_the_same_migrations() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let sqlite = sql_files(&root);
        let postgres = sql_files(&root.join("postgres"));
        assert_eq!(
            sqlite, postgres,
            "every migration needs a PostgreSQL twin of the same name in migrations/postgres/"
        );
        let listed: BTreeSet<String> = super::MIGRATIONS
            .iter()
            .map(|(v, name, _)| format!("{v:04}_{name}.sql"))
            .collect();
        assert_eq!(listed, postgres, "MIGRATIONS lists every file");
        let versions: Vec<u32> = super::MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(
            super::newest(),
            crate::store::sqlite::newest(),
            "the drivers know the same newest version"
        );
    }
}
