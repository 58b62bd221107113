//! Workload networking (`weft run --net none|host-loopback|bridged|custom`):
//! weftd creates and owns a network namespace per workload, and removes it,
//! its veth and its rules once no process runs in it.
//!
//! - `none`: loopback only.
//! - `host-loopback`: loopback, and each `--forward PORT` reaching the node's
//!   `127.0.0.1:PORT` (`forward`).
//! - `bridged`: a veth on the bridge `wfbr0` (the node's gateway address on
//!   it), an address from `--workload-subnet`, and NAT out (`inet weft_wl`):
//!   to the overlay the workload's traffic leaves as the node's overlay
//!   address, so the overlay policy applies to it as if it were the node.
//!   DNS to a loopback resolver is relayed through the gateway (`dns`).
//! - `custom`: bridged, and an nft filter in the namespace that lets out only
//!   the `--allow` destinations (host names resolved at creation).
//!
//! Lifecycle: `weft run` asks for the namespace (`WorkloadCreate`), enters it
//! through weftd's handle (`/proc/WEFTD/fd/N`), runs the command, names its
//! process (`WorkloadStarted`) and its end (`WorkloadEnded`). Every 500 ms
//! weftd counts the processes in each namespace (`/proc/*/ns/net`); none left
//! (or none 30 s after creation) removes the workload. Each workload is
//! recorded in `STATE_DIR/workloads/ID.json` before anything is made, so
//! after a SIGKILL the next weftd adopts the workloads that still run and
//! sweeps the rest (their veths, the bridge, the table, the forwarding it
//! turned on).
//!
//! `plan` is the pure part (names, addresses, rulesets, sweep decisions);
//! `sys` runs `ip`/`nft` and reads `/proc`.

mod dns;
mod forward;
mod plan;
pub(crate) mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{Mutex, oneshot};
use weft_proto::local::{FailureStatus, LocalRequest, LocalResponse};
use weft_proto::workload::{AllowDest, NetMode, WorkloadInfo, WorkloadSpec};

use crate::api;
use crate::clock;
use plan::{Leftover, Record};

pub use plan::DEFAULT_SUBNET;

/// How often the processes in the namespaces are counted.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A namespace nobody entered this long after its creation is removed.
const START_GRACE: Duration = Duration::from_secs(30);
/// How often the bridge, the table and forwarding are checked for drift.
const REPAIR_EVERY: u32 = 10;
/// In the workloads directory: IPv4 forwarding is on because weft turned it
/// on for bridged workloads.
const FORWARD_MARKER: &str = "ip-forward-set-by-weft";

/// At most this many workloads at once (the local API is open to group
/// `weft`: namespaces are not made without bound).
const MAX_WORKLOADS: usize = 1024;

/// The workload manager; cheap to clone.
#[derive(Clone)]
pub(crate) struct Workloads(Arc<Mutex<Manager>>, Problems);

struct Manager {
    subnet: Ipv4Net,
    dir: PathBuf,
    live: BTreeMap<String, Live>,
    ticks: u32,
    problems: Problems,
    /// The DNS relay on the gateway, while bridged workloads exist.
    relay: Option<dns::Relay>,
}

/// What fails now (the sweep, the bridge's repair, a cleanup), for `weft
/// status` (area `workload`): what → (error, since).
#[derive(Clone, Default)]
struct Problems(Arc<std::sync::Mutex<BTreeMap<String, (String, u64)>>>);

impl Problems {
    /// Records the outcome of `what`: an error (keeping its first time), or
    /// success (forgotten).
    fn note(&self, what: &str, r: &Result<(), String>) {
        let Ok(mut m) = self.0.lock() else {
            return;
        };
        match r {
            Ok(()) => {
                m.remove(what);
            }
            Err(e) => {
                let since = m.get(what).map_or_else(clock::unix_ms, |(_, t)| *t);
                m.insert(what.to_owned(), (e.clone(), since));
            }
        }
    }

    fn list(&self) -> Vec<FailureStatus> {
        let Ok(m) = self.0.lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|(what, (error, since))| FailureStatus {
                area: "workload".into(),
                what: what.clone(),
                error: error.clone(),
                since_unix_ms: *since,
            })
            .collect()
    }
}

struct Live {
    record: Record,
    /// Keeps the namespace alive while weftd runs.
    ns: File,
    inode: u64,
    _forwarders: Option<forward::Forwarders>,
    created: Instant,
    /// `weft run` named the process, or said it ended.
    started: bool,
    /// `custom`: the filter's script and its listing when loaded.
    filter: Option<(String, String)>,
}

/// Whether a local API request is the workload manager's.
pub(crate) fn is_workload(req: &LocalRequest) -> bool {
    matches!(
        req,
        LocalRequest::WorkloadCreate(_)
            | LocalRequest::WorkloadStarted { .. }
            | LocalRequest::WorkloadEnded { .. }
    )
}

impl Workloads {
    /// Opens `STATE_DIR/workloads`, adopts the workloads a previous weftd
    /// left running, sweeps the rest, and starts watching.
    pub(crate) async fn start(state_dir: &Path, subnet: WorkloadSubnet) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = state_dir.join("workloads");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let problems = Problems::default();
        let mut m = Manager {
            subnet: subnet.net(),
            dir,
            live: BTreeMap::new(),
            ticks: 0,
            problems: problems.clone(),
            relay: None,
        };
        m.sweep().await;
        let this = Workloads(Arc::new(Mutex::new(m)), problems);
        let watcher = this.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                watcher.0.lock().await.check(None).await;
            }
        });
        Ok(this)
    }

    /// Answers a request on its own task (creating a namespace runs several
    /// commands: the supervisor does not wait for them).
    pub(crate) fn spawn(&self, req: LocalRequest, reply: oneshot::Sender<LocalResponse>) {
        let this = self.clone();
        tokio::spawn(async move {
            let _ = reply.send(this.handle(req).await);
        });
    }

    /// For `weft status`: what fails now (area `workload`).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.1.list()
    }

    pub(crate) async fn handle(&self, req: LocalRequest) -> LocalResponse {
        match req {
            LocalRequest::WorkloadCreate(spec) => match self.create(spec).await {
                Ok(info) => LocalResponse::Workload(info),
                Err((code, msg)) => api::error(code, &msg),
            },
            LocalRequest::WorkloadStarted { id, pid } => {
                let mut m = self.0.lock().await;
                let Some(w) = m.live.get_mut(&id) else {
                    return api::error("not_found", &format!("no workload {id:?}"));
                };
                match sys::netns_of(pid).and_then(|f| sys::inode(&f)) {
                    Ok(ino) if ino == w.inode => {
                        w.started = true;
                        ok(format!("workload {id}: watching process {pid}"))
                    }
                    Ok(_) => api::error(
                        "bad_request",
                        &format!("process {pid} does not run in workload {id}'s namespace"),
                    ),
                    // Gone (or a zombie) already: a short command. Nothing
                    // to watch; the namespace goes once it is empty.
                    Err(_) => {
                        w.started = true;
                        ok(format!("workload {id}: process {pid} already ended"))
                    }
                }
            }
            LocalRequest::WorkloadEnded { id } => {
                let mut m = self.0.lock().await;
                let Some(w) = m.live.get_mut(&id) else {
                    // Already removed: its last process ended first.
                    return ok(format!("workload {id} removed"));
                };
                w.started = true;
                m.check(Some(&id)).await;
                if m.live.contains_key(&id) {
                    ok(format!(
                        "workload {id}: processes still run in it; it is removed when they end"
                    ))
                } else {
                    ok(format!("workload {id} removed"))
                }
            }
            _ => api::error("internal", "not a workload request"),
        }
    }

    async fn create(&self, spec: WorkloadSpec) -> Result<WorkloadInfo, (&'static str, String)> {
        spec.check().map_err(|e| ("bad_request", e))?;
        // Host names are resolved once, now, outside the lock.
        let mut resolved = BTreeMap::new();
        for a in &spec.allow {
            if let AllowDest::Host(h) = &a.dest {
                let addrs: BTreeSet<IpAddr> = tokio::net::lookup_host((h.as_str(), 0))
                    .await
                    .map(|it| it.map(|s| s.ip()).collect())
                    .unwrap_or_default();
                resolved.insert(h.clone(), addrs);
            }
        }
        let allow = plan::resolve_allow(&spec.allow, &resolved).map_err(|e| ("bad_request", e))?;
        let mut m = self.0.lock().await;
        if m.live.len() >= MAX_WORKLOADS {
            return Err((
                "exhausted",
                format!("{MAX_WORKLOADS} workloads run already"),
            ));
        }
        let address = if spec.net.is_bridged() {
            let used = m.live.values().filter_map(|w| w.record.address).collect();
            Some(plan::allocate(m.subnet, &used).ok_or_else(|| {
                (
                    "exhausted",
                    format!(
                        "every address of the workload subnet {} is in use",
                        m.subnet
                    ),
                )
            })?)
        } else {
            None
        };
        let id = loop {
            let mut id_bytes = [0u8; 4];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id_bytes);
            let id = plan::id_from(id_bytes);
            if !m.live.contains_key(&id) && !m.record_path(&id).exists() {
                break id;
            }
        };
        let record = Record {
            id,
            net: spec.net,
            address,
            forward: spec.forward.clone(),
            allow,
            netns_inode: 0,
            created_ms: clock::unix_ms(),
        };
        match m.build(record).await {
            Ok(info) => Ok(info),
            Err(e) => Err(("workload_failed", e)),
        }
    }
}

fn ok(message: String) -> LocalResponse {
    LocalResponse::Ok {
        status: None,
        message,
    }
}

impl Manager {
    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn marker(&self) -> PathBuf {
        self.dir.join(FORWARD_MARKER)
    }

    fn save(&self, r: &Record) -> Result<(), String> {
        let path = self.record_path(&r.id);
        let bytes = serde_json::to_vec(r).map_err(|e| format!("{}: {e}", path.display()))?;
        weft_fs::write_private(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Makes the workload; on failure removes what was made.
    async fn build(&mut self, mut record: Record) -> Result<WorkloadInfo, String> {
        // Recorded first: a SIGKILL from here on leaves a record to sweep by.
        self.save(&record)?;
        let made = self.make(&mut record).await;
        match made {
            Ok(live) => {
                let info = WorkloadInfo {
                    id: record.id.clone(),
                    net: record.net,
                    netns: sys::handle_path(&live.ns).display().to_string(),
                    address: record
                        .address
                        .map(|a| format!("{a}/{}", self.subnet.prefix_len())),
                    gateway: record
                        .address
                        .map(|_| plan::gateway(self.subnet).to_string()),
                    allow: record.allow.iter().map(ToString::to_string).collect(),
                };
                tracing::info!(id = %record.id, net = %record.net, "workload namespace created");
                self.live.insert(record.id.clone(), live);
                Ok(info)
            }
            Err(e) => {
                tracing::warn!(id = %record.id, error = %e, "creating a workload failed; removing what was made");
                self.remove_leftovers(&record).await;
                Err(e)
            }
        }
    }

    async fn make(&mut self, record: &mut Record) -> Result<Live, String> {
        let ns = sys::new_netns().await?;
        record.netns_inode = sys::inode(&ns)?;
        self.save(record)?;
        if let Some(addr) = record.address {
            let (subnet, marker) = (self.subnet, self.marker());
            blocking(move || sys::ensure_bridge(subnet, &marker)).await?;
            self.ensure_relay().await;
            sys::add_veth(&ns, &record.id, addr, self.subnet).await?;
        }
        live(record, ns, false).await
    }

    /// Removes the workloads nothing runs in any more (`only`: just that
    /// one), and repairs the bridge now and then.
    async fn check(&mut self, only: Option<&str>) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.live.is_empty() {
            return;
        }
        let procs = blocking(|| Ok(sys::processes_by_netns()))
            .await
            .unwrap_or_default();
        let now = clock::now();
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
            .filter(|(_, w)| !procs.contains_key(&w.inode))
            .filter(|(_, w)| w.started || now.duration_since(w.created) >= START_GRACE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(w) = self.live.remove(&id) {
                let record = w.record.clone();
                drop(w); // closes the namespace handle and the forwarders
                self.problems.note(&format!("filter {id}"), &Ok(()));
                self.remove_leftovers(&record).await;
                tracing::info!(id = %id, "workload ended: namespace, links and rules removed");
            }
        }
        if only.is_none() && self.ticks.is_multiple_of(REPAIR_EVERY) {
            self.repair().await;
        }
    }

    /// Puts back what went away or changed: the bridge, the NAT table,
    /// forwarding, and each `custom` filter (a workload with CAP_NET_ADMIN
    /// could rewrite its own; `weft run --user` runs it without).
    async fn repair(&mut self) {
        if self.any_bridged() {
            self.ensure_relay().await;
            let (subnet, marker) = (self.subnet, self.marker());
            let ok = blocking(move || {
                if sys::has_bridge() && sys::forwarding_on() && sys::has_table() {
                    Ok(())
                } else {
                    tracing::warn!(
                        "the workload bridge, its NAT table or IPv4 forwarding went away: repairing"
                    );
                    sys::ensure_bridge(subnet, &marker)
                }
            })
            .await;
            if let Err(e) = &ok {
                tracing::warn!(error = %e, "repairing the workload bridge failed");
            }
            self.problems.note("bridge", &ok);
        }
        for (id, w) in &mut self.live {
            let Some((script, want)) = &mut w.filter else {
                continue;
            };
            let now = sys::filter_listing(&w.ns).await;
            let r = if now.as_ref() == Ok(want) {
                Ok(())
            } else {
                tracing::warn!(id = %id, "a custom workload's filter changed: restoring it");
                sys::load_filter(&w.ns, script.clone())
                    .await
                    .map(|listing| *want = listing)
            };
            if let Err(e) = &r {
                tracing::warn!(id = %id, error = %e, "restoring a custom workload's filter failed");
            }
            self.problems.note(&format!("filter {id}"), &r);
        }
    }

    /// Starts the DNS relay if it is not running; a failure (port 53 of the
    /// gateway taken) leaves workloads without loopback DNS, in status.
    async fn ensure_relay(&mut self) {
        if self.relay.is_some() {
            return;
        }
        let r = dns::start(plan::gateway(self.subnet)).await;
        let noted = r.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(e) = &noted {
            tracing::warn!(error = %e, "bridged workloads get no DNS relay");
        }
        self.problems.note("dns relay", &noted);
        self.relay = r.ok();
    }

    fn any_bridged(&self) -> bool {
        self.live.values().any(|w| w.record.net.is_bridged())
    }

    /// Removes a workload's veth and record, and the bridge once no bridged
    /// workload is left. Its namespace goes with its last reference.
    async fn remove_leftovers(&mut self, record: &Record) {
        let veth = record.veth();
        let path = self.record_path(&record.id);
        let (last, marker) = (!self.any_bridged(), self.marker());
        if last {
            self.relay = None;
            self.problems.note("dns relay", &Ok(()));
        }
        let r = blocking(move || {
            if let Some(v) = veth {
                sys::del_link(&v)?;
            }
            if last {
                sys::remove_bridge(&marker)?;
            }
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("{}: {e}", path.display()))
                }
                _ => Ok(()),
            }
        })
        .await;
        if let Err(e) = &r {
            tracing::warn!(id = %record.id, error = %e, "removing a workload's leftovers failed");
        }
        self.problems.note("cleanup", &r);
    }

    /// At start: adopts recorded workloads that still run, removes the rest
    /// and every other workload veth, and the bridge if none is bridged.
    async fn sweep(&mut self) {
        let mut records = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for e in dir.flatten() {
                let path = e.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) if r.id == id && plan::is_id(id) => records.push(r),
                    Ok(_) | Err(_) => {
                        let aside = path.with_extension("json.damaged");
                        tracing::warn!(file = %path.display(), aside = %aside.display(),
                            "unreadable workload record moved aside; its veth is swept by name, the namespace goes with its processes");
                        let _ = std::fs::rename(&path, &aside);
                    }
                }
            }
        }
        let procs = blocking(|| Ok(sys::processes_by_netns()))
            .await
            .unwrap_or_default();
        let counted: Vec<(Record, usize)> = records
            .into_iter()
            .map(|r| {
                let n = procs.get(&r.netns_inode).map_or(0, Vec::len);
                let n = if r.netns_inode == 0 { 0 } else { n };
                (r, n)
            })
            .collect();
        let links = blocking(sys::links).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "listing links for the workload sweep failed");
            BTreeSet::new()
        });
        let (fates, stray) = plan::sweep(&counted, &links);
        for ((record, _), (_, fate)) in counted.iter().zip(fates) {
            match fate {
                Leftover::Adopt => match self.adopt(record, &procs).await {
                    Ok(live) => {
                        tracing::info!(id = %record.id, net = %record.net,
                            "adopted a workload a previous weftd left running");
                        self.live.insert(record.id.clone(), live);
                    }
                    Err(e) => {
                        tracing::warn!(id = %record.id, error = %e, "cannot adopt a running workload; it is left alone")
                    }
                },
                Leftover::Remove => {
                    tracing::info!(id = %record.id, "sweeping a workload a previous weftd left behind");
                    let path = self.record_path(&record.id);
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let (bridged, subnet, marker) = (self.any_bridged(), self.subnet, self.marker());
        let r = blocking(move || {
            for link in &stray {
                sys::del_link(link)?;
            }
            if bridged {
                sys::ensure_bridge(subnet, &marker)
            } else {
                sys::remove_bridge(&marker)
            }
        })
        .await;
        if let Err(e) = &r {
            tracing::warn!(error = %e, "the workload sweep failed");
        }
        if bridged {
            self.ensure_relay().await;
        }
        self.problems.note("sweep", &r);
    }

    async fn adopt(
        &self,
        record: &Record,
        procs: &BTreeMap<u64, Vec<u32>>,
    ) -> Result<Live, String> {
        let pids = procs.get(&record.netns_inode).cloned().unwrap_or_default();
        let ns = pids
            .iter()
            .find_map(|p| sys::netns_of(*p).ok())
            .ok_or("its processes ended meanwhile")?;
        if sys::inode(&ns)? != record.netns_inode {
            return Err("its process moved to another namespace".into());
        }
        live(record, ns, true).await
    }
}

/// A workload in the namespace `ns` kept by weftd: its forwarders
/// (`host-loopback`) or its filter (`custom`, loaded again: atomic) set up.
async fn live(record: &Record, ns: File, started: bool) -> Result<Live, String> {
    let (mut forwarders, mut filter) = (None, None);
    match record.net {
        NetMode::Custom => {
            let script = plan::custom_script(&record.allow);
            let listing = sys::load_filter(&ns, script.clone()).await?;
            filter = Some((script, listing));
        }
        NetMode::HostLoopback => forwarders = Some(forward::start(&ns, &record.forward).await?),
        NetMode::None | NetMode::Bridged => {}
    }
    Ok(Live {
        inode: record.netns_inode,
        record: record.clone(),
        ns,
        _forwarders: forwarders,
        created: clock::now(),
        started,
        filter,
    })
}

/// Runs blocking system work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> sys::SysResult<T> + Send + 'static,
) -> sys::SysResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a blocking task failed: {e}"))?
}

/// The workload bridge's subnet (`weftd --workload-subnet`): IPv4, /16 to
/// /29; the node takes its first address, workloads the next free ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadSubnet(Ipv4Net);

impl Default for WorkloadSubnet {
    fn default() -> Self {
        WorkloadSubnet(
            DEFAULT_SUBNET
                .parse()
                .unwrap_or_else(|_| Ipv4Net::from(std::net::Ipv4Addr::new(10, 231, 0, 0))),
        )
    }
}

impl std::str::FromStr for WorkloadSubnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: Ipv4Net = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix such as {DEFAULT_SUBNET}"))?;
        if !(16..=29).contains(&net.prefix_len()) {
            return Err(format!("{s}: the prefix length must be 16 to 29"));
        }
        Ok(WorkloadSubnet(net.trunc()))
    }
}

impl std::fmt::Display for WorkloadSubnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl WorkloadSubnet {
    pub(crate) fn net(self) -> Ipv4Net {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Problems;

    #[test]
    fn a_failure_is_listed_until_the_same_thing_succeeds() {
        let p = Problems::default();
        p.note("bridge", &Err("ip link add wfbr0: refused".into()));
        let first = p.list();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].area, "workload");
        assert_eq!(first[0].what, "bridge");
        p.note("bridge", &Err("again".into()));
        let again = p.list();
        assert_eq!(again[0].error, "again");
        assert_eq!(again[0].since_unix_ms, first[0].since_unix_ms);
        p.note("sweep", &Ok(()));
        assert_eq!(p.list().len(), 1);
        p.note("bridge", &Ok(()));
        assert!(p.list().is_empty());
    }
}
