-- weft controller schema, version 17 (PostgreSQL): the last-seen time peers
-- were told. See ../0017_seen_published.sql.

ALTER TABLE nodes ADD COLUMN seen_published BIGINT;

UPDATE nodes SET seen_published = last_seen;
