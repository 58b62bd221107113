//! Usage uploads (issue 16, part 4): every [`USAGE_INTERVAL_MS`] the agent
//! asks the data plane for its usage counters (bytes, packets and flows per
//! peer and service port, counted in the policy's connection table: no second
//! pass over packets), reads the sidecar's `--usage-file` if one is set
//! ([`super::usage_file`]), and uploads both as monotonic counters
//! (`POST /v1/node/usage`), split into uploads of at most
//! [`MAX_UPLOAD_SERIES`] series. The counters are since this agent run started
//! (`run_id`, random per start): the controller does the diffing, so an upload
//! that fails is superseded by the next one of the same run. The newest totals
//! not yet taken wait in the agent's outbox (`STATE_DIR/usage-outbox.json`,
//! one entry per run, [`OUTBOX_RUNS`] at most), so the last totals of a run that
//! ends while the controller is away (weftd restarted, or killed) are sent
//! when it is back, before the next run's: the controller counts that run's
//! growth, then the new run from zero. Sending the same totals twice adds
//! nothing. A total the controller refuses for good (a 4xx other than 401,
//! 403, 408, 429) is dropped and logged, so it cannot block the others.
//!
//! It uploads while the node is joined and up (the supervisor hands it the
//! credential with the controller link, and `None` on `weft down`). A refused
//! usage file is
//! logged when its reason changes and shown by `weft status` (area `usage`)
//! until the file is good again; so is an upload the controller refuses.
//!
//! Tests shorten the interval with `WEFT_USAGE_INTERVAL_MS` (milliseconds, 100
//! to 30000; anything else is ignored with a warning).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_proto::local::FailureStatus;
use weft_proto::usage::{
    FlowUsage, MAX_UPLOAD_SERIES, SidecarUsage, USAGE_INTERVAL_MS, UsageUpload,
};
use weft_tunnel::NodeUsage;

use super::forward::refused_for_good;
use super::usage_file;
use crate::clock;
use crate::ctl::{self, TrustSettings};
use crate::dataplane::{Dataplane, Probe};
use crate::failures::Failures;
use crate::outbox::{Keyed, Kind, Outbox, Tracked};
use crate::state::Credential;
use crate::supervisor::AgentConfig;

/// The environment variable that shortens the interval (tests).
const INTERVAL_ENV: &str = "WEFT_USAGE_INTERVAL_MS";
/// The longest one upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The outbox file in the state directory.
pub(crate) const OUTBOX_FILE: &str = "usage-outbox.json";
/// Agent runs whose last totals are kept at most.
pub(crate) const OUTBOX_RUNS: usize = 16;
/// How the outbox is named in log lines and in `weft status`.
const OUTBOX_KIND: Kind = Kind {
    file: OUTBOX_FILE,
    what: "usage totals",
    sent: "uploaded",
    area: "usage-outbox",
    status: "usage outbox",
};

impl Keyed for UsageUpload {
    fn idempotency_key(&self) -> String {
        self.run_id.clone()
    }
}

/// The running usage task (the supervisor holds it for the agent's life).
pub(crate) struct Usage {
    link: watch::Sender<Option<Credential>>,
    failures: watch::Receiver<Vec<FailureStatus>>,
    task: JoinHandle<()>,
}

impl Usage {
    /// Starts the task: counters from `dp`, the usage file of `cfg`.
    pub(crate) fn start(cfg: &AgentConfig, dp: &Dataplane) -> Self {
        let (link, link_rx) = watch::channel(None);
        let (tx, failures) = watch::channel(Vec::new());
        let task = tokio::spawn(run(
            dp.probe(),
            link_rx,
            cfg.usage_file.clone(),
            cfg.state_dir.clone(),
            tx,
        ));
        Self {
            link,
            failures,
            task,
        }
    }

    /// Where to upload (the node's credential), or `None`: not joined, or
    /// down (nothing is read or sent then).
    pub(crate) fn set_link(&self, cred: Option<Credential>) {
        self.link.send_replace(cred);
    }

    /// For `weft status`: a refused usage file, a refused upload.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.failures.borrow().clone()
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn interval() -> Duration {
    let default = Duration::from_millis(USAGE_INTERVAL_MS);
    match std::env::var(INTERVAL_ENV).map(|v| v.parse::<u64>()) {
        Err(_) => default,
        Ok(Ok(ms)) if (100..=USAGE_INTERVAL_MS).contains(&ms) => Duration::from_millis(ms),
        Ok(_) => {
            tracing::warn!("{INTERVAL_ENV} must be 100 to 30000 (ms); ignored");
            default
        }
    }
}

/// A random run id: 16 bytes from the OS, as lowercase hex.
fn run_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn run(
    probe: Probe,
    mut link: watch::Receiver<Option<Credential>>,
    file: Option<PathBuf>,
    dir: PathBuf,
    shown: watch::Sender<Vec<FailureStatus>>,
) {
    let run_id = run_id();
    let started_at_ms = clock::unix_ms();
    let mut failures = Failures::default();
    let mut pending = Tracked::open(&dir, OUTBOX_KIND, OUTBOX_RUNS, started_at_ms);
    let mut tick = tokio::time::interval(interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<weft_api_client::Client> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = link.changed() => {
                if changed.is_err() {
                    return; // the agent is stopping
                }
                client = link.borrow_and_update().as_ref().and_then(client_for);
                continue;
            }
        }
        let Some(c) = client.clone() else {
            continue; // not joined, or down
        };
        let Some(counters) = probe.usage().await else {
            return; // the data plane is gone
        };
        let now_ms = clock::unix_ms();
        let sidecar = file
            .as_deref()
            .and_then(|p| read_file(p, &mut failures, now_ms));
        let upload = UsageUpload {
            run_id: run_id.clone(),
            started_at_ms,
            at_ms: now_ms,
            flows: flows(&counters),
            sidecar,
        };
        pending.outbox_mut().upsert(upload);
        let refused = send_pending(&c, pending.outbox_mut()).await;
        pending.save();
        // Since when each fails is kept by `failures`, as for the other areas.
        let outbox_failures = pending.failures().into_iter().map(|f| (f.what, f.error));
        failures.set_area(OUTBOX_KIND.area, outbox_failures, now_ms);
        let was = failures.any_in("usage-upload");
        match &refused {
            Some(e) if !was => {
                tracing::warn!(error = %e, "uploading usage failed (the totals wait in the outbox for the next interval)")
            }
            None if was => tracing::info!("usage uploads work again"),
            _ => {}
        }
        failures.set_area(
            "usage-upload",
            refused.map(|e| ("controller".to_owned(), e)),
            now_ms,
        );
        shown.send_replace(failures.list());
    }
}

/// Sends the waiting totals oldest first (an earlier run's last totals
/// before this run's), each in parts of at most [`MAX_UPLOAD_SERIES`] series,
/// forgetting each once the controller took every part. A total refused for
/// good is dropped and counted. `Some(error)` when one could not be sent.
async fn send_pending(
    c: &weft_api_client::Client,
    pending: &mut Outbox<UsageUpload>,
) -> Option<String> {
    while let Some(upload) = pending.oldest(1).pop() {
        for part in split(upload, MAX_UPLOAD_SERIES) {
            match tokio::time::timeout(UPLOAD_TIMEOUT, c.upload_usage(&part)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if refused_for_good(&e) => {
                    pending.taken(1);
                    pending.count_dropped(1);
                    return Some(format!("{e} (these totals are dropped)"));
                }
                Ok(Err(e)) => return Some(e.to_string()),
                Err(_) => return Some("the upload timed out".into()),
            }
        }
        pending.taken(1);
    }
    None
}

fn client_for(c: &Credential) -> Option<weft_api_client::Client> {
    let trust = TrustSettings {
        ca_file: c.ca_file.clone(),
        pin_sha256: c.pin_sha256.clone(),
        allow_insecure_http: c.allow_insecure_http,
    };
    ctl::client(&c.controller_list(), &trust, Some(&c.credential))
        .inspect_err(|e| tracing::warn!("usage uploads: {e:#}"))
        .ok()
}

/// Reads the usage file; a refusal is logged when its reason changes and kept
/// in `failures` (area `usage`) until the file is good again.
fn read_file(path: &Path, failures: &mut Failures, now_ms: u64) -> Option<SidecarUsage> {
    let what = path.display().to_string();
    let result = usage_file::read(path);
    let error = result.as_ref().err().map(ToString::to_string);
    let before = failures.list();
    let previous = before
        .iter()
        .find(|f| f.area == "usage")
        .map(|f| f.error.clone());
    if error != previous {
        match &error {
            Some(e) => tracing::warn!(
                file = %what,
                "usage file refused: {e}; its users are not reported until it is fixed"
            ),
            None => tracing::info!(file = %what, "usage file accepted again"),
        }
    }
    failures.set_area("usage", error.map(|e| (what, e)), now_ms);
    result.ok()
}

/// The data plane's buckets as upload series (the overflow bucket last, when
/// it counted anything).
fn flows(u: &NodeUsage) -> Vec<FlowUsage> {
    let mut out: Vec<FlowUsage> = u
        .buckets
        .iter()
        .filter(|b| !b.counts.is_zero())
        .map(|b| FlowUsage {
            peer: b.peer,
            port: b.port,
            proto: b.proto,
            other: false,
            counters: b.counts,
        })
        .collect();
    if !u.other.is_zero() {
        out.push(FlowUsage {
            peer: None,
            port: 0,
            proto: 0,
            other: true,
            counters: u.other,
        });
    }
    out
}

/// Splits an upload into uploads of at most `max` series each (flows first,
/// then users; every part keeps the run, times and the sidecar's uptime). An
/// upload with nothing in it is still sent once (the controller learns the run).
fn split(u: UsageUpload, max: usize) -> Vec<UsageUpload> {
    let max = max.max(1);
    let empty = UsageUpload {
        flows: Vec::new(),
        sidecar: None,
        ..u.clone()
    };
    let mut parts = vec![empty.clone()];
    for f in u.flows {
        if parts.last().is_some_and(|p| p.series() >= max) {
            parts.push(empty.clone());
        }
        if let Some(p) = parts.last_mut() {
            p.flows.push(f);
        }
    }
    if let Some(s) = u.sidecar {
        let blank = SidecarUsage {
            core_uptime_sec: s.core_uptime_sec,
            user_bytes: Default::default(),
        };
        for (user, bytes) in s.user_bytes {
            if parts.last().is_some_and(|p| p.series() >= max) {
                parts.push(empty.clone());
            }
            if let Some(p) = parts.last_mut() {
                p.sidecar
                    .get_or_insert_with(|| blank.clone())
                    .user_bytes
                    .insert(user, bytes);
            }
        }
        // A file with no users still says the sidecar is there.
        if let Some(p) = parts.last_mut() {
            p.sidecar.get_or_insert(blank);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::NodeKey;
    use weft_proto::usage::UsageCounters;
    use weft_tunnel::PeerUsage;

    fn upload(flows: usize, users: usize) -> UsageUpload {
        UsageUpload {
            run_id: run_id(),
            started_at_ms: 1,
            at_ms: 2,
            flows: (0..flows)
                .map(|i| FlowUsage {
                    peer: None,
                    port: i as u16,
                    proto: 6,
                    other: false,
                    counters: UsageCounters::default(),
                })
                .collect(),
            sidecar: (users > 0).then(|| SidecarUsage {
                core_uptime_sec: 9,
                user_bytes: (0..users).map(|i| (format!("u{i}"), i as u64)).collect(),
            }),
        }
    }

    #[test]
    fn uploads_split_into_valid_parts_that_carry_every_series_once() {
        for (flows, users) in [(0, 0), (3, 0), (0, 3), (450, 0), (150, 150), (0, 401)] {
            let u = upload(flows, users);
            let parts = split(u.clone(), MAX_UPLOAD_SERIES);
            assert!(!parts.is_empty());
            let mut got_flows = Vec::new();
            let mut got_users = std::collections::BTreeMap::new();
            for p in &parts {
                assert_eq!(p.validate(), Ok(()), "{flows}/{users}");
                assert_eq!((p.run_id.as_str(), p.at_ms), (u.run_id.as_str(), 2));
                got_flows.extend(p.flows.iter().copied());
                if let Some(s) = &p.sidecar {
                    assert_eq!(s.core_uptime_sec, 9);
                    got_users.extend(s.user_bytes.clone());
                }
            }
            assert_eq!(got_flows, u.flows);
            assert_eq!(
                got_users,
                u.sidecar.map(|s| s.user_bytes).unwrap_or_default()
            );
            let want = (flows + users).div_ceil(MAX_UPLOAD_SERIES).max(1);
            assert_eq!(parts.len(), want, "{flows}/{users}");
        }
    }

    #[test]
    fn idle_buckets_are_left_out_and_the_overflow_is_marked() {
        let key = NodeKey::from_bytes([1; 32]);
        let busy = UsageCounters {
            tx_bytes: 5,
            flows: 1,
            ..Default::default()
        };
        let u = NodeUsage {
            buckets: vec![
                PeerUsage {
                    peer: Some(key),
                    port: 443,
                    proto: 6,
                    counts: busy,
                },
                PeerUsage {
                    peer: Some(key),
                    port: 22,
                    proto: 6,
                    counts: Default::default(),
                },
            ],
            other: busy,
        };
        let f = flows(&u);
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].peer, f[0].port, f[0].counters.tx_bytes),
            (Some(key), 443, 5)
        );
        assert!(f[1].other && f[1].peer.is_none());
    }

    #[test]
    fn a_refused_file_is_a_failure_until_it_is_good_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.json");
        let mut failures = Failures::default();
        std::fs::write(&p, r#"{"core_uptime_sec": 1, "user_bytes": {"": 5}}"#).unwrap();
        assert!(read_file(&p, &mut failures, 10).is_none());
        let f = failures.list();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].area.as_str(), f[0].since_unix_ms), ("usage", 10));
        assert!(f[0].error.contains("empty"), "{}", f[0].error);
        assert!(f[0].what.ends_with("usage.json"));
        std::fs::write(&p, r#"{"core_uptime_sec": 1, "user_bytes": {"alice": 5}}"#).unwrap();
        assert_eq!(
            read_file(&p, &mut failures, 20).map(|s| s.user_bytes["alice"]),
            Some(5)
        );
        assert!(failures.list().is_empty());
    }

    #[test]
    fn run_ids_are_random_hex() {
        let (a, b) = (run_id(), run_id());
        assert_ne!(a, b);
        let u = UsageUpload {
            run_id: a,
            ..UsageUpload::default()
        };
        assert_eq!(u.validate(), Ok(()));
    }

    /// A controller for `POST /v1/node/usage` that answers with the statuses
    /// of `answers` in turn (then 204) and records the (run, tx bytes) of
    /// each upload it took.
    async fn controller(
        answers: Vec<u16>,
        took: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    ) -> String {
        let mut answers = answers.into_iter();
        crate::stand_in::controller(move |_, body| {
            let status = answers.next().unwrap_or(204);
            if status == 204 {
                let u: UsageUpload = serde_json::from_str(body).unwrap();
                let tx = u.flows.iter().map(|f| f.counters.tx_bytes).sum();
                took.lock().unwrap().push((u.run_id, tx));
            }
            (status, r#"{"error":{"code":"x","message":"y"}}"#.to_owned())
        })
        .await
    }

    /// The usage outbox of `dir`, as `run` opens it.
    fn open(dir: &Path, now_ms: u64) -> Tracked<UsageUpload> {
        Tracked::open(dir, OUTBOX_KIND, OUTBOX_RUNS, now_ms)
    }

    fn totals(run: &str, tx: u64) -> UsageUpload {
        UsageUpload {
            run_id: run.into(),
            flows: vec![FlowUsage {
                peer: None,
                port: 0,
                proto: 0,
                other: true,
                counters: UsageCounters {
                    tx_bytes: tx,
                    ..UsageCounters::default()
                },
            }],
            ..UsageUpload::default()
        }
    }

    /// A weftd run ends while the controller is away: its last totals are on
    /// disk, and are sent after the restart before the new run's, once; one
    /// the controller refuses for good is dropped and counted.
    #[tokio::test]
    async fn a_runs_last_totals_outlive_it_and_go_before_the_next_runs() {
        let dir = tempfile::tempdir().unwrap();
        let took = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // The old run: the controller is away (503, then unreachable).
        let mut p = open(dir.path(), 1);
        p.outbox_mut().upsert(totals("run1", 100));
        p.outbox_mut().upsert(totals("run1", 400));
        let down = controller(vec![503], took.clone()).await;
        let c = client_for(&crate::stand_in::joined(&down)).unwrap();
        assert!(send_pending(&c, p.outbox_mut()).await.is_some());
        p.save();
        assert!(p.failures().is_empty());
        drop(p); // weftd is gone

        // The new run: the old run's newest totals first, then its own.
        let mut p = open(dir.path(), 2);
        assert_eq!(p.outbox().len(), 1);
        p.outbox_mut().upsert(totals("run2", 30));
        let up = controller(vec![], took.clone()).await;
        let c = client_for(&crate::stand_in::joined(&up)).unwrap();
        assert_eq!(send_pending(&c, p.outbox_mut()).await, None);
        p.save();
        assert_eq!(
            *took.lock().unwrap(),
            [("run1".to_owned(), 400), ("run2".to_owned(), 30)]
        );
        assert_eq!(open(dir.path(), 3).outbox().len(), 0, "all taken");

        // A total refused for good does not block the next.
        took.lock().unwrap().clear();
        p.outbox_mut().upsert(totals("run2", 50));
        p.outbox_mut().upsert(totals("run3", 5));
        let refusing = controller(vec![400], took.clone()).await;
        let c = client_for(&crate::stand_in::joined(&refusing)).unwrap();
        let e = send_pending(&c, p.outbox_mut()).await.unwrap();
        assert!(e.contains("dropped"), "{e}");
        assert_eq!(p.outbox().dropped(), 1);
        assert_eq!(send_pending(&c, p.outbox_mut()).await, None);
        assert_eq!(*took.lock().unwrap(), [("run3".to_owned(), 5)]);
    }
}
