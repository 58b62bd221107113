//! One session channel: the client's requests (pty, env, then exec, shell or
//! the `sftp` subsystem) become one process running as the local user,
//! through the user's login shell (`shell -c CMD`, so a `nologin` shell
//! refuses as it does for OpenSSH), in a new session of its own with a
//! minimal environment; its output goes back over the channel, the channel's
//! data to its input, window changes to its pty, and its exit status ends
//! the channel. When the channel closes first, the whole session (process
//! group) is killed.

use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::access::LocalUser;
use super::sys::{self, Creds};

/// Where `sftp-server` is looked for, in order.
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
];
/// The `PATH` of a login (root's has the sbin directories too).
const PATH_USER: &str = "/usr/local/bin:/usr/bin:/bin";
const PATH_ROOT: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Environment variables a client may set (`ssh -o SendEnv`), at most
/// [`MAX_ENV`] of them, each at most [`MAX_ENV_BYTES`].
const MAX_ENV: usize = 16;
const MAX_ENV_BYTES: usize = 1024;
/// Longest command accepted.
const MAX_COMMAND: usize = 64 * 1024;
/// How long output is still read after the process ended (a background
/// process may hold the pipes or the pty).
const DRAIN: Duration = Duration::from_secs(2);

/// What the client asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum What {
    Exec(String),
    Shell,
    Sftp,
}

impl What {
    /// As a session record shows it (`None`: an interactive shell).
    pub(super) fn recorded(&self) -> Option<String> {
        match self {
            Self::Exec(c) => Some(c.clone()),
            Self::Shell => None,
            Self::Sftp => Some("subsystem sftp".into()),
        }
    }
}

/// Who runs it and from where.
#[derive(Debug, Clone)]
pub(super) struct Login {
    pub(super) user: LocalUser,
    pub(super) from: SocketAddr,
    pub(super) local: SocketAddr,
}

/// The system's `sftp-server`, if installed.
pub(super) fn sftp_server() -> Option<&'static str> {
    SFTP_SERVERS.iter().copied().find(|p| Path::new(p).exists())
}

/// Whether a client may set `name` (locale settings only).
fn env_allowed(name: &str, value: &str) -> bool {
    (name == "LANG" || name.starts_with("LC_"))
        && name.len() + value.len() <= MAX_ENV_BYTES
        && !value.contains('\0')
}

struct PtyReq {
    term: String,
    size: (u16, u16, u16, u16),
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Serves the session channel until it closes; `started` is told what runs
/// (once, when it starts) and returns the record id, `ended` is called with
/// it when it ends.
pub(super) async fn serve(
    channel: Channel<Msg>,
    login: Login,
    started: impl FnOnce(&What) -> String,
    ended: impl FnOnce(String),
) {
    let (mut rx, tx) = channel.split();
    let mut pty: Option<PtyReq> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let what = loop {
        match rx.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            }) => {
                let term: String = term.chars().take(64).collect();
                pty = Some(PtyReq {
                    term,
                    size: (
                        clamp(col_width),
                        clamp(row_height),
                        clamp(pix_width),
                        clamp(pix_height),
                    ),
                });
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => {
                if env.len() < MAX_ENV && env_allowed(&variable_name, &variable_value) {
                    env.push((variable_name, variable_value));
                }
            }
            Some(ChannelMsg::Exec { command, .. }) if command.len() <= MAX_COMMAND => {
                break What::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestShell { .. }) => break What::Shell,
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break What::Sftp,
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let id = started(&what);
    let code = match spawn(&login, &what, pty.as_ref(), &env) {
        Ok(running) => running.run(&mut rx, &tx).await,
        Err(e) => {
            tracing::warn!(user = %login.user.name, error = %e, "cannot start an SSH session");
            let mut err = tx.make_writer_ext(Some(1));
            let _ = err
                .write_all(format!("weftd: cannot start the session: {e}\r\n").as_bytes())
                .await;
            Some(1)
        }
    };
    if let Some(code) = code {
        let _ = tx.exit_status(code).await;
        let _ = tx.eof().await;
        let _ = tx.close().await;
    }
    ended(id);
}

/// A started process and its I/O.
struct Running {
    child: tokio::process::Child,
    pgid: Pid,
    io: Io,
}

enum Io {
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
    Pty(Arc<AsyncFd<OwnedFd>>),
}

fn spawn(
    login: &Login,
    what: &What,
    pty: Option<&PtyReq>,
    env: &[(String, String)],
) -> Result<Running, String> {
    let user = &login.user;
    let shell = if user.shell.as_os_str().is_empty() {
        PathBuf::from("/bin/sh")
    } else {
        user.shell.clone()
    };
    let mut cmd = tokio::process::Command::new(&shell);
    match what {
        What::Exec(c) => {
            cmd.arg("-c").arg(c);
        }
        What::Sftp => {
            let server = sftp_server().ok_or_else(|| {
                format!(
                    "no sftp-server on this node (looked for {}): install openssh-sftp-server",
                    SFTP_SERVERS.join(", ")
                )
            })?;
            cmd.arg("-c").arg(server);
        }
        What::Shell => {
            // A login shell: argv[0] is "-<name>".
            let base = shell
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sh".into());
            cmd.arg0(format!("-{base}"));
        }
    }
    let home = if user.home.is_dir() {
        user.home.clone()
    } else {
        PathBuf::from("/")
    };
    cmd.env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &shell)
        .env("PATH", if user.uid == 0 { PATH_ROOT } else { PATH_USER })
        .env(
            "SSH_CONNECTION",
            format!(
                "{} {} {} {}",
                login.from.ip(),
                login.from.port(),
                login.local.ip(),
                login.local.port()
            ),
        )
        .env(
            "SSH_CLIENT",
            format!(
                "{} {} {}",
                login.from.ip(),
                login.from.port(),
                login.local.port()
            ),
        )
        .current_dir(&home)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let groups = nix::unistd::getgrouplist(
        &std::ffi::CString::new(user.name.as_str()).map_err(|e| e.to_string())?,
        nix::unistd::Gid::from_raw(user.gid),
    )
    .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?
    .into_iter()
    .map(|g| g.as_raw())
    .collect();
    let creds = Creds {
        uid: user.uid,
        gid: user.gid,
        groups,
    };
    let io;
    let child = match pty {
        Some(p) => {
            let (cols, rows, xp, yp) = p.size;
            let ws = nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: xp,
                ws_ypixel: yp,
            };
            let pair = nix::pty::openpty(Some(&ws), None)
                .map_err(|e| format!("cannot open a pty: {e}"))?;
            let slave = |what: &str| {
                pair.slave
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate the pty for {what}: {e}"))
            };
            if let Ok(name) = nix::unistd::ttyname(pair.slave.as_fd()) {
                cmd.env("SSH_TTY", name);
            }
            cmd.env("TERM", &p.term)
                .stdin(Stdio::from(slave("stdin")?))
                .stdout(Stdio::from(slave("stdout")?))
                .stderr(Stdio::from(slave("stderr")?));
            sys::login_as(&mut cmd, creds, true);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", shell.display()))?;
            drop(cmd);
            drop(pair.slave);
            nix::fcntl::fcntl(
                pair.master.as_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| format!("cannot set up the pty: {e}"))?;
            io = Io::Pty(Arc::new(
                sys::watch(pair.master).map_err(|e| format!("cannot watch the pty: {e}"))?,
            ));
            child
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            sys::login_as(&mut cmd, creds, false);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", shell.display()))?;
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err("the session's pipes are missing".into());
            };
            io = Io::Pipes {
                stdin: Some(stdin),
                stdout,
                stderr,
            };
            child
        }
    };
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or("the session's process has no pid")?;
    Ok(Running {
        child,
        pgid: Pid::from_raw(pid),
        io,
    })
}

impl Running {
    /// Runs to the end; the exit status to send, or `None` when the channel
    /// closed first (the session was killed).
    async fn run(
        mut self,
        rx: &mut russh::ChannelReadHalf,
        tx: &russh::ChannelWriteHalf<Msg>,
    ) -> Option<u32> {
        let (in_tx, in_rx) = mpsc::channel::<Option<Vec<u8>>>(16);
        let master = match &self.io {
            Io::Pty(m) => Some(m.clone()),
            Io::Pipes { .. } => None,
        };
        let (input, output) = match self.io {
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let out = tokio::spawn(pump(stdout, tx.make_writer()));
                let err = tokio::spawn(pump(stderr, tx.make_writer_ext(Some(1))));
                let input = tokio::spawn(feed(stdin, in_rx));
                (input, vec![out, err])
            }
            Io::Pty(master) => {
                let out = tokio::spawn(pump(PtyReader(master.clone()), tx.make_writer()));
                let input = tokio::spawn(feed_pty(master, in_rx));
                (input, vec![out])
            }
        };
        let status = loop {
            tokio::select! {
                msg = rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        let _ = in_tx.send(Some(data.to_vec())).await;
                    }
                    Some(ChannelMsg::Eof) => {
                        let _ = in_tx.send(None).await;
                    }
                    Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                        if let Some(master) = &master {
                            sys::set_winsize(master.get_ref().as_fd(), clamp(col_width), clamp(row_height), clamp(pix_width), clamp(pix_height));
                        }
                    }
                    Some(ChannelMsg::Signal { signal }) => {
                        if let Some(s) = signal_of(&signal) {
                            let _ = killpg(self.pgid, s);
                        }
                    }
                    Some(ChannelMsg::Close) | None => {
                        // The client went away: hang up the whole session.
                        let _ = killpg(self.pgid, Signal::SIGHUP);
                        let _ = killpg(self.pgid, Signal::SIGKILL);
                        let _ = self.child.wait().await;
                        input.abort();
                        output.iter().for_each(tokio::task::JoinHandle::abort);
                        return None;
                    }
                    Some(_) => {}
                },
                status = self.child.wait() => break status,
            }
        };
        drop(in_tx);
        input.abort();
        if master.is_some() {
            // The shell is gone: hang up what it left on the terminal.
            let _ = killpg(self.pgid, Signal::SIGHUP);
        }
        let mut output = output;
        let drained = tokio::time::timeout(DRAIN, async {
            for o in &mut output {
                let _ = o.await;
            }
        })
        .await;
        output.iter().for_each(tokio::task::JoinHandle::abort);
        if drained.is_err() {
            tracing::debug!("an SSH session's output was still open after its process ended");
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        Some(match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt as _;
                s.code()
                    .map(|c| c as u32)
                    .or_else(|| s.signal().map(|n| 128 + n as u32))
                    .unwrap_or(255)
            }
            Err(_) => 255,
        })
    }
}

fn signal_of(s: &Sig) -> Option<Signal> {
    Some(match s {
        Sig::HUP => Signal::SIGHUP,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        _ => return None,
    })
}

/// Copies `from` to the channel until it ends.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// Writes the channel's data to the process's stdin; `None` (EOF) closes it.
async fn feed(
    mut stdin: Option<tokio::process::ChildStdin>,
    mut rx: mpsc::Receiver<Option<Vec<u8>>>,
) {
    while let Some(msg) = rx.recv().await {
        match (msg, stdin.as_mut()) {
            (Some(data), Some(w)) => {
                if w.write_all(&data).await.is_err() {
                    stdin = None;
                }
            }
            (None, _) => stdin = None,
            (Some(_), None) => {}
        }
    }
}

/// Writes the channel's data to the pty (EOF is ignored: the terminal has
/// no end of input; the client sends ^D as data).
async fn feed_pty(master: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::Receiver<Option<Vec<u8>>>) {
    while let Some(msg) = rx.recv().await {
        let Some(data) = msg else { continue };
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok(mut guard) = master.writable().await else {
                return;
            };
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), rest).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

/// The pty master as an [`AsyncRead`] (EIO, once every slave is closed, is
/// the end).
struct PtyReader(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // EIO: the terminal's other side is closed: the end.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}
