-- weft controller schema, version 14: SSH through the mesh (issue 19).
--
-- node_ssh: each node's SSH server as it last reported it (POST
-- /v1/node/ssh/server): the port on its overlay addresses and its host key
-- (one OpenSSH public key line). No row: the node serves no SSH. The policy
-- sees the port as the node's `ssh_port` fact; the host key is published in
-- the maps of the nodes that may log in.
--
-- ssh_sessions_seen: the session records already written to the audit log
-- (POST /v1/node/ssh/sessions), by (node, record id, whether it is the end
-- record), so an agent replaying its outbox audits nothing twice.

CREATE TABLE node_ssh (
    node_id        INTEGER PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    port           INTEGER NOT NULL,
    host_key       TEXT    NOT NULL,
    reported_at_ms INTEGER NOT NULL
);

CREATE TABLE ssh_sessions_seen (
    node_id   INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    record_id TEXT    NOT NULL,
    ended     INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    PRIMARY KEY (node_id, record_id, ended)
);
