//! The integrity report (`POST /v1/node/integrity`): weftd's version and the
//! SHA-256 of its own binary (the one `telemetry::facts` computes once per
//! process), and every hook in the hooks directory with its SHA-256
//! ([`crate::hooks::list`]), or why the directory was refused.
//!
//! Sent when the controller link comes up, every
//! [`weft_proto::integrity::REPORT_EVERY_SECS`] (10 minutes) after that, and
//! right away when a task was refused a hook ([`ReportNow::report_now`]), so
//! the controller sees an edited hook as soon as it mattered. A report that
//! fails is retried after [`RETRY_AFTER`]. The controller answers the node's
//! state; a mismatch, a refused hooks directory and a refused report are in
//! `weft status` (areas `integrity`, `hooks`, `integrity-report`) until they
//! are gone.
//!
//! Tests shorten the interval with `WEFT_INTEGRITY_INTERVAL_MS` (milliseconds,
//! 100 to 600000; anything else is ignored with a warning).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_proto::integrity::{IntegrityReport, IntegrityState, REPORT_EVERY_SECS};
use weft_proto::local::FailureStatus;

use crate::clock;
use crate::ctl;
use crate::failures::Failures;
use crate::hooks;
use crate::state::Credential;

/// The environment variable that shortens the interval (tests).
const INTERVAL_ENV: &str = "WEFT_INTEGRITY_INTERVAL_MS";
/// After a report failed, the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks for a report now (after a hook refusal). Cheap to clone; asking
/// while a report is under way sends one more after it.
#[derive(Debug, Clone)]
pub(crate) struct ReportNow(Arc<Notify>);

impl ReportNow {
    /// Reports as soon as possible.
    pub(crate) fn report_now(&self) {
        self.0.notify_one();
    }

    /// A handle and what it notifies (tests of its users).
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, Arc<Notify>) {
        let n = Arc::new(Notify::new());
        (Self(n.clone()), n)
    }
}

/// The running reporter (the supervisor holds it for the agent's life).
pub(crate) struct Integrity {
    link: watch::Sender<Option<Credential>>,
    now: ReportNow,
    failures: watch::Receiver<Vec<FailureStatus>>,
    task: JoinHandle<()>,
}

impl Integrity {
    /// Starts the reporter for the hooks in `hooks_dir`; nothing is sent
    /// before [`Integrity::set_link`].
    pub(crate) fn start(hooks_dir: PathBuf) -> Self {
        let (link, link_rx) = watch::channel(None);
        let (tx, failures) = watch::channel(Vec::new());
        let now = ReportNow(Arc::new(Notify::new()));
        let task = tokio::spawn(run(hooks_dir, link_rx, now.0.clone(), tx));
        Self {
            link,
            now,
            failures,
            task,
        }
    }

    /// Where to report (the node's credential), or `None`: not joined, or
    /// down. A new link gets a report right away.
    pub(crate) fn set_link(&self, cred: Option<Credential>) {
        self.link.send_replace(cred);
    }

    /// The handle the task runner uses after a hook refusal.
    pub(crate) fn report_now(&self) -> ReportNow {
        self.now.clone()
    }

    /// For `weft status`: a mismatch the controller found, a refused hooks
    /// directory, a report that failed.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.failures.borrow().clone()
    }
}

impl Drop for Integrity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn interval() -> Duration {
    let default = Duration::from_secs(REPORT_EVERY_SECS);
    match std::env::var(INTERVAL_ENV).map(|v| v.parse::<u64>()) {
        Err(_) => default,
        Ok(Ok(ms)) if (100..=REPORT_EVERY_SECS * 1000).contains(&ms) => Duration::from_millis(ms),
        Ok(_) => {
            tracing::warn!("{INTERVAL_ENV} must be 100 to 600000 (ms); ignored");
            default
        }
    }
}

/// What this node runs (blocking: reads and hashes files). `None` when
/// weftd's own binary could not be hashed (logged by the facts code).
pub(crate) fn build_report(hooks_dir: &std::path::Path) -> Option<IntegrityReport> {
    let weftd_sha256 = crate::telemetry::facts::weftd_sha256()?;
    let listing = hooks::list(hooks_dir);
    Some(IntegrityReport {
        api_version: None,
        weftd_version: env!("CARGO_PKG_VERSION").to_owned(),
        weftd_sha256,
        hooks: listing.hooks,
        hooks_error: listing.error,
    })
}

async fn run(
    hooks_dir: PathBuf,
    mut link: watch::Receiver<Option<Credential>>,
    now: Arc<Notify>,
    shown: watch::Sender<Vec<FailureStatus>>,
) {
    let every = interval();
    let mut failures = Failures::default();
    let mut client: Option<weft_api_client::Client> = None;
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = now.notified() => {}
            changed = link.changed() => {
                if changed.is_err() {
                    return; // the agent is stopping
                }
                client = link.borrow_and_update().as_ref().and_then(|c| {
                    ctl::client_for(c)
                        .inspect_err(|e| tracing::warn!("integrity reports: {e:#}"))
                        .ok()
                });
            }
        }
        next = Instant::now() + every;
        let Some(c) = client.clone() else {
            continue; // not joined, or down
        };
        let dir = hooks_dir.clone();
        let report = match tokio::task::spawn_blocking(move || build_report(&dir)).await {
            Ok(Some(r)) => r,
            Ok(None) => continue, // weftd's hash is unknown: nothing to vouch for
            Err(e) => {
                tracing::warn!(error = %e, "building the integrity report failed");
                continue;
            }
        };
        let now_ms = clock::unix_ms();
        note_hooks(
            &mut failures,
            &hooks_dir,
            report.hooks_error.as_deref(),
            now_ms,
        );
        let answer = match tokio::time::timeout(REPORT_TIMEOUT, c.report_integrity(&report)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the report timed out".to_owned()),
        };
        match answer {
            Ok(a) => {
                note(&mut failures, "integrity-report", None, now_ms);
                let mismatch = (a.state == IntegrityState::Mismatch).then(|| a.reasons.join("; "));
                note(&mut failures, "integrity", mismatch, now_ms);
            }
            Err(e) => {
                note(&mut failures, "integrity-report", Some(e), now_ms);
                next = Instant::now() + RETRY_AFTER.min(every);
            }
        }
        shown.send_replace(failures.list());
    }
}

/// Sets `area` to `error` (or clears it), logging when it changes.
fn note(failures: &mut Failures, area: &'static str, error: Option<String>, now_ms: u64) {
    let before = failures
        .list()
        .into_iter()
        .find(|f| f.area == area)
        .map(|f| f.error);
    if before != error {
        match (&error, area) {
            (Some(e), "integrity") => tracing::warn!(
                "the controller finds this node's integrity mismatched: {e}; it refuses this node hook and script tasks until it is resolved"
            ),
            (Some(e), _) => {
                tracing::warn!(error = %e, "the integrity report failed (retried in 30 s)")
            }
            (None, "integrity") if before.is_some() => {
                tracing::info!("the controller finds this node's integrity no longer mismatched")
            }
            (None, _) if before.is_some() => tracing::info!("integrity reports work again"),
            _ => {}
        }
    }
    let what = if area == "integrity" {
        "this node"
    } else {
        "controller"
    };
    failures.set_area(area, error.map(|e| (what.to_owned(), e)), now_ms);
}

/// Keeps a refused hooks directory in the failures (area `hooks`), logged when
/// it changes.
fn note_hooks(failures: &mut Failures, dir: &std::path::Path, error: Option<&str>, now_ms: u64) {
    let what = dir.display().to_string();
    let before = failures
        .list()
        .into_iter()
        .find(|f| f.area == "hooks")
        .map(|f| f.error);
    if before.as_deref() != error {
        match error {
            Some(e) => tracing::warn!(dir = %what, "hooks refused: {e}"),
            None => tracing::info!(dir = %what, "the hooks directory is accepted again"),
        }
    }
    failures.set_area("hooks", error.map(|e| (what, e.to_owned())), now_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_carries_weftds_hash_and_every_hook() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hooks");
        // A missing directory: zero hooks, no error.
        let r = build_report(&dir).unwrap();
        assert!(r.hooks.is_empty() && r.hooks_error.is_none());
        assert_eq!(r.weftd_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.check(), Ok(()), "what the controller accepts");
        // The test binary is /proc/self/exe here: the same hash sha256sum gives.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(r.weftd_sha256, hooks::sha256_hex(&exe));

        // A directory with group bits: refused, reported as an error.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("h"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let r = build_report(&dir).unwrap();
        assert!(r.hooks.is_empty());
        assert!(r.hooks_error.as_deref().unwrap().contains("no hook runs"));
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn failures_follow_the_answers() {
        let mut f = Failures::default();
        note(&mut f, "integrity", Some("hook x is ...".into()), 1);
        note(&mut f, "integrity-report", Some("refused".into()), 1);
        assert_eq!(f.list().len(), 2);
        note(&mut f, "integrity", None, 2);
        note(&mut f, "integrity-report", None, 2);
        assert!(f.list().is_empty());
        note_hooks(&mut f, std::path::Path::new("/h"), Some("bad"), 3);
        assert_eq!(f.list()[0].area, "hooks");
        assert_eq!(f.list()[0].what, "/h");
    }
}
