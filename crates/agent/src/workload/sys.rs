//! The system side of workload networking: namespaces held by file
//! descriptor (nothing mounted, nothing left on disk: a namespace lives while
//! weftd holds it or a process runs in it), links and routes through `ip`,
//! rulesets through `nft -f -`, the processes in a namespace from `/proc`,
//! and `net.ipv4.ip_forward`.
//!
//! Work inside a workload's namespace runs on a fresh thread that enters it
//! (`setns` changes the calling thread only) and ends with it; children that
//! thread spawns (`ip`, `nft`) start in the namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::plan::{self, BRIDGE, INNER_IFACE, TABLE};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A failure, in words that name the command and what it said.
pub(crate) type SysResult<T> = Result<T, String>;

/// Runs `program args` in the calling thread's network namespace; its stderr
/// in the error.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> SysResult<()> {
    run_to_exit(program, args, stdin)?
}

/// Like [`run`], but "not there" (the object is already gone) is success.
/// Only the program's own failure can mean that: one that could not be
/// started (ENOENT for a missing `ip`) is a failure.
pub(crate) fn run_gone_ok(program: &str, args: &[&str], stdin: Option<&str>) -> SysResult<()> {
    match run_to_exit(program, args, stdin)? {
        Err(e) if is_gone(&e) => Ok(()),
        r => r,
    }
}

/// Runs `program args` to its exit: the outer error is that it could not be
/// run (not started, input not written, not waited for), the inner one that
/// it failed, with its stderr.
fn run_to_exit(program: &str, args: &[&str], stdin: Option<&str>) -> SysResult<SysResult<()>> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{what}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Ok(Err(format!("{what}: {}: {}", out.status, err.trim())))
    }
}

/// Whether `ip` or `nft` failed because the object is not there.
///
/// `ip link del` says "Cannot find device" when the name is unknown, but
/// "RTNETLINK answers: No such device" (ENODEV) when the link vanished
/// between its lookup and the delete: a workload veth does, when the
/// kernel tears down the namespace holding its peer (asynchronously, after
/// the last reference is dropped).
fn is_gone(err: &str) -> bool {
    [
        "Cannot find device",
        "No such device",
        "No such file or directory",
        "does not exist",
    ]
    .iter()
    .any(|m| err.contains(m))
}

/// Runs `f` on a fresh thread inside the namespace `ns`.
pub(crate) async fn in_netns<T: Send + 'static>(
    ns: &File,
    f: impl FnOnce() -> SysResult<T> + Send + 'static,
) -> SysResult<T> {
    let ns = ns
        .try_clone()
        .map_err(|e| format!("duplicating the namespace handle: {e}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-wl-netns".into())
        .spawn(move || {
            let r = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the workload's network namespace: {e}"))
                .and_then(|()| f());
            let _ = tx.send(r);
        })
        .map_err(|e| format!("starting a thread: {e}"))?;
    rx.await
        .map_err(|_| "the namespace thread ended without an answer".to_owned())?
}

/// A new network namespace with its loopback up; the handle keeps it alive.
pub(crate) async fn new_netns() -> SysResult<File> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-wl-unshare".into())
        .spawn(move || {
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("creating a network namespace: {e}"))
                .and_then(|()| {
                    File::open("/proc/thread-self/ns/net")
                        .map_err(|e| format!("opening the new namespace: {e}"))
                })
                .and_then(|ns| {
                    run("ip", &["link", "set", "lo", "up"], None)?;
                    Ok(ns)
                });
            let _ = tx.send(r);
        })
        .map_err(|e| format!("starting a thread: {e}"))?;
    rx.await
        .map_err(|_| "the namespace thread ended without an answer".to_owned())?
}

/// The namespace's inode (what `/proc/PID/ns/net` links to: `net:[INODE]`).
pub(crate) fn inode(ns: &File) -> SysResult<u64> {
    ns.metadata()
        .map(|m| m.ino())
        .map_err(|e| format!("reading the namespace handle: {e}"))
}

/// How many processes run in each network namespace, by inode (blocking:
/// reads every `/proc/PID/ns/net`).
pub(crate) fn processes_by_netns() -> BTreeMap<u64, Vec<u32>> {
    let mut out: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) else {
            continue; // gone, or a kernel thread
        };
        if let Some(ino) = link
            .to_str()
            .and_then(|s| s.strip_prefix("net:["))
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse().ok())
        {
            out.entry(ino).or_default().push(pid);
        }
    }
    out
}

/// Opens the namespace a process runs in.
pub(crate) fn netns_of(pid: u32) -> SysResult<File> {
    File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the namespace of process {pid}: {e}"))
}

/// The path another process opens to enter the namespace weftd holds.
pub(crate) fn handle_path(ns: &File) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    Path::new("/proc")
        .join(std::process::id().to_string())
        .join("fd")
        .join(ns.as_raw_fd().to_string())
}

/// The bridge (with the gateway address), the NAT table and IPv4
/// forwarding, made or repaired (idempotent). `marker`: the file that says
/// weft turned forwarding on.
pub(crate) fn ensure_bridge(subnet: Ipv4Net, marker: &Path) -> SysResult<()> {
    if run("ip", &["link", "show", "dev", BRIDGE], None).is_err() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"], None)?;
    }
    let gw = format!("{}/{}", plan::gateway(subnet), subnet.prefix_len());
    run("ip", &["addr", "replace", &gw, "dev", BRIDGE], None)?;
    run("ip", &["link", "set", BRIDGE, "up"], None)?;
    run("nft", &["-f", "-"], Some(&plan::host_script(subnet)))?;
    let on = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| format!("{IP_FORWARD}: {e}"))?
        .trim()
        == "1";
    if !on {
        // The marker first: a crash between the two still turns it off later.
        weft_fs::write_private(marker, b"1\n").map_err(|e| format!("{}: {e}", marker.display()))?;
        std::fs::write(IP_FORWARD, "1\n").map_err(|e| format!("{IP_FORWARD}: {e}"))?;
        tracing::info!("IPv4 forwarding turned on for bridged workloads");
    }
    Ok(())
}

/// The bridge, the NAT table and (if weft turned it on) IPv4 forwarding
/// removed; what is already gone is fine.
pub(crate) fn remove_bridge(marker: &Path) -> SysResult<()> {
    let mut errors = Vec::new();
    if let Err(e) = run_gone_ok("ip", &["link", "del", BRIDGE], None) {
        errors.push(e);
    }
    let table: Vec<&str> = TABLE.split(' ').collect();
    let mut args = vec!["delete", "table"];
    args.extend(&table);
    if let Err(e) = run_gone_ok("nft", &args, None) {
        errors.push(e);
    }
    if marker.exists() {
        match std::fs::write(IP_FORWARD, "0\n") {
            Ok(()) => {
                tracing::info!("IPv4 forwarding turned off again (no bridged workload left)");
                if let Err(e) = std::fs::remove_file(marker) {
                    errors.push(format!("{}: {e}", marker.display()));
                }
            }
            Err(e) => errors.push(format!("{IP_FORWARD}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A veth from the bridge into the namespace `ns`: `wfwlID` on the bridge,
/// `eth0` inside with `addr` and a default route via the gateway.
pub(crate) async fn add_veth(
    ns: &File,
    id: &str,
    addr: Ipv4Addr,
    subnet: Ipv4Net,
) -> SysResult<()> {
    let host = plan::veth_name(id);
    let weftd = std::process::id().to_string();
    let inner = format!("{addr}/{}", subnet.prefix_len());
    let gw = plan::gateway(subnet).to_string();
    let dns = plan::dns_script(plan::gateway(subnet));
    {
        let host = host.clone();
        // Made inside, its peer sent to weftd's namespace (by weftd's pid).
        in_netns(ns, move || {
            run(
                "ip",
                &[
                    "link",
                    "add",
                    INNER_IFACE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &host,
                    "netns",
                    &weftd,
                ],
                None,
            )?;
            run("ip", &["addr", "add", &inner, "dev", INNER_IFACE], None)?;
            run("ip", &["link", "set", INNER_IFACE, "up"], None)?;
            run("ip", &["route", "add", "default", "via", &gw], None)?;
            // Loopback DNS to the gateway's relay (this thread's namespace:
            // /proc/sys/net follows the opener's).
            let localnet = format!("/proc/sys/net/ipv4/conf/{INNER_IFACE}/route_localnet");
            std::fs::write(&localnet, "1\n").map_err(|e| format!("{localnet}: {e}"))?;
            run("nft", &["-f", "-"], Some(&dns))
        })
        .await?;
    }
    run("ip", &["link", "set", &host, "master", BRIDGE], None)?;
    run("ip", &["link", "set", &host, "up"], None)
}

/// Loads (or replaces) the `custom` filter in the namespace; returns the
/// table as `nft -s` lists it then (the reference for drift checks).
pub(crate) async fn load_filter(ns: &File, script: String) -> SysResult<String> {
    in_netns(ns, move || {
        run("nft", &["-f", "-"], Some(&script))?;
        list_table()
    })
    .await
}

/// The table `inet weft_wl` in the namespace as `nft -s` lists it (without
/// counter values), or the error when it is not there.
pub(crate) async fn filter_listing(ns: &File) -> SysResult<String> {
    in_netns(ns, list_table).await
}

fn list_table() -> SysResult<String> {
    let mut args = vec!["-s", "list", "table"];
    args.extend(TABLE.split(' '));
    let out = Command::new("nft")
        .args(&args)
        .output()
        .map_err(|e| format!("nft {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this namespace has the NAT table.
pub(crate) fn has_table() -> bool {
    list_table().is_ok()
}

/// Deletes a workload veth (both ends); already gone is fine.
pub(crate) fn del_link(name: &str) -> SysResult<()> {
    run_gone_ok("ip", &["link", "del", name], None)
}

/// The names of this namespace's links.
pub(crate) fn links() -> SysResult<std::collections::BTreeSet<String>> {
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .map_err(|e| format!("ip -j link show: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -j link show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ip -j link show: unreadable output: {e}"))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Whether this namespace has the workload bridge.
pub(crate) fn has_bridge() -> bool {
    run("ip", &["link", "show", "dev", BRIDGE], None).is_ok()
}

/// Whether IPv4 forwarding is on.
pub(crate) fn forwarding_on() -> bool {
    std::fs::read_to_string(IP_FORWARD).is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::{is_gone, run_gone_ok};

    #[test]
    fn an_object_already_gone_is_recognised_and_other_failures_are_not() {
        for gone in [
            "ip link del wfwl1: exit status: 1: Cannot find device \"wfwl1\"",
            "ip link del wfwl1: exit status: 2: RTNETLINK answers: No such device",
            "nft delete table inet weft-wl: exit status: 1: Error: Could not process rule: No such file or directory",
            "ip netns del x: exit status: 1: Cannot remove namespace file: does not exist",
        ] {
            assert!(is_gone(gone), "{gone}");
        }
        for failed in [
            "ip link del wfwl1: exit status: 2: RTNETLINK answers: Operation not permitted",
            "nft -f -: exit status: 1: Error: syntax error",
        ] {
            assert!(!is_gone(failed), "{failed}");
        }
        // A program that cannot be started is a failure, though its reason
        // (ENOENT) reads like "gone".
        let e = run_gone_ok(
            "/nonexistent/weft-no-such-program",
            &["link", "del", "x"],
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("cannot run") && e.contains("No such file or directory"),
            "{e}"
        );
    }
}
