//! The agent's local API (Unix socket), shared by `weftd` and the `weft` CLI.
//!
//! Framing: the client writes one JSON [`LocalRequest`] terminated by `\n`; the
//! agent answers with one JSON [`LocalResponse`] line and closes. Requests are
//! capped at [`MAX_REQUEST_LEN`] bytes. Access control is the socket's file mode
//! (root, or the `weft` group).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// Longest request line the agent reads.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// Default path of the agent's socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weftd.sock";

/// Default path of the node API's socket (`weftd --node-api-socket`, read by
/// `weft node get`): HTTP/1.1 JSON for workloads on the node.
pub const DEFAULT_NODE_API_SOCKET: &str = "/run/weft/node.sock";

/// A request to the local agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LocalRequest {
    /// Report the agent's state.
    Status,
    /// Join a controller (first time) or reconnect to the one joined before.
    Up(UpRequest),
    /// Leave the overlay: tear down interfaces, routes and sessions; stay joined
    /// (a later `up` without a token reconnects).
    Down,
    /// Explain the policy verdict a packet would get on this node now
    /// (`weft why-blocked`).
    Explain(ExplainRequest),
    /// The anomaly events this agent raised lately (`weft events`).
    Events,
    /// The agent's Prometheus metrics, as text (`weft metrics`; the same as
    /// `weftd --metrics-listen` serves on `GET /metrics`).
    Metrics {
        /// `true`: OpenMetrics text (`application/openmetrics-text`);
        /// `false`: the Prometheus text format 0.0.4.
        #[serde(default)]
        openmetrics: bool,
    },
    /// The resolver's latest queries (`weft dns log`), from its query log
    /// (`weftd --dns-query-log`); answered with [`LocalResponse::DnsLog`].
    DnsLog {
        /// At most this many, the latest (default 50, at most 10,000).
        #[serde(default)]
        n: Option<u32>,
        /// Only entries after this sequence number (`weft dns log --follow`).
        #[serde(default)]
        after_seq: Option<u64>,
    },
    /// The resolver's statistics (`weft dns stats`); answered with
    /// [`LocalResponse::DnsStats`].
    DnsStats,
    /// `weft run`: create a network namespace for a workload; answered with
    /// [`LocalResponse::Workload`].
    WorkloadCreate(crate::workload::WorkloadSpec),
    /// `weft run`: the workload's process runs (in the namespace) as `pid`;
    /// the agent watches it.
    WorkloadStarted {
        /// The id [`LocalResponse::Workload`] gave.
        id: String,
        /// The process id (in the agent's pid namespace).
        pid: u32,
    },
    /// `weft run`: the workload's process ended; the agent removes the
    /// namespace, its links and rules once no process runs in it.
    WorkloadEnded {
        /// The id [`LocalResponse::Workload`] gave.
        id: String,
    },
    /// `weft service list`: the services this node may use and provides;
    /// answered with [`LocalResponse::Services`].
    Services,
    /// `weft service advertise`: offer to provide a service (forwarded to the
    /// controller; pending until an admin approves).
    ServiceAdvertise(crate::service::AdvertiseServiceRequest),
    /// `weft service listen|intercept`: add a consumer (kept in
    /// `STATE_DIR/service-consumers.json`, started at once).
    ServiceConsume(crate::service::Consumer),
    /// `weft service listen|intercept --remove`: stop and forget a consumer.
    ServiceUnconsume(crate::service::Consumer),
    /// `weft ssh`: the SSH servers this node may log in to, from the map;
    /// answered with [`LocalResponse::SshHosts`].
    SshHosts,
}

/// Parameters of `weft why-blocked`: one packet, described by its five-tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// `true`: the packet arrives from a peer (ingress); `false`: this node sends it.
    pub ingress: bool,
    /// Source address.
    pub src: std::net::IpAddr,
    /// Destination address.
    pub dst: std::net::IpAddr,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// Destination port (TCP/UDP).
    #[serde(default)]
    pub port: Option<u16>,
}

/// Parameters of `weft up`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpRequest {
    /// Controller URL (`https://host:port`), or several comma-separated (the
    /// replicas of one controller); required on first join. Without a token:
    /// replaces the list of a node that joined before.
    #[serde(default)]
    pub controller: Option<String>,
    /// Join token; required on first join. Never logged.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file with the CA that signs the controller's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// SHA-256 fingerprint (hex) of the controller's certificate to pin.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// Allow `http://` to a non-loopback controller (insecure; for labs only).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Requested node name (defaults to the hostname).
    #[serde(default)]
    pub name: Option<String>,
    /// Subnets to offer as a gateway (IPv4 CIDRs), replacing those offered
    /// before; `None` keeps them, an empty list stops offering any. The
    /// controller holds them as pending until an admin approves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_routes: Option<Vec<String>>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LocalResponse {
    /// The request succeeded; for `status`, carries the status.
    Ok {
        /// Present for `status`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<Box<AgentStatus>>,
        /// A human-readable note.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    /// The answer to [`LocalRequest::Explain`].
    Explained {
        /// Whether the packet would pass.
        allowed: bool,
        /// Which rule (or the default deny, or a tracked flow) decided, in words.
        explanation: String,
    },
    /// The answer to [`LocalRequest::Metrics`].
    Metrics {
        /// The HTTP content type of `text` (names the format and its version).
        content_type: String,
        /// The exposition.
        text: String,
    },
    /// The answer to [`LocalRequest::WorkloadCreate`].
    Workload(crate::workload::WorkloadInfo),
    /// The answer to [`LocalRequest::Events`].
    Events {
        /// The latest events (a bounded ring), oldest first.
        events: Vec<crate::events::AnomalyEvent>,
        /// Of those and older ones, how many wait to be uploaded to the
        /// controller.
        pending_upload: u64,
        /// Events dropped unsent because the upload queue was full.
        dropped: u64,
    },
    /// The answer to [`LocalRequest::DnsLog`].
    DnsLog {
        /// The entries, oldest first.
        entries: Vec<DnsLogEntry>,
        /// Where the log is (`None`: the query log is off).
        #[serde(default)]
        path: Option<String>,
    },
    /// The answer to [`LocalRequest::DnsStats`].
    DnsStats(Box<DnsStatsReport>),
    /// The answer to [`LocalRequest::Services`].
    Services(Box<crate::service::LocalServices>),
    /// The answer to [`LocalRequest::SshHosts`].
    SshHosts {
        /// The servers, sorted by node name.
        hosts: Vec<crate::ssh::SshHost>,
        /// The overlay DNS domain of each host's network, by network name
        /// (for `HostKeyAlias` and names in the known_hosts file).
        #[serde(default)]
        domains: BTreeMap<String, String>,
    },
    /// The request failed.
    Error {
        /// Stable machine-readable code.
        code: String,
        /// What went wrong and what to do.
        message: String,
    },
}

/// What `weft status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This node's identity.
    pub node_key: NodeKey,
    /// Its name on the controller, once joined.
    #[serde(default)]
    pub name: Option<String>,
    /// `up`, `down` or `not_joined`.
    pub state: String,
    /// The controller connection.
    #[serde(default)]
    pub controller: Option<ControllerStatus>,
    /// Networks this node is in.
    #[serde(default)]
    pub networks: Vec<NetworkStatus>,
    /// Peers across all networks.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Drops not attributed to a peer plus all peers', by reason.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    /// Whether the system configuration matches the map.
    #[serde(default)]
    pub reconcile: ReconcileStatus,
    /// The UDP port the data plane listens on.
    #[serde(default)]
    pub listen_port: u16,
    /// The relay this node uses, and whether it is connected.
    #[serde(default)]
    pub relay: Option<RelayStatus>,
    /// Every relay in this node's map (what `weft netcheck` probes).
    #[serde(default)]
    pub relays: Vec<crate::netmap::Relay>,
    /// This node's reflexive addresses, as the relays' STUN servers see its
    /// data-plane socket.
    #[serde(default)]
    pub reflexive: Vec<String>,
    /// What is failing right now (interfaces, system configuration, the
    /// controller's refusals), oldest first. `weft up` fails while this is not
    /// empty.
    #[serde(default)]
    pub failures: Vec<FailureStatus>,
    /// Metrics forwarding to the controller (`None`: an agent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<ForwardingStatus>,
    /// Remote tasks on this node (`None`: an agent without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TasksStatus>,
    /// The host firewall (`None`: the map asks for none and none was rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_firewall: Option<HostFirewallStatus>,
    /// The host's own network, as link monitoring sees it (`None`: an agent
    /// without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<UnderlayStatus>,
    /// Named services: those this node may use, provides, and its configured
    /// listeners and interceptions (`None`: none of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<crate::service::LocalServices>,
    /// The SSH server (`weftd --ssh`; `None`: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<crate::ssh::SshServerStatus>,
}

/// The host's underlay interfaces (neither loopback nor weft's own) and which
/// carries the default route, from link monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayStatus {
    /// By interface index.
    #[serde(default)]
    pub interfaces: Vec<UnderlayInterfaceStatus>,
    /// The interface of the IPv4 default route (`None`: no default route).
    #[serde(default)]
    pub default_route_v4: Option<String>,
    /// The interface of the IPv6 default route.
    #[serde(default)]
    pub default_route_v6: Option<String>,
    /// Underlay changes seen since weftd started (each one re-checks paths
    /// and endpoints at once).
    #[serde(default)]
    pub changes: u64,
    /// When the last change was seen.
    #[serde(default)]
    pub last_change_ms: Option<u64>,
    /// What it was, in words (`eth0 down`, `IPv4 default route via eth1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_change: Vec<String>,
    /// Why link monitoring is not working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One underlay interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayInterfaceStatus {
    pub name: String,
    /// Administratively up with carrier.
    pub up: bool,
    /// Its addresses with prefix length.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The host firewall (`inet weft_host`) as the agent holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFirewallStatus {
    /// The spec version in force (`None`: no table; e.g. after the first spec
    /// was rolled back).
    #[serde(default)]
    pub version: Option<u64>,
    /// The spec version the map asks for, when it is not the one in force
    /// (refused after a rollback, or still being checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted_version: Option<u64>,
    /// Rules of the spec in force (the admin's, without weft's base rules).
    pub rules: u64,
    /// Rules in force that expire, soonest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiring: Vec<ExpiringRuleStatus>,
    /// Domains the rules name, each with its resolved addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainSetStatus>,
    /// When a spec was last applied (Unix milliseconds).
    #[serde(default)]
    pub last_apply_ms: Option<u64>,
    /// The control-plane self-check after an apply is running.
    #[serde(default)]
    pub checking: bool,
    /// Rollbacks since weftd started.
    pub rollbacks: u64,
    /// The last rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<RollbackStatus>,
}

/// A rule with an expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringRuleStatus {
    /// The rule's id (`dyn:<id>`, `line:<n>`).
    pub id: String,
    /// Its comment.
    #[serde(default)]
    pub comment: String,
    /// When it expires (Unix milliseconds).
    pub expires_at_ms: u64,
}

/// A domain a rule names and what it resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSetStatus {
    /// The domain.
    pub domain: String,
    /// Its addresses (IPv4 then IPv6, sorted).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// When it is resolved again (Unix milliseconds).
    #[serde(default)]
    pub refresh_at_ms: Option<u64>,
    /// Why the last resolution failed, while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A host firewall spec the agent rolled back: it cut the node off its controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStatus {
    /// The spec version rolled back (not applied again until a newer one arrives).
    pub version: u64,
    /// The version restored (`None`: no table).
    #[serde(default)]
    pub restored: Option<u64>,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The self-check's last error.
    pub reason: String,
}

/// Remote tasks: what runs, and the results outbox
/// (`STATE_DIR/results-outbox.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksStatus {
    /// Tasks leased and running now.
    pub running: u64,
    /// Results the controller took since weftd started.
    pub delivered: u64,
    /// Results waiting in the outbox for the controller.
    pub waiting: u64,
    /// Results lost since the outbox was created: refused for good by the
    /// controller, or dropped from a full outbox.
    pub lost: u64,
}

/// Metrics forwarding: a sample every `interval_ms`, queued in the on-disk
/// outbox while the controller does not take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardingStatus {
    /// How often a sample is taken, in milliseconds.
    pub interval_ms: u64,
    /// The sequence number of the last sample of this agent run (0: none yet).
    pub last_seq: u64,
    /// Samples waiting in the outbox.
    pub queued: u64,
    /// Samples the outbox dropped because it was full (oldest first), or that
    /// the controller refused, since the outbox was created.
    pub dropped: u64,
    /// When the controller last took samples (Unix milliseconds).
    #[serde(default)]
    pub last_sent_ms: Option<u64>,
    /// Why the last upload failed, while it fails.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One thing that is failing right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureStatus {
    /// Where: `tun`, `system` (interfaces, addresses, routes, nftables), `routes`
    /// (advertised subnets refused by the controller), `dns`.
    pub area: String,
    /// What failed (an interface, an action, a prefix).
    pub what: String,
    /// Why.
    pub error: String,
    /// Since when it has been failing (milliseconds since the Unix epoch).
    pub since_unix_ms: u64,
}

/// The relay link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Its URL.
    pub url: String,
    /// Logged in right now.
    pub connected: bool,
}

/// Controller connection state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// The controller URL in use (the one the link is on, or will try next).
    pub url: String,
    /// Every controller URL this node knows, in order (the list of `weft up
    /// --controller URL1,URL2`); empty for an agent that does not report it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The address the link connected to last (`ip:port`: one of the URL's
    /// host's addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Map snapshots received since weftd started.
    #[serde(default)]
    pub snapshots: u64,
    /// Map deltas received since weftd started.
    #[serde(default)]
    pub deltas: u64,
    /// Times the link moved to another controller URL or address (a failure,
    /// or the controller's `reconnect` notice) since weftd started.
    #[serde(default)]
    pub failovers: u64,
    /// Whether the map stream is open right now.
    pub connected: bool,
    /// Version of the map in use.
    #[serde(default)]
    pub map_version: Option<u64>,
    /// Whether the map in use came from the on-disk cache (controller not yet reached).
    #[serde(default)]
    pub from_cache: bool,
    /// The last connection error, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Whether that error is a refusal that retrying will not cure (the
    /// controller answered 4xx: a removed node, a revoked credential); `weft
    /// up` fails on it instead of waiting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_error_permanent: bool,
}

/// One network on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Network name.
    pub name: String,
    /// TUN interface.
    pub interface: String,
    /// This node's overlay addresses.
    pub addresses: Vec<String>,
    /// The network's prefix.
    pub cidr: String,
    /// DNS domain.
    pub dns_domain: String,
    /// Subnets reached through gateway peers, as `PREFIX via GATEWAY` (then
    /// `, then BACKUP...` for gateways that take over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Subnets this node is a gateway for in the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serves: Vec<String>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Name.
    pub name: String,
    /// Identity key.
    pub node_key: NodeKey,
    /// Networks shared with this node.
    pub networks: Vec<String>,
    /// Overlay addresses.
    pub addresses: Vec<String>,
    /// Underlay endpoint in use (`ip:port`) when the path is direct.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The path packets take: `direct <ip:port>`, `relay`, or `none`.
    #[serde(default)]
    pub path: String,
    /// Seconds on the current path.
    #[serde(default)]
    pub path_age_secs: Option<u64>,
    /// Every candidate address and what probing it found (`weft why`).
    #[serde(default)]
    pub candidates: Vec<CandidateStatus>,
    /// Seconds since the last WireGuard handshake.
    #[serde(default)]
    pub last_handshake_secs: Option<u64>,
    /// Whether the peer is reachable now: heard from recently, or (not heard
    /// from lately) holding a map stream to the controller.
    #[serde(default)]
    pub online: bool,
    /// Seconds since the peer was last heard from (or, never heard from here,
    /// since the controller last saw it).
    #[serde(default)]
    pub last_seen_secs: Option<u64>,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Drops attributed to this peer, by reason.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

/// One candidate address of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateStatus {
    /// `ip:port`.
    pub addr: String,
    /// Discovery pings sent to it.
    pub pings: u32,
    /// Pongs received from it.
    pub pongs: u32,
    /// Last round-trip time in microseconds.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// Learned from the peer's own pings (peer-reflexive), not from the map.
    #[serde(default)]
    pub learned: bool,
}

/// Reconciler state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileStatus {
    /// Whether the kernel matched the desired state at the last pass.
    pub converged: bool,
    /// Actions that failed at the last pass.
    #[serde(default)]
    pub failures: Vec<String>,
}

impl AgentStatus {
    /// The peer `what` names, and the overlay address to reach it at: an
    /// overlay IP, a peer name, or `name.network` when the name is in several
    /// networks (`weft ping`, `weft why`, the `ping` task action). The error
    /// says why in words.
    pub fn resolve_peer(&self, what: &str) -> Result<(&PeerStatus, std::net::IpAddr), String> {
        use std::net::IpAddr;
        if let Ok(ip) = what.parse::<IpAddr>() {
            let ip_s = ip.to_string();
            return match self.peers.iter().find(|p| p.addresses.contains(&ip_s)) {
                Some(p) => Ok((p, ip)),
                None => Err(format!("no peer has overlay address {ip}")),
            };
        }
        let mut parts = what.split('.');
        let name = parts.next().unwrap_or_default();
        let network = parts.next();
        let found: Vec<_> = self
            .peers
            .iter()
            .filter(|p| p.name == name && network.is_none_or(|n| p.networks.iter().any(|x| x == n)))
            .collect();
        match found.as_slice() {
            [p] => p
                .addresses
                .iter()
                .find_map(|a| a.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
                .or_else(|| p.addresses.first().and_then(|a| a.parse().ok()))
                .map(|ip| (*p, ip))
                .ok_or_else(|| "peer has no overlay address".to_owned()),
            [] => Err(format!("no peer named {what:?} (see `weft status`)")),
            _ => Err(format!(
                "{what:?} is ambiguous: name the network too, e.g. {name}.NETWORK"
            )),
        }
    }
}

/// One line of the resolver's query log (JSON, one object a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsLogEntry {
    /// Increasing across the log's files and restarts of weftd.
    pub seq: u64,
    /// When the answer was sent, Unix milliseconds.
    pub ts_ms: u64,
    /// The name asked, lowercase, without the trailing dot.
    pub name: String,
    /// The record type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// The answer's response code (`NoError`, `NXDomain`, `ServFail`, ...).
    pub rcode: String,
    /// Where the answer came from: `overlay`, `cache`, `upstream`, `blocked`
    /// or `local` (refused or malformed).
    pub source: String,
    /// The upstream that answered (`udp://…`, `tls://…#name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Time to the answer for forwarded queries, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
}

/// What `weft dns stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsStatsReport {
    /// `auto` (overlay names only), `system` (every name) or `off`.
    pub mode: String,
    /// Whether the resolver runs now.
    pub running: bool,
    /// Client queries handled since weftd started.
    pub queries: u64,
    /// Of those, answered from the cache.
    pub cache_hits: u64,
    /// Answered from the blocklist.
    pub blocked: u64,
    /// Forwarded queries no upstream answered (the client got SERVFAIL).
    pub upstream_failures: u64,
    /// Forwarded queries.
    pub forwarded: u64,
    /// The most asked names and their counts, most first.
    #[serde(default)]
    pub top_names: Vec<(String, u64)>,
    /// Upstream latency percentiles of the latest forwarded queries, ms.
    #[serde(default)]
    pub latency_ms_p50: Option<f64>,
    /// See `latency_ms_p50`.
    #[serde(default)]
    pub latency_ms_p90: Option<f64>,
    /// See `latency_ms_p50`.
    #[serde(default)]
    pub latency_ms_p99: Option<f64>,
    /// The cache's TTL bounds, seconds.
    #[serde(default)]
    pub min_ttl: u32,
    /// See `min_ttl`.
    #[serde(default)]
    pub max_ttl: u32,
    /// Every upstream in its configured order, with its health.
    #[serde(default)]
    pub upstreams: Vec<DnsUpstreamHealth>,
    /// The query log's file (`None`: off).
    #[serde(default)]
    pub query_log: Option<String>,
    /// Query log lines dropped because the writer fell behind.
    #[serde(default)]
    pub query_log_dropped: u64,
    /// The controller's DNS blocklist in force (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocklist: Option<DnsBlocklistInForce>,
}

/// The DNS blocklist a node's resolver applies (in [`DnsStatsReport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsBlocklistInForce {
    /// Its version (as the controller's `weft admin dns blocklist show`).
    pub version: u64,
    /// How many domains it lists.
    pub entries: u64,
    /// What a blocked name gets.
    pub mode: crate::dnsblock::BlockMode,
}

/// One upstream's health in [`DnsStatsReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsUpstreamHealth {
    /// The upstream (`udp://…` or `tls://…#name`).
    pub upstream: String,
    /// Whether it is used in its configured order now (a failed one is tried
    /// after the healthy ones until its backoff is over and a probe succeeds).
    pub healthy: bool,
    /// Failures since its last answer.
    pub consecutive_failures: u32,
    /// Seconds until it is probed again (down only).
    #[serde(default)]
    pub retry_in_secs: Option<u64>,
    /// Exchanges it answered since the resolver started.
    pub answered: u64,
    /// Exchanges that failed (timeout, connection, TLS).
    pub failed: u64,
    /// Its last exchange's time to an answer, milliseconds.
    #[serde(default)]
    pub last_latency_ms: Option<u64>,
    /// Why its last failure failed (down only).
    #[serde(default)]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: LocalRequest = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(r, LocalRequest::Status);
        let r: LocalRequest =
            serde_json::from_str(r#"{"op":"up","controller":"https://c:8443","token":"t"}"#)
                .unwrap();
        assert!(matches!(
            r,
            LocalRequest::Up(UpRequest { token: Some(_), .. })
        ));
        let r: LocalRequest = serde_json::from_str(r#"{"op":"metrics"}"#).unwrap();
        assert_eq!(r, LocalRequest::Metrics { openmetrics: false });
        let r: LocalRequest =
            serde_json::from_str(r#"{"op":"metrics","openmetrics":true}"#).unwrap();
        assert_eq!(r, LocalRequest::Metrics { openmetrics: true });
        let r: LocalRequest =
            serde_json::from_str(r#"{"op":"dns_log","n":5,"after_seq":9}"#).unwrap();
        assert_eq!(
            r,
            LocalRequest::DnsLog {
                n: Some(5),
                after_seq: Some(9)
            }
        );
        let r: LocalRequest = serde_json::from_str(r#"{"op":"dns_stats"}"#).unwrap();
        assert_eq!(r, LocalRequest::DnsStats);
        assert!(serde_json::from_str::<LocalRequest>(r#"{"op":"rm -rf"}"#).is_err());
        assert!(serde_json::from_str::<LocalRequest>(r#"{"op":"up","evil":1}"#).is_err());
    }
}
