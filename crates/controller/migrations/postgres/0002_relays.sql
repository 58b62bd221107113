-- weft controller schema, version 2 (PostgreSQL): relays. See ../0002_relays.sql.

CREATE TABLE relays (
    id              BIGINT PRIMARY KEY,
    name            TEXT   NOT NULL UNIQUE,
    url             TEXT   NOT NULL,
    token_hash      TEXT   NOT NULL UNIQUE,
    tls_fingerprint TEXT,
    stun_port       BIGINT,
    created_at      BIGINT NOT NULL,
    last_seen       BIGINT
);
