//! The managed resolv.conf backend: weft's own file, with the original backed up
//! and put back exactly (see the module docs of [`crate::system`]).

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::files::{
    read_conf, read_limited, remove_if_exists, replace_with_symlink, sync_dir, write_file,
};
use super::{BACKUP_NAME, Drift, SystemPaths};
use crate::error::DnsError;
use crate::resolv_conf;

/// The backup's metadata (kind, mode, owner, symlink target), beside [`BACKUP_NAME`].
const META_NAME: &str = "resolv.conf.weft-backup.meta";
const META_MAGIC: &str = "weft resolv.conf backup v1";

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

#[cfg(test)]
mod tests {
    use super::super::testing::{ORIGINAL, OURS, fixture, mode_of, write_original};
    use super::*;

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
}
