-- weft controller schema, version 5: host facts.
--
-- What a node's agent reports about its host (OS, kernel, CPU, memory,
-- platform, virtualization, weftd's version and binary hash), as the JSON of
-- weft_proto::facts::HostFacts; NULL until the node reports them.
-- facts_changed_ms (Unix milliseconds) is when they last changed.

ALTER TABLE nodes ADD COLUMN facts TEXT;
ALTER TABLE nodes ADD COLUMN facts_changed_ms INTEGER;
