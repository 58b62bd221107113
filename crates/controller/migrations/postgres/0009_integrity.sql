-- weft controller schema, version 9 (PostgreSQL): hooks and integrity.
-- See ../0009_integrity.sql.

CREATE TABLE hook_approvals (
    name           TEXT   NOT NULL,
    sha256         TEXT   NOT NULL,
    approved_at_ms BIGINT NOT NULL,
    PRIMARY KEY (name, sha256)
);

CREATE TABLE integrity_expected (
    version   TEXT   PRIMARY KEY,
    sha256    TEXT   NOT NULL,
    set_at_ms BIGINT NOT NULL
);

CREATE TABLE node_integrity (
    node_id        BIGINT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    reported_at_ms BIGINT NOT NULL,
    report         TEXT   NOT NULL
);
