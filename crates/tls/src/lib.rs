//! Server TLS material for weft's servers (controller and relay): a certificate
//! chain from PEM files, or a self-signed pair generated on first start and kept
//! in the data directory, so its fingerprint (which clients pin) stays the same
//! across restarts. Also the `sha256:<hex>` fingerprint format, the atomic
//! 0600 file writes both servers use for their state files (`weft-fs`'s
//! [`write_private`], re-exported), and their data directory: created 0700,
//! looser modes reported, locked by one process.
//!
//! Lost state is never silently replaced: the pair is generated only when the
//! caller says this start may create state (a first start into an empty data
//! directory, or `--init`); otherwise a missing half is an error that names the
//! file and the way out.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
pub use weft_fs::write_private;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// The kept pair is (partly) gone and this start may not create state.
    #[error(
        "{} is missing{}. This server's TLS key pair is its identity: agents and relays pin its fingerprint. \
         Restore {} from a backup, or start with --init to generate a new pair deliberately \
         (a new fingerprint: every agent and relay pinned to the old one must be re-pinned)",
        missing.display(),
        if *both { " (and so is the certificate next to it)" } else { "" },
        dir.display()
    )]
    Missing {
        /// The missing file (the key when both are gone).
        missing: PathBuf,
        /// Both files are gone.
        both: bool,
        /// The directory that should hold them.
        dir: PathBuf,
    },
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "{} is in use by another process{}: two servers must not share one data directory (stop the other one, or give this one its own --data-dir)",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it recorded it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("locking {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How a server speaks TLS.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Accept only TLS 1.3 (needed when the protocol uses TLS 1.3 exporters).
    pub tls13_only: bool,
    /// The one ALPN protocol offered.
    pub alpn: &'static [u8],
}

/// A ready server configuration and what to tell operators about it.
pub struct TlsMaterial {
    /// The rustls configuration (ring provider, versions and ALPN per [`Profile`]).
    pub config: Arc<ServerConfig>,
    /// `sha256:<hex>` of the leaf certificate, for pinning.
    pub fingerprint: String,
    /// The certificate file (give it to clients as a CA file).
    pub cert_path: PathBuf,
}

/// `sha256:<64 lowercase hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert_path: &Path, key_path: &Path, profile: Profile) -> Result<TlsMaterial, TlsError> {
    let pem = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem(cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert_path, e))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            why: "no certificate found".into(),
        });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem(key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider);
    let builder = if profile.tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![profile.alpn.to_vec()];
    Ok(TlsMaterial {
        config: Arc::new(config),
        fingerprint,
        cert_path: cert_path.to_owned(),
    })
}

/// Loads `dir/cert.pem` + `dir/key.pem`. If either is missing, generates a new
/// self-signed pair only when `create` (a first start, or `--init`; a file left
/// of the old pair is moved aside to `NAME.replaced-<unix time>`), and is
/// [`TlsError::Missing`] otherwise. The certificate names `localhost`,
/// `127.0.0.1`, `::1` and `extra_names`. `now_unix_secs` (from the caller's
/// clock) names a file moved aside.
pub fn load_or_generate(
    dir: &Path,
    extra_names: &[String],
    profile: Profile,
    create: bool,
    now_unix_secs: u64,
) -> Result<TlsMaterial, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let (has_cert, has_key) = (cert_path.exists(), key_path.exists());
    if !has_cert || !has_key {
        if !create {
            return Err(TlsError::Missing {
                missing: if has_key { cert_path } else { key_path },
                both: !has_cert && !has_key,
                dir: dir.to_owned(),
            });
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        private_dir(dir).map_err(io(dir))?;
        for (path, present) in [(&cert_path, has_cert), (&key_path, has_key)] {
            if present {
                move_aside(path, now_unix_secs).map_err(io(path))?;
            }
        }
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        write_private(&cert_path, ck.cert.pem().as_bytes()).map_err(io(&cert_path))?;
    }
    load(&cert_path, &key_path, profile)
}

/// Renames `path` to `path.replaced-<now_unix_secs>` (kept, not deleted: it
/// may be the half of something an operator wants back); the time comes from
/// the caller's clock. Returns the new name.
pub fn move_aside(path: &Path, now_unix_secs: u64) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".replaced-{now_unix_secs}"));
    let to = PathBuf::from(name);
    fs::rename(path, &to)?;
    Ok(to)
}

/// Creates `dir` (and missing parents) with mode 0700. Returns the mode of the
/// directory if group or others have any access to it (the caller warns: it
/// holds private keys), `None` if it is private.
pub fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    Ok(loose(meta.mode()))
}

/// The mode of `path` if group or others have any access to it; `None` if it
/// is private or does not exist.
pub fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).ok().and_then(|m| loose(m.mode()))
}

fn loose(mode: u32) -> Option<u32> {
    (mode & 0o077 != 0).then_some(mode & 0o7777)
}

/// An exclusive lock on a data directory, held until dropped (for a server:
/// its lifetime; the kernel releases it when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Takes the exclusive lock on `dir/lock` (flock), recording this process's
/// pid in it; [`LockError::Busy`] names the holder if another process has it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    use std::io::{Read as _, Seek as _};
    let path = dir.join("lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Busy {
                dir: dir.to_owned(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io)?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The time that names a moved-aside file.
    const T: u64 = 1_700_000_000;

    const P: Profile = Profile {
        tls13_only: true,
        alpn: b"test/1",
    };

    #[test]
    fn generated_pair_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path(), &["relay.test".into()], P, true, T).unwrap();
        let b = load_or_generate(dir.path(), &[], P, false, T).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "kept across restarts");
        assert!(a.fingerprint.starts_with("sha256:") && a.fingerprint.len() == 71);
        let mode = fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(a.config.alpn_protocols, vec![b"test/1".to_vec()]);
    }

    #[test]
    fn a_lost_half_is_refused_unless_creating_and_then_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path(), &[], P, true, T).unwrap();
        fs::remove_file(dir.path().join("key.pem")).unwrap();
        let err = load_or_generate(dir.path(), &[], P, false, T)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("key.pem is missing"), "{err}");
        assert!(err.contains("--init") && err.contains("backup"), "{err}");
        assert!(dir.path().join("cert.pem").exists(), "nothing replaced");
        let b = load_or_generate(dir.path(), &[], P, true, T).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("cert.pem.replaced-{T}"))
            })
            .count();
        assert_eq!(aside, 1, "the old certificate is kept aside");
        fs::remove_file(dir.path().join("cert.pem")).unwrap();
        fs::remove_file(dir.path().join("key.pem")).unwrap();
        let err = load_or_generate(dir.path(), &[], P, false, T)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("and so is the certificate"), "{err}");
    }

    #[test]
    fn data_dir_is_private_and_locked_by_one_process() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert_eq!(private_dir(&dir).unwrap(), None);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&dir).unwrap(), Some(0o755));
        let lock = lock_dir(&dir).unwrap();
        match lock_dir(&dir) {
            Err(LockError::Busy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(lock);
        assert!(lock_dir(&dir).is_ok(), "released on drop");
    }

    #[test]
    fn missing_or_empty_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err = load(&empty, &empty, P).err().unwrap().to_string();
        assert!(err.contains("empty.pem"), "{err}");
    }
}
