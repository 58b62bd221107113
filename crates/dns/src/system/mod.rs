//! Pointing the system at weft's resolver for the overlay domains, and putting it
//! back. Two backends:
//!
//! - **systemd-resolved** ([`SystemKind::Resolved`]), chosen by
//!   [`SystemMode::Auto`] when `/etc/resolv.conf` goes through resolved's stub
//!   (127.0.0.53, or a symlink into `/run/systemd/resolve/`), resolved's stub file
//!   exists and `resolvectl` is installed: per-link DNS on the overlay interface
//!   (`resolvectl dns weft0 ADDR`, `resolvectl domain weft0 ~weft.internal`,
//!   `resolvectl default-route weft0 false`), so only overlay names come to weft;
//!   `resolvectl revert weft0` on stop. resolved reaches per-link servers through
//!   that link, so ADDR is the node's overlay address on it, not a loopback one
//!   (see [`crate::DnsService::set_resolved_link`]). Nothing to restore after a
//!   crash: resolved forgets the settings when the interface goes.
//! - **managed resolv.conf** ([`SystemKind::ResolvConf`]): the original file is
//!   backed up (bytes, mode, owner, or symlink target; to
//!   `BACKUP_DIR/resolv.conf.weft-backup` and `.meta`, written and synced before
//!   the file is touched), then replaced by weft's file ([`resolv_conf::render_managed`]).
//!   [`ManagedFile::check_drift`] repairs it when another program rewrote it;
//!   [`ManagedFile::restore`] puts back the original exactly.
//!
//! Drift policy: when another program writes a *new* configuration over weft's
//! file (a DHCP client with new servers, an administrator), that configuration is
//! taken as the new original: it replaces the backup (so `weft down` restores the
//! latest legitimate configuration, not a stale one), its nameservers become the
//! upstreams, and weft's file is written again. A damaged or deleted weft file is
//! simply written again.
//!
//! Crash recovery: at start, a file that carries weft's header is weft's own
//! (left by a crash or `kill -9`) and is never backed up as the original; the
//! existing backup is kept and used. If that backup is gone too, the upstreams
//! recorded in weft's file are used and restore writes a plain file naming them.
//!
//! Commands go through [`CommandRunner`] so tests check what would run.

mod files;
mod managed;
mod namespace;
mod resolved;
#[cfg(test)]
mod testing;

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::DnsError;
use crate::resolv_conf;
use files::{read_conf, read_limited};

pub use managed::ManagedFile;
pub use namespace::NamespaceView;
pub use resolved::ResolvedLink;

/// Default `resolv.conf` path.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// resolved's stub resolv.conf: present when resolved runs.
pub const RESOLVED_STUB: &str = "/run/systemd/resolve/stub-resolv.conf";
/// resolved's list of its real upstreams.
pub const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// File name of the backup of the original, in the backup directory.
pub const BACKUP_NAME: &str = "resolv.conf.weft-backup";

/// How weft may change the system's resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMode {
    /// Leave it alone (tests; hosts whose DNS the operator points at weft).
    /// [`crate::Upstreams::FromSystem`] then reads `/etc/resolv.conf`.
    Unmanaged,
    /// systemd-resolved per link when it serves the system, else the managed file.
    Auto(SystemPaths),
    /// Always the managed file.
    ResolvConf(SystemPaths),
}

/// Paths the system backends use (all configurable for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPaths {
    /// The resolver configuration (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// Where the original is backed up (the agent's state directory).
    pub backup_dir: PathBuf,
    /// resolved's stub file ([`RESOLVED_STUB`]).
    pub resolved_stub: PathBuf,
    /// resolved's upstream list ([`RESOLVED_UPSTREAMS`]).
    pub resolved_upstreams: PathBuf,
}

impl SystemPaths {
    /// The real system paths, backing up into `backup_dir`.
    pub fn new(backup_dir: impl Into<PathBuf>) -> Self {
        Self {
            resolv_conf: RESOLV_CONF.into(),
            backup_dir: backup_dir.into(),
            resolved_stub: RESOLVED_STUB.into(),
            resolved_upstreams: RESOLVED_UPSTREAMS.into(),
        }
    }
}

/// Which backend is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// Nothing is changed.
    Unmanaged,
    /// systemd-resolved per-link DNS.
    Resolved,
    /// weft's own `/etc/resolv.conf`.
    ResolvConf,
}

/// What [`SystemDns::check_drift`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// Everything as weft left it.
    Unchanged,
    /// weft's configuration was damaged or removed and was written again.
    Repaired,
    /// Another program wrote a new configuration: it is the new original (backed
    /// up), weft's file was written again, and these are the new upstreams.
    NewOriginal {
        /// The resolvers the new configuration names.
        upstreams: Vec<SocketAddr>,
    },
}

/// Runs an external command; `args[0]` is the program.
pub trait CommandRunner: Send + Sync + std::fmt::Debug {
    /// Runs it to completion; its standard output, or why it failed.
    fn run(&self, args: &[String]) -> Result<String, String>;
}

/// Runs commands with `std::process::Command`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessRunner;

impl CommandRunner for ProcessRunner {
    fn run(&self, args: &[String]) -> Result<String, String> {
        let (program, rest) = args.split_first().ok_or("empty command")?;
        let out = std::process::Command::new(program)
            .args(rest)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// The system side of the resolver: one of the backends.
#[derive(Debug)]
pub struct SystemDns {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Unmanaged,
    File(ManagedFile),
    Resolved(ResolvedLink),
}

impl SystemDns {
    /// Applies `mode` for a resolver listening on `ours`; returns the backend and
    /// the upstreams the previous configuration named.
    pub fn start(
        mode: &SystemMode,
        ours: IpAddr,
        runner: Box<dyn CommandRunner>,
    ) -> Result<(Self, Vec<SocketAddr>), DnsError> {
        match mode {
            SystemMode::Unmanaged => {
                let current = read_limited(Path::new(RESOLV_CONF))?.unwrap_or_default();
                let conf = resolv_conf::parse(&String::from_utf8_lossy(&current));
                let resolved = read_conf(Path::new(RESOLVED_UPSTREAMS));
                let ups = resolv_conf::upstreams(&conf, ours, resolved.as_ref());
                Ok((
                    Self {
                        backend: Backend::Unmanaged,
                    },
                    ups,
                ))
            }
            SystemMode::Auto(paths) | SystemMode::ResolvConf(paths)
                if let Some(conflict) =
                    NamespaceView::PROC.host_file_conflict(&paths.resolv_conf) =>
            {
                Err(conflict)
            }
            SystemMode::Auto(paths) if resolved_serves(paths) => {
                let current = read_limited(&paths.resolv_conf)?.unwrap_or_default();
                let conf = resolv_conf::parse(&String::from_utf8_lossy(&current));
                let resolved = read_conf(&paths.resolved_upstreams);
                let ups = resolv_conf::upstreams(&conf, ours, resolved.as_ref());
                let link = ResolvedLink::new(runner);
                Ok((
                    Self {
                        backend: Backend::Resolved(link),
                    },
                    ups,
                ))
            }
            SystemMode::Auto(paths) | SystemMode::ResolvConf(paths) => {
                let (file, ups) = ManagedFile::start(paths, ours)?;
                Ok((
                    Self {
                        backend: Backend::File(file),
                    },
                    ups,
                ))
            }
        }
    }

    /// Which backend is active.
    pub fn kind(&self) -> SystemKind {
        match self.backend {
            Backend::Unmanaged => SystemKind::Unmanaged,
            Backend::File(_) => SystemKind::ResolvConf,
            Backend::Resolved(_) => SystemKind::Resolved,
        }
    }

    /// Sets the overlay domains routed to weft (resolved only; the managed file
    /// sends every name to weft anyway).
    pub fn set_domains(&mut self, domains: &[String]) -> Result<(), DnsError> {
        if let Backend::Resolved(link) = &mut self.backend {
            link.set_domains(domains)?;
        }
        Ok(())
    }

    /// Sets the link and the address on it that resolved sends overlay queries to
    /// (resolved only).
    pub fn set_link(&mut self, ifname: &str, server: IpAddr) -> Result<(), DnsError> {
        if let Backend::Resolved(link) = &mut self.backend {
            link.set_link(ifname, server)?;
        }
        Ok(())
    }

    /// Detects and repairs changes made by others.
    pub fn check_drift(&mut self) -> Result<Drift, DnsError> {
        match &mut self.backend {
            Backend::Unmanaged => Ok(Drift::Unchanged),
            Backend::File(f) => f.check_drift(),
            Backend::Resolved(l) => l.check_drift(),
        }
    }

    /// Puts the system back as it was. Idempotent.
    pub fn restore(&mut self) -> Result<(), DnsError> {
        match &mut self.backend {
            Backend::Unmanaged => Ok(()),
            Backend::File(f) => f.restore(),
            Backend::Resolved(l) => l.revert(),
        }
    }
}

/// Whether resolved serves the system: its stub file exists, resolv.conf goes
/// through it, and `resolvectl` is installed.
fn resolved_serves(paths: &SystemPaths) -> bool {
    if !paths.resolved_stub.exists() || find_program("resolvectl").is_none() {
        return false;
    }
    let via_symlink = fs::read_link(&paths.resolv_conf).is_ok_and(|t| {
        t.starts_with("/run/systemd/resolve") || t.starts_with("../run/systemd/resolve")
    });
    let via_stub = read_conf(&paths.resolv_conf).is_some_and(|c| {
        !c.nameservers.is_empty()
            && c.nameservers
                .iter()
                .all(|ip| matches!(ip, IpAddr::V4(v4) if resolv_conf::RESOLVED_STUBS.contains(v4)))
    });
    via_symlink || via_stub
}

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::testing::{ORIGINAL, OURS, Recorder, fixture, write_original};
    use super::*;

    #[test]
    fn auto_mode_without_resolved_manages_the_file() {
        let fx = fixture();
        write_original(&fx.paths.resolv_conf, ORIGINAL, 0o644);
        let (mut sys, ups) = SystemDns::start(
            &SystemMode::Auto(fx.paths.clone()),
            OURS,
            Box::new(Recorder::default()),
        )
        .unwrap();
        assert_eq!(sys.kind(), SystemKind::ResolvConf);
        assert_eq!(ups.len(), 2);
        sys.restore().unwrap();
        assert_eq!(fs::read(&fx.paths.resolv_conf).unwrap(), ORIGINAL);
    }
}
