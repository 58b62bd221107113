//! The controller's DNS blocklist on this node: fetched when the map names a
//! new one, checked, kept in the state directory, and put in force in the
//! resolver ([`weft_dns::BlocklistSlot`], read by every query).
//!
//! - The map carries only a reference (version, SHA-256, size, mode). When it
//!   differs from the list in force, the list is fetched (`GET
//!   /v1/node/dns/blocklist`), checked against the reference
//!   ([`DnsBlocklist::verify`]: version, mode, valid sorted unique names, the
//!   digest), written to `STATE_DIR/dns-blocklist.json` (atomically) and put
//!   in force. A fetch that fails or does not match is retried every
//!   [`RETRY_AFTER`]; meanwhile the last good list stays in force (a stale
//!   list blocks more than none), and `weft status` shows the failure (area
//!   `dns-blocklist`).
//! - At start the kept list is in force at once, before any map or
//!   controller. A damaged file is moved aside (`dns-blocklist.json.damaged-<unix
//!   ms>`), never silently dropped: shown in status until the next good list,
//!   which the controller provides again.
//! - A map without a blocklist removes it (in force and on disk). Before the
//!   first map nothing changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_dns::{Blocklist, BlocklistSlot};
use weft_proto::dnsblock::{DnsBlocklist, DnsBlocklistRef};
use weft_proto::local::FailureStatus;

use crate::clock;
use crate::ctl;
use crate::failures::Failures;
use crate::state::Credential;

/// The kept list, in the state directory.
pub(crate) const FILE: &str = "dns-blocklist.json";
/// After a failed fetch, the next try.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The status area of this module's failures.
const AREA: &str = "dns-blocklist";

/// What the supervisor tells the task.
#[derive(Clone, Default, PartialEq, Eq)]
struct Want {
    /// The controller link (`None`: not joined, or down).
    link: Option<Credential>,
    /// The map's reference: `None` before the first map, `Some(None)` for a
    /// map without a blocklist.
    map: Option<Option<DnsBlocklistRef>>,
}

/// The running keeper (the supervisor holds it for the agent's life).
pub(crate) struct DnsBlocklistKeeper {
    want: watch::Sender<Want>,
    failures: watch::Receiver<Vec<FailureStatus>>,
    task: JoinHandle<()>,
}

impl DnsBlocklistKeeper {
    /// Starts the keeper: the list kept in `state_dir` goes into `slot` at
    /// once. `enabled` false (no resolver on this node): nothing is fetched,
    /// read or written.
    pub(crate) fn start(state_dir: PathBuf, slot: BlocklistSlot, enabled: bool) -> Self {
        let (want, want_rx) = watch::channel(Want::default());
        let (shown, failures) = watch::channel(Vec::new());
        let task = if enabled {
            tokio::spawn(run(state_dir, slot, want_rx, shown))
        } else {
            tokio::spawn(async {})
        };
        Self {
            want,
            failures,
            task,
        }
    }

    /// The controller link to fetch through (`None`: not joined, or down).
    pub(crate) fn set_link(&self, link: Option<Credential>) {
        self.want.send_if_modified(|w| {
            let changed = w.link != link;
            w.link = link;
            changed
        });
    }

    /// A new map: the blocklist it names (`None`: none).
    pub(crate) fn set_map(&self, reference: Option<&DnsBlocklistRef>) {
        let map = Some(reference.cloned());
        self.want.send_if_modified(|w| {
            let changed = w.map != map;
            w.map = map;
            changed
        });
    }

    /// For `weft status`: a fetch that failed, a damaged file moved aside.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.failures.borrow().clone()
    }
}

impl Drop for DnsBlocklistKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a fetched or kept list is not used.
type Why = String;

async fn run(
    dir: PathBuf,
    slot: BlocklistSlot,
    mut want: watch::Receiver<Want>,
    shown: watch::Sender<Vec<FailureStatus>>,
) {
    let mut failures = Failures::default();
    let path = dir.join(FILE);
    let load_path = path.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&load_path, clock::unix_ms()))
        .await
        .unwrap_or_else(|e| Err(format!("reading the kept blocklist failed: {e}")));
    // The reference of the list in force.
    let mut held: Option<DnsBlocklistRef> = match loaded {
        Ok(Some((reference, list))) => {
            tracing::info!(
                version = reference.version,
                entries = reference.entries,
                "DNS blocklist kept from the last run in force"
            );
            slot.set(Arc::new(list));
            Some(reference)
        }
        Ok(None) => None,
        Err(why) => {
            tracing::error!("{why}");
            note(&mut failures, "kept list", Some(why));
            None
        }
    };
    shown.send_replace(failures.list());
    let mut retry: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = want.changed() => {
                if changed.is_err() {
                    return; // the agent is stopping
                }
            }
            () = crate::supervisor::sleep_until(retry.map(Instant::into_std)) => {}
        }
        retry = None;
        let w = want.borrow_and_update().clone();
        let Some(wanted) = w.map else {
            continue; // no map yet: keep what is in force
        };
        let Some(reference) = wanted else {
            if held.take().is_some() {
                slot.set(Arc::new(Blocklist::default()));
                let p = path.clone();
                let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&p)).await;
                if let Ok(Err(e)) = removed
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("removing {}: {e}", path.display());
                }
                tracing::info!("DNS blocklist removed: the map has none");
            }
            note(&mut failures, "fetch", None);
            shown.send_replace(failures.list());
            continue;
        };
        if held.as_ref() == Some(&reference) {
            note(&mut failures, "fetch", None);
            shown.send_replace(failures.list());
            continue;
        }
        let Some(cred) = w.link else {
            continue; // not joined or down: fetched once the link is back
        };
        match fetch(&cred, &reference, &path).await {
            Ok(list) => {
                tracing::info!(
                    version = reference.version,
                    entries = reference.entries,
                    mode = %reference.mode,
                    "DNS blocklist in force"
                );
                slot.set(Arc::new(list));
                held = Some(reference);
                note(&mut failures, "fetch", None);
                note(&mut failures, "kept list", None);
            }
            Err(why) => {
                let why = format!(
                    "blocklist version {}: {why}; retried every {} s (the previous list, if any, stays in force)",
                    reference.version,
                    RETRY_AFTER.as_secs()
                );
                tracing::warn!("{why}");
                note(&mut failures, "fetch", Some(why));
                retry = Some(Instant::now() + RETRY_AFTER);
            }
        }
        shown.send_replace(failures.list());
    }
}

fn note(failures: &mut Failures, what: &str, error: Option<String>) {
    let mut all: Vec<(String, String)> = failures
        .list()
        .into_iter()
        .filter(|f| f.area == AREA && f.what != what)
        .map(|f| (f.what, f.error))
        .collect();
    if let Some(e) = error {
        all.push((what.to_owned(), e));
    }
    failures.set_area(AREA, all, clock::unix_ms());
}

/// Fetches, checks and keeps the list `reference` names; the lookup table to
/// put in force.
async fn fetch(
    cred: &Credential,
    reference: &DnsBlocklistRef,
    path: &Path,
) -> Result<Blocklist, Why> {
    let client = ctl::client_for(cred).map_err(|e| format!("{e:#}"))?;
    // Bounded by the client's request timeout (30 s) and response size.
    let list = client
        .fetch_dns_blocklist()
        .await
        .map_err(|e| format!("fetching it failed: {e}"))?;
    let (reference, path) = (reference.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        list.verify(&reference)
            .map_err(|e| format!("the controller's list does not match the map: {e}"))?;
        let table = Blocklist::new(&list).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec(&list).map_err(|e| e.to_string())?;
        weft_fs::write_atomic(&path, &bytes, weft_fs::WriteOptions::PRIVATE)
            .map_err(|e| format!("keeping it in {} failed: {e}", path.display()))?;
        Ok(table)
    })
    .await
    .map_err(|e| format!("checking it failed: {e}"))?
}

/// The kept list and its reference, `None` when there is none; a damaged
/// file is moved aside to `<file>.damaged-<now_ms>` (the error says where).
fn load(path: &Path, now_ms: u64) -> Result<Option<(DnsBlocklistRef, Blocklist)>, Why> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let checked = serde_json::from_slice::<DnsBlocklist>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|list| {
            let reference = list.to_ref();
            list.verify(&reference)?;
            let table = Blocklist::new(&list).map_err(|e| e.to_string())?;
            Ok((reference, table))
        });
    match checked {
        Ok(pair) => Ok(Some(pair)),
        Err(why) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".damaged-{now_ms}"));
            let aside = PathBuf::from(aside);
            match std::fs::rename(path, &aside) {
                Ok(()) => Err(format!(
                    "the kept DNS blocklist {} is damaged ({why}); moved aside to {}: the \
                     controller's list is fetched again (delete the copy once no longer needed)",
                    path.display(),
                    aside.display()
                )),
                Err(e) => Err(format!(
                    "the kept DNS blocklist {} is damaged ({why}) and could not be moved aside \
                     ({e}); it is not used: move or delete it by hand",
                    path.display()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::dnsblock::BlockMode;

    use super::*;
    use crate::stand_in;

    fn list(version: u64, names: &[&str]) -> DnsBlocklist {
        DnsBlocklist {
            version,
            mode: BlockMode::Nxdomain,
            domains: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn a_kept_list_loads_and_a_damaged_one_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert!(load(&path, 1).unwrap().is_none());
        let l = list(4, &["ads.example.com"]);
        std::fs::write(&path, serde_json::to_vec(&l).unwrap()).unwrap();
        let (r, table) = load(&path, 1).unwrap().unwrap();
        assert_eq!(r, l.to_ref());
        assert!(table.lookup("x.ads.example.com").is_some());
        // Unsorted (edited by hand): damaged, moved aside, not used.
        std::fs::write(
            &path,
            serde_json::to_vec(&list(4, &["b.example", "a.example"])).unwrap(),
        )
        .unwrap();
        let why = load(&path, 77).unwrap_err();
        assert!(why.contains("moved aside"), "{why}");
        assert!(!path.exists());
        assert!(dir.path().join(format!("{FILE}.damaged-77")).exists());
        std::fs::write(&path, b"{").unwrap();
        assert!(load(&path, 78).unwrap_err().contains("damaged"));
    }

    /// Waits until `cond` holds for the slot (the task works in the background).
    async fn until(slot: &BlocklistSlot, cond: impl Fn(&Blocklist) -> bool) {
        for _ in 0..200 {
            if cond(&slot.get()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the blocklist never reached the expected state");
    }

    #[tokio::test]
    async fn the_map_s_list_is_fetched_checked_kept_and_removed_with_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let served = list(5, &["ads.example.com", "tracker.example.net"]);
        let body = serde_json::to_string(&served).unwrap();
        let url = stand_in::controller(move |head, _| {
            if head.starts_with("GET /v1/node/dns/blocklist ") {
                (200, body.clone())
            } else {
                (404, r#"{"code":"not_found","message":"no"}"#.into())
            }
        })
        .await;
        let slot = BlocklistSlot::default();
        let keeper = DnsBlocklistKeeper::start(dir.path().to_owned(), slot.clone(), true);
        keeper.set_link(Some(stand_in::joined(&url)));
        // A reference that does not match what the controller sends: refused,
        // shown, nothing in force.
        let mut wrong = served.to_ref();
        wrong.sha256 = "00".repeat(32);
        keeper.set_map(Some(&wrong));
        for _ in 0..200 {
            if !keeper.failures().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let f = keeper.failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].error.contains("sha256"), "{}", f[0].error);
        assert!(slot.get().is_empty());

        keeper.set_map(Some(&served.to_ref()));
        until(&slot, |b| b.version() == 5).await;
        assert!(slot.get().lookup("www.tracker.example.net").is_some());
        let kept: DnsBlocklist =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(kept, served);
        for _ in 0..200 {
            if keeper.failures().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keeper.failures().is_empty());
        drop(keeper);

        // A restart puts the kept list in force before any map.
        let slot = BlocklistSlot::default();
        let keeper = DnsBlocklistKeeper::start(dir.path().to_owned(), slot.clone(), true);
        until(&slot, |b| b.version() == 5).await;
        // A map without a blocklist removes it, from memory and disk.
        keeper.set_map(None);
        until(&slot, Blocklist::is_empty).await;
        for _ in 0..200 {
            if !dir.path().join(FILE).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!dir.path().join(FILE).exists());
    }
}
