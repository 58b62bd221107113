-- weft controller schema, version 11: the host firewall (issue 18).
--
-- host_firewall_versions: the declared firewall file (weft-policy's hostfw
-- TOML), versioned like the policy: every change is a new row and the newest
-- row is the file in force. author is an actor label; at_ms Unix milliseconds.
--
-- host_firewall_rules: dynamic rules (`weft admin firewall allow`), each
-- opening something on one node, on top of the declared file. id is the rule's
-- number (its map id is 'dyn:<id>'); direction 'in'|'out'|'forward'; proto
-- 'any'|'tcp'|'udp'|'icmp'; ports and peers are JSON arrays (port ranges
-- {"start","end"}, and "CIDR" or "domain:NAME" strings); expires_at_ms is Unix
-- milliseconds or NULL (until revoked). Removing the node removes its rules.

CREATE TABLE host_firewall_versions (
    version INTEGER PRIMARY KEY,
    text    TEXT    NOT NULL,
    author  TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL
);

CREATE TABLE host_firewall_rules (
    id            INTEGER PRIMARY KEY,
    node_id       INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    direction     TEXT    NOT NULL,
    proto         TEXT    NOT NULL,
    ports         TEXT    NOT NULL,
    peers         TEXT    NOT NULL,
    comment       TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);

CREATE INDEX host_firewall_rules_node ON host_firewall_rules (node_id);
