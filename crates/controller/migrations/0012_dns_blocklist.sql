-- weft controller schema, version 12: the DNS blocklist (issue 18).
--
-- At most one row (id 1): the list every node's resolver applies, as parsed
-- and normalized by weft_proto::dnsblock::parse_list. domains holds the
-- sorted, de-duplicated names joined by '\n'; sha256 is the hex SHA-256 of
-- exactly that text (checked at load: a damaged row is refused, not
-- served). version is the map version at which it was set; mode is
-- 'nxdomain' or 'zero'; set_at_ms is Unix milliseconds. Clearing the list
-- deletes the row.

CREATE TABLE dns_blocklist (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    mode       TEXT    NOT NULL,
    entries    INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    domains    TEXT    NOT NULL,
    set_by     TEXT    NOT NULL,
    set_at_ms  INTEGER NOT NULL
);
