-- weft controller schema, version 15 (PostgreSQL): several replicas on one
-- database. See ../0015_replicas.sql. The write lock is
-- pg_advisory_xact_lock (store::postgres::replicas::WRITE_LOCK); a change
-- row's insert is followed by pg_notify('weft_changes', seq) in the same
-- transaction.

CREATE TABLE changes (
    seq     BIGINT PRIMARY KEY,
    replica TEXT   NOT NULL,
    at_ms   BIGINT NOT NULL,
    body    TEXT   NOT NULL
);

CREATE TABLE replicas (
    id           TEXT   PRIMARY KEY,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

CREATE TABLE presence (
    replica TEXT   NOT NULL,
    node_id BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    PRIMARY KEY (replica, node_id)
);
