//! weft's overlay DNS: the agent's local resolver and the system configuration
//! that points the host at it.
//!
//! It answers `<node>.<network>.<domain>` (default domain `weft.internal`) and,
//! when only one network has that node, `<node>.<domain>`, A and AAAA, from the
//! current network map; it is authoritative for the whole overlay domain (unknown
//! names there are NXDOMAIN and never leave the host). Every other name is
//! forwarded to the resolvers the system used before weft, with a bounded
//! TTL-respecting cache.
//!
//! # Layout
//!
//! - [`zone`]: pure: which overlay names exist and what they answer ([`Zone`]).
//! - [`cache`]: pure: the forwarded-answer cache, driven by `now`.
//! - [`blocklist`]: pure: the controller's blocklist (a listed domain blocks
//!   its subdomains) and the NXDOMAIN or `0.0.0.0` answer blocked names get.
//! - [`resolv_conf`]: pure: the resolv.conf parser and the file weft writes.
//! - [`system`]: the system side ([`SystemDns`]): systemd-resolved per-link DNS,
//!   or a managed `/etc/resolv.conf` with backup, drift repair, crash recovery and
//!   exact restore.
//! - `handler` (pure message logic on hickory-proto types), `upstream` and
//!   `server` (the tokio shell), `clock` (its one clock read), `stats` (the
//!   counters the agent's metrics read: [`DnsStats`]).
//!
//! # Listen address
//!
//! [`DEFAULT_LISTEN`] is `127.0.2.53:53`: resolv.conf can only name addresses on
//! port 53; loopback keeps the resolver private to the host; `127.0.0.53/54` are
//! systemd-resolved's, `127.0.0.1` and `127.0.1.1` are often taken by dnsmasq or
//! the hostname entry. Queries from other hosts are never answered. With
//! systemd-resolved, which reaches per-link servers through the link itself, the
//! service also listens on the node's overlay address of that link
//! ([`DnsService::set_resolved_link`]) and still answers only this host.
//!
//! # Use (the agent)
//!
//! ```no_run
//! # async fn agent(map: weft_proto::netmap::NetworkMap) -> Result<(), weft_dns::DnsError> {
//! use weft_dns::{DnsConfig, DnsService, Zone};
//!
//! // Start before the first map; the zone starts empty (overlay names NXDOMAIN).
//! let mut dns = DnsService::start(DnsConfig::new("/var/lib/weft")).await?;
//! // On every map (snapshot, delta, rename, join, leave): a new zone, swapped atomically.
//! dns.set_zone(Zone::from_map(&map).with_serial(map.version as u32))?;
//! // With systemd-resolved: once weft0 exists, the overlay address of this node on it.
//! dns.set_resolved_link("weft0", "100.64.0.1".parse().unwrap()).await?;
//! // On the reconcile tick (every 2 s), like route drift:
//! let _drift = dns.check_drift()?;
//! // On `weft down` and on exit: stop serving and put the system back as it was.
//! dns.stop().await?;
//! # Ok(()) }
//! ```
//!
//! Dropping a running [`DnsService`] also restores the system configuration (best
//! effort, errors logged); after a crash or `kill -9` the next start recognises
//! weft's own resolv.conf and keeps the original backup (see [`system`]).

// Hash iteration order must not reach answers or logs (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

pub mod blocklist;
pub mod cache;
mod clock;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
pub mod querylog;
pub mod resolv_conf;
mod server;
mod stats;
pub mod system;
mod upstream;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use blocklist::{Blocklist, BlocklistError, BlocklistSlot};
pub use cache::TtlBounds;
pub use error::DnsError;
pub use querylog::QueryLogConfig;
pub use stats::{DnsStats, DnsStatsSnapshot, UPSTREAM_BOUNDS};
pub use system::{
    CommandRunner, Drift, NamespaceView, ProcessRunner, SystemDns, SystemKind, SystemMode,
    SystemPaths,
};
pub use upstream::health::UpstreamHealth;
pub use upstream::spec::{Upstream, UpstreamParseError};
pub use upstream::tcp_query;
pub use zone::{
    Answer, QueryType, Record, ServiceRecord, Zone, records_from_map, services_from_map,
};

/// Where the resolver listens by default (see the crate docs).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 53)), 53);

/// Which resolvers non-overlay names go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstreams {
    /// The ones the system used before weft (its resolv.conf, or resolved's
    /// upstreams behind its stub), following later legitimate changes.
    FromSystem,
    /// These (`weftd --dns-upstream`; tests).
    Static(Vec<Upstream>),
}

/// How the service starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Loopback address to listen on (UDP and TCP; port 0 picks one, for tests).
    pub listen: SocketAddr,
    /// Where other names go.
    pub upstreams: Upstreams,
    /// What it may change on the system.
    pub system: SystemMode,
    /// Where it counts queries, cache hits and upstream latency (the agent
    /// keeps one handle across restarts of the service).
    pub stats: DnsStats,
    /// Serve the whole system, not only the overlay domains (`weftd --dns
    /// system`): with systemd-resolved the overlay link also gets the `~.`
    /// routing domain and the default route (the managed resolv.conf sends
    /// every name to weft anyway).
    pub whole_system: bool,
    /// The TTLs forwarded answers are kept (and shown) for.
    pub ttl: TtlBounds,
    /// The CA certificates (PEM) DNS-over-TLS upstreams are checked against;
    /// `None`: the system's.
    pub tls_ca: Option<PathBuf>,
    /// The query log (`None`: off).
    pub query_log: Option<QueryLogConfig>,
    /// Where it finds the controller's blocklist (the agent keeps one handle
    /// across restarts of the service and fills it).
    pub blocklist: BlocklistSlot,
}

impl DnsConfig {
    /// The agent's defaults: [`DEFAULT_LISTEN`], upstreams from the system,
    /// [`SystemMode::Auto`] with the real paths, backing up into `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            upstreams: Upstreams::FromSystem,
            system: SystemMode::Auto(SystemPaths::new(state_dir)),
            stats: DnsStats::default(),
            whole_system: false,
            ttl: TtlBounds::default(),
            tls_ca: None,
            query_log: None,
            blocklist: BlocklistSlot::default(),
        }
    }

    /// A loopback test configuration: `listen`, these upstreams, nothing
    /// changed on the system, the other fields at their defaults.
    pub fn unmanaged(listen: SocketAddr, upstreams: Vec<Upstream>) -> Self {
        Self {
            listen,
            upstreams: Upstreams::Static(upstreams),
            system: SystemMode::Unmanaged,
            ..Self::new("/nonexistent")
        }
    }
}

/// The running resolver and the system configuration it owns.
#[derive(Debug)]
pub struct DnsService {
    shared: Arc<server::Shared>,
    system: SystemDns,
    follow_system: bool,
    whole_system: bool,
    local: SocketAddr,
    main: JoinHandle<()>,
    health: JoinHandle<()>,
    link: Option<(SocketAddr, JoinHandle<()>)>,
    stopped: bool,
}

impl DnsService {
    /// Binds the listener, then applies the system configuration (so a busy port
    /// changes nothing on the system), and serves.
    pub async fn start(config: DnsConfig) -> Result<Self, DnsError> {
        Self::start_with_runner(config, Box::new(ProcessRunner)).await
    }

    /// [`DnsService::start`] with a chosen command runner (for `resolvectl`).
    pub async fn start_with_runner(
        config: DnsConfig,
        runner: Box<dyn CommandRunner>,
    ) -> Result<Self, DnsError> {
        if !config.listen.ip().is_loopback() {
            return Err(DnsError::NotLoopback(config.listen));
        }
        let tls = match &config.upstreams {
            Upstreams::Static(list) if list.iter().any(Upstream::is_tls) => {
                let roots = upstream::tls::roots(config.tls_ca.as_deref())?;
                Some(Arc::new(upstream::tls::TlsClient::new(roots)?))
            }
            _ => None,
        };
        let log = match &config.query_log {
            Some(c) => Some(querylog::QueryLog::open(c)?),
            None => None,
        };
        let bound = server::bind_retrying(config.listen, false).await?;
        let local = bound.local;
        let (system, found) = SystemDns::start(&config.system, local.ip(), runner)?;
        let (upstreams, follow_system) = match config.upstreams {
            Upstreams::FromSystem => (found.into_iter().map(Upstream::Udp).collect(), true),
            Upstreams::Static(list) => (list, false),
        };
        if upstreams.is_empty() {
            tracing::warn!("no upstream resolvers: only overlay names will resolve");
        }
        let shared = Arc::new(server::Shared::new(
            upstreams,
            config.stats,
            config.ttl,
            tls,
            log,
            config.blocklist,
        ));
        let main = match server::spawn(shared.clone(), bound) {
            Ok(task) => task,
            Err(e) => {
                let mut system = system;
                if let Err(r) = system.restore() {
                    tracing::error!("restoring the resolver configuration: {r}");
                }
                return Err(e);
            }
        };
        let health = server::spawn_health_check(shared.clone());
        tracing::info!(listen = %local, system = ?system.kind(), whole_system = config.whole_system, "DNS resolver started");
        Ok(Self {
            shared,
            system,
            follow_system,
            whole_system: config.whole_system,
            local,
            main,
            health,
            link: None,
            stopped: false,
        })
    }

    /// The address the resolver listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Which system backend is active.
    pub fn system_kind(&self) -> SystemKind {
        self.system.kind()
    }

    /// The upstreams non-overlay names go to now, in order.
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.shared.pool().upstreams().to_vec()
    }

    /// Every upstream's health now, in the configured order.
    pub fn upstream_health(&self) -> Vec<UpstreamHealth> {
        self.shared.pool().report(clock::now())
    }

    /// The cache's TTL bounds.
    pub fn ttl_bounds(&self) -> TtlBounds {
        self.shared.bounds()
    }

    /// The query log's file and the lines it dropped (`None`: off).
    pub fn query_log(&self) -> Option<(PathBuf, u64)> {
        self.shared
            .query_log()
            .map(|l| (l.path().to_owned(), l.dropped()))
    }

    /// Empties the answer cache (forwarded names are asked upstream again);
    /// returns how many answers it held.
    pub fn flush_cache(&self) -> usize {
        self.shared.flush_cache()
    }

    /// Swaps in the controller's blocklist ([`Blocklist::default`]: none):
    /// the next query sees it. Blocked names are answered NXDOMAIN or
    /// `0.0.0.0`/`::` and counted ([`DnsStatsSnapshot::blocked`]).
    pub fn set_blocklist(&self, blocklist: Blocklist) {
        self.shared.set_blocklist(blocklist);
    }

    /// Swaps in a new zone: the next query sees it (renames and joins are
    /// visible at once; overlay answers have TTL 0). With systemd-resolved, a
    /// changed set of domains is routed too.
    pub fn set_zone(&mut self, zone: Zone) -> Result<(), DnsError> {
        for rejected in zone.rejected() {
            tracing::warn!(name = %rejected, "not a valid DNS name: not served");
        }
        let mut domains: Vec<String> = zone.domains().map(str::to_owned).collect();
        if self.whole_system {
            // resolved: `~.` routes every name to this link.
            domains.push(".".into());
        }
        self.shared.set_zone(zone);
        self.system.set_domains(&domains)
    }

    /// With systemd-resolved: listen also on `addr` (this node's overlay address
    /// on `ifname`, port 53) and point resolved's `ifname` at it for the overlay
    /// domains. A no-op with the other backends. Call again when the link or the
    /// address changes.
    pub async fn set_resolved_link(&mut self, ifname: &str, addr: IpAddr) -> Result<(), DnsError> {
        if self.system.kind() != SystemKind::Resolved {
            return Ok(());
        }
        let want = SocketAddr::new(addr, 53);
        if self.link.as_ref().map(|(a, _)| *a) != Some(want) {
            if let Some((_, task)) = self.link.take() {
                task.abort();
                let _ = task.await;
            }
            let bound = server::bind_retrying(want, true).await?;
            let task = server::spawn(self.shared.clone(), bound)?;
            self.link = Some((want, task));
        }
        self.system.set_link(ifname, addr)
    }

    /// Detects and repairs changes others made to the resolver configuration
    /// (call it on the reconcile tick). A new configuration written by another
    /// program becomes the original and its resolvers the upstreams.
    pub fn check_drift(&mut self) -> Result<Drift, DnsError> {
        let drift = self.system.check_drift()?;
        if let Drift::NewOriginal { upstreams } = &drift
            && self.follow_system
        {
            self.shared
                .set_upstreams(upstreams.iter().copied().map(Upstream::Udp).collect());
        }
        Ok(drift)
    }

    /// Stops serving and puts the system configuration back as it was.
    pub async fn stop(mut self) -> Result<(), DnsError> {
        self.stopped = true;
        self.main.abort();
        self.health.abort();
        let _ = (&mut self.main).await;
        if let Some((_, task)) = self.link.take() {
            task.abort();
            let _ = task.await;
        }
        self.system.restore()
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        self.main.abort();
        self.health.abort();
        if let Some((_, task)) = &self.link {
            task.abort();
        }
        if !self.stopped
            && let Err(e) = self.system.restore()
        {
            tracing::error!("restoring the resolver configuration: {e}");
        }
    }
}
