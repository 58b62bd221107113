-- weft controller schema, version 4: subnet routes.
--
-- A gateway node offers a physical subnet (an IPv4 prefix) in a network, either
-- advertised by its agent (source 'node') or set by an admin (source 'admin').
-- A route is 'pending' until an admin approves it ('approved') or rejects it
-- ('rejected'). approved_at (Unix milliseconds) orders gateways of one subnet:
-- the first approved gateway that is online carries it.

CREATE TABLE routes (
    node_id     INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    network_id  INTEGER NOT NULL REFERENCES networks (id),
    prefix      TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    approved_at INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (node_id, network_id, prefix)
);
