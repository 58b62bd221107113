//! The host-wide executor part: the nftables table `inet weft` (through the
//! `nft` program, one atomic script per change) and `net.ipv4.ip_forward`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::nftgen::RulesetGeneration;
use nftables::schema::Nftables;

use crate::exec::ExecError;
use crate::firewall::{NFT_TABLE, NftRule, ObservedFirewall, delete, parse_listing, render};

/// Where IPv4 forwarding is switched.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Largest `nft` output read (the table holds a few rules).
const MAX_OUTPUT: usize = 1 << 20;
/// Observations answered from the last `nft` listing before `nft` runs again,
/// when the ruleset generation cannot be read. Listing means starting the
/// `nft` program (a few milliseconds of CPU and a burst of page faults); the
/// reconciler observes every 2 s, so running it each time cost an idle agent
/// more CPU than everything else together and disturbed the data plane's
/// latency. Normally the listing is reused while the ruleset generation
/// ([`RulesetGeneration`]) is unchanged, so a table changed behind weft's back
/// is repaired at the next pass; without it, within about 30 s. Every change
/// weft makes itself drops the cached listing.
const LIST_EVERY: u32 = 15;

/// State kept across calls: what forwarding was before weft turned it on, and
/// the last listing of the table with how many observations it has answered.
#[derive(Debug, Default)]
pub(super) struct Firewall {
    forward_set_by_weft: bool,
    /// The last listing: the generation it saw (if readable), the table, and
    /// how many observations it answered.
    listed: Option<(Option<u32>, Option<BTreeSet<String>>, u32)>,
    generation: RulesetGeneration,
    /// Where "weft turned forwarding on" is kept across a crash, if anywhere.
    marker: Option<PathBuf>,
}

/// What a forwarding marker holds: it is valid only in the boot and network
/// namespace that wrote it (forwarding itself does not outlive either).
fn marker_identity() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let netns = std::fs::metadata("/proc/thread-self/ns/net").ok()?.ino();
    Some(format!(
        "weft: IPv4 forwarding turned on by weft\nboot {}\nnetns {netns}\n",
        boot.trim()
    ))
}

/// Whether the marker at `path` says weft turned forwarding on in the boot
/// and namespace `identity` names; a marker from another boot or namespace is
/// removed.
fn read_marker(path: &Path, identity: &str) -> bool {
    match std::fs::read_to_string(path) {
        Ok(held) if held == identity => true,
        Ok(_) => {
            tracing::debug!(path = %path.display(), "forwarding marker from another boot or namespace removed");
            remove_marker(path);
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the forwarding marker");
            false
        }
    }
}

/// A marker torn by a crash mid-write reads as another boot's: forwarding
/// then stays on, as it did before markers existed.
fn write_marker(path: &Path, identity: &str) {
    if let Err(e) = std::fs::write(path, identity) {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot record that weft turned IPv4 forwarding on: after a crash it would stay on");
    }
}

fn remove_marker(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the forwarding marker")
        }
    }
}

fn failed(op: &str, detail: impl Into<String>) -> ExecError {
    ExecError::Decode {
        op: op.to_owned(),
        detail: detail.into(),
    }
}

fn io_err(op: &str, e: &std::io::Error) -> ExecError {
    ExecError::Kernel {
        op: op.to_owned(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: e.to_string(),
    }
}

impl Firewall {
    /// Keeps "weft turned IPv4 forwarding on" in the file `path`, so that weft
    /// restarted after a crash still turns it off again when the node stops
    /// being a gateway. Picks up a marker an earlier run of this boot and
    /// namespace left.
    pub(super) fn remember_in(&mut self, path: PathBuf) {
        if let Some(identity) = marker_identity()
            && read_marker(&path, &identity)
        {
            tracing::info!(path = %path.display(),
                "IPv4 forwarding was turned on by an earlier run of weft: it is turned off again when this node stops being a gateway");
            self.forward_set_by_weft = true;
        }
        self.marker = Some(path);
    }

    fn set_by_weft(&mut self, on: bool) {
        self.forward_set_by_weft = on;
        let Some(path) = &self.marker else {
            return;
        };
        match (on, marker_identity()) {
            (true, Some(identity)) => write_marker(path, &identity),
            (true, None) => tracing::warn!(
                "cannot identify this boot and namespace: forwarding marker not written"
            ),
            (false, _) => remove_marker(path),
        }
    }

    pub(super) fn observe(&mut self) -> Result<ObservedFirewall, ExecError> {
        let generation = self.generation.current();
        let table = match &mut self.listed {
            Some((seen, table, uses))
                if generation.map_or(*uses < LIST_EVERY, |g| *seen == Some(g)) =>
            {
                *uses += 1;
                table.clone()
            }
            _ => {
                let table = Self::list()?;
                self.listed = Some((generation, table.clone(), 1));
                table
            }
        };
        let fwd = std::fs::read_to_string(IP_FORWARD).map_err(|e| io_err(IP_FORWARD, &e))?;
        let ip_forward = fwd.trim() == "1";
        if !ip_forward && self.forward_set_by_weft {
            // Someone turned it off: if it is turned on again later, it is not weft's.
            self.set_by_weft(false);
        }
        Ok(ObservedFirewall {
            table,
            ip_forward,
            forward_set_by_weft: self.forward_set_by_weft,
        })
    }

    /// The comments of the rules in table `inet weft` as `nft` lists them.
    fn list() -> Result<Option<BTreeSet<String>>, ExecError> {
        let op = "observe nftables";
        let out = Command::new("nft")
            .args(["-j", "list", "table"])
            .args(NFT_TABLE.split(' '))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err(op, &e))?;
        let table = if out.status.success() {
            if out.stdout.len() > MAX_OUTPUT {
                return Err(failed(op, "nft output too large"));
            }
            Some(parse_listing(&String::from_utf8_lossy(&out.stdout)).map_err(|e| failed(op, e))?)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") || err.contains("does not exist") {
                None
            } else {
                return Err(failed(op, format!("nft list table: {}", err.trim())));
            }
        };
        Ok(table)
    }

    pub(super) fn set_table(
        &mut self,
        op: &str,
        rules: &BTreeSet<NftRule>,
    ) -> Result<(), ExecError> {
        self.listed = None;
        run_json(op, &render(rules))
    }

    pub(super) fn delete_table(&mut self, op: &str) -> Result<(), ExecError> {
        self.listed = None;
        run_json(op, &delete())
    }

    pub(super) fn set_forward(&mut self, op: &str, on: bool) -> Result<(), ExecError> {
        let before = std::fs::read_to_string(IP_FORWARD).map_err(|e| io_err(op, &e))?;
        std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" }).map_err(|e| io_err(op, &e))?;
        if on && before.trim() != "1" {
            self.set_by_weft(true);
        }
        if !on {
            self.set_by_weft(false);
        }
        Ok(())
    }
}

/// Applies typed nft JSON in one transaction (`nft -j -f -`, its errors
/// captured: `nftables::helper::apply_ruleset` lets them through to stderr).
pub(super) fn run_json(op: &str, nft: &Nftables<'_>) -> Result<(), ExecError> {
    let json = serde_json::to_string(nft).map_err(|e| ExecError::Decode {
        op: op.to_owned(),
        detail: format!("cannot serialize the nft JSON: {e}"),
    })?;
    run_nft(op, &["-j"], &json)
}

/// Runs `nft [args] -f -` with `script` on its standard input (`args`:
/// `["-j"]` for JSON); its error output becomes the error's message.
pub(super) fn run_nft(op: &str, args: &[&str], script: &str) -> Result<(), ExecError> {
    let mut child = Command::new("nft")
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_err(op, &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| io_err(op, &e))?;
    }
    let out = child.wait_with_output().map_err(|e| io_err(op, &e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.chars().take(2000).collect();
        return Err(ExecError::Kernel {
            op: op.to_owned(),
            errno: libc::EINVAL,
            message: format!("nft refused the script: {}", err.trim()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-nft-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_marker_counts_only_in_the_boot_and_namespace_that_wrote_it() {
        let d = scratch("marker");
        let path = d.join("m");
        let here = "weft: IPv4 forwarding turned on by weft\nboot A\nnetns 1\n";
        assert!(!read_marker(&path, here), "no marker yet");
        write_marker(&path, here);
        assert!(read_marker(&path, here));
        // Another boot or namespace: not weft's doing here; the marker goes.
        assert!(!read_marker(
            &path,
            "weft: IPv4 forwarding turned on by weft\nboot B\nnetns 1\n"
        ));
        assert!(!path.exists());
        remove_marker(&path);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// As after a crash: a new `Firewall` remembering in the same file knows
    /// weft turned forwarding on; turning it off removes the marker.
    #[test]
    fn a_restarted_firewall_remembers_who_turned_forwarding_on() {
        let identity = marker_identity().expect("/proc has boot_id and the thread's netns link");
        let d = scratch("remember");
        let path = d.join("m");
        let mut fw = Firewall::default();
        fw.remember_in(path.clone());
        assert!(!fw.forward_set_by_weft);
        fw.set_by_weft(true);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), identity);

        let mut restarted = Firewall::default();
        restarted.remember_in(path.clone());
        assert!(restarted.forward_set_by_weft);
        restarted.set_by_weft(false);
        assert!(!path.exists());

        let mut again = Firewall::default();
        again.remember_in(path);
        assert!(!again.forward_set_by_weft);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
