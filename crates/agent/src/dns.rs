//! The agent's side of overlay DNS: when the `weft-dns` service runs, which zone
//! it serves, and keeping its failures away from the data plane.
//!
//! - The service starts with the first applied map that has at least one network
//!   (never before joining), gets a new zone on every applied map (renames and
//!   joins are visible as soon as the map arrives), checks the system's resolver
//!   configuration for drift on its own 2 s tick, and stops (restoring the system
//!   configuration) on `weft down`, on exit, and when the last network is left.
//! - Every failure is logged and retried later (start: after
//!   [`START_RETRY`]); none of them stops the data plane.
//! - [`DnsMode::Off`]: no resolver, no system change.
//! - The service's system side (files, `resolvectl`) blocks: every call into
//!   it runs off the async runtime ([`off_runtime`]).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_dns::{DnsConfig, DnsService, Drift, Zone};
use weft_proto::netmap::NetworkMap;

use crate::clock;
use crate::system::off_runtime;

/// How often the system configuration is checked for drift.
pub(crate) const DRIFT_INTERVAL: Duration = Duration::from_secs(2);
/// How long after a failed start the next attempt is made.
pub(crate) const START_RETRY: Duration = Duration::from_secs(10);
/// This many repairs within [`FIGHT_WINDOW`] mean another program (or a second
/// agent) keeps rewriting the resolver configuration: weft stops fighting it.
const FIGHT_REPAIRS: usize = 5;
const FIGHT_WINDOW: Duration = Duration::from_secs(60);
/// The first pause of the repairs after a fight; a fight right after a pause
/// doubles it, up to [`FIGHT_PAUSE_MAX`]; a calm window resets it.
const FIGHT_PAUSE: Duration = Duration::from_secs(60);
const FIGHT_PAUSE_MAX: Duration = Duration::from_secs(30 * 60);
const _: () = assert!(FIGHT_PAUSE.as_secs() >= FIGHT_WINDOW.as_secs());

/// Whether the agent runs the overlay resolver (`weftd --dns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// Run it and point the system at it for the overlay domains
    /// (systemd-resolved per link, or a managed `/etc/resolv.conf`).
    #[default]
    Auto,
    /// Run it for every name (`--dns system`): the system's only resolver
    /// (systemd-resolved: the `~.` routing domain and the default route on the
    /// overlay link; or the managed `/etc/resolv.conf`), with a cache bounded
    /// by the minimum and maximum TTL; restored exactly on down and exit.
    System,
    /// No resolver and no change to the system's resolver configuration.
    Off,
}

/// The resolver's lifecycle inside the supervisor.
#[derive(Debug)]
pub(crate) struct Dns {
    mode: DnsMode,
    config: DnsConfig,
    service: Option<DnsService>,
    /// The zone to serve (from the last applied map), kept for a retried start.
    zone: Option<Zone>,
    /// With systemd-resolved: the overlay link and this node's address on it.
    link: Option<(String, IpAddr)>,
    /// The link the running service was last pointed at (resolved is asked again
    /// only when it changes; drift checks cover the rest).
    applied_link: Option<(String, IpAddr)>,
    retry_at: Option<Instant>,
    fight: FightGuard,
    /// Why the resolver will not run in this process at all (it runs in a
    /// network namespace whose `/etc/resolv.conf` is the host's): said once, not
    /// retried.
    refused: Option<String>,
    /// Why the last start failed (retried every [`START_RETRY`]).
    start_error: Option<String>,
}

/// Keeps weft from rewriting the resolver configuration every tick against
/// another program that rewrites it too (NetworkManager, a DHCP client, a
/// second weft agent on the host): after [`FIGHT_REPAIRS`] repairs within
/// [`FIGHT_WINDOW`], drift checks pause, longer each time it happens again.
#[derive(Debug)]
struct FightGuard {
    /// The repairs of the last [`FIGHT_WINDOW`], newest last (the newest is
    /// kept however old: it tells a calm window).
    repairs: VecDeque<Instant>,
    paused_until: Option<Instant>,
    pause: Duration,
}

impl FightGuard {
    fn new() -> Self {
        Self {
            repairs: VecDeque::with_capacity(FIGHT_REPAIRS),
            paused_until: None,
            pause: FIGHT_PAUSE,
        }
    }

    /// Whether drift checks are paused at `now`.
    fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    /// Records a repair at `now`; returns the pause that starts now when it
    /// was one repair too many.
    fn repaired(&mut self, now: Instant) -> Option<Duration> {
        if self
            .repairs
            .back()
            .is_some_and(|l| now.saturating_duration_since(*l) > self.pause + FIGHT_WINDOW)
        {
            self.pause = FIGHT_PAUSE;
        }
        // A pause is at least a window long, so the repairs of the fight
        // before it are gone by the first repair after it.
        self.repairs
            .retain(|t| now.saturating_duration_since(*t) <= FIGHT_WINDOW);
        self.repairs.push_back(now);
        if self.repairs.len() < FIGHT_REPAIRS {
            return None;
        }
        let pause = self.pause;
        self.paused_until = Some(now + pause);
        self.pause = (pause * 2).min(FIGHT_PAUSE_MAX);
        Some(pause)
    }
}

impl Dns {
    /// The agent's resolver with `options` (checked by weftd before it
    /// starts), backing up into `state_dir`.
    pub(crate) fn new(
        mode: DnsMode,
        state_dir: PathBuf,
        options: &crate::DnsResolverOptions,
    ) -> Self {
        match options.dns_config(mode, &state_dir) {
            Ok(config) => Self::with_config(mode, config),
            Err(e) => {
                tracing::error!("DNS resolver options: {e}; using the defaults");
                Self::with_config(mode, DnsConfig::new(state_dir))
            }
        }
    }

    /// `weft dns log`.
    pub(crate) async fn log(
        &self,
        n: Option<u32>,
        after_seq: Option<u64>,
    ) -> weft_proto::local::LocalResponse {
        crate::resolver::log(self.mode, self.config.query_log.clone(), n, after_seq).await
    }

    /// `weft dns stats`.
    pub(crate) fn stats_response(&self) -> weft_proto::local::LocalResponse {
        crate::resolver::stats(
            self.mode,
            &self.config.stats,
            self.service.as_ref(),
            &self.config.blocklist,
        )
    }

    pub(crate) fn with_config(mode: DnsMode, config: DnsConfig) -> Self {
        Self {
            mode,
            config,
            service: None,
            zone: None,
            link: None,
            applied_link: None,
            retry_at: None,
            fight: FightGuard::new(),
            refused: None,
            start_error: None,
        }
    }

    /// Why overlay DNS will not run in this process although `--dns auto` asked
    /// for it (shown by `weft status`).
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// The resolver's counters (the same handle across restarts of the service).
    pub(crate) fn stats(&self) -> weft_dns::DnsStats {
        self.config.stats.clone()
    }

    /// Where the resolver reads the controller's blocklist (the same slot
    /// across restarts of the service; `crate::dns_blocklist` fills it).
    pub(crate) fn blocklist_slot(&self) -> weft_dns::BlocklistSlot {
        self.config.blocklist.clone()
    }

    /// Why the resolver could not start (it is retried), if it could not.
    pub(crate) fn start_error(&self) -> Option<&str> {
        self.start_error.as_deref()
    }

    /// Serves `map` (starting the service if needed), or stops when the map has no
    /// network left. `link`: the first overlay interface and this node's address
    /// on it (for systemd-resolved).
    pub(crate) async fn apply(&mut self, map: &NetworkMap, link: Option<(String, IpAddr)>) {
        if self.mode == DnsMode::Off {
            return;
        }
        if map.networks.is_empty() {
            self.zone = None;
            self.link = None;
            self.stop().await;
            return;
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the SOA serial wraps to 32 bits"
        )]
        let zone = Zone::from_map(map).with_serial(map.version as u32);
        self.zone = Some(zone);
        self.link = link;
        if self.service.is_none() {
            // A new map is a good moment to try again after a failure.
            self.retry_at = None;
            self.try_start().await;
        } else {
            self.push_zone().await;
        }
    }

    /// The 2 s tick: drift repair, or a retried start.
    pub(crate) async fn tick(&mut self) {
        self.tick_at(clock::now()).await;
    }

    async fn tick_at(&mut self, now: Instant) {
        if self.mode == DnsMode::Off || self.zone.is_none() {
            return;
        }
        let Some(service) = self.service.take() else {
            self.try_start().await;
            return;
        };
        if self.fight.paused(now) {
            self.service = Some(service);
            return;
        }
        let (service, drift) = off_runtime(service, DnsService::check_drift).await;
        self.service = Some(service);
        match drift {
            Ok(Drift::Unchanged) => return,
            Ok(Drift::Repaired) => {
                tracing::info!("overlay DNS: the resolver configuration was changed; repaired");
            }
            Ok(Drift::NewOriginal { upstreams }) => tracing::info!(
                ?upstreams,
                "overlay DNS: another program wrote a new resolver configuration; \
                 adopted as the original, weft's configuration written again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "overlay DNS: checking the resolver configuration failed; will retry");
                return;
            }
        }
        if let Some(pause) = self.fight.repaired(now) {
            tracing::warn!(
                repairs = FIGHT_REPAIRS,
                window_s = FIGHT_WINDOW.as_secs(),
                pause_s = pause.as_secs(),
                "overlay DNS: the resolver configuration keeps being rewritten: another program \
                 (or a second weft agent on this host) manages it too. weft stops repairing it \
                 for pause_s seconds (longer each time this repeats); meanwhile overlay names may \
                 not resolve. Let one of them manage it: `weftd --dns off` on the other agent, or \
                 stop the other program from rewriting it"
            );
        }
    }

    /// Empties the resolver's answer cache (the `flush-dns` action): the
    /// number of answers dropped, or why there is no cache to flush.
    pub(crate) fn flush_cache(&self) -> Result<usize, String> {
        match (&self.service, self.mode) {
            (Some(service), _) => Ok(service.flush_cache()),
            (None, DnsMode::Off) => Err("overlay DNS is off on this node (weftd --dns off)".into()),
            (None, DnsMode::Auto | DnsMode::System) => Err(self
                .refused
                .clone()
                .or_else(|| self.start_error.clone())
                .unwrap_or_else(|| "the overlay resolver is not running (no network yet)".into())),
        }
    }

    /// Stops serving and restores the system configuration (`weft down`, exit,
    /// last network left). The zone is kept only until the next map.
    pub(crate) async fn stop(&mut self) {
        self.applied_link = None;
        if let Some(service) = self.service.take() {
            let rt = tokio::runtime::Handle::current();
            match off_runtime((), move |()| rt.block_on(service.stop()))
                .await
                .1
            {
                Ok(()) => {
                    tracing::info!("overlay DNS stopped; resolver configuration restored");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "overlay DNS: restoring the resolver configuration failed"
                ),
            }
        }
        self.retry_at = None;
        self.start_error = None;
    }

    /// Forgets the zone and stops (`weft down`): a later `weft up` starts again
    /// from the next applied map.
    pub(crate) async fn shutdown(&mut self) {
        self.zone = None;
        self.link = None;
        self.stop().await;
    }

    async fn try_start(&mut self) {
        if self.service.is_some() || self.zone.is_none() || self.refused.is_some() {
            return;
        }
        if self.retry_at.is_some_and(|at| clock::now() < at) {
            return;
        }
        let (rt, config) = (tokio::runtime::Handle::current(), self.config.clone());
        match off_runtime((), move |()| rt.block_on(DnsService::start(config)))
            .await
            .1
        {
            Ok(service) => {
                tracing::info!(
                    listen = %service.local_addr(),
                    system = ?service.system_kind(),
                    upstreams = ?service.upstreams(),
                    "overlay DNS running"
                );
                self.service = Some(service);
                self.retry_at = None;
                self.start_error = None;
                self.push_zone().await;
            }
            Err(e @ weft_dns::DnsError::HostFileInNamespace { .. }) => {
                tracing::error!(
                    "overlay DNS is off: {e} (the overlay itself keeps working; \
                     overlay names do not resolve here)"
                );
                self.refused = Some(e.to_string());
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    retry_in = ?START_RETRY,
                    "overlay DNS could not start (the overlay itself keeps working)"
                );
                self.retry_at = Some(clock::now() + START_RETRY);
                self.start_error = Some(e.to_string());
            }
        }
    }

    async fn push_zone(&mut self) {
        let Some(zone) = self.zone.clone() else {
            return;
        };
        let Some(service) = self.service.take() else {
            return;
        };
        let (mut service, set) = off_runtime(service, move |s| s.set_zone(zone)).await;
        if let Err(e) = set {
            tracing::warn!(error = %e, "overlay DNS: updating the zone's system routing failed");
        }
        if let Some((ifname, addr)) = self.link.clone()
            && self.applied_link != self.link
        {
            let rt = tokio::runtime::Handle::current();
            let (back, linked) = off_runtime(service, {
                let ifname = ifname.clone();
                move |s| rt.block_on(s.set_resolved_link(&ifname, addr))
            })
            .await;
            service = back;
            match linked {
                Ok(()) => self.applied_link = self.link.clone(),
                Err(e) => tracing::warn!(
                    error = %e,
                    link = %ifname,
                    "overlay DNS: per-link DNS on systemd-resolved failed; will retry with the next map"
                ),
            }
        }
        self.service = Some(service);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weft_dns::{SystemMode, SystemPaths, Upstreams};

    use super::*;

    fn map(version: u64, networks: &[&str]) -> NetworkMap {
        let key = serde_json::to_value(weft_proto::NodeKey::from_bytes([1; 32])).unwrap();
        let networks: Vec<serde_json::Value> = networks
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n,
                    "ipv4_cidr": "100.64.0.0/24",
                    "dns_domain": "weft.internal",
                    "ipv4": "100.64.0.1",
                    "peers": [],
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "api_version": weft_proto::api::API_VERSION,
            "version": version,
            "node": { "node_key": key, "name": "db" },
            "networks": networks,
        }))
        .unwrap()
    }

    fn config(dir: &Path) -> DnsConfig {
        DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: Upstreams::Static(vec![]),
            system: SystemMode::ResolvConf(SystemPaths {
                resolv_conf: dir.join("resolv.conf"),
                backup_dir: dir.join("state"),
                resolved_stub: dir.join("no-stub"),
                resolved_upstreams: dir.join("no-upstreams"),
            }),
            stats: Default::default(),
            ..DnsConfig::new("/nonexistent")
        }
    }

    const ORIGINAL: &str = "nameserver 192.0.2.1\n";

    #[tokio::test]
    async fn starts_with_a_network_and_stops_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, ORIGINAL).unwrap();
        let mut dns = Dns::with_config(DnsMode::Auto, config(dir.path()));

        // Joined to nothing yet: nothing runs, nothing changes.
        dns.apply(&map(1, &[]), None).await;
        dns.tick().await;
        assert!(dns.service.is_none());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);

        dns.apply(&map(2, &["prod"]), None).await;
        assert!(dns.service.is_some());
        assert_ne!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);

        // Drift is repaired on the tick.
        std::fs::remove_file(&conf).unwrap();
        dns.tick().await;
        assert!(conf.exists());

        // The last network left: stopped, restored exactly.
        dns.apply(&map(3, &[]), None).await;
        assert!(dns.service.is_none());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);

        // Back, then `weft down`: restored again, and the tick does not restart it.
        dns.apply(&map(4, &["prod"]), None).await;
        assert!(dns.service.is_some());
        dns.shutdown().await;
        dns.tick().await;
        assert!(dns.service.is_none());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
    }

    /// The `flush-dns` action: a running resolver's cache is emptied (the
    /// count of answers dropped); without one, the error says why.
    #[tokio::test]
    async fn the_cache_is_flushed_only_where_a_resolver_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv.conf"), ORIGINAL).unwrap();
        let mut dns = Dns::with_config(DnsMode::Auto, config(dir.path()));
        let e = dns.flush_cache().unwrap_err();
        assert!(e.contains("not running"), "{e}");
        dns.apply(&map(1, &["prod"]), None).await;
        assert_eq!(dns.flush_cache(), Ok(0));
        dns.shutdown().await;
        let off = Dns::with_config(DnsMode::Off, config(dir.path()));
        assert_eq!(
            off.flush_cache(),
            Err("overlay DNS is off on this node (weftd --dns off)".into())
        );
    }

    #[tokio::test]
    async fn off_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, ORIGINAL).unwrap();
        let mut dns = Dns::with_config(DnsMode::Off, config(dir.path()));
        dns.apply(&map(1, &["prod"]), None).await;
        dns.tick().await;
        assert!(dns.service.is_none());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
    }

    #[tokio::test]
    async fn a_failed_start_is_retried_and_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        // Not loopback: refused at start.
        cfg.listen = "192.0.2.1:0".parse().unwrap();
        let mut dns = Dns::with_config(DnsMode::Auto, cfg);
        dns.apply(&map(1, &["prod"]), None).await;
        assert!(dns.service.is_none());
        assert!(dns.retry_at.is_some());
        // Shown in status (area dns) until it starts or is stopped.
        assert!(dns.start_error().is_some());
        dns.tick().await;
        assert!(dns.service.is_none());
        dns.shutdown().await;
        assert!(dns.start_error().is_none());
    }

    /// Another program rewrites the file before every tick: weft repairs it
    /// [`FIGHT_REPAIRS`] times, then leaves it alone for [`FIGHT_PAUSE`], then
    /// repairs again, and the next fight pauses twice as long.
    #[tokio::test]
    async fn a_fight_over_the_resolver_configuration_pauses_the_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, ORIGINAL).unwrap();
        let mut dns = Dns::with_config(DnsMode::Auto, config(dir.path()));
        dns.apply(&map(1, &["prod"]), None).await;
        assert!(dns.service.is_some());
        let foreign = "nameserver 198.51.100.7\n";
        let read = || std::fs::read_to_string(&conf).unwrap();
        let step = Duration::from_secs(2);
        let mut t = clock::now();
        let fight = async |dns: &mut Dns, from: Instant| {
            let mut t = from;
            for i in 0..FIGHT_REPAIRS {
                std::fs::write(&conf, foreign).unwrap();
                dns.tick_at(t).await;
                assert_ne!(read(), foreign, "repair {i} of the fight");
                t += step;
            }
            t - step
        };
        t = fight(&mut dns, t).await;
        // Paused: the other program's file stays.
        std::fs::write(&conf, foreign).unwrap();
        dns.tick_at(t + step).await;
        assert_eq!(read(), foreign);
        dns.tick_at(t + FIGHT_PAUSE - step).await;
        assert_eq!(read(), foreign);
        // The pause is over: repairs again; the second fight pauses 2 × as long.
        t = fight(&mut dns, t + FIGHT_PAUSE).await;
        std::fs::write(&conf, foreign).unwrap();
        dns.tick_at(t + FIGHT_PAUSE + step).await;
        assert_eq!(read(), foreign, "the second pause is longer");
        dns.tick_at(t + 2 * FIGHT_PAUSE).await;
        assert_ne!(read(), foreign);
    }

    #[test]
    fn fight_guard_doubles_its_pause_up_to_the_cap_and_forgets_after_calm() {
        let t0 = clock::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = FightGuard::new();
        // Repairs a window apart are no fight.
        for i in 0..10 {
            assert_eq!(g.repaired(at(i * 61)), None);
        }
        let mut t = 1000;
        let mut pauses = Vec::new();
        for _ in 0..7 {
            for _ in 0..FIGHT_REPAIRS - 1 {
                assert_eq!(g.repaired(at(t)), None);
                t += 2;
            }
            let pause = g.repaired(at(t)).expect("one repair too many");
            assert!(g.paused(at(t + pause.as_secs() - 1)));
            assert!(!g.paused(at(t + pause.as_secs())));
            pauses.push(pause.as_secs());
            t += pause.as_secs() + 2;
        }
        assert_eq!(pauses, [60, 120, 240, 480, 960, 1800, 1800]);
        // A calm window after the pause: the next fight pauses briefly again.
        t += 1800 + FIGHT_WINDOW.as_secs() + 1;
        for _ in 0..FIGHT_REPAIRS - 1 {
            assert_eq!(g.repaired(at(t)), None);
            t += 2;
        }
        assert_eq!(g.repaired(at(t)), Some(FIGHT_PAUSE));
    }
}
