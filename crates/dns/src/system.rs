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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::DnsError;
use crate::resolv_conf::{self, ResolvConf};

/// Default `resolv.conf` path.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// resolved's stub resolv.conf: present when resolved runs.
pub const RESOLVED_STUB: &str = "/run/systemd/resolve/stub-resolv.conf";
/// resolved's list of its real upstreams.
pub const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// File name of the backup of the original, in the backup directory.
pub const BACKUP_NAME: &str = "resolv.conf.weft-backup";
/// Its metadata (kind, mode, owner, symlink target).
const META_NAME: &str = "resolv.conf.weft-backup.meta";
const META_MAGIC: &str = "weft resolv.conf backup v1";

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

/// Where this thread's network namespace and the host's are seen. Configurable
/// for tests; [`NamespaceView::PROC`] is the real one.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceView<'a> {
    /// This thread's network namespace (`/proc/thread-self/ns/net`: `setns`
    /// moves one thread).
    pub own_netns: &'a str,
    /// The host's (`/proc/1/ns/net`: the first process, the host's or the
    /// container's this runs in).
    pub host_netns: &'a str,
    /// The host's root directory, as seen from here (`/proc/1/root`).
    pub host_root: &'a str,
    /// Named network namespaces (`/run/netns`, where `ip netns add` keeps them).
    pub named_netns: &'a str,
    /// Their private configuration files (`/etc/netns`: `ip netns exec NAME`
    /// mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`).
    pub netns_etc: &'a str,
}

impl NamespaceView<'static> {
    /// The real one.
    pub const PROC: NamespaceView<'static> = NamespaceView {
        own_netns: "/proc/thread-self/ns/net",
        host_netns: "/proc/1/ns/net",
        host_root: "/proc/1/root",
        named_netns: "/run/netns",
        netns_etc: "/etc/netns",
    };
}

/// A file's identity (device and inode), following symlinks.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl NamespaceView<'_> {
    /// Refuses to manage `resolv_conf` when this thread runs in a network
    /// namespace other than the host's but `resolv_conf` is still the host's
    /// resolver configuration. That is what `ip netns exec NAME` gives when
    /// `/etc/netns/NAME/resolv.conf` does not exist, and what `nsenter --net` or
    /// `unshare -n` always give: writing the file would point the host's DNS at
    /// a resolver on this namespace's loopback, which the host cannot reach.
    ///
    /// Decided by the first of these that can be read:
    /// 1. the host's namespace and root (`/proc/1`, readable with
    ///    `CAP_SYS_PTRACE`): same namespace, no conflict; else a conflict when
    ///    `resolv_conf` is the inode the host sees at `/etc/resolv.conf`
    ///    (symlinks followed on each side, the host's under its root);
    /// 2. the named namespaces (`/run/netns`): in namespace NAME, a conflict
    ///    unless `resolv_conf` is `/etc/netns/NAME/resolv.conf` (mounted over
    ///    `/etc/resolv.conf` by `ip netns exec`, or named directly).
    ///
    /// `None` when neither tells (not root, no `/proc`, a namespace that is not
    /// named): nothing is refused.
    pub fn host_file_conflict(&self, resolv_conf: &Path) -> Option<DnsError> {
        let own = file_id(Path::new(self.own_netns))?;
        let conflict = |name: Option<&str>| {
            Some(DnsError::HostFileInNamespace {
                path: resolv_conf.to_owned(),
                netns: name.map_or_else(
                    || {
                        fs::read_link(self.own_netns)
                            .map_or_else(|_| "unnamed".into(), |l| l.display().to_string())
                    },
                    str::to_owned,
                ),
                private: Path::new(self.netns_etc)
                    .join(name.unwrap_or("NAME"))
                    .join("resolv.conf"),
            })
        };
        if let Some(host) = file_id(Path::new(self.host_netns)) {
            if host == own {
                return None;
            }
            let hosts_file = self
                .host_path(Path::new(RESOLV_CONF))
                .and_then(|p| file_id(&p));
            if let Some(theirs) = hosts_file {
                return if file_id(resolv_conf)? == theirs {
                    conflict(self.named(own).as_deref())
                } else {
                    None
                };
            }
        }
        let name = self.named(own)?;
        let private = Path::new(self.netns_etc).join(&name).join("resolv.conf");
        match file_id(&private) {
            Some(p) if file_id(resolv_conf) == Some(p) => None,
            _ => conflict(Some(&name)),
        }
    }

    /// The name under which `ip netns` knows the namespace `id`, if any.
    fn named(&self, id: (u64, u64)) -> Option<String> {
        fs::read_dir(self.named_netns)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| file_id(&e.path()) == Some(id))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    /// `path` as the host sees it: under its root, each symlink resolved there
    /// (an absolute target means the host's root, not ours).
    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        let root = Path::new(self.host_root);
        let mut p = root.join(path.strip_prefix("/").unwrap_or(path));
        for _ in 0..16 {
            let Ok(target) = fs::read_link(&p) else {
                return Some(p);
            };
            p = match target.strip_prefix("/") {
                Ok(abs) => root.join(abs),
                Err(_) => p.parent()?.join(target),
            };
        }
        None
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

// ---------------------------------------------------------------------------
// systemd-resolved

/// Per-link DNS through `resolvectl`.
#[derive(Debug)]
pub struct ResolvedLink {
    runner: Box<dyn CommandRunner>,
    link: Option<(String, IpAddr)>,
    domains: Vec<String>,
}

impl ResolvedLink {
    /// Nothing applied yet: [`ResolvedLink::set_link`] and
    /// [`ResolvedLink::set_domains`] do it.
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self {
            runner,
            link: None,
            domains: Vec::new(),
        }
    }

    /// The commands that point resolved's `ifname` at `server` for `domains`
    /// (routing domains only, never the default route).
    pub fn apply_commands(ifname: &str, server: IpAddr, domains: &[String]) -> Vec<Vec<String>> {
        let mut domain = vec!["resolvectl".into(), "domain".into(), ifname.into()];
        domain.extend(domains.iter().map(|d| format!("~{d}")));
        vec![
            vec![
                "resolvectl".into(),
                "dns".into(),
                ifname.into(),
                server.to_string(),
            ],
            domain,
            vec![
                "resolvectl".into(),
                "default-route".into(),
                ifname.into(),
                "false".into(),
            ],
        ]
    }

    /// The command that removes weft's settings from `ifname`.
    pub fn revert_command(ifname: &str) -> Vec<String> {
        vec!["resolvectl".into(), "revert".into(), ifname.into()]
    }

    fn set_link(&mut self, ifname: &str, server: IpAddr) -> Result<(), DnsError> {
        if let Some((old, _)) = &self.link
            && old != ifname
        {
            let old = old.clone();
            self.run(&Self::revert_command(&old))?;
        }
        self.link = Some((ifname.to_owned(), server));
        self.apply()
    }

    fn set_domains(&mut self, domains: &[String]) -> Result<(), DnsError> {
        if self.domains != domains {
            self.domains = domains.to_vec();
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), DnsError> {
        let Some((ifname, server)) = &self.link else {
            return Ok(());
        };
        for (i, cmd) in Self::apply_commands(ifname, *server, &self.domains)
            .iter()
            .enumerate()
        {
            match self.run(cmd) {
                Ok(_) => {}
                // `default-route` needs systemd 240+; the routing domain alone
                // already keeps other names away on current versions.
                Err(e) if i == 2 => tracing::debug!("{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Re-applies when resolved no longer lists weft's server or domains for the
    /// link (another tool reset it, or networkd reconfigured the link).
    fn check_drift(&mut self) -> Result<Drift, DnsError> {
        let Some((ifname, server)) = self.link.clone() else {
            return Ok(Drift::Unchanged);
        };
        let dns = self.run(&["resolvectl".into(), "dns".into(), ifname.clone()])?;
        let domain = self.run(&["resolvectl".into(), "domain".into(), ifname])?;
        if resolved_shows(&dns, &domain, server, &self.domains) {
            return Ok(Drift::Unchanged);
        }
        self.apply()?;
        Ok(Drift::Repaired)
    }

    fn revert(&mut self) -> Result<(), DnsError> {
        if let Some((ifname, _)) = self.link.take() {
            // The link may be gone already (weft removed it): nothing to revert.
            if let Err(e) = self.run(&Self::revert_command(&ifname)) {
                tracing::debug!("{e}");
            }
        }
        Ok(())
    }

    fn run(&self, cmd: &[String]) -> Result<String, DnsError> {
        self.runner.run(cmd).map_err(|message| DnsError::Command {
            command: cmd.join(" "),
            message,
        })
    }
}

/// Whether `resolvectl dns LINK` / `resolvectl domain LINK` output (`Link 7
/// (weft0): 100.64.0.1`) shows `server` and every `~domain`.
fn resolved_shows(dns: &str, domain: &str, server: IpAddr, domains: &[String]) -> bool {
    let values = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.split_once("):").map(|(_, v)| v))
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    let servers = values(dns);
    let routes = values(domain);
    servers
        .iter()
        .any(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip == server))
        && domains.iter().all(|d| {
            routes
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&format!("~{d}")))
        })
}

// ---------------------------------------------------------------------------
// managed resolv.conf

/// The original configuration, as backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Original {
    /// A regular file.
    File {
        bytes: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A symlink (to resolved's or NetworkManager's file, say); `bytes` is what it
    /// pointed at then (for the upstreams).
    Symlink { target: PathBuf, bytes: Vec<u8> },
    /// No file at all.
    Missing,
}

impl Original {
    fn bytes(&self) -> &[u8] {
        match self {
            Original::File { bytes, .. } | Original::Symlink { bytes, .. } => bytes,
            Original::Missing => &[],
        }
    }
}

/// weft's own resolv.conf, with the original backed up.
#[derive(Debug)]
pub struct ManagedFile {
    path: PathBuf,
    backup: PathBuf,
    meta: PathBuf,
    resolved_upstreams: PathBuf,
    ours: IpAddr,
    original: Original,
    upstreams: Vec<SocketAddr>,
    written: Vec<u8>,
    active: bool,
}

impl ManagedFile {
    /// Backs up the original (unless the file is weft's own, from a crash) and
    /// writes weft's file. Returns the upstreams of the original.
    pub fn start(paths: &SystemPaths, ours: IpAddr) -> Result<(Self, Vec<SocketAddr>), DnsError> {
        fs::create_dir_all(&paths.backup_dir).map_err(|e| DnsError::io(&paths.backup_dir, e))?;
        let mut file = ManagedFile {
            path: paths.resolv_conf.clone(),
            backup: paths.backup_dir.join(BACKUP_NAME),
            meta: paths.backup_dir.join(META_NAME),
            resolved_upstreams: paths.resolved_upstreams.clone(),
            ours,
            original: Original::Missing,
            upstreams: Vec::new(),
            written: Vec::new(),
            active: false,
        };
        let current = observe(&file.path)?;
        if is_ours(&current) {
            file.original = match file.load_backup()? {
                Some(original) => {
                    tracing::info!(path = %file.path.display(), "found weft's resolv.conf from an earlier run; keeping its backup");
                    original
                }
                None => {
                    tracing::warn!(path = %file.path.display(), backup = %file.backup.display(),
                        "found weft's resolv.conf but no backup: restore will name the upstreams it records");
                    let conf = resolv_conf::parse(&String::from_utf8_lossy(current.bytes()));
                    let ups = resolv_conf::upstreams(&conf, ours, None);
                    Original::File {
                        bytes: resolv_conf::render_fallback(&conf, &ups).into_bytes(),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    }
                }
            };
        } else {
            file.save_backup(&current)?;
            file.original = current;
        }
        file.upstreams = file.upstreams_of_original();
        file.active = true;
        file.write_ours()?;
        let ups = file.upstreams.clone();
        Ok((file, ups))
    }

    /// The upstreams of the current original.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Compares the file with what weft wrote; rewrites it, and adopts another
    /// program's new configuration as the original (see the module docs).
    pub fn check_drift(&mut self) -> Result<Drift, DnsError> {
        if !self.active {
            return Ok(Drift::Unchanged);
        }
        let current = observe(&self.path)?;
        if matches!(&current, Original::File { bytes, .. } if *bytes == self.written) {
            return Ok(Drift::Unchanged);
        }
        if is_ours(&current) || current == Original::Missing {
            tracing::info!(path = %self.path.display(), "weft's resolv.conf was changed or removed: writing it again");
            self.write_ours()?;
            return Ok(Drift::Repaired);
        }
        tracing::info!(path = %self.path.display(),
            "another program rewrote resolv.conf: taking it as the new original and managing it again");
        self.save_backup(&current)?;
        self.original = current;
        self.upstreams = self.upstreams_of_original();
        self.write_ours()?;
        Ok(Drift::NewOriginal {
            upstreams: self.upstreams.clone(),
        })
    }

    /// Puts the original back (bytes, mode, owner; or the symlink; or no file) and
    /// removes the backup. A configuration another program wrote meanwhile is left
    /// in place. Idempotent.
    pub fn restore(&mut self) -> Result<(), DnsError> {
        if !self.active {
            return Ok(());
        }
        let current = observe(&self.path)?;
        if is_ours(&current) || current == Original::Missing {
            match &self.original {
                Original::File {
                    bytes,
                    mode,
                    uid,
                    gid,
                } => {
                    write_file(&self.path, bytes, *mode, Some((*uid, *gid)))?;
                }
                Original::Symlink { target, .. } => replace_with_symlink(&self.path, target)?,
                Original::Missing => remove_if_exists(&self.path)?,
            }
        } else {
            tracing::info!(path = %self.path.display(), "resolv.conf was rewritten by another program: leaving it");
        }
        remove_if_exists(&self.meta)?;
        remove_if_exists(&self.backup)?;
        sync_dir(&self.meta);
        self.active = false;
        Ok(())
    }

    fn upstreams_of_original(&self) -> Vec<SocketAddr> {
        let conf = resolv_conf::parse(&String::from_utf8_lossy(self.original.bytes()));
        let resolved = read_conf(&self.resolved_upstreams);
        resolv_conf::upstreams(&conf, self.ours, resolved.as_ref())
    }

    fn write_ours(&mut self) -> Result<(), DnsError> {
        let conf = resolv_conf::parse(&String::from_utf8_lossy(self.original.bytes()));
        let text = resolv_conf::render_managed(&conf, &self.upstreams, self.ours, &self.backup);
        write_file(&self.path, text.as_bytes(), 0o644, None)?;
        self.written = text.into_bytes();
        Ok(())
    }

    /// Writes the backup: the bytes first, then the metadata that makes it valid,
    /// both synced, so a crash leaves either the old backup or the new one.
    fn save_backup(&self, original: &Original) -> Result<(), DnsError> {
        let meta = match original {
            Original::File { mode, uid, gid, .. } => {
                format!("{META_MAGIC}\nkind file\nmode {mode:o}\nuid {uid}\ngid {gid}\n")
            }
            Original::Symlink { target, .. } => {
                let target = target
                    .to_str()
                    .filter(|t| !t.contains('\n'))
                    .ok_or_else(|| DnsError::Unsupported {
                        path: self.path.clone(),
                        reason: "its symlink target is not a one-line UTF-8 path".into(),
                    })?;
                format!("{META_MAGIC}\nkind symlink\ntarget {target}\n")
            }
            Original::Missing => format!("{META_MAGIC}\nkind missing\n"),
        };
        write_file(&self.backup, original.bytes(), 0o644, None)?;
        write_file(&self.meta, meta.as_bytes(), 0o644, None)?;
        sync_dir(&self.meta);
        Ok(())
    }

    fn load_backup(&self) -> Result<Option<Original>, DnsError> {
        let Some(meta) = read_limited(&self.meta)? else {
            return Ok(None);
        };
        let meta = String::from_utf8_lossy(&meta);
        let mut lines = meta.lines();
        let bad = |why: &str| DnsError::BadBackup {
            path: self.meta.clone(),
            reason: why.to_owned(),
        };
        if lines.next() != Some(META_MAGIC) {
            return Err(bad("unknown format"));
        }
        let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(' ')).collect();
        let field = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let num = |k: &str, radix: u32| {
            field(k)
                .and_then(|v| u32::from_str_radix(v, radix).ok())
                .ok_or_else(|| bad(&format!("missing or bad {k}")))
        };
        let bytes = || -> Result<Vec<u8>, DnsError> {
            read_limited(&self.backup)?.ok_or_else(|| bad("the backup file is missing"))
        };
        Ok(Some(match field("kind") {
            Some("file") => Original::File {
                bytes: bytes()?,
                mode: num("mode", 8)?,
                uid: num("uid", 10)?,
                gid: num("gid", 10)?,
            },
            Some("symlink") => Original::Symlink {
                target: field("target").ok_or_else(|| bad("missing target"))?.into(),
                bytes: bytes().unwrap_or_default(),
            },
            Some("missing") => Original::Missing,
            _ => return Err(bad("unknown kind")),
        }))
    }
}

/// Whether `current` is weft's own file.
fn is_ours(current: &Original) -> bool {
    matches!(current, Original::File { bytes, .. } if resolv_conf::is_managed(bytes))
}

/// The file at `path` as it is now (a symlink is not followed, but what it points
/// at is read for its content).
fn observe(path: &Path) -> Result<Original, DnsError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Original::Missing),
        Err(e) => return Err(DnsError::io(path, e)),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| DnsError::io(path, e))?;
        let bytes = read_limited(path).ok().flatten().unwrap_or_default();
        return Ok(Original::Symlink { target, bytes });
    }
    if !meta.is_file() {
        return Err(DnsError::Unsupported {
            path: path.to_owned(),
            reason: "it is neither a regular file nor a symlink".into(),
        });
    }
    let bytes = read_limited(path)?.unwrap_or_default();
    Ok(Original::File {
        bytes,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Reads at most [`resolv_conf::MAX_LEN`] bytes; `None` if the file is missing.
fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, DnsError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DnsError::io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(resolv_conf::MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DnsError::io(path, e))?;
    if bytes.len() > resolv_conf::MAX_LEN {
        return Err(DnsError::Unsupported {
            path: path.to_owned(),
            reason: format!("it is larger than {} bytes", resolv_conf::MAX_LEN),
        });
    }
    Ok(Some(bytes))
}

fn read_conf(path: &Path) -> Option<ResolvConf> {
    let bytes = read_limited(path).ok().flatten()?;
    Some(resolv_conf::parse(&String::from_utf8_lossy(&bytes)))
}

/// Replaces `path` with a regular file holding `bytes`: a synced temporary file
/// renamed over it (which also replaces a symlink rather than writing through
/// it). Where `path` is a mount point (`ip netns exec` bind-mounts
/// `/etc/netns/NS/resolv.conf` there, containers mount theirs) rename fails with
/// EBUSY, and the file is rewritten in place instead.
fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), DnsError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process: several agents (one per lab namespace) may write their
    // bind-mounted resolv.conf at once, and they share the real /etc directory.
    let tmp = path.with_file_name(format!(".{name}.weft-tmp-{}", std::process::id()));
    let write_tmp = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.sync_all()
    };
    if let Err(e) = write_tmp() {
        let _ = fs::remove_file(&tmp);
        return Err(DnsError::io(&tmp, e));
    }
    match fs::rename(&tmp, path) {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(EBUSY) => {
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|e| DnsError::io(path, e))?;
            f.write_all(bytes).map_err(|e| DnsError::io(path, e))?;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| DnsError::io(path, e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                    .map_err(|e| DnsError::io(path, e))?;
            }
            f.sync_all().map_err(|e| DnsError::io(path, e))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(DnsError::io(path, e))
        }
    }
}

/// `EBUSY` on Linux: the target of a rename is a mount point.
const EBUSY: i32 = 16;

fn replace_with_symlink(path: &Path, target: &Path) -> Result<(), DnsError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.weft-link"));
    remove_if_exists(&tmp)?;
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| DnsError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DnsError::io(path, e)
    })?;
    sync_dir(path);
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), DnsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DnsError::io(path, e)),
    }
}

/// Syncs the directory holding `path` so a rename survives a power cut; best
/// effort (some filesystems refuse to sync a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    use super::*;

    const OURS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 53));
    const ORIGINAL: &[u8] = b"# from dhcp\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch corp.example\noptions edns0\n";

    #[test]
    fn a_namespace_sharing_the_hosts_resolv_conf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = |p: &str| dir.path().join(p);
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        // Two namespace "inodes"; a host root whose /etc/resolv.conf is an
        // absolute symlink into /run (as with systemd-resolved); `ip netns`'
        // directories, where `lab1` is this thread's namespace.
        fs::write(d("ns-own"), "").unwrap();
        fs::write(d("ns-host"), "").unwrap();
        fs::create_dir_all(d("root/etc")).unwrap();
        fs::create_dir_all(d("root/run/resolve")).unwrap();
        fs::write(d("root/run/resolve/stub.conf"), ORIGINAL).unwrap();
        std::os::unix::fs::symlink("/run/resolve/stub.conf", d("root/etc/resolv.conf")).unwrap();
        fs::create_dir_all(d("run-netns")).unwrap();
        fs::hard_link(d("ns-own"), d("run-netns/lab1")).unwrap();
        fs::create_dir_all(d("etc-netns/lab1")).unwrap();
        fs::write(d("etc-netns/lab1/resolv.conf"), ORIGINAL).unwrap();
        let hosts = d("root/run/resolve/stub.conf");
        let private = d("etc-netns/lab1/resolv.conf");
        let (own, host, root) = (s(&d("ns-own")), s(&d("ns-host")), s(&d("root")));
        let (named, etc) = (s(&d("run-netns")), s(&d("etc-netns")));
        let view = NamespaceView {
            own_netns: &own,
            host_netns: &host,
            host_root: &root,
            named_netns: &named,
            netns_etc: &etc,
        };
        let refused = |v: &NamespaceView<'_>, ours: &Path| match v.host_file_conflict(ours) {
            Some(DnsError::HostFileInNamespace {
                netns, private: p, ..
            }) => (netns, p),
            other => panic!("not refused: {other:?}"),
        };

        // 1. The host is visible: the file its /etc/resolv.conf leads to (the
        // absolute symlink resolved under the host's root, not ours) is
        // refused; the namespace's own file is managed.
        assert_eq!(refused(&view, &hosts), ("lab1".into(), private.clone()));
        let msg = view.host_file_conflict(&hosts).unwrap().to_string();
        for part in [
            "etc-netns/lab1/resolv.conf",
            "--dns off",
            "network namespace",
            "lab1",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        assert!(view.host_file_conflict(&private).is_none());
        assert!(view.host_file_conflict(&d("root/etc/other.conf")).is_none());
        // In the host's namespace itself: managed.
        let host_ns = NamespaceView {
            own_netns: &host,
            ..view
        };
        assert!(host_ns.host_file_conflict(&hosts).is_none());

        // 2. The host is not visible (no CAP_SYS_PTRACE): in the named
        // namespace, anything but its own file is refused.
        let blind = NamespaceView {
            host_netns: "/nonexistent/ns/net",
            host_root: "/nonexistent/root",
            ..view
        };
        assert_eq!(refused(&blind, &hosts).0, "lab1");
        assert!(blind.host_file_conflict(&private).is_none());
        fs::remove_file(&private).unwrap();
        assert_eq!(refused(&blind, &private.with_file_name("x")).1, private);
        // A namespace `ip netns` does not know (or the initial one): nothing to
        // compare, managed as before.
        let unnamed = NamespaceView {
            named_netns: "/nonexistent/run/netns",
            ..blind
        };
        assert!(unnamed.host_file_conflict(&hosts).is_none());
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        paths: SystemPaths,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).unwrap();
        let paths = SystemPaths {
            resolv_conf: etc.join("resolv.conf"),
            backup_dir: dir.path().join("state"),
            resolved_stub: dir.path().join("run/stub-resolv.conf"),
            resolved_upstreams: dir.path().join("run/resolv.conf"),
        };
        Fixture { _dir: dir, paths }
    }

    fn write_original(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn manage_then_restore_is_byte_exact_with_mode() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o640);
        let (mut file, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(
            ups,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap()
            ]
        );
        let ours = fs::read_to_string(p).unwrap();
        assert!(
            ours.starts_with("# managed by weft; the original is in "),
            "{ours}"
        );
        assert!(
            ours.contains("\nnameserver 127.0.2.53\nsearch corp.example\noptions edns0\n"),
            "{ours}"
        );
        assert!(!ours.contains("nameserver 10.0.0.2"));
        assert_eq!(mode_of(p), 0o644);
        assert_eq!(
            fs::read(fx.paths.backup_dir.join(BACKUP_NAME)).unwrap(),
            ORIGINAL
        );

        file.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), ORIGINAL);
        assert_eq!(mode_of(p), 0o640);
        assert!(!fx.paths.backup_dir.join(BACKUP_NAME).exists());
        assert!(!fx.paths.backup_dir.join(META_NAME).exists());
        file.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), ORIGINAL, "restore is idempotent");
    }

    #[test]
    fn symlink_original_is_restored_as_the_same_symlink() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        let target = p.with_file_name("real-resolv.conf");
        write_original(&target, ORIGINAL, 0o644);
        std::os::unix::fs::symlink(&target, p).unwrap();
        let (mut file, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(ups.len(), 2);
        assert!(!fs::symlink_metadata(p).unwrap().file_type().is_symlink());
        assert_eq!(
            fs::read(&target).unwrap(),
            ORIGINAL,
            "the target is never written through"
        );
        file.restore().unwrap();
        assert_eq!(fs::read_link(p).unwrap(), target);
        assert_eq!(fs::read(p).unwrap(), ORIGINAL);
    }

    #[test]
    fn missing_original_is_missing_again() {
        let fx = fixture();
        let (mut file, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert!(ups.is_empty());
        assert!(fx.paths.resolv_conf.exists());
        file.restore().unwrap();
        assert!(!fx.paths.resolv_conf.exists());
    }

    #[test]
    fn drift_rewrite_by_another_program_becomes_the_new_original() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o644);
        let (mut file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(file.check_drift().unwrap(), Drift::Unchanged);

        let dhcp = b"nameserver 192.0.2.99\n";
        write_original(p, dhcp, 0o644);
        assert_eq!(
            file.check_drift().unwrap(),
            Drift::NewOriginal {
                upstreams: vec!["192.0.2.99:53".parse().unwrap()]
            }
        );
        assert!(resolv_conf::is_managed(&fs::read(p).unwrap()));
        assert_eq!(file.check_drift().unwrap(), Drift::Unchanged);
        file.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), dhcp);
    }

    #[test]
    fn drift_damage_or_removal_is_repaired_keeping_the_original() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o644);
        let (mut file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        let ours = fs::read(p).unwrap();
        let mut edited = ours.clone();
        edited.extend_from_slice(b"nameserver 8.8.8.8\n");
        fs::write(p, &edited).unwrap();
        assert_eq!(file.check_drift().unwrap(), Drift::Repaired);
        assert_eq!(fs::read(p).unwrap(), ours);
        fs::remove_file(p).unwrap();
        assert_eq!(file.check_drift().unwrap(), Drift::Repaired);
        assert_eq!(fs::read(p).unwrap(), ours);
        file.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), ORIGINAL);
    }

    #[test]
    fn crash_recovery_never_backs_up_weft_file() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o600);
        let (file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        // kill -9: no restore, no drop logic.
        std::mem::forget(file);
        let (mut again, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(
            ups.len(),
            2,
            "upstreams come from the backup, not weft's file"
        );
        assert_eq!(
            fs::read(fx.paths.backup_dir.join(BACKUP_NAME)).unwrap(),
            ORIGINAL
        );
        again.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), ORIGINAL);
        assert_eq!(mode_of(p), 0o600);
    }

    #[test]
    fn crash_recovery_with_lost_backup_uses_recorded_upstreams() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o644);
        let (file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        std::mem::forget(file);
        fs::remove_dir_all(&fx.paths.backup_dir).unwrap();
        let (mut again, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(
            ups,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap()
            ]
        );
        again.restore().unwrap();
        let restored = resolv_conf::parse(&fs::read_to_string(p).unwrap());
        assert!(!restored.managed);
        assert_eq!(restored.nameservers.len(), 2);
        assert_eq!(
            restored.kept_lines,
            ["search corp.example", "options edns0"]
        );
    }

    #[test]
    fn restart_after_a_clean_restore_takes_the_current_file() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o644);
        let (mut file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        file.restore().unwrap();
        let newer = b"nameserver 192.0.2.1\n";
        write_original(p, newer, 0o644);
        let (mut again, ups) = ManagedFile::start(&fx.paths, OURS).unwrap();
        assert_eq!(ups, vec!["192.0.2.1:53".parse().unwrap()]);
        again.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), newer);
    }

    #[test]
    fn a_configuration_written_during_shutdown_is_left_alone() {
        let fx = fixture();
        let p = &fx.paths.resolv_conf;
        write_original(p, ORIGINAL, 0o644);
        let (mut file, _) = ManagedFile::start(&fx.paths, OURS).unwrap();
        let other = b"nameserver 192.0.2.5\n";
        fs::write(p, other).unwrap();
        file.restore().unwrap();
        assert_eq!(fs::read(p).unwrap(), other);
    }

    #[derive(Debug, Default, Clone)]
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        dns_out: String,
        domain_out: String,
    }

    impl CommandRunner for Recorder {
        fn run(&self, args: &[String]) -> Result<String, String> {
            self.calls.lock().unwrap().push(args.join(" "));
            Ok(match args.get(1).map(String::as_str) {
                Some("dns") if args.len() == 3 => self.dns_out.clone(),
                Some("domain") if args.len() == 3 => self.domain_out.clone(),
                _ => String::new(),
            })
        }
    }

    #[test]
    fn resolved_commands() {
        let server: IpAddr = "100.64.0.1".parse().unwrap();
        let cmds = ResolvedLink::apply_commands(
            "weft0",
            server,
            &["weft.internal".into(), "corp.example".into()],
        );
        let cmds: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "resolvectl dns weft0 100.64.0.1",
                "resolvectl domain weft0 ~weft.internal ~corp.example",
                "resolvectl default-route weft0 false",
            ]
        );
        assert_eq!(
            ResolvedLink::revert_command("weft0").join(" "),
            "resolvectl revert weft0"
        );

        let rec = Recorder {
            dns_out: "Link 7 (weft0): 100.64.0.1\n".into(),
            domain_out: "Link 7 (weft0): ~weft.internal\n".into(),
            ..Recorder::default()
        };
        let calls = rec.calls.clone();
        let mut link = ResolvedLink::new(Box::new(rec));
        link.set_domains(&["weft.internal".into()]).unwrap();
        assert!(
            calls.lock().unwrap().is_empty(),
            "nothing runs before the link is known"
        );
        link.set_link("weft0", server).unwrap();
        assert_eq!(calls.lock().unwrap().len(), 3);
        assert_eq!(link.check_drift().unwrap(), Drift::Unchanged);
        link.set_domains(&["weft.internal".into(), "corp.example".into()])
            .unwrap();
        assert_eq!(
            link.check_drift().unwrap(),
            Drift::Repaired,
            "corp.example is not shown"
        );
        link.revert().unwrap();
        assert_eq!(
            calls.lock().unwrap().last().unwrap(),
            "resolvectl revert weft0"
        );
        link.revert().unwrap();
        assert_eq!(
            calls.lock().unwrap().last().unwrap(),
            "resolvectl revert weft0"
        );
    }

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
