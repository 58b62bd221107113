-- weft controller schema, version 5 (PostgreSQL): host facts.
-- See ../0005_facts.sql.

ALTER TABLE nodes ADD COLUMN facts TEXT;
ALTER TABLE nodes ADD COLUMN facts_changed_ms BIGINT;
