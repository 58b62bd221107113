//! The rows of remote tasks (migration 0008) on PostgreSQL.

use postgres::GenericClient;
use weft_proto::task::{RunState, TaskLimits, TaskStatus};

use super::{Db, col, to_u32};
use crate::store::StoreError;
use crate::store::sqlite::{parse_json, to_i64, to_u64};
use crate::store::tasks::{TaskRecord, TaskResultRecord, TaskRunRecord, TasksSnapshot};

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("encoding {what}: {e}")))
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what}: {v:?}"))
}

/// Reads every task and run.
pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<TasksSnapshot, StoreError> {
    let mut snap = TasksSnapshot::default();
    for r in db.query(
        "SELECT id, created_at_ms, created_by, target, kind, timeout_secs, output_cap, deadline_ms, cancelled_at_ms
         FROM tasks ORDER BY created_at_ms, id",
        &[],
    )? {
        let target: String = col(&r, 3)?;
        let kind: String = col(&r, 4)?;
        snap.tasks.push(TaskRecord {
            id: col(&r, 0)?,
            created_at_ms: to_u64(col(&r, 1)?),
            created_by: col(&r, 2)?,
            target: parse_json("task target", &target)?,
            kind: parse_json("task kind", &kind)?,
            limits: TaskLimits {
                timeout_secs: to_u32("task timeout_secs", col(&r, 5)?)?,
                output_cap_bytes: to_u32("task output_cap", col(&r, 6)?)?,
            },
            deadline_ms: to_u64(col(&r, 7)?),
            cancelled_at_ms: col::<Option<i64>>(&r, 8)?.map(to_u64),
        });
    }
    for r in db.query(
        "SELECT task_id, node_id, node_name, node_key, state, lease_id, lease_expires_at_ms, leases, status, finished_at_ms
         FROM task_runs ORDER BY task_id, node_id",
        &[],
    )? {
        let state: String = col(&r, 4)?;
        let status: Option<String> = col(&r, 8)?;
        snap.runs.push(TaskRunRecord {
            task_id: col(&r, 0)?,
            node_id: to_u64(col(&r, 1)?),
            node_name: col(&r, 2)?,
            node_key: col(&r, 3)?,
            state: RunState::parse(&state).ok_or_else(|| corrupt("task run state", &state))?,
            lease_id: col(&r, 5)?,
            lease_expires_at_ms: col::<Option<i64>>(&r, 6)?.map(to_u64),
            leases: to_u32("task run leases", col(&r, 7)?)?,
            status: status
                .map(|s| TaskStatus::parse(&s).ok_or_else(|| corrupt("task run status", &s)))
                .transpose()?,
            finished_at_ms: col::<Option<i64>>(&r, 9)?.map(to_u64),
        });
    }
    Ok(snap)
}

/// Inserts or replaces a task.
pub(super) fn put_task<C: GenericClient>(
    db: &mut Db<'_, C>,
    t: &TaskRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO tasks (id, created_at_ms, created_by, target, kind, timeout_secs, output_cap, deadline_ms, cancelled_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET cancelled_at_ms = excluded.cancelled_at_ms",
        &[
            &t.id,
            &to_i64(t.created_at_ms),
            &t.created_by,
            &json("a task target", &t.target)?,
            &json("a task kind", &t.kind)?,
            &i64::from(t.limits.timeout_secs),
            &i64::from(t.limits.output_cap_bytes),
            &to_i64(t.deadline_ms),
            &t.cancelled_at_ms.map(to_i64),
        ],
    )?;
    Ok(())
}

/// Inserts or replaces a run.
pub(super) fn put_run<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &TaskRunRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO task_runs (task_id, node_id, node_name, node_key, state, lease_id, lease_expires_at_ms, leases, status, finished_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (task_id, node_id) DO UPDATE SET state = excluded.state, lease_id = excluded.lease_id,
           lease_expires_at_ms = excluded.lease_expires_at_ms, leases = excluded.leases,
           status = excluded.status, finished_at_ms = excluded.finished_at_ms",
        &[
            &r.task_id,
            &to_i64(r.node_id),
            &r.node_name,
            &r.node_key,
            &r.state.as_str(),
            &r.lease_id,
            &r.lease_expires_at_ms.map(to_i64),
            &i64::from(r.leases),
            &r.status.map(TaskStatus::as_str),
            &r.finished_at_ms.map(to_i64),
        ],
    )?;
    Ok(())
}

/// Inserts a run's result (a run has one: a second insert fails the commit).
pub(super) fn put_result<C: GenericClient>(
    db: &mut Db<'_, C>,
    r: &TaskResultRecord,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO task_results (task_id, node_id, received_at_ms, result) VALUES ($1, $2, $3, $4)",
        &[
            &r.task_id,
            &to_i64(r.node_id),
            &to_i64(r.received_at_ms),
            &json("a task result", &r.result)?,
        ],
    )?;
    Ok(())
}

/// Deletes a task, its runs and results.
pub(super) fn delete_task<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: &str,
) -> Result<(), StoreError> {
    db.exec("DELETE FROM task_results WHERE task_id = $1", &[&id])?;
    db.exec("DELETE FROM task_runs WHERE task_id = $1", &[&id])?;
    db.exec("DELETE FROM tasks WHERE id = $1", &[&id])?;
    Ok(())
}

/// The results of a task's runs, by node id.
pub(super) fn results<C: GenericClient>(
    db: &mut Db<'_, C>,
    task_id: &str,
) -> Result<Vec<TaskResultRecord>, StoreError> {
    let rows = db.query(
        "SELECT node_id, received_at_ms, result FROM task_results WHERE task_id = $1 ORDER BY node_id",
        &[&task_id],
    )?;
    rows.iter()
        .map(|r| {
            let result: String = col(r, 2)?;
            Ok(TaskResultRecord {
                task_id: task_id.to_owned(),
                node_id: to_u64(col(r, 0)?),
                received_at_ms: to_u64(col(r, 1)?),
                result: parse_json("task result", &result)?,
            })
        })
        .collect()
}
