//! Usage uploads (issue 16, part 4): every [`USAGE_INTERVAL_MS`] the agent
//! asks the data plane for its usage counters (bytes, packets and flows per
//! peer and service port, counted in the policy's connection table: no second
//! pass over packets), reads the sidecar's `--usage-file` if one is set
//! ([`super::usage_file`]), and uploads both as monotonic counters
//! (`POST /v1/node/usage`), split into uploads of at most
//! [`MAX_UPLOAD_SERIES`] series. The counters are since this agent run started
//! (`run_id`, random per start): the controller does the diffing, so an upload
//! that fails is simply superseded by the next one (nothing is queued).
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

use super::usage_file;
use crate::clock;
use crate::ctl::{self, TrustSettings};
use crate::dataplane::{Dataplane, Probe};
use crate::failures::Failures;
use crate::state::Credential;
use crate::supervisor::AgentConfig;

/// The environment variable that shortens the interval (tests).
const INTERVAL_ENV: &str = "WEFT_USAGE_INTERVAL_MS";
/// The longest one upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

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
        let task = tokio::spawn(run(dp.probe(), link_rx, cfg.usage_file.clone(), tx));
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
    shown: watch::Sender<Vec<FailureStatus>>,
) {
    let run_id = run_id();
    let started_at_ms = clock::unix_ms();
    let mut failures = Failures::default();
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
        let mut refused = None;
        for part in split(upload, MAX_UPLOAD_SERIES) {
            match tokio::time::timeout(UPLOAD_TIMEOUT, c.upload_usage(&part)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    refused = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    refused = Some("the upload timed out".into());
                    break;
                }
            }
        }
        let was = failures.any_in("usage-upload");
        match &refused {
            Some(e) if !was => {
                tracing::warn!(error = %e, "uploading usage failed (the next interval sends the totals again)")
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

fn client_for(c: &Credential) -> Option<weft_api_client::Client> {
    let trust = TrustSettings {
        ca_file: c.ca_file.clone(),
        pin_sha256: c.pin_sha256.clone(),
        allow_insecure_http: c.allow_insecure_http,
    };
    ctl::client(&c.controller, &trust, Some(&c.credential))
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
}
