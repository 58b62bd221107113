//! The host firewall, agent side: the map's [`HostFirewallSpec`] turned into
//! the `inet weft_host` table the reconciler keeps (`build`), with weft's own
//! allowances and the domains' sets (`domains`), behind the rollback guard
//! (`guard`): after a change, while the controller was reachable just before,
//! the control-plane self-check ([`crate::selfcheck`]) runs until it answers
//! or `weftd --firewall-rollback-secs` pass; no answer restores the previous
//! ruleset, shows it in `weft status` and raises a `firewall_rollback` event.
//! Rules a `firewall-allow` task opened (`local`) are merged into the spec in
//! force before the table is built; they only open, so they are not judged
//! by the self-check.
//!
//! The supervisor owns one [`HostFw`]; its glue is `supervisor/hostfw.rs`.

mod build;
mod domains;
mod guard;
mod local;
mod memory;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_netcfg::hostfw::HostFirewall;
use weft_proto::hostfw::{HostFirewallSpec, HostRule, MAX_RULES};
use weft_proto::local::{ExpiringRuleStatus, HostFirewallStatus, RollbackStatus};
use weft_proto::netmap::NetworkMap;

use crate::clock;
use crate::dataplane::url_host_port;
use crate::selfcheck::{Selfcheck, selfcheck_controlplane};
use crate::state::Credential;

pub(crate) use build::Own;
use domains::Resolution;
pub(crate) use guard::Next;

/// `weftd --firewall-rollback-secs` default.
pub const DEFAULT_ROLLBACK_SECS: u64 = 10;
/// One self-check attempt's longest wait.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Pause between self-check attempts.
const RETRY: Duration = Duration::from_millis(500);
/// Longest wait for resolving the controller's or a relay's host name.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the host firewall's background work reports to the supervisor.
#[derive(Debug)]
pub(crate) enum Event {
    /// The self-check of a generation finished: `Err` holds its last error.
    Checked {
        generation: u64,
        result: Result<(), String>,
    },
    /// A domain resolved: its addresses and smallest TTL, or why not.
    Resolved { domain: String, result: Resolution },
    /// Domains are due for resolution.
    RefreshDue,
}

/// The agent's host firewall.
pub(crate) struct HostFw {
    guard: guard::Guard,
    domains: domains::Domains,
    own: Own,
    rollback_after: Duration,
    /// When the controller's link was last seen up.
    last_up: Option<Instant>,
    last_apply_ms: Option<u64>,
    /// weft's own endpoints' names, resolved.
    pub(crate) lookups: Lookups,
    check: Option<JoinHandle<()>>,
    /// The state directory (the remembered rollback).
    state_dir: std::path::PathBuf,
    /// Why the remembered rollback could not be read or written.
    memory_error: Option<String>,
    /// Rules `firewall-allow` tasks opened (`firewall-local.json`).
    local: Vec<HostRule>,
    /// Why `firewall-local.json` could not be read (then it is left as it
    /// is and no task may change it).
    local_error: Option<String>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
}

impl HostFw {
    /// A host firewall with nothing in force; a failed self-check rolls back
    /// after `rollback_after`. A rollback of an earlier run remembered in
    /// `state_dir` keeps its version refused.
    pub(crate) fn new(rollback_after: Duration, state_dir: &std::path::Path) -> Self {
        let (events_tx, events_rx) = mpsc::channel(64);
        let mut guard = guard::Guard::default();
        let memory_error = match memory::load(state_dir) {
            Ok(Some(m)) => {
                tracing::warn!(
                    version = m.rollback.version,
                    "host firewall version {} was rolled back before weftd restarted; not applying it again",
                    m.rollback.version
                );
                guard.remember(m.rollback, m.restored);
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("{e}");
                Some(e)
            }
        };
        let (local, local_error) = match local::load(state_dir, clock::unix_ms()) {
            Ok(rules) => (rules, None),
            Err(e) => {
                tracing::error!("{e}");
                (Vec::new(), Some(e))
            }
        };
        let mut fw = Self {
            state_dir: state_dir.to_owned(),
            memory_error,
            local,
            local_error,
            guard,
            domains: domains::Domains::default(),
            own: Own::default(),
            rollback_after,
            last_up: None,
            last_apply_ms: None,
            lookups: Lookups::new(),
            check: None,
            events_tx,
            events_rx,
        };
        // The firewall a remembered rollback restored (its domains too).
        fw.in_force_changed();
        fw
    }

    /// The controller's link is up now (a map came from it, or it says so).
    pub(crate) fn note_controller_up(&mut self, now: Instant) {
        self.last_up = Some(now);
    }

    /// The map's spec and weft's own endpoints; what the supervisor must do.
    /// An invalid spec is refused: `Err` says why (nothing changes).
    pub(crate) fn set_spec(
        &mut self,
        spec: Option<HostFirewallSpec>,
        own: Own,
        now: Instant,
    ) -> Result<Next, String> {
        if let Some(s) = &spec {
            s.check().map_err(|e| e.to_string())?;
        }
        self.own = own;
        let up = self
            .last_up
            .is_some_and(|t| now.saturating_duration_since(t) <= guard::RECENTLY_UP);
        let next = self.guard.set_wanted(spec, up, self.rollback_after, now);
        if next != Next::Nothing {
            self.in_force_changed();
        }
        Ok(next)
    }

    /// The table wanted now (`None`: no table).
    pub(crate) fn desired(&self) -> Option<HostFirewall> {
        let spec = self.merged(clock::unix_ms())?;
        Some(build::build(&spec, &self.own, &self.domains.addresses()))
    }

    /// The spec in force with the live task-made rules.
    fn merged(&self, now_ms: u64) -> Option<HostFirewallSpec> {
        let spec = self.guard.in_force()?;
        Some(local::merge(spec, &self.local, now_ms))
    }

    /// The task-made rules with `rule` added (or renewed), to be saved
    /// ([`HostFw::save_local`]) and then set ([`HostFw::set_local`]). `Err`:
    /// why not (no host firewall in force, a damaged file, no room).
    pub(crate) fn local_with(&self, rule: HostRule, now_ms: u64) -> Result<Vec<HostRule>, String> {
        self.local_writable()?;
        let Some(spec) = self.guard.in_force() else {
            return Err(
                "this node has no host firewall in force (no [[firewall]] profile of the                  controller's firewall file selects it, or it was rolled back), so nothing is                  closed to open; see weft status and weft admin firewall show"
                    .to_owned(),
            );
        };
        let rules = local::with(&self.local, rule, now_ms);
        if spec.rules.len() + rules.len() > MAX_RULES {
            return Err(format!(
                "the node's host firewall would have more than {MAX_RULES} rules;                  revoke a task-made rule first"
            ));
        }
        Ok(rules)
    }

    /// The task-made rules without rule `id`, to be saved and set. `Err`:
    /// no such live rule, or a damaged file.
    pub(crate) fn local_without(&self, id: &str, now_ms: u64) -> Result<Vec<HostRule>, String> {
        self.local_writable()?;
        local::without(&self.local, id, now_ms).ok_or_else(|| {
            format!(
                "no task-made firewall rule {id:?} in force on this node (it expired, was                  revoked, or never opened; weft status lists them); the admin's rules are                  revoked with weft admin firewall revoke"
            )
        })
    }

    fn local_writable(&self) -> Result<(), String> {
        match &self.local_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Saves task-made rules in the state directory (blocking: call off the
    /// async runtime).
    pub(crate) fn save_local(dir: &std::path::Path, rules: &[HostRule]) -> Result<(), String> {
        local::save(dir, rules)
    }

    /// The task-made rules from now on (saved).
    pub(crate) fn set_local(&mut self, rules: Vec<HostRule>) {
        self.local = rules;
    }

    /// Why `firewall-local.json` could not be read (`None`: fine).
    pub(crate) fn local_error(&self) -> Option<&str> {
        self.local_error.as_deref()
    }

    /// The spec in force changed: its domains, the time of the apply.
    fn in_force_changed(&mut self) {
        let names = self
            .guard
            .in_force()
            .map(build::domains)
            .unwrap_or_default();
        self.domains.set(&names);
        self.last_apply_ms = self.guard.in_force().map(|_| clock::unix_ms());
    }

    /// Starts the self-check of `generation` (after the change is applied).
    pub(crate) fn start_check(&mut self, cred: &Credential, generation: u64, deadline: Instant) {
        if let Some(old) = self.check.take() {
            old.abort();
        }
        let check = Selfcheck {
            controller: cred.controller_list(),
            ca_file: cred.ca_file.clone(),
            pin_sha256: cred.pin_sha256.clone(),
            allow_insecure_http: cred.allow_insecure_http,
        };
        let tx = self.events_tx.clone();
        self.check = Some(tokio::spawn(async move {
            let result = check_until(&check, deadline).await;
            let _ = tx.send(Event::Checked { generation, result }).await;
        }));
    }

    /// The self-check of `generation` answered.
    pub(crate) fn check_passed(&mut self, generation: u64) {
        self.guard.check_passed(generation);
    }

    /// The self-check of `generation` did not answer: the rollback, if it is
    /// still the running check.
    pub(crate) fn check_failed(&mut self, generation: u64, reason: &str) -> Option<RollbackStatus> {
        let rb = self
            .guard
            .check_failed(generation, reason, clock::unix_ms())?;
        self.in_force_changed();
        Some(rb)
    }

    /// What to remember of rollback `rb`: it, and the spec now in force.
    pub(crate) fn memory_of(&self, rb: &RollbackStatus) -> memory::Remembered {
        memory::Remembered {
            rollback: rb.clone(),
            restored: self.guard.good().cloned(),
        }
    }

    /// Remembers a rollback in the state directory (blocking: call off the
    /// async runtime).
    pub(crate) fn remember(dir: &std::path::Path, m: &memory::Remembered) -> Result<(), String> {
        memory::save(dir, m)
    }

    /// The state directory.
    pub(crate) fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Why the remembered rollback could not be read or written (`None`: fine).
    pub(crate) fn memory_error(&self) -> Option<&str> {
        self.memory_error.as_deref()
    }

    /// The outcome of writing the remembered rollback.
    pub(crate) fn set_memory_error(&mut self, error: Option<String>) {
        self.memory_error = error;
    }

    /// A domain resolved; whether the table changes.
    pub(crate) fn resolved(&mut self, domain: &str, result: Resolution, now: Instant) -> bool {
        self.domains.resolved(domain, result, now)
    }

    /// Starts resolving every domain due now.
    pub(crate) fn refresh_domains(&mut self, now: Instant) {
        for domain in self.domains.take_due(now) {
            let tx = self.events_tx.clone();
            tokio::spawn(async move {
                let result = resolve(&domain).await;
                let _ = tx.send(Event::Resolved { domain, result }).await;
            });
        }
    }

    /// The next event of the background work (never, without any).
    pub(crate) async fn next(&mut self) -> Event {
        let due = self.domains.next_due(clock::now());
        tokio::select! {
            Some(ev) = self.events_rx.recv() => ev,
            () = crate::supervisor::sleep_until(due) => Event::RefreshDue,
        }
    }

    /// `weft down`: nothing in force, no check running.
    pub(crate) fn clear(&mut self) {
        if let Some(c) = self.check.take() {
            c.abort();
        }
        self.guard.clear();
        self.domains.set(&[]);
        self.last_apply_ms = None;
    }

    /// For `weft status` (`None`: no firewall wanted, none in force, no rollback).
    pub(crate) fn status(&self, now_ms: u64) -> Option<HostFirewallStatus> {
        let merged = self.merged(now_ms);
        let spec = merged.as_ref();
        let (rollbacks, last_rollback) = self.guard.rollbacks();
        if spec.is_none() && self.guard.wanted_version().is_none() && rollbacks == 0 {
            return None;
        }
        let mut expiring: Vec<ExpiringRuleStatus> = spec
            .map(|s| &s.rules[..])
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let at = r.expires_at_ms.filter(|&t| t > now_ms)?;
                Some(ExpiringRuleStatus {
                    id: r.id.clone(),
                    comment: r.comment.clone(),
                    expires_at_ms: at,
                })
            })
            .collect();
        expiring.sort_by_key(|e| e.expires_at_ms);
        Some(HostFirewallStatus {
            version: spec.map(|s| s.version),
            wanted_version: self.guard.wanted_version(),
            rules: spec.map_or(0, |s| {
                s.rules
                    .iter()
                    .filter(|r| r.expires_at_ms.is_none_or(|t| t > now_ms))
                    .count() as u64
            }),
            expiring,
            domains: self.domains.status(clock::now(), now_ms),
            last_apply_ms: self.last_apply_ms,
            checking: self.guard.checking(),
            rollbacks,
            last_rollback: last_rollback.cloned(),
        })
    }

    /// The version refused after a rollback, while the map still asks for it.
    pub(crate) fn refused(&self) -> Option<u64> {
        self.guard.refused()
    }

    /// How long a change may leave the controller silent before it is rolled back.
    pub(crate) fn rollback_after(&self) -> Duration {
        self.rollback_after
    }

    /// Whether a firewall is wanted or in force (else weft's own endpoints
    /// need not be resolved).
    pub(crate) fn active(&self, wanted: bool) -> bool {
        wanted || self.guard.in_force().is_some()
    }

    /// The spec in force.
    pub(crate) fn in_force(&self) -> Option<&HostFirewallSpec> {
        self.guard.in_force()
    }
}

/// Runs the self-check until it answers 200 or `deadline` passes; `Err`: the
/// last error.
async fn check_until(check: &Selfcheck, deadline: Instant) -> Result<(), String> {
    let mut last = "no answer".to_owned();
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        if left.is_zero() {
            return Err(last);
        }
        match tokio::time::timeout(left.min(ATTEMPT), selfcheck_controlplane(check)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => {
                last = format!(
                    "GET /healthz on {} did not answer within {:?}",
                    check.controller,
                    left.min(ATTEMPT)
                );
            }
        }
        let left = deadline.saturating_duration_since(clock::now());
        tokio::time::sleep(left.min(RETRY)).await;
    }
}

/// Resolved host names of weft's own endpoints: (host, port) -> addresses.
/// A name that fails to resolve keeps its last addresses, so a passing DNS
/// failure does not take weft's own rules out of the table.
pub(crate) type Lookups = std::collections::BTreeMap<(String, u16), Vec<SocketAddr>>;

/// weft's own endpoints: the controller's and the relays' TCP ports, the
/// relays' STUN ports, resolved (a name that never resolved within
/// [`LOOKUP_TIMEOUT`] is left out and logged).
pub(crate) async fn own_endpoints(
    cred: Option<&Credential>,
    map: &NetworkMap,
    port: u16,
    cache: &mut Lookups,
) -> Own {
    let mut own = Own {
        listen_port: port,
        ..Own::default()
    };
    let mut tcp_urls: Vec<&str> = map.relays.iter().map(|r| r.url.as_str()).collect();
    if let Some(c) = cred {
        // Every controller URL: the link may move to any of them.
        tcp_urls.extend(c.controllers.iter().map(String::as_str));
    }
    for url in tcp_urls {
        let (host, port) = url_host_port(url);
        let port = port.unwrap_or(if url.starts_with("http://") { 80 } else { 443 });
        for a in lookup(host, port, cache).await {
            own.tcp.insert((a.ip(), a.port()));
        }
    }
    for r in &map.relays {
        if let Some(stun) = r.stun_port {
            let (host, _) = url_host_port(&r.url);
            for a in lookup(host, stun, cache).await {
                own.udp.insert((a.ip(), a.port()));
            }
        }
    }
    own
}

async fn lookup(host: &str, port: u16, cache: &mut Lookups) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    let key = (host.to_owned(), port);
    let found =
        match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => Ok(addrs.collect::<Vec<_>>()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
        };
    match found {
        Ok(addrs) if !addrs.is_empty() => {
            cache.insert(key, addrs.clone());
            addrs
        }
        Ok(_) | Err(_) => {
            let kept = cache.get(&key).cloned().unwrap_or_default();
            tracing::warn!(
                %host,
                error = ?found.err(),
                kept = kept.len(),
                "host firewall: cannot resolve weft's own endpoint; keeping its last addresses"
            );
            kept
        }
    }
}

/// Resolves a domain a rule names with the system's resolvers: its A and
/// AAAA answers (each family asked on its own: one refused or failing family
/// does not lose the other's answers) and their smallest TTL (none: 0, so the
/// next try comes after the shortest refresh). `Err` when both fail.
async fn resolve(domain: &str) -> Resolution {
    use crate::domainset::{Families, resolve_families};
    let (v4, v6) = tokio::join!(
        resolve_families(
            domain,
            None,
            Families {
                v4: true,
                v6: false
            }
        ),
        resolve_families(
            domain,
            None,
            Families {
                v4: false,
                v6: true
            }
        ),
    );
    let mut addrs = BTreeSet::new();
    let mut ttl: Option<u32> = None;
    let mut errors = Vec::new();
    for r in [v4, v6] {
        match r {
            Ok(r) => {
                addrs.extend(r.v4.into_iter().map(IpAddr::V4));
                addrs.extend(r.v6.into_iter().map(IpAddr::V6));
                ttl = match (ttl, r.min_ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.len() == 2 {
        return Err(errors.join("; "));
    }
    for e in &errors {
        tracing::debug!(%domain, error = %e, "host firewall: one address family did not resolve");
    }
    Ok((addrs, Duration::from_secs(u64::from(ttl.unwrap_or(0)))))
}

/// A spec with input dropping and no rules (tests).
#[cfg(test)]
fn test_spec(version: u64) -> HostFirewallSpec {
    use weft_proto::hostfw::ChainPolicy;
    HostFirewallSpec {
        version,
        input: ChainPolicy::Drop,
        output: ChainPolicy::Accept,
        forward: ChainPolicy::Accept,
        management: Vec::new(),
        management_ports: Vec::new(),
        log_drops: true,
        rules: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
