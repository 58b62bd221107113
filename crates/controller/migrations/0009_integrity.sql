-- weft controller schema, version 9: hooks and integrity (issue 17).
--
-- hook_approvals: the hashes of hook scripts the admin approved
-- (weft admin hook approve NAME SHA256); a hook runs on a node only if its
-- file's SHA-256 is one of its name's rows.
--
-- integrity_expected: the SHA-256 weftd's binary must have, per version
-- (weft admin integrity expect --version V --sha256 H).
--
-- node_integrity: what each node last reported it runs (POST
-- /v1/node/integrity, JSON weft_proto::integrity::IntegrityReport). The state
-- (ok, mismatch, unknown) is computed from these three tables, never stored.

CREATE TABLE hook_approvals (
    name           TEXT    NOT NULL,
    sha256         TEXT    NOT NULL,
    approved_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, sha256)
);

CREATE TABLE integrity_expected (
    version   TEXT    PRIMARY KEY,
    sha256    TEXT    NOT NULL,
    set_at_ms INTEGER NOT NULL
);

CREATE TABLE node_integrity (
    node_id        INTEGER PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    reported_at_ms INTEGER NOT NULL,
    report         TEXT    NOT NULL
);
