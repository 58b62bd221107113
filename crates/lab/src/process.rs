//! Processes running inside a lab node: started with `ip netns exec`, stdout and
//! stderr captured to a log file, killed with their process group when dropped
//! (and by the kernel, `PR_SET_PDEATHSIG`, if the spawning thread dies).
//!
//! Readiness helpers poll: [`Process::wait_for_log`] for a log line,
//! [`Process::wait_for_tcp_listen`] / [`Process::wait_for_udp_bound`] for a socket
//! in the process's own network namespace, and [`wait_until`] for anything else.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{LabError, ProcessExit, Result};
use crate::sys;

/// How often the wait helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many log lines an error shows.
const TAIL_LINES: usize = 20;

/// Polls `check` every [`POLL_INTERVAL`] until it holds and returns how long
/// that took, or fails with [`LabError::Timeout`] naming `what` after `timeout`
/// (for tests that measure how fast something takes effect).
pub fn timed_wait(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    wait_until(what, timeout, || Ok(check()))?;
    Ok(start.elapsed())
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `true`, an error, or
/// `timeout` passes (then [`LabError::Timeout`] naming `what`).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
                detail: String::new(),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A process running in a lab node. Dropping it kills its process group.
#[derive(Debug)]
pub struct Process {
    node: String,
    name: String,
    netns: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` (program, arguments, environment and working directory are
    /// taken from it) inside `netns`, logging to `<log_dir>/<node>-<name>.log`.
    pub(crate) fn spawn(
        node: &str,
        netns: &str,
        name: &str,
        log_dir: &Path,
        cmd: &Command,
    ) -> Result<Self> {
        let (log_path, log) = create_log(log_dir, &format!("{node}-{name}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LabError::io(format!("cannot duplicate {}", log_path.display()), e))?;
        let mut full = in_netns_like(netns, cmd);
        full.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        sys::set_die_with_parent(&mut full);
        let child = full
            .spawn()
            .map_err(|e| LabError::io(format!("cannot start `{}`", cmd::cmdline(&full)), e))?;
        tracing::debug!(node, name, pid = child.id(), log = %log_path.display(), "spawned");
        Ok(Self {
            node: node.to_owned(),
            name: name.to_owned(),
            netns: netns.to_owned(),
            child,
            log_path,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node it runs in.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its log file (stdout and stderr interleaved).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> Result<String> {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| LabError::io(format!("cannot read {}", self.log_path.display()), e))
    }

    /// The last lines of the log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = self.log().unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| LabError::io(format!("cannot poll process `{}`", self.name), e))?;
        }
        Ok(self.status)
    }

    /// Waits until the log has a line containing `needle`, and returns that line.
    /// Fails early, with the log tail, if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let what = format!("log line containing {needle:?}");
        let mut found = None;
        self.wait_alive(&what, timeout, |p| {
            found = p
                .log()?
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned);
            Ok(found.is_some())
        })?;
        found.ok_or_else(|| LabError::Probe(format!("{what}: vanished")))
    }

    /// Waits until a TCP socket listens on `port` in the process's namespace.
    pub fn wait_for_tcp_listen(&mut self, port: u16, timeout: Duration) -> Result<()> {
        self.wait_alive(&format!("TCP port {port} to listen"), timeout, |p| {
            Ok(p.in_own_netns()? && p.ports(Proto::Tcp)?.contains(&port))
        })
    }

    /// Waits until a UDP socket is bound to `port` in the process's namespace.
    pub fn wait_for_udp_bound(&mut self, port: u16, timeout: Duration) -> Result<()> {
        self.wait_alive(&format!("UDP port {port} to be bound"), timeout, |p| {
            Ok(p.in_own_netns()? && p.ports(Proto::Udp)?.contains(&port))
        })
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("process `{}` on `{}` to exit", self.name, self.node),
                    waited: start.elapsed(),
                    detail: format!("; log {}:\n{}", self.log_path.display(), self.log_tail()),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Asks the process group to stop (SIGTERM), and kills it (SIGKILL) if it has
    /// not exited after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        sys::kill(-self.pgid(), libc::SIGTERM);
        match self.wait_exit(grace) {
            Ok(status) => Ok(status),
            Err(LabError::Timeout { .. }) => self.kill(),
            Err(e) => Err(e),
        }
    }

    /// Kills the process group at once and reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            // The leader is gone; stragglers in its group still get the signal.
            sys::kill(-self.pgid(), libc::SIGKILL);
            return Ok(status);
        }
        sys::kill(-self.pgid(), libc::SIGKILL);
        let status = self
            .child
            .wait()
            .map_err(|e| LabError::io(format!("cannot wait for process `{}`", self.name), e))?;
        self.status = Some(status);
        Ok(status)
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    fn wait_alive(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if check(self)? {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // One last look: the line may have been written just before exiting.
                if check(self)? {
                    return Ok(());
                }
                return Err(LabError::ProcessExited(Box::new(ProcessExit {
                    node: self.node.clone(),
                    name: self.name.clone(),
                    status: status.to_string(),
                    what: what.to_owned(),
                    log: self.log_path.clone(),
                    tail: self.log_tail(),
                })));
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("{what} (process `{}` on `{}`)", self.name, self.node),
                    waited: start.elapsed(),
                    detail: format!("; log {}:\n{}", self.log_path.display(), self.log_tail()),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the process has already entered the lab namespace (right after
    /// spawn it may still be `ip` in the root namespace).
    fn in_own_netns(&self) -> Result<bool> {
        let want = std::fs::metadata(Path::new(crate::guard::NETNS_DIR).join(&self.netns))
            .map_err(|e| LabError::io(format!("cannot stat namespace {}", self.netns), e))?;
        Ok(std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .is_ok_and(|have| have.ino() == want.ino() && have.dev() == want.dev()))
    }

    fn ports(&self, proto: Proto) -> Result<BTreeSet<u16>> {
        let mut text = String::new();
        for file in proto.files() {
            match std::fs::read_to_string(format!("/proc/{}/net/{file}", self.pid())) {
                Ok(t) => text.push_str(&t),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LabError::io(
                        format!("cannot read /proc/{}/net/{file}", self.pid()),
                        e,
                    ));
                }
            }
        }
        Ok(bound_ports(&text, proto))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A transport protocol, for socket checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) fn files(self) -> [&'static str; 2] {
        match self {
            Self::Tcp => ["tcp", "tcp6"],
            Self::Udp => ["udp", "udp6"],
        }
    }
}

/// Local ports of listening TCP sockets (state `0A`) or of any UDP socket, from the
/// text of `/proc/net/{tcp,tcp6,udp,udp6}` (headers included).
pub(crate) fn bound_ports(text: &str, proto: Proto) -> BTreeSet<u16> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            if proto == Proto::Tcp && *state != "0A" {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// `ip netns exec <netns> <cmd's program and args>`, with `cmd`'s environment and
/// working directory.
pub(crate) fn in_netns_like(netns: &str, cmd: &Command) -> Command {
    let mut full = cmd::in_netns(netns, cmd.get_program());
    full.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => full.env(key, value),
            None => full.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        full.current_dir(dir);
    }
    full
}

fn create_log(dir: &Path, stem: &str) -> Result<(PathBuf, File)> {
    for n in 1..1000 {
        let file = if n == 1 {
            format!("{stem}.log")
        } else {
            format!("{stem}-{n}.log")
        };
        let path = dir.join(file);
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(LabError::io(
                    format!("cannot create log {}", path.display()),
                    e,
                ));
            }
        }
    }
    Err(LabError::Topology(format!(
        "too many processes named `{stem}`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0D96 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A0B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3 1 0 100 0 0 10 0
";

    #[test]
    fn tcp_listeners_only() {
        assert_eq!(bound_ports(TCP, Proto::Tcp), BTreeSet::from([3478, 443]));
    }

    #[test]
    fn udp_any_state() {
        let udp = "  sl  local_address rem_address   st
  12: 00000000:0D96 00000000:0000 07 00000000:00000000
  13: 0A01000A:9C40 C612000A:0D96 01 00000000:00000000
";
        assert_eq!(bound_ports(udp, Proto::Udp), BTreeSet::from([3478, 40000]));
    }

    #[test]
    fn netns_command_keeps_env_and_args() {
        let mut cmd = Command::new("/bin/weftd");
        cmd.args(["--state", "/tmp/x"])
            .env("RUST_LOG", "debug")
            .env_remove("HOME");
        let full = in_netns_like("wl-0123abcd-a", &cmd);
        assert_eq!(
            cmd::cmdline(&full),
            "ip netns exec wl-0123abcd-a /bin/weftd --state /tmp/x"
        );
        let envs: Vec<_> = full.get_envs().collect();
        assert!(envs.contains(&(
            std::ffi::OsStr::new("RUST_LOG"),
            Some(std::ffi::OsStr::new("debug"))
        )));
        assert!(envs.contains(&(std::ffi::OsStr::new("HOME"), None)));
    }

    #[test]
    fn wait_until_times_out_with_the_reason() {
        let err =
            wait_until("the impossible", Duration::from_millis(30), || Ok(false)).unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");
        let mut n = 0;
        wait_until("three polls", Duration::from_secs(5), || {
            n += 1;
            Ok(n >= 3)
        })
        .unwrap();
    }
}
