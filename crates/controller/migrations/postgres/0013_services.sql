-- weft controller schema, version 13 (PostgreSQL): named services.
-- See ../0013_services.sql.

CREATE TABLE service_ranges (
    network_id BIGINT PRIMARY KEY REFERENCES networks (id),
    prefix     TEXT   NOT NULL UNIQUE
);

CREATE TABLE services (
    id            BIGINT PRIMARY KEY,
    network_id    BIGINT NOT NULL REFERENCES networks (id),
    name          TEXT   NOT NULL,
    vip           TEXT   NOT NULL UNIQUE,
    ports         TEXT   NOT NULL,
    health        TEXT   NOT NULL,
    origin        TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (network_id, name)
);

CREATE TABLE service_instances (
    service_id    BIGINT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    node_id       BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    state         TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (service_id, node_id)
);

CREATE INDEX service_instances_node ON service_instances (node_id);
