//! The rows of remote tasks (migration 0008): tasks, their runs, results.

use rusqlite::{Connection, Transaction, params};
use weft_proto::task::{RunState, TaskLimits, TaskStatus};

use super::{corrupt, parse_json, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::tasks::{TaskRecord, TaskResultRecord, TaskRunRecord, TasksSnapshot};

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("encoding {what}: {e}")))
}

/// Reads every task and run.
pub(super) fn load(c: &Connection) -> Result<TasksSnapshot, StoreError> {
    let mut snap = TasksSnapshot::default();
    let mut st = c.prepare(
        "SELECT id, created_at_ms, created_by, target, kind, timeout_secs, output_cap, deadline_ms, cancelled_at_ms
         FROM tasks ORDER BY created_at_ms, id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, u32>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<i64>>(8)?,
        ))
    })?;
    for row in rows {
        let (id, created, by, target, kind, timeout, cap, deadline, cancelled) = row?;
        snap.tasks.push(TaskRecord {
            id,
            created_at_ms: to_u64(created),
            created_by: by,
            target: parse_json("task target", &target)?,
            kind: parse_json("task kind", &kind)?,
            limits: TaskLimits {
                timeout_secs: timeout,
                output_cap_bytes: cap,
            },
            deadline_ms: to_u64(deadline),
            cancelled_at_ms: cancelled.map(to_u64),
        });
    }
    let mut st = c.prepare(
        "SELECT task_id, node_id, node_name, node_key, state, lease_id, lease_expires_at_ms, leases, status, finished_at_ms
         FROM task_runs ORDER BY task_id, node_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, u32>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<i64>>(9)?,
        ))
    })?;
    for row in rows {
        let (task_id, node, name, key, state, lease, expires, leases, status, finished) = row?;
        let state = RunState::parse(&state)
            .ok_or_else(|| corrupt("task run state")(format!("{state:?}")))?;
        let status = status
            .map(|s| {
                TaskStatus::parse(&s).ok_or_else(|| corrupt("task run status")(format!("{s:?}")))
            })
            .transpose()?;
        snap.runs.push(TaskRunRecord {
            task_id,
            node_id: to_u64(node),
            node_name: name,
            node_key: key,
            state,
            lease_id: lease,
            lease_expires_at_ms: expires.map(to_u64),
            leases,
            status,
            finished_at_ms: finished.map(to_u64),
        });
    }
    Ok(snap)
}

/// Inserts or replaces a task.
pub(super) fn put_task(tx: &Transaction<'_>, t: &TaskRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO tasks (id, created_at_ms, created_by, target, kind, timeout_secs, output_cap, deadline_ms, cancelled_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET cancelled_at_ms = excluded.cancelled_at_ms",
    )?
    .execute(params![
        t.id,
        to_i64(t.created_at_ms),
        t.created_by,
        json("a task target", &t.target)?,
        json("a task kind", &t.kind)?,
        t.limits.timeout_secs,
        t.limits.output_cap_bytes,
        to_i64(t.deadline_ms),
        t.cancelled_at_ms.map(to_i64),
    ])?;
    Ok(())
}

/// Inserts or replaces a run.
pub(super) fn put_run(tx: &Transaction<'_>, r: &TaskRunRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO task_runs (task_id, node_id, node_name, node_key, state, lease_id, lease_expires_at_ms, leases, status, finished_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (task_id, node_id) DO UPDATE SET state = excluded.state, lease_id = excluded.lease_id,
           lease_expires_at_ms = excluded.lease_expires_at_ms, leases = excluded.leases,
           status = excluded.status, finished_at_ms = excluded.finished_at_ms",
    )?
    .execute(params![
        r.task_id,
        to_i64(r.node_id),
        r.node_name,
        r.node_key,
        r.state.as_str(),
        r.lease_id,
        r.lease_expires_at_ms.map(to_i64),
        r.leases,
        r.status.map(TaskStatus::as_str),
        r.finished_at_ms.map(to_i64),
    ])?;
    Ok(())
}

/// Inserts a run's result (a run has one: a second insert fails the commit).
pub(super) fn put_result(tx: &Transaction<'_>, r: &TaskResultRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO task_results (task_id, node_id, received_at_ms, result) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        r.task_id,
        to_i64(r.node_id),
        to_i64(r.received_at_ms),
        json("a task result", &r.result)?,
    ])?;
    Ok(())
}

/// Deletes a task, its runs and results.
pub(super) fn delete_task(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM task_results WHERE task_id = ?1")?
        .execute([id])?;
    tx.prepare_cached("DELETE FROM task_runs WHERE task_id = ?1")?
        .execute([id])?;
    tx.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// The results of a task's runs, by node id.
pub(super) fn results(c: &Connection, task_id: &str) -> Result<Vec<TaskResultRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT node_id, received_at_ms, result FROM task_results WHERE task_id = ?1 ORDER BY node_id",
    )?;
    let rows = st.query_map([task_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (node, at, result) = row?;
        out.push(TaskResultRecord {
            task_id: task_id.to_owned(),
            node_id: to_u64(node),
            received_at_ms: to_u64(at),
            result: parse_json("task result", &result)?,
        });
    }
    Ok(out)
}

// Tested with the other driver: crate::store::row_suites.
