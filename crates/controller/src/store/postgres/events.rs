//! The anomaly event log's rows (migration 0007) on PostgreSQL.

use postgres::GenericClient;

use super::{Db, col};
use crate::store::sqlite::{parse, parse_json, to_i64, to_u64};
use crate::store::{EVENTS_KEPT, EventQuery, EventRecord, StoreError};

/// Appends `records` (skipping any the log already holds for that node and
/// event id) and deletes the oldest rows beyond [`EVENTS_KEPT`].
pub(super) fn insert<C: GenericClient>(
    db: &mut Db<'_, C>,
    records: &[EventRecord],
) -> Result<(), StoreError> {
    insert_keeping(db, records, EVENTS_KEPT)
}

/// [`insert`], keeping the newest `keep` rows.
pub(super) fn insert_keeping<C: GenericClient>(
    db: &mut Db<'_, C>,
    records: &[EventRecord],
    keep: u64,
) -> Result<(), StoreError> {
    for r in records {
        let json = serde_json::to_string(&r.event)
            .map_err(|e| StoreError::Db(format!("encoding an event: {e}")))?;
        db.exec(
            "INSERT INTO events (node_id, node_name, node_key, event_id, kind, at_ms, received_at_ms, event)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node_id, event_id) DO NOTHING",
            &[
                &to_i64(r.node_id),
                &r.node_name,
                &r.node_key.to_string(),
                &to_i64(r.event.id),
                &r.event.kind.as_str(),
                &to_i64(r.event.at_ms),
                &to_i64(r.received_at_ms),
                &json,
            ],
        )?;
    }
    if !records.is_empty() {
        db.exec(
            "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - $1",
            &[&to_i64(keep)],
        )?;
    }
    Ok(())
}

/// The newest `q.limit` events that match, oldest first.
pub(super) fn query<C: GenericClient>(
    db: &mut Db<'_, C>,
    q: &EventQuery,
) -> Result<Vec<(u64, EventRecord)>, StoreError> {
    let rows = db.query(
        "SELECT seq, node_id, node_name, node_key, received_at_ms, event FROM events
         WHERE ($1::BIGINT IS NULL OR node_id = $1) AND ($2::BIGINT IS NULL OR received_at_ms >= $2)
         ORDER BY seq DESC LIMIT $3",
        &[
            &q.node_id.map(to_i64),
            &q.since_ms.map(to_i64),
            &i64::from(q.limit),
        ],
    )?;
    let mut out = rows
        .iter()
        .map(|r| {
            let key: String = col(r, 3)?;
            let event: String = col(r, 5)?;
            Ok((
                to_u64(col(r, 0)?),
                EventRecord {
                    node_id: to_u64(col(r, 1)?),
                    node_name: col(r, 2)?,
                    node_key: parse("event node_key", &key)?,
                    received_at_ms: to_u64(col(r, 4)?),
                    event: parse_json("event", &event)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.reverse();
    Ok(out)
}
