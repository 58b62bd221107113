//! Usage accounting's rows (migration 0006) on PostgreSQL.

use postgres::{GenericClient, Row};
use weft_proto::usage::UsageCounters;

use super::{Db, col};
use crate::store::StoreError;
use crate::store::sqlite::{to_i64, to_u64};
use crate::store::usage::{SeriesKey, SeriesKind, UsageBucketRecord, UsageCounterRecord, UsageSum};

fn counters(r: &Row, first: usize) -> Result<UsageCounters, StoreError> {
    Ok(UsageCounters {
        tx_bytes: to_u64(col(r, first)?),
        rx_bytes: to_u64(col(r, first + 1)?),
        tx_packets: to_u64(col(r, first + 2)?),
        rx_packets: to_u64(col(r, first + 3)?),
        flows: to_u64(col(r, first + 4)?),
    })
}

/// The series key in columns `first..first + 5` (kind, peer, proto, port,
/// user_id).
fn key(r: &Row, first: usize) -> Result<SeriesKey, StoreError> {
    let kind: String = col(r, first)?;
    let proto: i64 = col(r, first + 2)?;
    let port: i64 = col(r, first + 3)?;
    Ok(SeriesKey {
        kind: SeriesKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("usage series kind {kind:?}")))?,
        peer: col(r, first + 1)?,
        proto: u8::try_from(proto).unwrap_or(0),
        port: u16::try_from(port).unwrap_or(0),
        user: col(r, first + 4)?,
    })
}

/// Upserts a series' last value.
pub(super) fn put_counter<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &UsageCounterRecord,
) -> Result<(), StoreError> {
    let c = &r.counters;
    db.exec(
        "INSERT INTO usage_counters (node_id, kind, peer, proto, port, user_id, run_id, epoch,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (node_id, kind, peer, proto, port, user_id) DO UPDATE SET
             run_id = excluded.run_id, epoch = excluded.epoch,
             tx_bytes = excluded.tx_bytes, rx_bytes = excluded.rx_bytes,
             tx_packets = excluded.tx_packets, rx_packets = excluded.rx_packets,
             flows = excluded.flows, updated_ms = excluded.updated_ms",
        &[
            &to_i64(r.node_id),
            &r.key.kind.as_str(),
            &r.key.peer,
            &i64::from(r.key.proto),
            &i64::from(r.key.port),
            &r.key.user,
            &r.run_id,
            &to_i64(r.epoch),
            &to_i64(c.tx_bytes),
            &to_i64(c.rx_bytes),
            &to_i64(c.tx_packets),
            &to_i64(c.rx_packets),
            &to_i64(c.flows),
            &to_i64(r.updated_ms),
        ],
    )?;
    Ok(())
}

/// Adds a growth to its bucket (each sum capped at i64::MAX, as SQLite's).
pub(super) fn add_bucket<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &UsageBucketRecord,
) -> Result<(), StoreError> {
    let d = &r.delta;
    db.exec(
        "INSERT INTO usage_buckets (node_id, bucket_ms, kind, peer, proto, port, user_id,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (bucket_ms, node_id, kind, peer, proto, port, user_id) DO UPDATE SET
             tx_bytes = LEAST(usage_buckets.tx_bytes::NUMERIC + excluded.tx_bytes, 9223372036854775807)::BIGINT,
             rx_bytes = LEAST(usage_buckets.rx_bytes::NUMERIC + excluded.rx_bytes, 9223372036854775807)::BIGINT,
             tx_packets = LEAST(usage_buckets.tx_packets::NUMERIC + excluded.tx_packets, 9223372036854775807)::BIGINT,
             rx_packets = LEAST(usage_buckets.rx_packets::NUMERIC + excluded.rx_packets, 9223372036854775807)::BIGINT,
             flows = LEAST(usage_buckets.flows::NUMERIC + excluded.flows, 9223372036854775807)::BIGINT",
        &[
            &to_i64(r.node_id),
            &to_i64(r.bucket_ms),
            &r.key.kind.as_str(),
            &r.key.peer,
            &i64::from(r.key.proto),
            &i64::from(r.key.port),
            &r.key.user,
            &to_i64(d.tx_bytes),
            &to_i64(d.rx_bytes),
            &to_i64(d.tx_packets),
            &to_i64(d.rx_packets),
            &to_i64(d.flows),
        ],
    )?;
    Ok(())
}

/// Deletes buckets that start before `before_ms`.
pub(super) fn prune<C: GenericClient>(
    db: &mut Db<'_, C>,
    before_ms: u64,
) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM usage_buckets WHERE bucket_ms < $1",
        &[&to_i64(before_ms)],
    )?;
    Ok(())
}

/// Every series' last value for one node.
pub(super) fn counters_of<C: GenericClient>(
    db: &mut Db<'_, C>,
    node_id: u64,
) -> Result<Vec<UsageCounterRecord>, StoreError> {
    let rows = db.query(
        "SELECT kind, peer, proto, port, user_id, run_id, epoch,
             tx_bytes, rx_bytes, tx_packets, rx_packets, flows, updated_ms
         FROM usage_counters WHERE node_id = $1",
        &[&to_i64(node_id)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(UsageCounterRecord {
                node_id,
                key: key(r, 0)?,
                run_id: col(r, 5)?,
                epoch: to_u64(col(r, 6)?),
                counters: counters(r, 7)?,
                updated_ms: to_u64(col(r, 12)?),
            })
        })
        .collect()
}

/// Each series' growth summed over the buckets starting at or after
/// `since_ms` (sums capped at i64::MAX).
pub(super) fn sums<C: GenericClient>(
    db: &mut Db<'_, C>,
    since_ms: u64,
) -> Result<Vec<UsageSum>, StoreError> {
    let rows = db.query(
        "SELECT kind, peer, proto, port, user_id, node_id,
             LEAST(SUM(tx_bytes), 9223372036854775807)::BIGINT,
             LEAST(SUM(rx_bytes), 9223372036854775807)::BIGINT,
             LEAST(SUM(tx_packets), 9223372036854775807)::BIGINT,
             LEAST(SUM(rx_packets), 9223372036854775807)::BIGINT,
             LEAST(SUM(flows), 9223372036854775807)::BIGINT
         FROM usage_buckets WHERE bucket_ms >= $1
         GROUP BY node_id, kind, peer, proto, port, user_id",
        &[&to_i64(since_ms)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(UsageSum {
                node_id: to_u64(col(r, 5)?),
                key: key(r, 0)?,
                counters: counters(r, 6)?,
            })
        })
        .collect()
}
