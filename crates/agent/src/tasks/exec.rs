//! Bounded execution of one task's program (a script or a verified hook).
//!
//! - A fresh working directory per run: `<base>/weft-task-<random>`, mode
//!   0700, owned by the exec user, removed afterwards whatever happened (a
//!   timeout included). The program's file is written into it.
//! - The environment is exactly `PATH` ([`PATH`]), `HOME` (the working
//!   directory), `LANG` (`C.UTF-8`) and `WEFT_TASK_LEASE_ID`; stdin is
//!   `/dev/null`.
//! - It runs as the exec user (`weftd --exec-user`, default `nobody`): its
//!   uid and primary gid, no supplementary groups (std drops them when root
//!   changes the uid), in its own process group.
//! - At the timeout the whole group gets SIGKILL; when the program exits
//!   before, whatever it left running in its group is killed too, so no
//!   process outlives its task (one that left the group with `setsid` is
//!   not found this way; its pipes are then given up after [`DRAIN_GRACE`]).
//! - stdout and stderr are read concurrently, each kept up to the cap and
//!   drained past it (the program never blocks on a full pipe), then turned
//!   into text (invalid UTF-8 replaced) and cut at a character boundary at
//!   or under the cap; [`Output::truncated`] says whether anything was lost.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::clock;

/// The `PATH` a task sees.
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The `LANG` a task sees.
pub(crate) const LANG: &str = "C.UTF-8";
/// How long the pipes are still read after the program's group was killed (a
/// process that left the group may hold them open).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Read size per pipe.
const CHUNK: usize = 16 * 1024;

/// The user tasks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl ExecUser {
    /// Looks `name` up in the system's user database.
    pub(crate) fn lookup(name: &str) -> anyhow::Result<Self> {
        match User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => anyhow::bail!(
                "the exec user {name:?} does not exist on this host (weftd --exec-user)"
            ),
            Err(e) => Err(e).with_context(|| format!("looking up the exec user {name:?}")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) enum Program {
    /// `interpreter FILE`, FILE holding `body` (the interpreter is looked
    /// up in [`PATH`]).
    Script { interpreter: String, body: Vec<u8> },
    /// FILE holding `body`, executed itself (a hook: its `#!` line says how).
    Executable { body: Vec<u8> },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub(crate) struct ExecRequest {
    pub(crate) program: Program,
    pub(crate) user: ExecUser,
    /// Where the working directory is created.
    pub(crate) base_dir: PathBuf,
    pub(crate) lease_id: String,
    pub(crate) timeout: Duration,
    /// Bytes kept per stream.
    pub(crate) output_cap: usize,
}

/// One captured stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Output {
    /// At most the cap in bytes of UTF-8.
    pub(crate) text: String,
    /// Something was lost: more bytes came than the cap, or the text was cut.
    pub(crate) truncated: bool,
    /// Bytes the program wrote.
    pub(crate) total_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    /// The timeout was reached (the group was killed).
    pub(crate) timed_out: bool,
    pub(crate) duration: Duration,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    /// The program's process group (its pid).
    pub(crate) pgid: u32,
    /// The working directory (removed by the time this is returned).
    pub(crate) workdir: PathBuf,
}

/// Runs `req` to its end. An error means it could not be started (no
/// working directory, an interpreter that is not installed, ...); the
/// working directory is removed in every case.
pub(crate) async fn run(req: &ExecRequest) -> anyhow::Result<Finished> {
    let dir = WorkDir::create(&req.base_dir, &req.user)?;
    let result = run_in(req, &dir.path).await;
    let removed = dir.remove();
    let finished = result?;
    removed?;
    Ok(finished)
}

async fn run_in(req: &ExecRequest, dir: &Path) -> anyhow::Result<Finished> {
    let file = dir.join("task");
    let (mut cmd, body, mode) = match &req.program {
        Program::Script { interpreter, body } => {
            let path = find_in_path(interpreter).with_context(|| {
                format!(
                    "the interpreter {interpreter:?} is not installed on this node (PATH {PATH})"
                )
            })?;
            let mut cmd = tokio::process::Command::new(path);
            cmd.arg(&file);
            (cmd, body, 0o400)
        }
        Program::Executable { body } => (tokio::process::Command::new(&file), body, 0o500),
    };
    write_owned(&file, body, mode, &req.user)?;
    cmd.env_clear()
        .env("PATH", PATH)
        .env("HOME", dir)
        .env("LANG", LANG)
        .env("WEFT_TASK_LEASE_ID", &req.lease_id)
        .current_dir(dir)
        .uid(req.user.uid)
        .gid(req.user.gid)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = clock::now();
    let mut child = spawn(&mut cmd)
        .await
        .with_context(|| format!("starting the task as user {}", req.user.name))?;
    let pgid = child.id().context("the task's process has no pid")?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pgid);
        anyhow::bail!("the task's output pipes are missing");
    };
    let run = supervise(
        &mut child,
        pgid,
        (stdout, stderr),
        req.timeout,
        req.output_cap,
    )
    .await;
    // Whatever happened, nothing of the group survives the task.
    kill_group(pgid);
    wait_group_gone(pgid).await;
    let (status, timed_out, out, err) = run?;
    Ok(Finished {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        duration: clock::now().saturating_duration_since(started),
        stdout: out.finish(req.output_cap),
        stderr: err.finish(req.output_cap),
        pgid,
        workdir: dir.to_owned(),
    })
}

/// Spawns `cmd`, again after a short wait while its file is busy (ETXTBSY:
/// another task's fork still held the file's write descriptor for a moment).
async fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Waits for the child while reading both pipes; kills the group at the
/// timeout and, once the child has exited, whatever it left in the group.
async fn supervise<O, E>(
    child: &mut tokio::process::Child,
    pgid: u32,
    (mut stdout, mut stderr): (O, E),
    timeout: Duration,
    cap: usize,
) -> anyhow::Result<(std::process::ExitStatus, bool, Capture, Capture)>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut out, mut err) = (Capture::new(cap), Capture::new(cap));
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut status = None;
    let mut timed_out = false;
    // Set once the child is gone: the pipes are read until then at most.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if status.is_some() && out.eof && err.eof {
            break;
        }
        tokio::select! {
            r = stdout.read(&mut out_buf), if !out.eof => out.take(r, &out_buf),
            r = stderr.read(&mut err_buf), if !err.eof => err.take(r, &err_buf),
            s = child.wait(), if status.is_none() => {
                status = Some(s.context("waiting for the task's process")?);
                kill_group(pgid);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            () = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                timed_out = true;
                kill_group(pgid);
            }
            () = sleep_until_opt(drain_until), if drain_until.is_some() => {
                tracing::warn!(pgid, "a task's output pipes stayed open after its process group was killed (a process left the group); not read further");
                break;
            }
        }
    }
    let status = status.context("the task's process did not end")?;
    Ok((status, timed_out, out, err))
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGKILL to the process group `pgid` (gone already: nothing to do).
fn kill_group(pgid: u32) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, error = %e, "could not kill a task's process group"),
    }
}

/// How long [`wait_group_gone`] waits at most.
const GROUP_GONE_WAIT: Duration = Duration::from_secs(2);

/// Waits (at most [`GROUP_GONE_WAIT`]) until no live process is left in
/// the group `pgid`, so a result never arrives before its processes are gone
/// (a zombie is dead: its new parent, init, reaps it).
async fn wait_group_gone(pgid: u32) {
    let until = clock::now() + GROUP_GONE_WAIT;
    loop {
        let live: Vec<u32> = group_members(pgid)
            .into_iter()
            .filter(|(_, state)| *state != 'Z' && *state != 'X')
            .map(|(pid, _)| pid)
            .collect();
        if live.is_empty() {
            return;
        }
        if clock::now() >= until {
            tracing::warn!(
                pgid,
                ?live,
                "processes of a task are still alive after SIGKILL"
            );
            return;
        }
        kill_group(pgid);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The processes (pid, state letter) in process group `pgid`, from /proc.
pub(crate) fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold anything, so after
        // the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            v.push((pid, state));
        }
    }
    v
}

/// One stream as it is read: the first `cap` bytes kept, the rest counted.
#[derive(Debug)]
struct Capture {
    kept: Vec<u8>,
    total: u64,
    cap: usize,
    eof: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            kept: Vec::with_capacity(cap.min(CHUNK)),
            total: 0,
            cap,
            eof: false,
        }
    }

    fn take(&mut self, r: io::Result<usize>, buf: &[u8]) {
        match r {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.total += n as u64;
                let room = self.cap.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading a task's output failed");
                self.eof = true;
            }
        }
    }

    fn finish(self, cap: usize) -> Output {
        let over = self.total > self.kept.len() as u64;
        let (text, cut) = cut_text(&self.kept, cap);
        Output {
            text,
            truncated: over || cut,
            total_bytes: self.total,
        }
    }
}

/// `bytes` as text (invalid UTF-8 replaced), then cut at the last character
/// boundary at or under `cap` bytes; whether it was cut.
pub(crate) fn cut_text(bytes: &[u8], cap: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(bytes);
    let (kept, cut) = weft_proto::task::cut_at_char_boundary(&text, cap);
    (kept.to_owned(), cut)
}

/// `name` (a bare command name) found as an executable file in [`PATH`].
fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Writes `body` to the new file `path` with `mode`, owned by `user`.
fn write_owned(path: &Path, body: &[u8], mode: u32, user: &ExecUser) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(body)
        .with_context(|| format!("writing {}", path.display()))?;
    std::os::unix::fs::fchown(&f, Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to user {}", path.display(), user.name))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

/// A task's working directory.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// A new directory `weft-task-<random>` in `base`: 0700, owned by `user`.
    fn create(base: &Path, user: &ExecUser) -> anyhow::Result<Self> {
        let mut r = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut r);
        let path = base.join(format!("weft-task-{}", crate::state::hex(&r)));
        // Fails if anything (a planted symlink) is there already.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the task directory {}", path.display()))?;
        let dir = Self { path };
        std::os::unix::fs::lchown(&dir.path, Some(user.uid), Some(user.gid)).with_context(
            || {
                format!(
                    "giving the task directory {} to user {}",
                    dir.path.display(),
                    user.name
                )
            },
        )?;
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.path.display()))?;
        Ok(dir)
    }

    /// Removes it (its content too; symbolic links in it are not followed).
    fn remove(mut self) -> anyhow::Result<()> {
        let path = std::mem::take(&mut self.path);
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("removing the task directory {}", path.display()))
    }
}

impl Drop for WorkDir {
    /// Removes it if [`WorkDir::remove`] was not reached (an error on the way).
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
