-- weft controller schema, version 16 (PostgreSQL): registration challenges
-- valid on every replica. See ../0016_challenges.sql.

CREATE TABLE used_challenges (
    tag        TEXT   PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);

CREATE INDEX used_challenges_expiry ON used_challenges (expires_ms);
