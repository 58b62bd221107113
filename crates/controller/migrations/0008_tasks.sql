-- weft controller schema, version 8: remote tasks (issue 17).
--
-- tasks: what an admin asked nodes to run (POST /v1/admin/tasks). kind is the
-- JSON of weft_proto::task::TaskKind (a hook's approved hashes are filled at
-- lease time, never stored here), target the JSON of TaskTarget. created_by is
-- the actor label and is never handed to nodes.
--
-- task_runs: one row per target node, resolved at creation. node_name and
-- node_key are kept as they were, so a run outlives a removed node. lease_id is
-- the current or last lease; a result is accepted under it (idempotent by
-- task and lease).
--
-- task_results: each run's result (outputs up to the task's cap), read only
-- for `task show`. Deleting a task deletes its runs and results (retention:
-- the oldest finished tasks beyond store::tasks::TASKS_KEPT).

CREATE TABLE tasks (
    id              TEXT    PRIMARY KEY,
    created_at_ms   INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    timeout_secs    INTEGER NOT NULL,
    output_cap      INTEGER NOT NULL,
    deadline_ms     INTEGER NOT NULL,
    cancelled_at_ms INTEGER
);
CREATE INDEX tasks_by_time ON tasks (created_at_ms);

CREATE TABLE task_runs (
    task_id             TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    node_id             INTEGER NOT NULL,
    node_name           TEXT    NOT NULL,
    node_key            TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    lease_id            TEXT,
    lease_expires_at_ms INTEGER,
    leases              INTEGER NOT NULL,
    status              TEXT,
    finished_at_ms      INTEGER,
    PRIMARY KEY (task_id, node_id)
);

CREATE TABLE task_results (
    task_id        TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    node_id        INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    result         TEXT    NOT NULL,
    PRIMARY KEY (task_id, node_id)
);
