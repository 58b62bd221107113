-- weft controller schema, version 6 (PostgreSQL): usage accounting.
-- See ../0006_usage.sql.

CREATE TABLE usage_counters (
    node_id    BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    peer       TEXT   NOT NULL,
    proto      BIGINT NOT NULL,
    port       BIGINT NOT NULL,
    user_id    TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    tx_bytes   BIGINT NOT NULL,
    rx_bytes   BIGINT NOT NULL,
    tx_packets BIGINT NOT NULL,
    rx_packets BIGINT NOT NULL,
    flows      BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, kind, peer, proto, port, user_id)
);

CREATE TABLE usage_buckets (
    node_id    BIGINT NOT NULL,
    bucket_ms  BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    peer       TEXT   NOT NULL,
    proto      BIGINT NOT NULL,
    port       BIGINT NOT NULL,
    user_id    TEXT   NOT NULL,
    tx_bytes   BIGINT NOT NULL,
    rx_bytes   BIGINT NOT NULL,
    tx_packets BIGINT NOT NULL,
    rx_packets BIGINT NOT NULL,
    flows      BIGINT NOT NULL,
    PRIMARY KEY (bucket_ms, node_id, kind, peer, proto, port, user_id)
);
