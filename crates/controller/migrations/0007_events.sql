-- weft controller schema, version 7: anomaly events and per-network thresholds.
--
-- events: what agents' anomaly detectors raised (POST /v1/node/events), one row
-- per event. (node_id, event_id) is unique so a retried upload does not
-- duplicate an event; node_name and node_key are kept as they were when the
-- event arrived, so the log outlives a removed node. Retention is bounded: the
-- controller keeps the newest rows only (see store::EVENTS_KEPT).
--
-- networks.anomaly: the admin's thresholds for the network as JSON
-- (weft_proto::events::AnomalyThresholds); NULL means the agents' defaults.

CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id        INTEGER NOT NULL,
    node_name      TEXT    NOT NULL,
    node_key       TEXT    NOT NULL,
    event_id       INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    at_ms          INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    event          TEXT    NOT NULL,
    UNIQUE (node_id, event_id)
);
CREATE INDEX events_by_node ON events (node_id, seq);
CREATE INDEX events_by_time ON events (received_at_ms);

ALTER TABLE networks ADD COLUMN anomaly TEXT;
