//! Removing what crashed runs left behind: namespaces (and the processes in them)
//! of runs whose recorded owner is no longer alive.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::guard::{self, STATE_ROOT, Teardown};
use crate::names;

/// Log directories of finished runs older than this are removed by a sweep.
pub const LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What a sweep found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Runs whose owner was dead, now removed.
    pub removed: Vec<Teardown>,
    /// Runs whose owner is alive, left alone.
    pub live: Vec<String>,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed.is_empty() {
            writeln!(f, "nothing to sweep")?;
        }
        for run in &self.removed {
            writeln!(
                f,
                "removed run {}: {} namespace(s), {} process(es) killed",
                run.run_id,
                run.namespaces.len(),
                run.killed
            )?;
        }
        if !self.live.is_empty() {
            writeln!(
                f,
                "left {} live run(s) alone: {}",
                self.live.len(),
                self.live.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Removes every lab run whose owner process is gone. Runs of live owners
/// (including this process's) are left alone. Also prunes log directories of
/// finished runs older than [`LOG_RETENTION`].
pub fn sweep() -> Result<SweepReport> {
    crate::require_root()?;
    let mut runs: BTreeSet<String> = guard::lab_namespaces()?
        .iter()
        .filter_map(|ns| names::run_id_of_netns(ns).map(str::to_owned))
        .collect();
    match std::fs::read_dir(STATE_ROOT) {
        Ok(entries) => runs.extend(
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| names::is_run_id(name)),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LabError::io(format!("cannot list {STATE_ROOT}"), e)),
    }
    // Private resolv.conf directories left by a run whose namespaces are gone.
    runs.extend(
        crate::resolv::lab_etc_dirs()?
            .iter()
            .filter_map(|name| names::run_id_of_netns(name).map(str::to_owned)),
    );
    let mut report = SweepReport::default();
    prune_old_logs(&runs);
    for run in runs {
        if guard::owner_alive(&run) {
            report.live.push(run);
        } else {
            tracing::info!(run = %run, "sweeping a run whose owner is dead");
            report.removed.push(guard::teardown_run(&run)?);
        }
    }
    Ok(report)
}

/// Removes log directories (`/tmp/weft-lab/<run id>`) older than [`LOG_RETENTION`]
/// whose run is gone. Best effort: logs are a convenience.
fn prune_old_logs(known_runs: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(crate::LOG_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > LOG_RETENTION));
        if names::is_run_id(&name) && old && !known_runs.contains(&name) {
            let _ = std::fs::remove_dir_all(Path::new(crate::LOG_ROOT).join(&name));
        }
    }
}
