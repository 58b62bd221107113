//! Ownership and teardown of a lab run.
//!
//! Every run records its owner in `/run/weft-lab/<run id>/owner` (pid and the
//! process start time, so a recycled pid does not look alive) *before* it creates
//! any namespace. Three layers then make sure nothing outlives the run:
//!
//! 1. dropping the [`crate::Lab`] (its `RunGuard`) tears the run down on a normal
//!    exit or an unwinding panic;
//! 2. a reaper, a tiny `sh` child in its own process group that blocks reading a
//!    pipe from the owner; when the owner dies for any reason (SIGKILL, abort,
//!    Ctrl-C), the pipe hits EOF and the reaper kills the run's processes and
//!    deletes its namespaces;
//! 3. [`crate::sweep()`] removes runs whose owner is dead (also when the reaper was
//!    killed too); it runs whenever a lab starts and as `weft-lab sweep`.
//!
//! Processes the lab spawns also get `PR_SET_PDEATHSIG` = SIGKILL.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::names::{self, NETNS_PREFIX};
use crate::sys;

/// Where runs record their owner.
pub const STATE_ROOT: &str = "/run/weft-lab";

/// Where `ip netns` keeps its named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Run ids of the labs alive in this process, for signal handlers.
static ACTIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The reaper: waits for EOF on stdin (the owner's end closes when it exits, however
/// it exits), then kills every process in the run's namespaces and deletes them.
const REAPER_SCRIPT: &str = r#"trap '' INT TERM HUP
while read -r _; do :; done
sweep() {
  for ns in $(ls /run/netns 2>/dev/null); do
    case "$ns" in
      wl-RUNID-*)
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null ;;
    esac
  done
}
sweep
# An `ip` command the owner had started may still be creating a namespace.
sleep 0.5
sweep
rm -rf /etc/netns/wl-RUNID-*
rm -rf /run/weft-lab/RUNID
"#;

/// Owns one run: its id, owner record and reaper. Dropping it tears the run down.
#[derive(Debug)]
pub(crate) struct RunGuard {
    run_id: String,
    reaper: Option<Child>,
    torn_down: bool,
}

impl RunGuard {
    /// Records a new run owned by this process and starts its reaper.
    pub(crate) fn start() -> Result<Self> {
        let run_id = names::new_run_id();
        let dir = state_dir(&run_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("cannot create {}", dir.display()), e))?;
        let owner = format!("{} {}\n", sys::getpid(), own_start_time()?);
        let owner_path = dir.join("owner");
        std::fs::write(&owner_path, owner)
            .map_err(|e| LabError::io(format!("cannot write {}", owner_path.display()), e))?;
        lock_active().insert(run_id.clone());
        let mut guard = Self {
            run_id,
            reaper: None,
            torn_down: false,
        };
        guard.reaper = Some(spawn_reaper(&guard.run_id)?);
        Ok(guard)
    }

    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    pub(crate) fn reaper_pid(&self) -> Option<u32> {
        self.reaper.as_ref().map(Child::id)
    }

    /// Kills the run's processes, deletes its namespaces and owner record, and
    /// stops the reaper.
    pub(crate) fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let result = teardown_run(&self.run_id).map(drop);
        lock_active().remove(&self.run_id);
        if let Some(mut reaper) = self.reaper.take() {
            // Nothing is left for it to do; it blocks in `read`, so no child of
            // its own can be orphaned.
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        result
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("weft-lab: tearing down run {} failed: {e}", self.run_id);
        }
    }
}

fn lock_active() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spawn_reaper(run_id: &str) -> Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let script = REAPER_SCRIPT.replace("RUNID", run_id);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("weft-lab-reaper")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a terminal's Ctrl-C or nextest's group kill of the
        // owner must not take the reaper down with it.
        .process_group(0);
    cmd.spawn().map_err(|e| {
        LabError::io(
            format!("cannot start the reaper `{}`", cmd::cmdline(&cmd)),
            e,
        )
    })
}

/// Tears down every run this process owns (for a Ctrl-C handler). Returns how
/// many runs were torn down.
pub fn teardown_active_runs() -> usize {
    let runs: Vec<String> = lock_active().iter().cloned().collect();
    for run in &runs {
        if let Err(e) = teardown_run(run) {
            eprintln!("weft-lab: tearing down run {run} failed: {e}");
        }
    }
    runs.len()
}

/// What tearing down one run removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// The run id.
    pub run_id: String,
    /// The namespaces deleted.
    pub namespaces: Vec<String>,
    /// How many processes were killed.
    pub killed: usize,
}

/// Kills every process in run `run_id`'s namespaces, deletes the namespaces and
/// the run's owner record. Idempotent.
pub fn teardown_run(run_id: &str) -> Result<Teardown> {
    crate::require_root()?;
    let namespaces = run_namespaces(run_id)?;
    let mut killed = 0;
    for ns in &namespaces {
        let mut pids = cmd::ip(&["netns", "pids", ns]);
        // A namespace deleted concurrently has no pids to report: not an error.
        let out = cmd::output(&mut pids, None)?;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>()
                && pid > 1
                && sys::kill(pid, libc::SIGKILL)
            {
                killed += 1;
            }
        }
    }
    if !namespaces.is_empty() {
        let script: String = namespaces
            .iter()
            .map(|ns| format!("netns del {ns}\n"))
            .collect();
        let mut del = cmd::ip(&["-force", "-batch", "-"]);
        // Errors are rechecked below: a namespace removed concurrently is fine.
        let out = cmd::output(&mut del, Some(&script))?;
        let left = run_namespaces(run_id)?;
        if !left.is_empty() {
            return Err(cmd::command_error(
                format!("ip -force -batch - <<EOF\n{script}EOF"),
                &out,
            ));
        }
    }
    // The nodes' private resolv.conf files (`crate::resolv`), once nothing runs.
    crate::resolv::remove_run_etc(run_id)?;
    let dir = state_dir(run_id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(LabError::io(format!("cannot remove {}", dir.display()), e)),
    }
    Ok(Teardown {
        run_id: run_id.to_owned(),
        namespaces,
        killed,
    })
}

/// The state directory of run `run_id`.
pub(crate) fn state_dir(run_id: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(run_id)
}

/// Every lab namespace on the host, by name.
pub(crate) fn lab_namespaces() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("cannot list {NETNS_DIR}"), e)),
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(NETNS_PREFIX) && names::run_id_of_netns(name).is_some())
        .collect();
    out.sort();
    Ok(out)
}

/// The namespaces of run `run_id`.
pub(crate) fn run_namespaces(run_id: &str) -> Result<Vec<String>> {
    Ok(lab_namespaces()?
        .into_iter()
        .filter(|ns| names::run_id_of_netns(ns) == Some(run_id))
        .collect())
}

/// Whether run `run_id`'s recorded owner is still running. A run directory without
/// an owner file counts as alive for its first 10 seconds (the owner may be
/// writing it).
pub(crate) fn owner_alive(run_id: &str) -> bool {
    let dir = state_dir(run_id);
    let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
        let young = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(10)));
        return young;
    };
    let mut parts = owner.split_whitespace();
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| start_time_of(&stat))
        .is_some_and(|actual| actual.to_string() == start)
}

fn own_start_time() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| LabError::io("cannot read /proc/self/stat", e))?;
    start_time_of(&stat)
        .ok_or_else(|| LabError::Probe(format!("unparsable /proc/self/stat: {stat}")))
}

/// The start time (field 22, in clock ticks since boot) from a `/proc/<pid>/stat` line.
pub(crate) fn start_time_of(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22() {
        let stat = "1234 (weird ) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 \
                    18446744073709551615";
        assert_eq!(start_time_of(stat), Some(987_654));
        assert_eq!(start_time_of("garbage"), None);
    }

    #[test]
    fn own_start_time_reads() {
        assert!(own_start_time().unwrap() > 0);
    }

    #[test]
    fn reaper_script_names_only_its_run() {
        let script = REAPER_SCRIPT.replace("RUNID", "0123abcd");
        assert!(script.contains("wl-0123abcd-*)"));
        assert!(script.contains("rm -rf /run/weft-lab/0123abcd\n"));
        assert!(script.contains("rm -rf /etc/netns/wl-0123abcd-*\n"));
        assert!(!script.contains("RUNID"));
    }
}
