//! Replication on SQLite: several controller processes on one database file.
//!
//! The write lock is an exclusive `flock` on `<db>-writer` (blocking), taken
//! by [`Store::begin_exclusive`](crate::store::Store::begin_exclusive) and
//! released when the batch commits or is dropped. Every replica's writer
//! holds it while it catches up from the `changes` log, applies its own
//! operations and commits them with their change row, so batches are
//! serialized across processes and `seq` is gap-free. (SQLite's own
//! `BEGIN IMMEDIATE` could not span the catch-up: the drivers' row writers
//! take a fresh transaction.) An in-memory database has no other process
//! and takes no lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, params};

use super::{to_i64, to_u64};
use crate::store::{ChangeRecord, PresenceRecord, ReplicaRecord, StoreError};

/// The cross-process writer lock of one database file.
#[derive(Debug, Default)]
pub(super) struct WriterLock {
    path: Option<PathBuf>,
    held: Option<File>,
}

impl WriterLock {
    /// The lock beside database `db` (`<db>-writer`, `db` with symbolic
    /// links resolved: replicas reaching one file by different paths share
    /// one lock).
    pub(super) fn beside(db: &Path) -> Self {
        let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_owned());
        let mut name = db.into_os_string();
        name.push("-writer");
        Self {
            path: Some(PathBuf::from(name)),
            held: None,
        }
    }

    /// Waits for the lock and takes it (a no-op if held or in memory).
    pub(super) fn lock(&mut self) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.held.is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| StoreError::Db(format!("locking {}: {e}", path.display())))?;
        self.held = Some(file);
        Ok(())
    }

    /// Releases the lock (closing the file releases the flock).
    pub(super) fn unlock(&mut self) {
        self.held = None;
    }
}

/// Inserts a change row (a duplicate seq fails the transaction).
pub(super) fn put_change(tx: &Transaction<'_>, c: &ChangeRecord) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO changes (seq, replica, at_ms, body) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![to_i64(c.seq), c.replica, to_i64(c.at_ms), c.body])?;
    Ok(())
}

/// Inserts or deletes a presence row.
pub(super) fn put_presence(
    tx: &Transaction<'_>,
    replica: &str,
    node_id: u64,
    online: bool,
) -> Result<(), StoreError> {
    if online {
        tx.prepare_cached(
            "INSERT INTO presence (replica, node_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![replica, to_i64(node_id)])?;
    } else {
        tx.prepare_cached("DELETE FROM presence WHERE replica = ?1 AND node_id = ?2")?
            .execute(params![replica, to_i64(node_id)])?;
    }
    Ok(())
}

/// Deletes a replica's presence rows and heartbeat.
pub(super) fn replica_gone(tx: &Transaction<'_>, replica: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM presence WHERE replica = ?1")?
        .execute([replica])?;
    tx.prepare_cached("DELETE FROM replicas WHERE id = ?1")?
        .execute([replica])?;
    Ok(())
}

/// The changes after `after`, oldest first.
pub(super) fn changes_since(
    c: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<ChangeRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT seq, replica, at_ms, body FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = st.query_map(
        params![to_i64(after), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(ChangeRecord {
                seq: to_u64(r.get(0)?),
                replica: r.get(1)?,
                at_ms: to_u64(r.get(2)?),
                body: r.get(3)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest seq (0: none).
pub(super) fn last_seq(c: &Connection) -> Result<u64, StoreError> {
    let v: Option<i64> = c.query_row("SELECT MAX(seq) FROM changes", [], |r| r.get(0))?;
    Ok(v.map_or(0, to_u64))
}

/// Deletes the changes up to `through`.
pub(super) fn prune(c: &Connection, through: u64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
        .execute([to_i64(through)])?;
    Ok(())
}

/// Upserts `me`'s heartbeat; returns every replica's row.
pub(super) fn heartbeat(
    c: &Connection,
    me: &ReplicaRecord,
) -> Result<Vec<ReplicaRecord>, StoreError> {
    c.prepare_cached(
        "INSERT INTO replicas (id, started_ms, heartbeat_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
    )?
    .execute(params![
        me.id,
        to_i64(me.started_ms),
        to_i64(me.heartbeat_ms)
    ])?;
    let mut st =
        c.prepare_cached("SELECT id, started_ms, heartbeat_ms FROM replicas ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(ReplicaRecord {
            id: r.get(0)?,
            started_ms: to_u64(r.get(1)?),
            heartbeat_ms: to_u64(r.get(2)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every presence row.
pub(super) fn load_presence(c: &Connection) -> Result<Vec<PresenceRecord>, StoreError> {
    let mut st =
        c.prepare_cached("SELECT replica, node_id FROM presence ORDER BY replica, node_id")?;
    let rows = st.query_map([], |r| {
        Ok(PresenceRecord {
            replica: r.get(0)?,
            node_id: to_u64(r.get(1)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn sqlite_passes_the_replication_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        crate::store::replication_tests::replication_suite(move || {
            SqliteStore::open(&path).unwrap()
        });
    }

    #[test]
    fn replicas_reaching_one_file_by_a_link_share_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        let link = dir.path().join("link.sqlite");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let a = super::WriterLock::beside(&path);
        let b = super::WriterLock::beside(&link);
        assert_eq!(a.path, b.path);
    }
}
