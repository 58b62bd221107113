//! The private identity file: versioned text, mode 0600 from the first byte,
//! written atomically, checked on load.
//!
//! ```text
//! # weft node identity. PRIVATE: keep it mode 0600 and on this machine only.
//! weft-identity-version: 1
//! public-key: <43 chars, URL-safe base64>
//! secret-key: <43 chars, URL-safe base64 of the Ed25519 seed>
//! pow-nonce: <decimal u64>
//! checksum: <16 hex digits: SHA-256 of the lines above, first 8 bytes>
//! ```
//!
//! Loading refuses a file that group or others can access, a truncated file, a
//! checksum or key mismatch and an unknown version, each with an error that names
//! the file and says what to do. Errors never contain key material.

use std::fs::{self, File};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use weft_fs::WriteOptions;
use zeroize::Zeroizing;

use crate::{Identity, NodeKey, ProofOfWork};

/// The only format version this build reads and writes.
pub const VERSION: u32 = 1;

/// A key file is a few hundred bytes; anything larger is not one.
const MAX_FILE_LEN: u64 = 4096;

const HEADER: &str = "# weft node identity. PRIVATE: keep it mode 0600 and on this machine only.\n";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be opened, read, written or renamed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others have access bits: the key may have leaked.
    #[error(
        "key file {path} is accessible by other users (mode {mode:04o}); a private key must be mode 0600. \
         Fix it with `chmod 600 {path}`; if others may have read it, treat the key as leaked and mint a new identity"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, or far too large to be a key file.
    #[error("{path} is not a weft key file ({why})")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A required field is missing: the file was cut short.
    #[error(
        "key file {path} is truncated (no `{field}` line); restore it from a backup or mint a new identity with `weft identity new`"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The first missing field.
        field: &'static str,
    },
    /// The content does not check out.
    #[error(
        "key file {path} is corrupt ({why}); restore it from a backup or mint a new identity with `weft identity new`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed (never key material).
        why: &'static str,
    },
    /// Written by a newer weft.
    #[error(
        "key file {path} has format version {version}; this weft reads version {VERSION}. Upgrade weft"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// Refusing to replace an existing identity.
    #[error(
        "{path} already exists; refusing to overwrite an identity (remove it first, or pass --force)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// Renders the file content (contains the secret: zeroized when dropped).
pub fn encode(id: &Identity) -> Zeroizing<String> {
    let mut body = Zeroizing::new(String::with_capacity(256));
    body.push_str(&format!("weft-identity-version: {VERSION}\n"));
    body.push_str(&format!("public-key: {}\n", id.node_key()));
    let secret = Zeroizing::new(URL_SAFE_NO_PAD.encode(*id.secret_seed()));
    body.push_str("secret-key: ");
    body.push_str(&secret);
    body.push('\n');
    body.push_str(&format!("pow-nonce: {}\n", id.pow().nonce));
    let sum = checksum(&body);
    let mut out = Zeroizing::new(String::with_capacity(body.len() + 100));
    out.push_str(HEADER);
    out.push_str(&body);
    out.push_str(&format!("checksum: {sum}\n"));
    out
}

/// Parses file content; `path` only labels errors.
pub fn decode(text: &str, path: &Path) -> Result<Identity, KeyFileError> {
    let corrupt = |why| KeyFileError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let mut version = None;
    let mut public = None;
    let mut secret = None;
    let mut nonce = None;
    let mut sum = None;
    let mut body = Zeroizing::new(String::new());
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(": ") else {
            return Err(corrupt("a line is not `field: value`"));
        };
        if k != "checksum" {
            body.push_str(line);
            body.push('\n');
        }
        let slot = match k {
            "weft-identity-version" => &mut version,
            "public-key" => &mut public,
            "secret-key" => &mut secret,
            "pow-nonce" => &mut nonce,
            "checksum" => &mut sum,
            _ => return Err(corrupt("unknown field")),
        };
        if slot.replace(v).is_some() {
            return Err(corrupt("a field appears twice"));
        }
    }
    let truncated = |field| KeyFileError::Truncated {
        path: path.to_owned(),
        field,
    };
    let version: u32 = version
        .ok_or_else(|| truncated("weft-identity-version"))?
        .parse()
        .map_err(|_| corrupt("version is not a number"))?;
    if version != VERSION {
        return Err(KeyFileError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let public = public.ok_or_else(|| truncated("public-key"))?;
    let secret = secret.ok_or_else(|| truncated("secret-key"))?;
    let nonce = nonce.ok_or_else(|| truncated("pow-nonce"))?;
    let sum = sum.ok_or_else(|| truncated("checksum"))?;
    if sum != checksum(&body) {
        return Err(corrupt("checksum mismatch"));
    }
    let public: NodeKey = public
        .parse()
        .map_err(|_| corrupt("public key is not valid"))?;
    let seed = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| corrupt("secret key is not valid base64"))?,
    );
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        seed.as_slice()
            .try_into()
            .map_err(|_| corrupt("secret key is not 32 bytes"))?,
    );
    let nonce: u64 = nonce
        .parse()
        .map_err(|_| corrupt("pow-nonce is not a number"))?;
    let id = Identity::from_parts(&seed, ProofOfWork { nonce });
    if id.node_key() != public {
        return Err(corrupt("secret key does not match the public key"));
    }
    Ok(id)
}

/// Loads and checks a key file: regular file, mode without group/other bits,
/// bounded size, then [`decode`].
pub fn load(path: &Path) -> Result<Identity, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // Check the opened file itself, not the path, so a swap between check and read
    // cannot slip a different file in.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            why: "not a regular file",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            why: "larger than 4 KiB",
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => KeyFileError::Corrupt {
                path: path.to_owned(),
                why: "not UTF-8 text",
            },
            _ => io(e),
        })?;
    decode(&text, path)
}

/// Writes `id` to `path` atomically: a temporary file in the same directory is
/// created with mode 0600 (never wider, not even briefly), written, fsynced and
/// then moved into place; the directory is fsynced too. With `overwrite` false an
/// existing file is never replaced.
pub fn save(path: &Path, id: &Identity, overwrite: bool) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(KeyFileError::Exists {
            path: path.to_owned(),
        });
    }
    if path.file_name().is_none() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            why: "path has no file name",
        });
    }
    let opts = if overwrite {
        WriteOptions::PRIVATE
    } else {
        WriteOptions::PRIVATE.no_replace()
    };
    weft_fs::write_atomic(path, encode(id).as_bytes(), opts).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            io(e)
        }
    })
}

fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Difficulty, SearchOptions};
    use rand_core::OsRng;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::AtomicBool;

    fn id() -> Identity {
        Identity::mint(
            &mut OsRng,
            Difficulty::new(8).unwrap(),
            &SearchOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap()
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = id();
        save(&p, &a, false).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let b = load(&p).unwrap();
        assert_eq!(a.node_key(), b.node_key());
        assert_eq!(a.pow(), b.pow());
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        save(&p, &id(), false).unwrap();
        assert!(matches!(
            save(&p, &id(), false),
            Err(KeyFileError::Exists { .. })
        ));
        let c = id();
        save(&p, &c, true).unwrap();
        assert_eq!(load(&p).unwrap().node_key(), c.node_key());
    }

    #[test]
    fn refuses_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        save(&p, &id(), false).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&p).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { .. }),
                "{mode:o}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("chmod 600") && msg.contains(&p.display().to_string()));
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load(&p).is_ok());
    }

    #[test]
    fn truncation_at_every_length_fails_cleanly() {
        let a = id();
        let text = encode(&a);
        let p = Path::new("/x/node.key");
        // Every proper prefix fails, except dropping only the final newline.
        for cut in 0..text.len() - 1 {
            let res = decode(&text[..cut], p);
            assert!(res.is_err(), "cut at {cut} accepted");
        }
        assert!(decode(&text, p).is_ok());
    }

    #[test]
    fn any_flipped_character_is_caught_and_never_echoed() {
        let a = id();
        let text = encode(&a);
        let seed_b64 = URL_SAFE_NO_PAD.encode(*a.secret_seed());
        let start = HEADER.len();
        for i in start..text.len() {
            let mut bytes = text.as_bytes().to_vec();
            if bytes[i] == b'\n' {
                continue;
            }
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(s) = String::from_utf8(bytes) else {
                continue;
            };
            match decode(&s, Path::new("k")) {
                Ok(b) => panic!("flip at {i} accepted: {:?}", b.node_key()),
                Err(e) => assert!(!e.to_string().contains(&seed_b64)),
            }
        }
    }

    #[test]
    fn unknown_version_is_reported() {
        let text = "weft-identity-version: 9\n";
        assert!(matches!(
            decode(text, Path::new("k")),
            Err(KeyFileError::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        use std::fs::OpenOptions;
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        f.write_all(&vec![0xff; 10_000]).unwrap();
        assert!(matches!(load(&p), Err(KeyFileError::NotAKeyFile { .. })));
        fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(load(&p), Err(KeyFileError::Corrupt { .. })));
        assert!(matches!(
            load(dir.path()),
            Err(KeyFileError::NotAKeyFile { .. }
                | KeyFileError::Permissions { .. }
                | KeyFileError::Io { .. })
        ));
    }
}
