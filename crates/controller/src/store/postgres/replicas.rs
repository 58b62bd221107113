//! Replication on PostgreSQL: the changes log, replica heartbeats, presence,
//! and `LISTEN weft_changes`.
//!
//! The write lock is `pg_advisory_xact_lock(`[`WRITE_LOCK`]`)`, taken right
//! after `BEGIN` by [`Store::begin_exclusive`](crate::store::Store::begin_exclusive)
//! and released by the transaction's end, so a replica that dies while
//! holding it (its connection closes) releases it too. A change row's insert
//! is followed by `pg_notify('weft_changes', seq)` in the same transaction:
//! PostgreSQL delivers it to every listener at commit, never for a rolled
//! back batch.

use std::time::Duration;

use postgres::{Client, GenericClient};

use super::conn::Target;
use super::{Db, col};
use crate::store::sqlite::{to_i64, to_u64};
use crate::store::{ChangeListener, ChangeRecord, PresenceRecord, ReplicaRecord, StoreError};

/// The advisory lock key of the write section: "weftwrit" as a number.
pub(super) const WRITE_LOCK: i64 = 0x7765_6674_7772_6974;

/// The notification channel.
pub(super) const CHANNEL: &str = "weft_changes";

/// Inserts a change row and notifies the listeners (at commit).
pub(super) fn put_change<C: GenericClient>(
    db: &mut Db<'_, C>,
    c: &ChangeRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO changes (seq, replica, at_ms, body) VALUES ($1, $2, $3, $4)",
        &[&to_i64(c.seq), &c.replica, &to_i64(c.at_ms), &c.body],
    )?;
    db.query(
        "SELECT pg_notify('weft_changes', $1)",
        &[&c.seq.to_string()],
    )?;
    Ok(())
}

/// Inserts or deletes a presence row.
pub(super) fn put_presence<C: GenericClient>(
    db: &mut Db<'_, C>,
    replica: &str,
    node_id: u64,
    online: bool,
) -> Result<(), StoreError> {
    if online {
        db.exec(
            "INSERT INTO presence (replica, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&replica, &to_i64(node_id)],
        )?;
    } else {
        db.exec(
            "DELETE FROM presence WHERE replica = $1 AND node_id = $2",
            &[&replica, &to_i64(node_id)],
        )?;
    }
    Ok(())
}

/// Deletes a replica's presence rows and heartbeat.
pub(super) fn replica_gone<C: GenericClient>(
    db: &mut Db<'_, C>,
    replica: &str,
) -> Result<(), StoreError> {
    db.exec("DELETE FROM presence WHERE replica = $1", &[&replica])?;
    db.exec("DELETE FROM replicas WHERE id = $1", &[&replica])?;
    Ok(())
}

/// The changes after `after`, oldest first.
pub(super) fn changes_since<C: GenericClient>(
    db: &mut Db<'_, C>,
    after: u64,
    limit: usize,
) -> Result<Vec<ChangeRecord>, StoreError> {
    let rows = db.query(
        "SELECT seq, replica, at_ms, body FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&to_i64(after), &i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ChangeRecord {
                seq: to_u64(col(r, 0)?),
                replica: col(r, 1)?,
                at_ms: to_u64(col(r, 2)?),
                body: col(r, 3)?,
            })
        })
        .collect()
}

/// The newest seq (0: none).
pub(super) fn last_seq<C: GenericClient>(db: &mut Db<'_, C>) -> Result<u64, StoreError> {
    let v: Option<i64> = match db.query_opt("SELECT MAX(seq) FROM changes", &[])? {
        Some(r) => col(&r, 0)?,
        None => None,
    };
    Ok(v.map_or(0, to_u64))
}

/// Deletes the changes up to `through`.
pub(super) fn prune<C: GenericClient>(db: &mut Db<'_, C>, through: u64) -> Result<(), StoreError> {
    db.exec("DELETE FROM changes WHERE seq <= $1", &[&to_i64(through)])?;
    Ok(())
}

/// Upserts `me`'s heartbeat; returns every replica's row.
pub(super) fn heartbeat<C: GenericClient>(
    db: &mut Db<'_, C>,
    me: &ReplicaRecord,
) -> Result<Vec<ReplicaRecord>, StoreError> {
    db.exec(
        "INSERT INTO replicas (id, started_ms, heartbeat_ms) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
        &[&me.id, &to_i64(me.started_ms), &to_i64(me.heartbeat_ms)],
    )?;
    let rows = db.query(
        "SELECT id, started_ms, heartbeat_ms FROM replicas ORDER BY id",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ReplicaRecord {
                id: col(r, 0)?,
                started_ms: to_u64(col(r, 1)?),
                heartbeat_ms: to_u64(col(r, 2)?),
            })
        })
        .collect()
}

/// Every presence row.
pub(super) fn load_presence<C: GenericClient>(
    db: &mut Db<'_, C>,
) -> Result<Vec<PresenceRecord>, StoreError> {
    let rows = db.query(
        "SELECT replica, node_id FROM presence ORDER BY replica, node_id",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            Ok(PresenceRecord {
                replica: col(r, 0)?,
                node_id: to_u64(col(r, 1)?),
            })
        })
        .collect()
}

/// `LISTEN weft_changes` on a connection of its own.
pub(super) struct PgListener {
    client: Client,
}

impl PgListener {
    /// Connects to `target` and listens.
    pub(super) fn start(target: &Target) -> Result<Self, StoreError> {
        let mut client = target.connect()?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(Self { client })
    }
}

impl ChangeListener for PgListener {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let woken = {
            let mut n = self.client.notifications();
            let first = n.timeout_iter(timeout).next();
            match first {
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "listening for changes: {e}"
                    )));
                }
                Ok(Some(_)) => {
                    // Drain what else arrived: one wake-up covers them all.
                    let mut more = n.iter();
                    while let Ok(Some(_)) = more.next() {}
                    true
                }
                Ok(None) => false,
            }
        };
        // The iterator ends the same way on a timeout and a lost connection.
        if !woken && self.client.is_closed() {
            return Err(StoreError::Unavailable(
                "the connection listening for changes closed".into(),
            ));
        }
        Ok(woken)
    }
}
