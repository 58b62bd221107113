//! `weft run`: a command in its own network namespace, which weftd creates,
//! owns and removes when the command's processes end.

use std::os::fd::AsFd as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{LocalRequest, LocalResponse};
use weft_proto::workload::{Allow, NetMode, WorkloadInfo, WorkloadSpec};

use super::{SocketArg, call};
use crate::CodedError;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  weft run --net none -- ./build.sh
  weft run --net host-loopback --forward 5432 -- ./migrate
  weft run --net bridged -- curl https://example.com
  weft run --net custom --allow 10.0.0.5:443 --allow db.internal:5432 -- ./app

Needs root (entering a network namespace). The exit status is the command's
(128 + N when it was killed by signal N).")]
pub struct RunArgs {
    /// `none`: loopback only. `host-loopback`: loopback, plus each --forward
    /// port reaching this host's 127.0.0.1:PORT. `bridged`: an address on
    /// weftd's workload bridge with NAT out (the overlay sees this node's
    /// overlay address, and its policy applies as if it were the node).
    /// `custom`: bridged, but only to the --allow destinations.
    #[arg(long, value_name = "MODE")]
    net: NetMode,
    /// (host-loopback) A TCP port of this host's 127.0.0.1 the command reaches
    /// at its own 127.0.0.1:PORT. Repeatable.
    #[arg(long, value_name = "PORT")]
    forward: Vec<u16>,
    /// (custom) A destination the command may open connections to:
    /// `ADDR`, `CIDR` or `HOST` (resolved once, now), with `:PORT` and
    /// `/udp` (default TCP) to narrow it. Everything else is refused at once.
    /// Repeatable.
    #[arg(long, value_name = "DEST[:PORT][/PROTO]")]
    allow: Vec<Allow>,
    /// Run the command as this user (name or uid), with its primary group
    /// and no supplementary groups. Without it the command runs as you
    /// (root), with CAP_NET_ADMIN in its namespace: it could rewrite the
    /// namespace's own rules (weftd restores a changed `custom` filter within
    /// 5 s, but a root command has that window).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `weft run`.
pub fn run(sock: &SocketArg, a: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let spec = WorkloadSpec {
        net: a.net,
        forward: a.forward,
        allow: a.allow,
    };
    spec.check().map_err(|message| CodedError {
        code: "bad_request".into(),
        message,
    })?;
    let ids = user_ids(a.user.as_deref())?;
    let info = match call(&sock.socket, &LocalRequest::WorkloadCreate(spec))? {
        LocalResponse::Workload(info) => info,
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
        _ => bail!("the agent answered a different question"),
    };
    if json {
        eprintln!("{}", serde_json::to_string(&info)?);
    } else {
        eprintln!("{}", describe(&info));
    }
    let status = run_in(&sock.socket, &info, &a.command, ids);
    // Whatever happened, weftd hears that the command ended (it also notices
    // by itself when nothing runs in the namespace any more).
    if let Err(e) = call(
        &sock.socket,
        &LocalRequest::WorkloadEnded {
            id: info.id.clone(),
        },
    ) {
        eprintln!("weft run: telling weftd the command ended failed: {e:#}");
    }
    let status = status?;
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let sig = status.signal().unwrap_or(0);
    Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)))
}

/// One line on stderr: where the command runs.
fn describe(info: &WorkloadInfo) -> String {
    let mut s = format!("weft run: workload {} (--net {})", info.id, info.net);
    if let (Some(addr), Some(gw)) = (&info.address, &info.gateway) {
        s.push_str(&format!(", address {addr} via {gw}"));
    }
    if !info.allow.is_empty() {
        s.push_str(&format!(", allowed: {}", info.allow.join(" ")));
    }
    s
}

/// Runs the command in the namespace, tells weftd its pid, waits.
fn run_in(
    socket: &std::path::Path,
    info: &WorkloadInfo,
    command: &[String],
    ids: Option<(u32, u32)>,
) -> anyhow::Result<std::process::ExitStatus> {
    let ns = std::fs::File::open(&info.netns)
        .with_context(|| format!("opening weftd's namespace handle {}", info.netns))?;
    let (program, args) = command.split_first().context("no command given")?;
    // A thread enters the namespace and starts the child there (setns moves
    // only the calling thread): weft run itself stays outside, so weftd sees
    // the namespace empty as soon as the command's processes are gone.
    let mut child = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering the workload's network namespace (weft run needs root)")?;
                let mut cmd = std::process::Command::new(program);
                cmd.args(args);
                if let Some((uid, gid)) = ids {
                    use std::os::unix::process::CommandExt as _;
                    // As root, std also drops the supplementary groups.
                    cmd.uid(uid).gid(gid);
                }
                cmd.spawn().with_context(|| format!("starting {program}"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread starting {program} panicked"))?
    })?;
    // Ctrl-C reaches the command (same process group); weft run stays to
    // report its end. Ignored only now: the child keeps the default.
    ignore_interrupts();
    if let Err(e) = call(
        socket,
        &LocalRequest::WorkloadStarted {
            id: info.id.clone(),
            pid: child.id(),
        },
    ) {
        eprintln!("weft run: telling weftd the command's pid failed: {e:#}");
    }
    child
        .wait()
        .with_context(|| format!("waiting for {program}"))
}

/// `--user NAME|UID`: its uid and primary gid.
fn user_ids(user: Option<&str>) -> anyhow::Result<Option<(u32, u32)>> {
    use nix::unistd::{Uid, User};
    let Some(user) = user else {
        return Ok(None);
    };
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .with_context(|| format!("looking up uid {uid}"))?
            .map_or((uid, uid), |u| (uid, u.gid.as_raw())),
        Err(_) => User::from_name(user)
            .with_context(|| format!("looking up user {user:?}"))?
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
            .ok_or_else(|| CodedError {
                code: "bad_request".into(),
                message: format!("--user {user}: no such user"),
            })?,
    };
    Ok(Some(found))
}

fn ignore_interrupts() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        #[expect(
            unsafe_code,
            reason = "ignoring a signal: SIG_IGN runs no handler code"
        )]
        let r = unsafe { signal(sig, SigHandler::SigIgn) };
        if let Err(e) = r {
            eprintln!("weft run: cannot ignore {sig}: {e}");
        }
    }
}
