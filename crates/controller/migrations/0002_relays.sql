-- weft controller schema, version 2: relays.
--
-- A relay is registered by an admin (name + URL) and authenticates with a relay
-- token, stored hashed like every other secret. It reports its TLS certificate
-- fingerprint and STUN port, which every node's map carries.

CREATE TABLE relays (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    url             TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL UNIQUE,
    tls_fingerprint TEXT,
    stun_port       INTEGER,
    created_at      INTEGER NOT NULL,
    last_seen       INTEGER
);
