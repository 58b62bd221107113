//! Usage accounting's rows (migration 0006): each series' last value, hourly
//! buckets of growth, and sums over a window.

use rusqlite::{Connection, Transaction, params};
use weft_proto::usage::UsageCounters;

use super::{to_i64, to_u64};
use crate::store::StoreError;
use crate::store::usage::{SeriesKey, SeriesKind, UsageBucketRecord, UsageCounterRecord, UsageSum};

fn counters(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<UsageCounters> {
    Ok(UsageCounters {
        tx_bytes: to_u64(r.get(first)?),
        rx_bytes: to_u64(r.get(first + 1)?),
        tx_packets: to_u64(r.get(first + 2)?),
        rx_packets: to_u64(r.get(first + 3)?),
        flows: to_u64(r.get(first + 4)?),
    })
}

/// The series key in columns `first..first + 5` (kind, peer, proto, port,
/// user_id).
fn key(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<(String, SeriesKey)> {
    let kind: String = r.get(first)?;
    let proto: i64 = r.get(first + 2)?;
    let port: i64 = r.get(first + 3)?;
    Ok((
        kind,
        SeriesKey {
            kind: SeriesKind::Flow,
            peer: r.get(first + 1)?,
            proto: u8::try_from(proto).unwrap_or(0),
            port: u16::try_from(port).unwrap_or(0),
            user: r.get(first + 4)?,
        },
    ))
}

fn with_kind(kind: &str, mut k: SeriesKey) -> Result<SeriesKey, StoreError> {
    k.kind = SeriesKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("usage series kind {kind:?}")))?;
    Ok(k)
}

/// Upserts a series' last value.
pub(super) fn put_counter(tx: &Transaction<'_>, r: &UsageCounterRecord) -> Result<(), StoreError> {
    let c = &r.counters;
    tx.prepare_cached(
        "INSERT INTO usage_counters (node_id, kind, peer, proto, port, user_id, run_id, epoch,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (node_id, kind, peer, proto, port, user_id) DO UPDATE SET
             run_id = excluded.run_id, epoch = excluded.epoch,
             tx_bytes = excluded.tx_bytes, rx_bytes = excluded.rx_bytes,
             tx_packets = excluded.tx_packets, rx_packets = excluded.rx_packets,
             flows = excluded.flows, updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        to_i64(r.node_id),
        r.key.kind.as_str(),
        r.key.peer,
        i64::from(r.key.proto),
        i64::from(r.key.port),
        r.key.user,
        r.run_id,
        to_i64(r.epoch),
        to_i64(c.tx_bytes),
        to_i64(c.rx_bytes),
        to_i64(c.tx_packets),
        to_i64(c.rx_packets),
        to_i64(c.flows),
        to_i64(r.updated_ms),
    ])?;
    Ok(())
}

/// Adds a growth to its bucket.
pub(super) fn add_bucket(tx: &Transaction<'_>, r: &UsageBucketRecord) -> Result<(), StoreError> {
    let d = &r.delta;
    tx.prepare_cached(
        "INSERT INTO usage_buckets (node_id, bucket_ms, kind, peer, proto, port, user_id,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (bucket_ms, node_id, kind, peer, proto, port, user_id) DO UPDATE SET
             tx_bytes = MIN(tx_bytes + excluded.tx_bytes, 9223372036854775807),
             rx_bytes = MIN(rx_bytes + excluded.rx_bytes, 9223372036854775807),
             tx_packets = MIN(tx_packets + excluded.tx_packets, 9223372036854775807),
             rx_packets = MIN(rx_packets + excluded.rx_packets, 9223372036854775807),
             flows = MIN(flows + excluded.flows, 9223372036854775807)",
    )?
    .execute(params![
        to_i64(r.node_id),
        to_i64(r.bucket_ms),
        r.key.kind.as_str(),
        r.key.peer,
        i64::from(r.key.proto),
        i64::from(r.key.port),
        r.key.user,
        to_i64(d.tx_bytes),
        to_i64(d.rx_bytes),
        to_i64(d.tx_packets),
        to_i64(d.rx_packets),
        to_i64(d.flows),
    ])?;
    Ok(())
}

/// Deletes buckets that start before `before_ms`.
pub(super) fn prune(tx: &Transaction<'_>, before_ms: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM usage_buckets WHERE bucket_ms < ?1")?
        .execute([to_i64(before_ms)])?;
    Ok(())
}

/// Every series' last value for one node.
pub(super) fn counters_of(
    c: &Connection,
    node_id: u64,
) -> Result<Vec<UsageCounterRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT kind, peer, proto, port, user_id, run_id, epoch,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows, updated_ms
         FROM usage_counters WHERE node_id = ?1",
    )?;
    let rows = st.query_map([to_i64(node_id)], |r| {
        Ok((
            key(r, 0)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            counters(r, 7)?,
            r.get::<_, i64>(12)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((kind, k), run_id, epoch, counters, updated) = row?;
        out.push(UsageCounterRecord {
            node_id,
            key: with_kind(&kind, k)?,
            run_id,
            epoch: to_u64(epoch),
            counters,
            updated_ms: to_u64(updated),
        });
    }
    Ok(out)
}

/// Each series' growth summed over the buckets starting at or after
/// `since_ms`.
pub(super) fn sums(c: &Connection, since_ms: u64) -> Result<Vec<UsageSum>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT kind, peer, proto, port, user_id, node_id,
             SUM(tx_bytes), SUM(rx_bytes), SUM(tx_packets), SUM(rx_packets), SUM(flows)
         FROM usage_buckets WHERE bucket_ms >= ?1
         GROUP BY node_id, kind, peer, proto, port, user_id",
    )?;
    let rows = st.query_map([to_i64(since_ms)], |r| {
        Ok((key(r, 0)?, r.get::<_, i64>(5)?, counters(r, 6)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((kind, k), node_id, counters) = row?;
        out.push(UsageSum {
            node_id: to_u64(node_id),
            key: with_kind(&kind, k)?,
            counters,
        });
    }
    Ok(out)
}

// Tested with the other driver: crate::store::row_suites.
