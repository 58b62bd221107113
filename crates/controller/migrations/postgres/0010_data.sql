-- weft controller schema, version 10 (PostgreSQL): node data and sealed
-- secrets. See ../0010_data.sql.

CREATE TABLE data_entries (
    scope         TEXT   NOT NULL,
    node_id       BIGINT REFERENCES nodes (id) ON DELETE CASCADE,
    key           TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE secrets (
    node_id       BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    key           TEXT   NOT NULL,
    sealed        BYTEA  NOT NULL,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, key)
);
