-- weft controller schema, version 12 (PostgreSQL): the DNS blocklist.
-- See ../0012_dns_blocklist.sql.

CREATE TABLE dns_blocklist (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    version    BIGINT NOT NULL,
    mode       TEXT   NOT NULL,
    entries    BIGINT NOT NULL,
    sha256     TEXT   NOT NULL,
    domains    TEXT   NOT NULL,
    set_by     TEXT   NOT NULL,
    set_at_ms  BIGINT NOT NULL
);
