-- weft controller schema, version 16: registration challenges valid on
-- every replica (issue 20).
--
-- A challenge is MACed with a key every replica shares: `meta` row
-- 'challenge_key' (32 random bytes, unpadded URL-safe base64), created once
-- by the first start under the database-wide write lock and never changed.
--
-- used_challenges: the challenges of successful registrations, by their MAC
-- tag (unpadded URL-safe base64), until they expire (Unix ms). A challenge is
-- single use across replicas: the registration that uses it adds its row in
-- the same batch (and the same change of the changes log) as the node's.
-- Rows expired a while ago are deleted by later registrations, so the table
-- holds at most one challenge lifetime of registrations.

CREATE TABLE used_challenges (
    tag        TEXT    PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);

CREATE INDEX used_challenges_expiry ON used_challenges (expires_ms);
