//! The anomaly event log's rows (migration 0007): append with per-node
//! idempotency, bounded retention, reads by node and time.

use rusqlite::{Connection, Transaction, params};

use super::{corrupt, parse, to_i64, to_u64};
use crate::store::{EVENTS_KEPT, EventQuery, EventRecord, StoreError};

/// Appends `records` (skipping any the log already holds for that node and
/// event id) and deletes the oldest rows beyond [`EVENTS_KEPT`].
pub(super) fn insert(tx: &Transaction<'_>, records: &[EventRecord]) -> Result<(), StoreError> {
    insert_keeping(tx, records, EVENTS_KEPT)
}

/// [`insert`], keeping the newest `keep` rows.
fn insert_keeping(
    tx: &Transaction<'_>,
    records: &[EventRecord],
    keep: u64,
) -> Result<(), StoreError> {
    for r in records {
        let json = serde_json::to_string(&r.event)
            .map_err(|e| StoreError::Db(format!("encoding an event: {e}")))?;
        tx.prepare_cached(
            "INSERT OR IGNORE INTO events (node_id, node_name, node_key, event_id, kind, at_ms, received_at_ms, event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            to_i64(r.node_id),
            r.node_name,
            r.node_key.to_string(),
            to_i64(r.event.id),
            r.event.kind.as_str(),
            to_i64(r.event.at_ms),
            to_i64(r.received_at_ms),
            json
        ])?;
    }
    if !records.is_empty() {
        tx.prepare_cached("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1")?
            .execute([to_i64(keep)])?;
    }
    Ok(())
}

/// The newest `q.limit` events that match, oldest first.
pub(super) fn query(c: &Connection, q: &EventQuery) -> Result<Vec<(u64, EventRecord)>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT seq, node_id, node_name, node_key, received_at_ms, event FROM events
         WHERE (?1 IS NULL OR node_id = ?1) AND (?2 IS NULL OR received_at_ms >= ?2)
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![
            q.node_id.map(to_i64),
            q.since_ms.map(to_i64),
            i64::from(q.limit)
        ],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, node_id, node_name, key, received, event) = row?;
        out.push((
            to_u64(seq),
            EventRecord {
                node_id: to_u64(node_id),
                node_name,
                node_key: parse("event node_key", &key)?,
                received_at_ms: to_u64(received),
                event: serde_json::from_str(&event).map_err(|e| corrupt("event")(e.to_string()))?,
            },
        ));
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::insert_keeping;
    use crate::store::row_suites::event as record;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{EventQuery, Store};

    #[test]
    fn only_the_newest_events_are_kept() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        let tx = s.conn.transaction().unwrap();
        insert_keeping(&tx, &[record(1, 1, 10), record(1, 2, 20)], 2).unwrap();
        insert_keeping(&tx, &[record(1, 3, 30)], 2).unwrap();
        tx.commit().unwrap();
        let left = s
            .events(&EventQuery {
                limit: 100,
                ..EventQuery::default()
            })
            .unwrap();
        let ids: Vec<u64> = left.iter().map(|(_, r)| r.event.id).collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(crate::store::EVENTS_KEPT, 100_000);
    }
}
