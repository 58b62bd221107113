-- weft controller schema, version 13: named services (issue 19).
--
-- service_ranges: each network's service range, the /24 inside 100.64.0.0/10
-- its services' virtual IPs come from (allocated at the network's first
-- service, top-down from 100.127.255.0/24, overlapping no network's
-- ipv4_cidr, no other range and no approved subnet route); kept for the
-- network's life.
--
-- services: one row per service. ports is a JSON array of {"port","proto"};
-- health is "tcp", "none" or "http:/PATH"; vip stays for the service's life;
-- version is the registry version that last changed it; origin 'admin' (weft
-- admin service create) or 'node' (first advertised by a node).
--
-- service_instances: a node offering a service: state 'approved' (an
-- instance, in maps and in the policy's facts), 'pending' (advertised,
-- waiting for an admin) or 'rejected' (advertising again does not bring it
-- back; approve it to). Removing the node or the service removes the row.
-- Health is runtime state, kept in memory only.
--
-- The registry's version counter is the meta key 'services_version'.

CREATE TABLE service_ranges (
    network_id INTEGER PRIMARY KEY REFERENCES networks (id),
    prefix     TEXT    NOT NULL UNIQUE
);

CREATE TABLE services (
    id            INTEGER PRIMARY KEY,
    network_id    INTEGER NOT NULL REFERENCES networks (id),
    name          TEXT    NOT NULL,
    vip           TEXT    NOT NULL UNIQUE,
    ports         TEXT    NOT NULL,
    health        TEXT    NOT NULL,
    origin        TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (network_id, name)
);

CREATE TABLE service_instances (
    service_id    INTEGER NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    node_id       INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    state         TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (service_id, node_id)
);

CREATE INDEX service_instances_node ON service_instances (node_id);
