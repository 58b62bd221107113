-- weft controller schema, version 6: usage accounting (issue 16, part 4).
--
-- Agents upload monotonic counters (POST /v1/node/usage); the controller keeps
-- the last value of each series in usage_counters and adds the difference
-- (never negative: a counter that went down, a new agent run or a restarted
-- sidecar counts its new value from zero) to one-hour buckets in usage_buckets.
--
-- A series is a node's flow traffic with one peer to one service
-- (kind 'flow': peer = the peer's node key text, '' when unnumbered; proto,
-- port), its overflow bucket (kind 'other'), or a sidecar user's bytes
-- (kind 'user': user_id; the bytes are in tx_bytes, the other counters 0).
-- Rows outlive the node (no foreign key): usage history is kept when a node
-- is removed; buckets older than the retention are deleted as new ones come.

CREATE TABLE usage_counters (
    node_id    INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    peer       TEXT    NOT NULL,
    proto      INTEGER NOT NULL,
    port       INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    tx_bytes   INTEGER NOT NULL,
    rx_bytes   INTEGER NOT NULL,
    tx_packets INTEGER NOT NULL,
    rx_packets INTEGER NOT NULL,
    flows      INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, kind, peer, proto, port, user_id)
);

CREATE TABLE usage_buckets (
    node_id    INTEGER NOT NULL,
    bucket_ms  INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    peer       TEXT    NOT NULL,
    proto      INTEGER NOT NULL,
    port       INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    tx_bytes   INTEGER NOT NULL,
    rx_bytes   INTEGER NOT NULL,
    tx_packets INTEGER NOT NULL,
    rx_packets INTEGER NOT NULL,
    flows      INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, node_id, kind, peer, proto, port, user_id)
);
