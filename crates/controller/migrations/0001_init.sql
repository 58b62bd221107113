-- weft controller schema, version 1.
--
-- Portable SQL on purpose: ids are assigned by the controller (no AUTOINCREMENT /
-- SERIAL), hashes are lowercase hex TEXT, lists are JSON TEXT, times are integer
-- Unix seconds (audit: milliseconds). The same statements run on PostgreSQL with
-- BIGINT in place of INTEGER, so a second driver needs its own copy of this file
-- with only type names changed. Uniqueness that matters for correctness (one
-- address per network, one node per key, one name per node) is enforced here as
-- well as in the controller, so even a logic bug cannot persist a duplicate.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE networks (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    ipv4_cidr      TEXT    NOT NULL,
    ipv6_prefix    TEXT,
    dns_domain     TEXT    NOT NULL,
    pow_difficulty INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE nodes (
    id              INTEGER PRIMARY KEY,
    node_key        TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL UNIQUE,
    hostname        TEXT,
    tags            TEXT    NOT NULL,
    disabled        INTEGER NOT NULL,
    credential_hash TEXT    NOT NULL UNIQUE,
    endpoints       TEXT    NOT NULL,
    last_seen       INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,
    description TEXT,
    tags        TEXT    NOT NULL,
    networks    TEXT    NOT NULL,
    max_uses    INTEGER,
    uses        INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE memberships (
    node_id    INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    network_id INTEGER NOT NULL REFERENCES networks (id),
    ipv4       TEXT    NOT NULL,
    ipv6       TEXT,
    token_id   INTEGER REFERENCES join_tokens (id),
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (node_id, network_id),
    UNIQUE (network_id, ipv4)
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL
);

CREATE INDEX audit_log_target ON audit_log (target);
