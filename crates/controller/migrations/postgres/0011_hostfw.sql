-- weft controller schema, version 11 (PostgreSQL): the host firewall.
-- See ../0011_hostfw.sql.

CREATE TABLE host_firewall_versions (
    version BIGINT PRIMARY KEY,
    text    TEXT   NOT NULL,
    author  TEXT   NOT NULL,
    at_ms   BIGINT NOT NULL
);

CREATE TABLE host_firewall_rules (
    id            BIGINT PRIMARY KEY,
    node_id       BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    direction     TEXT   NOT NULL,
    proto         TEXT   NOT NULL,
    ports         TEXT   NOT NULL,
    peers         TEXT   NOT NULL,
    comment       TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT
);

CREATE INDEX host_firewall_rules_node ON host_firewall_rules (node_id);
