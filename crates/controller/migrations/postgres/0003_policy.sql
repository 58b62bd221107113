-- weft controller schema, version 3 (PostgreSQL): the access policy, versioned.
-- See ../0003_policy.sql.

CREATE TABLE policy_versions (
    version BIGINT PRIMARY KEY,
    text    TEXT   NOT NULL,
    author  TEXT   NOT NULL,
    at_ms   BIGINT NOT NULL
);
