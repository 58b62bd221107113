//! The few raw system calls the lab needs, each wrapped once so the rest of the
//! crate stays free of `unsafe`.

#![allow(
    unsafe_code,
    reason = "thin wrappers over libc calls that have no safe std equivalent"
)]

/// Returns the effective user id of this process.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `sig` to `pid` (a negative pid addresses a process group). Returns
/// whether the signal was delivered; a missing process is not an error.
pub(crate) fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Moves the calling thread (only it) into the network namespace `fd` refers to.
pub(crate) fn enter_netns(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: setns on a namespace fd affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns this process's id as the kernel sees it.
pub(crate) fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// Arranges for the calling (child) process to receive SIGKILL when the thread
/// that forked it dies. Meant for `CommandExt::pre_exec`: only async-signal-safe
/// calls. If the parent already died between fork and here, exits at once.
pub(crate) fn die_with_parent(expected_parent: i32) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe and touch
    // no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::getppid() } != expected_parent {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

/// Installs `die_with_parent` on a command.
pub(crate) fn set_die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = getpid();
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
}

/// Raises this process's soft open-file limit to its hard limit (children
/// inherit it). Returns the soft limit now in force, if it could be read.
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}
