//! Running system commands (`ip`, `nft`, `tc`, `sysctl`) with errors that carry the
//! full command line and its stderr.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use crate::error::{LabError, Result};

/// Renders a command as a copy-pasteable shell line.
pub(crate) fn cmdline(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion (stdin from `input` if given), and fails with the
/// command line and stderr unless it exits successfully.
pub(crate) fn run(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let line = cmdline(cmd);
    let output = output(cmd, input)?;
    if output.status.success() {
        tracing::trace!(cmd = %line, "ok");
        Ok(output)
    } else {
        Err(command_error(line, &output))
    }
}

/// Runs `cmd` to completion and returns its output whatever the exit status.
pub(crate) fn output(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let line = cmdline(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("cannot start `{line}`"), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| LabError::io(format!("cannot write the input of `{line}`"), e))?;
    }
    child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("cannot wait for `{line}`"), e))
}

/// Builds the error for a command that exited unsuccessfully.
pub(crate) fn command_error(cmdline: String, output: &Output) -> LabError {
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    LabError::Command {
        cmdline,
        status: output.status.to_string(),
        stderr,
    }
}

/// `ip <args...>` in the root namespace.
pub(crate) fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Runs an `ip -batch -` script (one `ip` command per line) in `netns`, or in the
/// root namespace when `netns` is `None`. On failure the error includes the script.
pub(crate) fn ip_batch(netns: Option<&str>, script: &str) -> Result<()> {
    if script.trim().is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run(&mut cmd, Some(script)).map(drop).map_err(|e| match e {
        LabError::Command {
            cmdline,
            status,
            stderr,
        } => LabError::Command {
            cmdline: format!("{cmdline} <<EOF\n{script}EOF\n"),
            status,
            stderr,
        },
        other => other,
    })
}

/// A command that runs `program args...` inside `netns` via `ip netns exec`.
pub(crate) fn in_netns(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_quotes_only_what_needs_it() {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-", "a b", "it's"]);
        assert_eq!(cmdline(&cmd), r"nft -f - 'a b' 'it'\''s'");
    }
}
