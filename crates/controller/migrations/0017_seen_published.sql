-- weft controller schema, version 17: the last-seen time peers were told.
--
-- nodes.seen_published: the `last_seen` (Unix seconds) that maps carry for
-- the node: the value at the last change that was sent to its peers. A
-- liveness report moves last_seen without telling peers, so maps must not
-- carry last_seen itself: a controller started later (a restart, another
-- replica) would put a newer time in its snapshots than running controllers
-- sent by delta at the same map version. NULL: never published. Rows from
-- before this version take their last_seen (what the controller that wrote
-- them loaded as published).

ALTER TABLE nodes ADD COLUMN seen_published INTEGER;

UPDATE nodes SET seen_published = last_seen;
