//! File primitives of the system side: bounded reads and replacing a file (or a
//! symlink) so a crash leaves the old one or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use weft_fs::WriteOptions;

use crate::error::DnsError;
use crate::resolv_conf::{self, ResolvConf};

/// Reads at most [`resolv_conf::MAX_LEN`] bytes; `None` if the file is missing.
pub(super) fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, DnsError> {
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

pub(super) fn read_conf(path: &Path) -> Option<ResolvConf> {
    let bytes = read_limited(path).ok().flatten()?;
    Some(resolv_conf::parse(&String::from_utf8_lossy(&bytes)))
}

/// Replaces `path` with a regular file holding `bytes`: a synced temporary file
/// renamed over it (which also replaces a symlink rather than writing through
/// it). Where `path` is a mount point (`ip netns exec` bind-mounts
/// `/etc/netns/NS/resolv.conf` there, containers mount theirs) rename fails with
/// EBUSY, and the file is rewritten in place instead.
pub(super) fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), DnsError> {
    let opts = match owner {
        Some((uid, gid)) => WriteOptions::mode(mode).owner(uid, gid),
        None => WriteOptions::mode(mode),
    };
    // The temporary file's name carries the process id: several agents (one
    // per lab namespace) may write their bind-mounted resolv.conf at once, and
    // they share the real /etc directory.
    match weft_fs::write_atomic(path, bytes, opts) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(EBUSY) => {
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
        Err(e) => Err(DnsError::io(path, e)),
    }
}

/// `EBUSY` on Linux: the target of a rename is a mount point.
const EBUSY: i32 = 16;

pub(super) fn replace_with_symlink(path: &Path, target: &Path) -> Result<(), DnsError> {
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

pub(super) fn remove_if_exists(path: &Path) -> Result<(), DnsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DnsError::io(path, e)),
    }
}

/// Syncs the directory holding `path` so a rename survives a power cut; best
/// effort (some filesystems refuse to sync a directory).
pub(super) fn sync_dir(path: &Path) {
    let _ = weft_fs::sync_parent(path);
}
