//! DNS inside a lab: every node's private `/etc/resolv.conf` and the lab's
//! "upstream" resolver on the internet segment.
//!
//! All lab nodes share the host's filesystem, so a program in a node that manages
//! `/etc/resolv.conf` (weftd's overlay DNS) would rewrite the *host's* file.
//! `ip netns exec NS` bind-mounts `/etc/netns/NS/resolv.conf` over
//! `/etc/resolv.conf` in the command's own mount namespace when that file exists,
//! so the lab creates one for every node before anything runs in it: each node
//! then has a private resolv.conf, and the host's is never touched. The
//! directories are removed at teardown (and by the reaper and the sweep after a
//! crash).
//!
//! The file names [`UPSTREAM_DNS`], an address of the internet switch namespace
//! where the lab runs `dnsmasq` (when installed: package `dnsmasq-base`), which
//! answers `*.example.test` with [`EXAMPLE_TEST_ADDR`] and refuses the rest: the
//! "previous upstream" resolver of every node.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::names;

/// Where `ip netns exec` looks for per-namespace files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The lab's upstream resolver: the internet switch's own address (hosts start at
/// `.10`).
pub const UPSTREAM_DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The domain the upstream resolver answers.
pub const EXAMPLE_DOMAIN: &str = "example.test";

/// What every name under [`EXAMPLE_DOMAIN`] resolves to upstream.
pub const EXAMPLE_TEST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

/// The private resolv.conf every lab node gets.
pub fn node_resolv_conf() -> String {
    format!(
        "# weft-lab: this node's private resolv.conf (bind-mounted by `ip netns exec`)\n\
         nameserver {UPSTREAM_DNS}\n\
         options timeout:1 attempts:2\n"
    )
}

/// `/etc/netns/<netns>`.
pub fn netns_etc_dir(netns: &str) -> PathBuf {
    Path::new(NETNS_ETC).join(netns)
}

/// `/etc/netns/<netns>/resolv.conf`.
pub fn netns_resolv_conf(netns: &str) -> PathBuf {
    netns_etc_dir(netns).join("resolv.conf")
}

/// Writes the private resolv.conf of lab namespace `netns`.
pub(crate) fn write_node_resolv_conf(netns: &str) -> Result<()> {
    if names::run_id_of_netns(netns).is_none() {
        return Err(LabError::Topology(format!(
            "`{netns}` is not a lab namespace"
        )));
    }
    let dir = netns_etc_dir(netns);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("cannot create {}", dir.display()), e))?;
    let path = netns_resolv_conf(netns);
    std::fs::write(&path, node_resolv_conf())
        .map_err(|e| LabError::io(format!("cannot write {}", path.display()), e))
}

/// Removes `/etc/netns/wl-<run_id>-*`. Idempotent; returns how many were removed.
pub(crate) fn remove_run_etc(run_id: &str) -> Result<usize> {
    let mut removed = 0;
    for name in lab_etc_dirs()? {
        if names::run_id_of_netns(&name) == Some(run_id) {
            let dir = netns_etc_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LabError::io(format!("cannot remove {}", dir.display()), e));
                }
            }
        }
    }
    Ok(removed)
}

/// Names of the lab's directories in `/etc/netns` (`wl-<run id>-<name>`).
pub(crate) fn lab_etc_dirs() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_ETC) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("cannot list {NETNS_ETC}"), e)),
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| names::run_id_of_netns(name).is_some())
        .collect();
    out.sort();
    Ok(out)
}

/// The `dnsmasq` binary, if installed.
pub(crate) fn dnsmasq_path() -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join("dnsmasq"))
        .find(|p| p.is_file())
}

/// The upstream resolver's command line: no config files, no pid file, logs to
/// stderr, in the foreground, only on [`UPSTREAM_DNS`].
pub(crate) fn dnsmasq_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file",
        "--log-facility=-",
        "--user=root",
        "--group=root",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--port=53",
        &format!("--listen-address={UPSTREAM_DNS}"),
        &format!("--address=/{EXAMPLE_DOMAIN}/{EXAMPLE_TEST_ADDR}"),
    ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_the_upstream() {
        assert!(node_resolv_conf().contains("\nnameserver 198.18.0.2\n"));
        assert_eq!(
            netns_resolv_conf("wl-0123abcd-a"),
            PathBuf::from("/etc/netns/wl-0123abcd-a/resolv.conf")
        );
    }

    #[test]
    fn only_lab_namespaces_get_files() {
        assert!(write_node_resolv_conf("not-a-lab-ns").is_err());
    }

    #[test]
    fn dnsmasq_is_hermetic() {
        let cmd = dnsmasq_command(Path::new("/usr/sbin/dnsmasq"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        for want in [
            "--conf-file=/dev/null",
            "--no-resolv",
            "--bind-interfaces",
            "--listen-address=198.18.0.2",
            "--address=/example.test/198.18.0.99",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
    }
}
