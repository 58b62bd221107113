-- weft controller schema, version 4 (PostgreSQL): subnet routes.
-- See ../0004_routes.sql.

CREATE TABLE routes (
    node_id     BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    network_id  BIGINT NOT NULL REFERENCES networks (id),
    prefix      TEXT   NOT NULL,
    state       TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    approved_at BIGINT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (node_id, network_id, prefix)
);
