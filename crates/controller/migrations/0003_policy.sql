-- weft controller schema, version 3: the access policy, versioned.
--
-- One policy document per controller (the weft-policy TOML text). Every change
-- is a new row; the newest row is the policy in force. Who changed it and when
-- is also in the audit log.

CREATE TABLE policy_versions (
    version INTEGER PRIMARY KEY,
    text    TEXT    NOT NULL,
    author  TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL
);
