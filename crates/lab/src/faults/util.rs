//! Helpers the fault cases share: Python programs as commands, drop counters
//! from `weft status`, token files, bounded commands.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::Lab;
use crate::mesh::Mesh;

/// The Python interpreter itself, resolved once: `python3` on the PATH may be a
/// wrapper script (pyenv's shims cost about 150 ms a start, and the policy
/// churn starts Python twice per edit).
fn python3() -> &'static std::ffi::OsStr {
    static PATH: OnceLock<std::ffi::OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|p| !p.is_empty())
            .map_or_else(|| "python3".into(), Into::into)
    })
}

/// `python3 -c script args...`, to spawn in a node.
pub(super) fn py(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python3());
    cmd.arg("-c").arg(script).args(args);
    cmd
}

/// Runs a Python program in `node` to completion and returns its output,
/// whatever its exit status.
pub(super) fn py_output(
    lab: &Lab,
    node: &str,
    script: &str,
    args: &[&str],
) -> anyhow::Result<Output> {
    crate::process::in_netns_like(&lab.netns(node)?, &py(script, args))
        .output()
        .with_context(|| format!("cannot run python3 in {node}"))
}

/// Runs a Python program in `node` to completion; fails with its stderr unless
/// it exits 0.
pub(super) fn py_ok(lab: &Lab, node: &str, script: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = py_output(lab, node, script, args)?;
    if !out.status.success() {
        bail!(
            "python in {node} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `argv` in `node` under `timeout(1)` (killed after `secs`): whether it
/// exited 0, and its stdout and stderr together.
pub(super) fn run_bounded(
    lab: &Lab,
    node: &str,
    secs: u32,
    argv: &[&str],
) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "2", &secs.to_string()]).args(argv);
    let out = crate::process::in_netns_like(&lab.netns(node)?, &cmd)
        .output()
        .with_context(|| format!("cannot run {}", argv.join(" ")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Node `node`'s drop counter `reason` (all peers), from `weft status`.
pub(super) fn drops(mesh: &Mesh<'_>, node: &str, reason: &str) -> anyhow::Result<u64> {
    Ok(mesh.status(node)?.drops.get(reason).copied().unwrap_or(0))
}

/// Node `node`'s drop counter `reason` against peer `peer`.
pub(super) fn peer_drops(
    mesh: &Mesh<'_>,
    node: &str,
    peer: &str,
    reason: &str,
) -> anyhow::Result<u64> {
    Ok(mesh
        .status(node)?
        .peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.drops.get(reason).copied())
        .unwrap_or(0))
}

/// The names of `node`'s peers, sorted.
pub(super) fn peer_names(mesh: &Mesh<'_>, node: &str) -> Vec<String> {
    let mut v: Vec<String> = mesh
        .try_status(node)
        .map(|s| s.peers.into_iter().map(|p| p.name).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A join token for `networks` with `uses` registrations, in a 0600 file.
pub(super) fn token_for(mesh: &Mesh<'_>, networks: &[&str], uses: u32) -> anyhow::Result<PathBuf> {
    let uses = uses.to_string();
    let mut args = vec!["token", "create", "--uses", &uses, "--json"];
    for n in networks {
        args.extend(["--network", n]);
    }
    let json = mesh.admin(&args)?;
    let v: serde_json::Value = serde_json::from_str(&json).context("token create --json")?;
    let token = v["token"].as_str().context("no token in the output")?;
    let path = mesh
        .lab()
        .log_dir()
        .join(format!("token-{}", networks.join("-")));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(path)
}

/// Writes `text` to `<log dir>/<name>` and sets it as the policy.
pub(super) fn set_policy(mesh: &Mesh<'_>, name: &str, text: &str) -> anyhow::Result<()> {
    let path = mesh.lab().log_dir().join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let path = path.to_str().context("log path is not UTF-8")?;
    mesh.admin(&["policy", "set", path])?;
    Ok(())
}

/// The lines of a file (none if it does not exist yet).
pub(super) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The last line of `text` that parses as a JSON object.
pub(super) fn last_json(text: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Path string for a command argument.
pub(super) fn arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// `d` as seconds with one decimal (`1.3s`).
pub(super) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
