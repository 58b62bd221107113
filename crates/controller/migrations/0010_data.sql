-- weft controller schema, version 10: node data and sealed secrets (issue 17).
--
-- data_entries: key/value pairs an admin pushes to nodes, per scope. scope is
-- 'node:<node id>', 'tag:<tag>' or 'network:<network id>'; node_id repeats the
-- node of a node scope so that removing the node removes its entries (a later
-- node may get the same id). version is the map version at which the entry was
-- last set; updated_at_ms is Unix milliseconds.
--
-- secrets: per node, the value sealed by the admin CLI to the node's X25519
-- key (weft_identity::sealed). The controller never has the plaintext; sealed
-- holds the box's bytes.

CREATE TABLE data_entries (
    scope         TEXT    NOT NULL,
    node_id       INTEGER REFERENCES nodes (id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE secrets (
    node_id       INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    sealed        BLOB    NOT NULL,
    version       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, key)
);
