-- weft controller schema, version 15: several replicas on one database
-- (issue 20).
--
-- changes: the log of committed batches, one row per batch, so that the
-- other replicas replay it into their memory in the same order. `seq` is
-- gap-free: the committing replica takes the database-wide write lock
-- (SQLite BEGIN IMMEDIATE, PostgreSQL pg_advisory_xact_lock), reads the
-- newest seq and writes the next one in the same transaction as the
-- batch's rows. `body` is the batch as the engine serializes it (JSON:
-- the operations, their actors and time, the map version after it); the
-- store never reads inside it. Old rows are pruned; a replica that falls
-- further behind reloads everything.
--
-- replicas: each running controller process's heartbeat (Unix ms); one
-- whose heartbeat is stale is dead, and the others withdraw its presence.
--
-- presence: which replica holds a map stream of which node. A node is
-- online for its peers while any replica holds one of its streams.

CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY,
    replica TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL,
    body    TEXT    NOT NULL
);

CREATE TABLE replicas (
    id           TEXT    PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);

CREATE TABLE presence (
    replica TEXT    NOT NULL,
    node_id INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    PRIMARY KEY (replica, node_id)
);
