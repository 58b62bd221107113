//! The raw system calls a login needs, each wrapped once so the rest of the
//! SSH server stays free of `unsafe`: dropping to the local user in the
//! forked child (a new session, the pty as controlling terminal, the user's
//! groups, gid, uid) and setting a pty's window size.

#![allow(
    unsafe_code,
    reason = "pre_exec and two ioctls have no safe std or nix equivalent"
)]

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::libc;

/// Who the child becomes.
#[derive(Debug, Clone)]
pub(super) struct Creds {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Supplementary groups (`getgrouplist`, computed before the fork: the
    /// group database is not read in the child).
    pub(super) groups: Vec<u32>,
}

/// Makes the child of `cmd` start a new session (its own process group,
/// killed as a whole), take its stdin as controlling terminal when `ctty`
/// (a pty), and drop to `creds` (groups, then gid, then uid) before it
/// executes.
pub(super) fn login_as(cmd: &mut tokio::process::Command, creds: Creds, ctty: bool) {
    let groups: Vec<libc::gid_t> = creds.groups.clone();
    let (uid, gid) = (creds.uid, creds.gid);
    let child = move || -> io::Result<()> {
        // SAFETY (whole closure): only async-signal-safe system calls on
        // memory captured before the fork (no allocation).
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(gid) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(uid) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl,
    // setgroups, setgid, setuid) and allocates nothing.
    unsafe {
        cmd.pre_exec(child);
    }
}

/// Sets the window size of the pty whose master is `fd`.
pub(super) fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16, xpix: u16, ypix: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: xpix,
        ws_ypixel: ypix,
    };
    // SAFETY: TIOCSWINSZ reads the struct passed; a bad fd only fails.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
    if rc < 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "setting a pty's window size failed");
    }
}

/// Watches the pty master `fd` for readiness on the tokio reactor.
pub(super) fn watch(
    fd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, closed only when it is
    // dropped (with the AsyncFd), and always returns the same raw fd.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
