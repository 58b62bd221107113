-- weft controller schema, version 1 (PostgreSQL).
--
-- The same tables as ../0001_init.sql (read its notes there): ids are assigned
-- by the controller, hashes are lowercase hex TEXT, lists are JSON TEXT, times
-- integer Unix seconds (audit: milliseconds). Only the types differ: BIGINT for
-- INTEGER, BOOLEAN for SQLite's 0/1 flags. A test checks the two directories
-- hold the same file names.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE networks (
    id             BIGINT  PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    ipv4_cidr      TEXT    NOT NULL,
    ipv6_prefix    TEXT,
    dns_domain     TEXT    NOT NULL,
    pow_difficulty BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL
);

CREATE TABLE nodes (
    id              BIGINT  PRIMARY KEY,
    node_key        TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL UNIQUE,
    hostname        TEXT,
    tags            TEXT    NOT NULL,
    disabled        BOOLEAN NOT NULL,
    credential_hash TEXT    NOT NULL UNIQUE,
    endpoints       TEXT    NOT NULL,
    last_seen       BIGINT,
    created_at      BIGINT  NOT NULL
);

CREATE TABLE join_tokens (
    id          BIGINT  PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,
    description TEXT,
    tags        TEXT    NOT NULL,
    networks    TEXT    NOT NULL,
    max_uses    BIGINT,
    uses        BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    revoked     BOOLEAN NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE memberships (
    node_id    BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    network_id BIGINT NOT NULL REFERENCES networks (id),
    ipv4       TEXT   NOT NULL,
    ipv6       TEXT,
    token_id   BIGINT REFERENCES join_tokens (id),
    joined_at  BIGINT NOT NULL,
    PRIMARY KEY (node_id, network_id),
    UNIQUE (network_id, ipv4)
);

CREATE TABLE audit_log (
    id     BIGINT PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT   NOT NULL,
    action TEXT   NOT NULL,
    target TEXT   NOT NULL,
    detail TEXT   NOT NULL
);

CREATE INDEX audit_log_target ON audit_log (target);
