-- weft controller schema, version 14 (PostgreSQL): SSH through the mesh.
-- See ../0014_ssh.sql.

CREATE TABLE node_ssh (
    node_id        BIGINT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    port           BIGINT NOT NULL,
    host_key       TEXT   NOT NULL,
    reported_at_ms BIGINT NOT NULL
);

CREATE TABLE ssh_sessions_seen (
    node_id   BIGINT  NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    record_id TEXT    NOT NULL,
    ended     BOOLEAN NOT NULL,
    at_ms     BIGINT  NOT NULL,
    PRIMARY KEY (node_id, record_id, ended)
);
