-- weft controller schema, version 8 (PostgreSQL): remote tasks.
-- See ../0008_tasks.sql.

CREATE TABLE tasks (
    id              TEXT   PRIMARY KEY,
    created_at_ms   BIGINT NOT NULL,
    created_by      TEXT   NOT NULL,
    target          TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    timeout_secs    BIGINT NOT NULL,
    output_cap      BIGINT NOT NULL,
    deadline_ms     BIGINT NOT NULL,
    cancelled_at_ms BIGINT
);
CREATE INDEX tasks_by_time ON tasks (created_at_ms);

CREATE TABLE task_runs (
    task_id             TEXT   NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    node_id             BIGINT NOT NULL,
    node_name           TEXT   NOT NULL,
    node_key            TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    lease_id            TEXT,
    lease_expires_at_ms BIGINT,
    leases              BIGINT NOT NULL,
    status              TEXT,
    finished_at_ms      BIGINT,
    PRIMARY KEY (task_id, node_id)
);

CREATE TABLE task_results (
    task_id        TEXT   NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    node_id        BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    result         TEXT   NOT NULL,
    PRIMARY KEY (task_id, node_id)
);
