//! The node API's socket file: created with the mode its access needs,
//! replacing a stale socket but never following or replacing anything else,
//! and removed on exit only while it is still ours.

use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::net::{UnixListener, UnixStream};

/// A bound socket file; dropping it removes the file if it is still the one
/// bound here (a socket with the same device and inode).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // A socket still: a file put in its place may reuse its inode number.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.file_type().is_socket()
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path`: mode 0660 with group `gid`, or 0600 without. Its directory
/// is created (0755) when missing and must be owned by this user and not
/// writable by group or others (so nobody can swap the file between the
/// checks and the chmod). A stale socket (nobody answers) is replaced; a live
/// one, a symlink or any other file is refused.
pub(crate) async fn bind(
    path: &Path,
    gid: Option<u32>,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    check_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another process is serving the node API at {} (a second weftd needs its \
                     own --node-api-socket)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(meta) => bail!(
            "{} exists and is not a socket (it is a {}): refusing to replace it; remove it or \
             choose another --node-api-socket",
            path.display(),
            kind(&meta.file_type())
        ),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the node API socket {}", path.display()))?;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    if !meta.file_type().is_socket() {
        bail!("{} changed under us while binding", path.display());
    }
    let mode = match gid {
        Some(gid) => {
            std::os::unix::fs::lchown(path, None, Some(gid))
                .with_context(|| format!("giving {} to gid {gid}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok((listener, file))
}

/// The socket's directory must be ours and closed to others.
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        bail!(
            "the node API socket's directory {} must be owned by uid {me} and not writable by \
             group or others (it is uid {}, mode {:04o}); use another --node-api-socket",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[tokio::test]
    async fn modes_stale_sockets_symlinks_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.sock");

        // No group: 0600.
        let (listener, file) = bind(&path, None).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // A live socket is not stolen.
        let err = bind(&path, None).await.unwrap_err().to_string();
        assert!(err.contains("another process is serving"), "{err}");
        // Dropping the listener leaves a stale file; a new bind replaces it.
        drop(listener);
        std::mem::forget(file);
        let (listener, file) = bind(&path, Some(100)).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 100));
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed on exit");

        // A symlink (even to a stale socket) and a regular file are refused, untouched.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = bind(&path, None).await.unwrap_err().to_string();
        assert!(err.contains("is not a socket (it is a symlink)"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let err = bind(&path, None).await.unwrap_err().to_string();
        assert!(err.contains("regular file"), "{err}");
        std::fs::remove_file(&path).unwrap();

        // A file that replaced ours is not removed on exit.
        let (listener, file) = bind(&path, None).await.unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    }

    #[tokio::test]
    async fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = bind(&dir.path().join("node.sock"), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not writable by group or others"), "{err}");
    }
}
