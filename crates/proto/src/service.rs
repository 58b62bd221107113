//! Named services: what the network map tells consumers and providers, what
//! providers report, and the agent's local API for them.
//!
//! A service (`db`) belongs to one network and is served by one or more
//! provider nodes (its *instances*) on fixed ports. It gets a stable virtual
//! IPv4 address (the VIP) from its network's service range, a block inside
//! 100.64.0.0/10 that overlaps no network's node addresses. Consumers reach it
//! as `<name>.svc.<network>.<dns_domain>`; their tunnel core maps the VIP and
//! port to a healthy instance's overlay address (same port), per flow, and maps
//! the replies back, so the provider sees the consumer's real overlay address.
//!
//! A node's map lists only the services its policy lets it use
//! ([`crate::netmap::NetworkMap::services`]), each with only the instances it
//! may reach, and the services it provides itself
//! ([`crate::netmap::NetworkMap::provides`]), with the health check to run.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// Most services on one controller.
pub const MAX_SERVICES: usize = 4096;
/// Most ports of one service.
pub const MAX_SERVICE_PORTS: usize = 16;
/// Most instances (provider nodes) of one service.
pub const MAX_INSTANCES: usize = 256;
/// Longest HTTP health-check path, in bytes.
pub const MAX_HEALTH_PATH: usize = 256;
/// Longest health detail (the last failure, in words), in bytes.
pub const MAX_HEALTH_DETAIL: usize = 256;
/// Most health reports in one upload.
pub const MAX_HEALTH_REPORTS: usize = 256;

/// How often a provider checks its local instance.
pub const HEALTH_INTERVAL_MS: u64 = 1_000;
/// How long one check may take before it counts as failed.
pub const HEALTH_TIMEOUT_MS: u64 = 800;
/// Consecutive failures that make a healthy instance unhealthy (and
/// consecutive successes that make it healthy again).
pub const HEALTH_THRESHOLD: u32 = 2;

/// The prefix service ranges are carved from (the CGNAT block).
pub const SERVICE_SPACE: &str = "100.64.0.0/10";
/// The prefix length of one network's service range (`/24`: 254 services).
pub const SERVICE_RANGE_PREFIX_LEN: u8 = 24;

/// A service name: a DNS label (lowercase ASCII letters, digits, `-`; 1–63
/// bytes; not starting or ending with `-`).
pub fn check_service_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Name(name.chars().take(64).collect()))
    }
}

/// Why a service value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Not a DNS label.
    #[error(
        "invalid service name {0:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
    )]
    Name(String),
    /// A port that does not parse.
    #[error("invalid port {0:?}: expected PORT or PORT/tcp or PORT/udp, with PORT in 1-65535")]
    Port(String),
    /// A health check that does not parse.
    #[error(
        "invalid health check {0:?}: expected \"tcp\", \"none\" or \"http:/PATH\" (PATH printable ASCII without spaces, at most 256 bytes)"
    )]
    Health(String),
    /// Too many of something.
    #[error("too many {what}: {n} (at most {max})")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many there were.
        n: usize,
        /// The limit.
        max: usize,
    },
}

/// A service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for ServiceProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceProto::Tcp => "tcp",
            ServiceProto::Udp => "udp",
        })
    }
}

/// One port of a service: the VIP's port and the instances' port are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port (1-65535).
    pub port: u16,
    /// The protocol.
    pub proto: ServiceProto,
}

impl fmt::Display for ServicePort {
    /// `5432/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

impl FromStr for ServicePort {
    type Err = ServiceError;

    /// `5432`, `5432/tcp` or `53/udp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ServiceError::Port(s.chars().take(40).collect());
        let (port, proto) = match s.split_once('/') {
            None => (s, ServiceProto::Tcp),
            Some((p, "tcp")) => (p, ServiceProto::Tcp),
            Some((p, "udp")) => (p, ServiceProto::Udp),
            Some(_) => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(ServicePort { port, proto })
    }
}

/// Parses a comma-separated port list (`5432/tcp,5433`), sorted and
/// de-duplicated; at least one, at most [`MAX_SERVICE_PORTS`].
pub fn parse_ports(s: &str) -> Result<Vec<ServicePort>, ServiceError> {
    let mut ports = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<Vec<ServicePort>, _>>()?;
    ports.sort();
    ports.dedup();
    check_ports(&ports)?;
    Ok(ports)
}

/// Checks a port list's bounds: 1 to [`MAX_SERVICE_PORTS`], no port 0.
pub fn check_ports(ports: &[ServicePort]) -> Result<(), ServiceError> {
    if ports.is_empty() {
        return Err(ServiceError::Port(String::new()));
    }
    if ports.len() > MAX_SERVICE_PORTS {
        return Err(ServiceError::TooMany {
            what: "ports",
            n: ports.len(),
            max: MAX_SERVICE_PORTS,
        });
    }
    if ports.iter().any(|p| p.port == 0) {
        return Err(ServiceError::Port("0".into()));
    }
    Ok(())
}

/// How a provider checks its local instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthCheck {
    /// A TCP connect to the service's first TCP port on the node's own overlay
    /// address in the service's network, where consumers arrive (the
    /// default). For a UDP-only service it reads as `none`.
    #[default]
    Tcp,
    /// `GET PATH` over HTTP/1.1 to the first TCP port on that address; healthy on
    /// a 2xx or 3xx status.
    Http {
        /// The path, starting with `/`.
        path: String,
    },
    /// No check: the instance is healthy while its node is online.
    None,
}

impl fmt::Display for HealthCheck {
    /// `tcp`, `http:/healthz` or `none` (what [`FromStr`] reads).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::Tcp => f.write_str("tcp"),
            HealthCheck::Http { path } => write!(f, "http:{path}"),
            HealthCheck::None => f.write_str("none"),
        }
    }
}

impl FromStr for HealthCheck {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let check = match s {
            "tcp" => HealthCheck::Tcp,
            "none" => HealthCheck::None,
            _ => match s.strip_prefix("http:") {
                Some(path) => HealthCheck::Http { path: path.into() },
                None => return Err(ServiceError::Health(s.chars().take(40).collect())),
            },
        };
        check.check()?;
        Ok(check)
    }
}

impl HealthCheck {
    /// Checks the bounds of an HTTP path: starts with `/`, printable ASCII
    /// without spaces, at most [`MAX_HEALTH_PATH`] bytes.
    pub fn check(&self) -> Result<(), ServiceError> {
        if let HealthCheck::Http { path } = self {
            let ok = path.starts_with('/')
                && path.len() <= MAX_HEALTH_PATH
                && path.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(ServiceError::Health(format!(
                    "http:{}",
                    path.chars().take(40).collect::<String>()
                )));
            }
        }
        Ok(())
    }
}

/// An instance's health as the controller knows it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Its provider reported it passing (and the provider is online).
    Healthy,
    /// Its provider reported it failing, or the provider is offline.
    Unhealthy,
    /// No report yet (a new instance, or its provider never checked).
    /// Consumers use unknown instances only when none is healthy.
    #[default]
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        })
    }
}

/// One instance of a service as a consumer's map lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// The provider node's key (a peer in the service's network).
    pub node_key: NodeKey,
    /// The provider node's name.
    pub node: String,
    /// The provider's overlay IPv4 address in the service's network: the
    /// consumer's tunnel rewrites the VIP to it.
    pub addr: Ipv4Addr,
    /// Its health.
    #[serde(default)]
    pub health: Health,
    /// When it was last checked (Unix milliseconds, the provider's clock).
    /// Not in the map (it would change every check): the admin API's view only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_ms: Option<u64>,
}

/// A service a node may use, as its map lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Its network.
    pub network: String,
    /// Its virtual IP.
    pub vip: Ipv4Addr,
    /// `<name>.svc.<network>.<dns_domain>`, the name the agent answers with
    /// `vip`.
    pub fqdn: String,
    /// Its ports, sorted.
    pub ports: Vec<ServicePort>,
    /// The instances this node may reach, sorted by node key.
    pub instances: Vec<ServiceInstance>,
}

impl ServiceView {
    /// The instance a new flow should use: among the healthy instances (or,
    /// when none is healthy, the unknown ones), the one `flow_hash` picks.
    /// `None` when no instance is usable.
    pub fn pick(&self, flow_hash: u64) -> Option<&ServiceInstance> {
        let pool = |h: Health| self.instances.iter().filter(move |i| i.health == h);
        let n = pool(Health::Healthy).count();
        let (h, n) = if n > 0 {
            (Health::Healthy, n)
        } else {
            (Health::Unknown, pool(Health::Unknown).count())
        };
        if n == 0 {
            return None;
        }
        pool(h).nth((flow_hash % n as u64) as usize)
    }

    /// Whether `port` is one of the service's ports for `proto`.
    pub fn has_port(&self, proto: ServiceProto, port: u16) -> bool {
        self.ports
            .iter()
            .any(|p| p.proto == proto && p.port == port)
    }
}

/// A service this node provides, as its map lists it: the agent checks the
/// local instance and reports its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvidedService {
    /// The service's name.
    pub name: String,
    /// Its network.
    pub network: String,
    /// Its ports, sorted.
    pub ports: Vec<ServicePort>,
    /// How to check the local instance.
    #[serde(default)]
    pub health: HealthCheck,
}

/// The `fqdn` of a service: `<name>.svc.<network>.<dns_domain>`.
pub fn service_fqdn(name: &str, network: &str, dns_domain: &str) -> String {
    format!("{name}.svc.{network}.{dns_domain}")
}

// ---- node → controller (the node's credential) ----

/// `POST /v1/node/services/advertise`: the node offers to provide a service
/// (`weft service advertise`). Pending until an admin approves it (`weft admin
/// service approve NAME --node NODE`), like subnet routes. Advertising a name
/// that exists adds this node as an instance once approved; the ports must be
/// the service's. An empty `ports` withdraws the offer (and the instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseServiceRequest {
    /// The service's name.
    pub name: String,
    /// The network (required when the node is in several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The ports; empty withdraws.
    pub ports: Vec<ServicePort>,
    /// The health check to run (default `tcp`).
    #[serde(default)]
    pub health: HealthCheck,
}

/// The answer to [`AdvertiseServiceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseServiceResponse {
    /// `pending` (waits for an admin), `approved` (already an instance) or
    /// `withdrawn`.
    pub state: String,
    /// What the admin runs to approve, or what happened, in words.
    pub message: String,
}

/// `POST /v1/node/services/health`: the provider's latest checks (sent when a
/// verdict changes, and every 30 s as a heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// One entry per provided service (at most [`MAX_HEALTH_REPORTS`]).
    pub checks: Vec<InstanceHealth>,
}

/// One provided service's health on the reporting node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceHealth {
    /// The service's name.
    pub service: String,
    /// Its network.
    pub network: String,
    /// The verdict (`Unknown` is not reported).
    pub health: Health,
    /// When the last check ran (Unix milliseconds).
    pub checked_ms: u64,
    /// The last failure, in words (at most [`MAX_HEALTH_DETAIL`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// ---- admin API (`weft admin service`) ----

/// `POST /v1/admin/services`: create a service (or replace its instances,
/// ports and check with `replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceRequest {
    /// The name.
    pub name: String,
    /// The network.
    pub network: String,
    /// The provider nodes (by name); approved at once.
    pub nodes: Vec<String>,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// The health check (default `tcp`).
    #[serde(default)]
    pub health: HealthCheck,
    /// Replace an existing service of that name instead of failing with 409.
    #[serde(default)]
    pub replace: bool,
    /// Optimistic concurrency: fail with 409 unless the registry is at this
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
}

/// A service as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The name.
    pub name: String,
    /// The network.
    pub network: String,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// The DNS name.
    pub fqdn: String,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// The health check.
    pub health: HealthCheck,
    /// The approved instances with their health and last check.
    pub instances: Vec<AdminInstance>,
    /// Nodes that advertised it and wait for approval (names).
    #[serde(default)]
    pub pending: Vec<String>,
    /// The registry version that last changed it.
    pub version: u64,
}

/// An instance as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInstance {
    /// The provider node's name.
    pub node: String,
    /// Its overlay address in the service's network.
    pub addr: Ipv4Addr,
    /// Its health (offline providers are unhealthy).
    pub health: Health,
    /// When the provider last checked it (Unix milliseconds).
    #[serde(default)]
    pub checked_ms: Option<u64>,
    /// The last failure, in words.
    #[serde(default)]
    pub detail: Option<String>,
    /// Whether the provider node is online.
    pub online: bool,
}

/// `GET /v1/admin/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    /// The registry's version.
    pub version: u64,
    /// Every service, sorted by network and name.
    pub services: Vec<ServiceInfo>,
}

// ---- the agent's local API (`weft service ...`) ----

/// How a node consumes a service besides its VIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum ConsumeMode {
    /// `weft service listen db 127.0.0.1:15432`: the agent listens there and
    /// carries each accepted stream to a healthy instance over the overlay.
    Listen {
        /// The local address to listen on.
        listen: SocketAddr,
    },
    /// `weft service intercept db 10.1.2.3:5432`: nft TPROXY sends this
    /// host's and its forwarded traffic for `original` (an address the
    /// application already uses) to the agent's `IP_TRANSPARENT` listener,
    /// which carries it to the service.
    Intercept {
        /// The original destination to intercept.
        original: SocketAddr,
    },
}

/// One configured consumer (kept in `STATE_DIR/service-consumers.json`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Consumer {
    /// The service's name.
    pub service: String,
    /// Its network (`None`: the only network that has a service of that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// How.
    #[serde(flatten)]
    pub mode: ConsumeMode,
    /// The service port to reach (`None`: the service's first TCP port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What `weft service list` shows for one service this node may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalServiceStatus {
    /// The service as the map lists it.
    pub service: ServiceView,
    /// Whether the VIP route is installed.
    pub vip_routed: bool,
    /// The consumers configured for it, with their state.
    #[serde(default)]
    pub consumers: Vec<ConsumerStatus>,
}

/// A configured consumer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    /// The configuration.
    pub consumer: Consumer,
    /// Listening / intercepting now.
    pub active: bool,
    /// Streams carried since start, and open now.
    pub streams_total: u64,
    /// Open now.
    pub streams_open: u64,
    /// Bytes carried both ways since start.
    pub bytes: u64,
    /// Why it is not active (bind failure, no such service, nft refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A service this node provides, with its local check's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalProvidedStatus {
    /// The service as the map lists it.
    pub service: ProvidedService,
    /// The local check's verdict.
    pub health: Health,
    /// When it last ran (Unix milliseconds).
    #[serde(default)]
    pub checked_ms: Option<u64>,
    /// The last failure, in words.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The answer to the local API's `services` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalServices {
    /// Services this node may use, sorted by network and name.
    pub services: Vec<LocalServiceStatus>,
    /// Services this node provides.
    pub provides: Vec<LocalProvidedStatus>,
    /// Consumers configured for services the map does not list (the service
    /// was removed, or the policy no longer allows it).
    #[serde(default)]
    pub orphans: Vec<ConsumerStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::from_bytes([b; 32])
    }

    fn inst(b: u8, health: Health) -> ServiceInstance {
        ServiceInstance {
            node_key: key(b),
            node: format!("n{b}"),
            addr: Ipv4Addr::new(100, 64, 0, b),
            health,
            checked_ms: None,
        }
    }

    fn view(instances: Vec<ServiceInstance>) -> ServiceView {
        ServiceView {
            name: "db".into(),
            network: "prod".into(),
            vip: Ipv4Addr::new(100, 127, 255, 1),
            fqdn: service_fqdn("db", "prod", "weft.internal"),
            ports: vec!["5432/tcp".parse().unwrap()],
            instances,
        }
    }

    #[test]
    fn ports_parse_with_defaults_and_refuse_garbage() {
        let p: ServicePort = "5432".parse().unwrap();
        assert_eq!((p.port, p.proto), (5432, ServiceProto::Tcp));
        let p: ServicePort = "53/udp".parse().unwrap();
        assert_eq!((p.port, p.proto), (53, ServiceProto::Udp));
        for bad in ["0", "65536", "53/icmp", "", "x/tcp", "5432/"] {
            assert!(bad.parse::<ServicePort>().is_err(), "{bad}");
        }
        let l = parse_ports("5433,5432/tcp,5432").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].to_string(), "5432/tcp");
    }

    #[test]
    fn health_checks_round_trip_and_paths_are_bounded() {
        for s in ["tcp", "none", "http:/healthz"] {
            assert_eq!(s.parse::<HealthCheck>().unwrap().to_string(), s);
        }
        assert!("http:healthz".parse::<HealthCheck>().is_err());
        assert!("http:/a b".parse::<HealthCheck>().is_err());
        assert!("grpc".parse::<HealthCheck>().is_err());
        let long = format!("http:/{}", "a".repeat(MAX_HEALTH_PATH));
        assert!(long.parse::<HealthCheck>().is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(check_service_name("db").is_ok());
        assert!(check_service_name("db-2").is_ok());
        for bad in ["", "DB", "-db", "db-", "d.b", &"a".repeat(64)] {
            assert!(check_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pick_prefers_healthy_then_unknown_and_never_unhealthy() {
        let v = view(vec![
            inst(1, Health::Unhealthy),
            inst(2, Health::Healthy),
            inst(3, Health::Unknown),
        ]);
        for h in 0..10 {
            assert_eq!(v.pick(h).unwrap().node, "n2");
        }
        let v = view(vec![inst(1, Health::Unhealthy), inst(3, Health::Unknown)]);
        assert_eq!(v.pick(7).unwrap().node, "n3");
        let v = view(vec![inst(1, Health::Unhealthy)]);
        assert!(v.pick(0).is_none());
        let v = view(vec![inst(1, Health::Healthy), inst(2, Health::Healthy)]);
        assert_ne!(v.pick(0).unwrap().node, v.pick(1).unwrap().node);
    }

    #[test]
    fn a_consumer_serializes_flat() {
        let c = Consumer {
            service: "db".into(),
            network: None,
            mode: ConsumeMode::Listen {
                listen: "127.0.0.1:15432".parse().unwrap(),
            },
            port: None,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(
            j,
            r#"{"service":"db","mode":"listen","listen":"127.0.0.1:15432"}"#
        );
        assert_eq!(serde_json::from_str::<Consumer>(&j).unwrap(), c);
    }
}
