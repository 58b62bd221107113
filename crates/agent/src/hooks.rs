//! The hooks directory (`weftd --hooks-dir`, default [`DEFAULT_HOOKS_DIR`]):
//! scripts an admin installed on the node and approved by hash at the
//! controller (`weft admin hook approve NAME SHA256`).
//!
//! Trust rules, checked on every listing and every run:
//! - the directory is root-owned, not a symlink, with no group or other
//!   permission bits (mode 0700 or stricter); otherwise it is refused as a
//!   whole and no hook runs;
//! - each hook is a regular file (a symlink, a directory, a FIFO is refused),
//!   root-owned, not group- or other-writable, at most [`MAX_HOOK_BYTES`];
//! - its name is a plain file name (`[A-Za-z0-9._-]`, 1 to 64 bytes); names
//!   starting with `.` are ignored (editors' temporary files).
//!
//! A missing directory is no hook at all (not an error).
//!
//! [`list`] hashes every hook for the integrity report. [`hook_for_run`]
//! opens the checked directory, then the one file a task names once,
//! relative to that directory's descriptor (`openat`, no symlink followed),
//! checks it through its open descriptor, reads it whole and hashes those
//! bytes; the task then runs exactly those bytes ([`VerifiedHook::body`],
//! written to the task's own working directory), so a file changed between
//! the check and the run cannot be what runs.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use weft_proto::integrity::{HookHash, MAX_HOOKS, MAX_HOOKS_ERROR_LEN};
use weft_proto::task::check_hook_name;
use weft_proto::text::escape_for_display;

/// Where hooks live unless `weftd --hooks-dir` says otherwise.
pub const DEFAULT_HOOKS_DIR: &str = "/etc/weft/hooks";
/// The largest hook file, in bytes (1 MiB).
pub(crate) const MAX_HOOK_BYTES: u64 = 1 << 20;

/// Who must own the directory and the hooks: root.
const ROOT: u32 = 0;

/// What [`list`] found: every acceptable hook with its hash, and why the
/// directory or some hooks in it were refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// By name.
    pub(crate) hooks: Vec<HookHash>,
    /// Everything refused, in one bounded sentence.
    pub(crate) error: Option<String>,
}

/// Why a hook task may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookRefusal {
    /// The name is not a plain file name.
    #[error("{0:?} is not a hook name ([A-Za-z0-9._-], 1 to 64 bytes, not starting with '.')")]
    BadName(String),
    /// The hooks directory is refused (owner, mode, symlink, unreadable).
    #[error("the hooks directory is refused: {0}")]
    Dir(String),
    /// No such hook (or no hooks directory).
    #[error("hook {name} does not exist in {dir}")]
    NotFound {
        /// The hook.
        name: String,
        /// The directory.
        dir: String,
    },
    /// The hook file is refused (type, owner, mode, size, unreadable).
    #[error("hook {name} is refused: {why}")]
    File {
        /// The hook.
        name: String,
        /// Why.
        why: String,
    },
    /// The admin approved no hash for this hook.
    #[error(
        "hook {name} is not approved (sha256 {sha256}; weft admin hook approve {name} {sha256})"
    )]
    NotApproved {
        /// The hook.
        name: String,
        /// Its content's hash.
        sha256: String,
    },
    /// The file's hash is none of the approved ones: it changed since.
    #[error(
        "hook {name} changed since it was approved (sha256 {sha256} is not approved; weft admin hook approve {name} {sha256} after reviewing it)"
    )]
    Changed {
        /// The hook.
        name: String,
        /// Its content's hash now.
        sha256: String,
    },
}

/// A hook that passed every check, with the exact bytes that were hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedHook {
    /// The hook's name.
    pub(crate) name: String,
    /// SHA-256 of [`VerifiedHook::body`], one of the approved hashes.
    pub(crate) sha256: String,
    /// The file's content as read and hashed: what must run.
    pub(crate) body: Vec<u8>,
}

/// SHA-256 of `b`, lowercase hex.
pub(crate) fn sha256_hex(b: &[u8]) -> String {
    crate::state::hex(&Sha256::digest(b))
}

fn shown(p: &Path) -> String {
    escape_for_display(&p.display().to_string()).into_owned()
}

/// Opens `path` without following a final symlink and without blocking on a
/// FIFO.
fn open_nofollow(path: &Path, dir: bool) -> std::io::Result<File> {
    let mut flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if dir {
        flags |= nix::libc::O_DIRECTORY;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

/// Why an open with `O_NOFOLLOW` failed, in words.
fn open_error(path: &Path, e: &std::io::Error) -> String {
    let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if symlink {
        format!("{} is a symlink", shown(path))
    } else {
        format!("{}: {e}", shown(path))
    }
}

/// Checks the directory's metadata: a directory owned by `owner` with no
/// group or other bits.
fn check_dir_meta(dir: &Path, m: &Metadata, owner: u32) -> Result<(), String> {
    if !m.is_dir() {
        return Err(format!("{} is not a directory", shown(dir)));
    }
    if m.uid() != owner {
        return Err(format!(
            "{} is owned by uid {} (must be {owner}: root)",
            shown(dir),
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:04o} (group or other bits; must be 0700)",
            shown(dir),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks a hook's metadata (from its open descriptor): a regular file owned
/// by `owner`, not group- or other-writable, not too large.
fn check_file_meta(m: &Metadata, owner: u32) -> Result<(), String> {
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    if m.uid() != owner {
        return Err(format!("owned by uid {} (must be {owner}: root)", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:04o} is group- or other-writable",
            m.mode() & 0o7777
        ));
    }
    if m.len() > MAX_HOOK_BYTES {
        return Err(format!("{} bytes (at most {MAX_HOOK_BYTES})", m.len()));
    }
    Ok(())
}

/// The directory, open and checked through its descriptor: `Ok(None)` when
/// it does not exist.
fn open_dir(dir: &Path, owner: u32) -> Result<Option<File>, String> {
    let f = match open_nofollow(dir, true) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(dir, &e)),
    };
    let m = f.metadata().map_err(|e| format!("{}: {e}", shown(dir)))?;
    check_dir_meta(dir, &m, owner)?;
    Ok(Some(f))
}

/// Opens hook `name` once, relative to the checked directory's descriptor
/// (`openat`: a directory swapped after its check is not where the hook is
/// read from) without following a symlink, checks it through its own
/// descriptor and reads it whole (bounded).
fn read_hook(dir: &File, name: &str, owner: u32) -> Result<Option<Vec<u8>>, String> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let f = match nix::fcntl::openat(dir, name, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::ELOOP) => return Err("a symlink".into()),
        Err(e) => return Err(e.desc().to_owned()),
    };
    let m = f.metadata().map_err(|e| e.to_string())?;
    check_file_meta(&m, owner)?;
    let mut body = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
    f.take(MAX_HOOK_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading it: {e}"))?;
    if body.len() as u64 > MAX_HOOK_BYTES {
        return Err(format!("more than {MAX_HOOK_BYTES} bytes"));
    }
    Ok(Some(body))
}

/// Lists and hashes every hook in `dir` (blocking: call it off the async
/// runtime).
pub(crate) fn list(dir: &Path) -> Listing {
    list_owned_by(dir, ROOT)
}

fn list_owned_by(dir: &Path, owner: u32) -> Listing {
    let dir_fd = match open_dir(dir, owner) {
        Ok(None) => return Listing::default(),
        Ok(Some(f)) => f,
        Err(e) => {
            return Listing {
                hooks: Vec::new(),
                error: Some(bounded(vec![format!("{e}; no hook runs")])),
            };
        }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            return Listing {
                hooks: Vec::new(),
                error: Some(bounded(vec![format!("{}: {e}", shown(dir))])),
            };
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => match e.file_name().into_string() {
                Ok(n) if n.starts_with('.') => {}
                Ok(n) => names.push(n),
                Err(raw) => errors.push(format!(
                    "{}: not a valid hook name",
                    escape_for_display(&raw.to_string_lossy())
                )),
            },
            Err(e) => errors.push(format!("{}: {e}", shown(dir))),
        }
    }
    names.sort();
    let mut hooks = Vec::new();
    for name in names {
        if check_hook_name(&name).is_err() {
            errors.push(format!(
                "{}: not a valid hook name",
                escape_for_display(&name)
            ));
            continue;
        }
        if hooks.len() == MAX_HOOKS {
            errors.push(format!(
                "more than {MAX_HOOKS} hooks; the rest are not listed"
            ));
            break;
        }
        match read_hook(&dir_fd, &name, owner) {
            Ok(Some(body)) => hooks.push(HookHash {
                sha256: sha256_hex(&body),
                name,
            }),
            Ok(None) => {} // removed since the listing
            Err(why) => errors.push(format!("hook {name}: {why}")),
        }
    }
    Listing {
        hooks,
        error: (!errors.is_empty()).then(|| bounded(errors)),
    }
}

/// `errors` as one sentence of at most [`MAX_HOOKS_ERROR_LEN`] bytes.
fn bounded(errors: Vec<String>) -> String {
    let all = errors.join("; ");
    if all.len() <= MAX_HOOKS_ERROR_LEN {
        return all;
    }
    let mut end = MAX_HOOKS_ERROR_LEN - 4;
    while !all.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &all[..end])
}

/// Checks hook `name` in `dir` for a run: the directory and the file pass
/// every trust rule and the file's SHA-256 is one of `approved`. The bytes
/// hashed are returned; run those, never the file again (blocking: call it
/// off the async runtime).
pub(crate) fn hook_for_run(
    dir: &Path,
    name: &str,
    approved: &[String],
) -> Result<VerifiedHook, HookRefusal> {
    hook_for_run_owned_by(dir, name, approved, ROOT)
}

fn hook_for_run_owned_by(
    dir: &Path,
    name: &str,
    approved: &[String],
    owner: u32,
) -> Result<VerifiedHook, HookRefusal> {
    if check_hook_name(name).is_err() {
        return Err(HookRefusal::BadName(
            escape_for_display(name).chars().take(80).collect(),
        ));
    }
    let not_found = || HookRefusal::NotFound {
        name: name.to_owned(),
        dir: shown(dir),
    };
    let Some(dir_fd) = open_dir(dir, owner).map_err(HookRefusal::Dir)? else {
        return Err(not_found());
    };
    let body = read_hook(&dir_fd, name, owner)
        .map_err(|why| HookRefusal::File {
            name: name.to_owned(),
            why,
        })?
        .ok_or_else(not_found)?;
    let sha256 = sha256_hex(&body);
    if approved.is_empty() {
        return Err(HookRefusal::NotApproved {
            name: name.to_owned(),
            sha256,
        });
    }
    if !approved.contains(&sha256) {
        return Err(HookRefusal::Changed {
            name: name.to_owned(),
            sha256,
        });
    }
    Ok(VerifiedHook {
        name: name.to_owned(),
        sha256,
        body,
    })
}

impl fmt::Display for VerifiedHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hook {} (sha256 {})", self.name, self.sha256)
    }
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
