//! Durable file writes, the one way weft replaces a file: a temporary file in
//! the same directory, created with its final mode (never wider, not even
//! briefly), written and fsynced, then moved into place, then the directory
//! fsynced, so a crash or power cut leaves the old file or the new one, never
//! half of either.
//!
//! Used for key files (`weft-identity`), the agent's state, the controller's
//! and relay's TLS material and state files (`weft-tls`), and the resolver
//! files `weft-dns` manages. Errors are the underlying [`std::io::Error`]
//! unchanged (its kind and OS error code intact), for the caller to name the
//! file; the temporary file is removed on every failure.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// How [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    mode: u32,
    owner: Option<(u32, u32)>,
    replace: bool,
}

impl WriteOptions {
    /// Mode 0600, replacing an existing file: secrets and private state.
    pub const PRIVATE: WriteOptions = WriteOptions {
        mode: 0o600,
        owner: None,
        replace: true,
    };

    /// This mode (set exactly, whatever the umask), replacing an existing file.
    pub const fn mode(mode: u32) -> WriteOptions {
        WriteOptions {
            mode,
            owner: None,
            replace: true,
        }
    }

    /// Also give the file this owner and group (before it is in place).
    #[must_use]
    pub const fn owner(self, uid: u32, gid: u32) -> WriteOptions {
        WriteOptions {
            owner: Some((uid, gid)),
            ..self
        }
    }

    /// Never replace an existing file: fail with
    /// [`io::ErrorKind::AlreadyExists`] instead (atomically: no check-then-create
    /// race).
    #[must_use]
    pub const fn no_replace(self) -> WriteOptions {
        WriteOptions {
            replace: false,
            ..self
        }
    }
}

/// Writes `bytes` to `path` with [`WriteOptions::PRIVATE`] (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, WriteOptions::PRIVATE)
}

/// Replaces (or with [`WriteOptions::no_replace`], creates) `path` with a file
/// holding `bytes`: temporary file `.NAME.tmp-PID` in the same directory,
/// created with the mode, written, fsynced, renamed (or hard-linked) into
/// place, directory fsynced. A rename over a mount point fails with `EBUSY`,
/// returned as is (the caller may write in place instead).
pub fn write_atomic(path: &Path, bytes: &[u8], opts: WriteOptions) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_temp(&tmp, bytes, opts).and_then(|()| {
        if opts.replace {
            fs::rename(&tmp, path)
        } else {
            // hard_link fails if the target exists, closing the
            // check-then-create race.
            fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
        }
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn write_temp(tmp: &Path, bytes: &[u8], opts: WriteOptions) -> io::Result<()> {
    // A temporary file left by a crashed run of this process id.
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(opts.mode)
        .open(tmp)?;
    // The umask may have narrowed the mode; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(opts.mode))?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// Fsyncs the directory holding `path`, so a rename or a new file in it
/// survives a power cut. A filesystem that cannot sync a directory (`EINVAL`)
/// is not an error.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match File::open(dir)?.sync_all() {
        Err(e) if e.raw_os_error() == Some(EINVAL) => Ok(()),
        r => r,
    }
}

/// `EINVAL` on Linux.
const EINVAL: i32 = 22;

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn private_files_are_0600_and_replace_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("resolv.conf");
        write_atomic(&p, b"nameserver 127.0.2.53\n", WriteOptions::mode(0o644)).unwrap();
        assert_eq!(mode(&p), 0o644);
    }

    #[test]
    fn no_replace_keeps_an_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        let opts = WriteOptions::PRIVATE.no_replace();
        write_atomic(&p, b"first", opts).unwrap();
        let e = write_atomic(&p, b"second", opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_the_old_content() {
        let d = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the write.
        let p = d.path().join("busy");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"x").unwrap();
        assert!(write_private(&p, b"data").is_err());
        assert!(p.is_dir());
        assert!(leftovers(d.path()).is_empty());
        // No such directory: an error naming nothing half-written.
        let missing = d.path().join("no/such/file");
        assert_eq!(
            write_private(&missing, b"x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_stale_temporary_file_of_a_crashed_run_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(temp_path(&p).unwrap(), b"half").unwrap();
        write_private(&p, b"{}").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert!(leftovers(d.path()).is_empty());
    }
}
