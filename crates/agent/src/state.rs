//! The agent's state directory: identity, controller credential, cached map.
//!
//! ```text
//! STATE_DIR/identity.key     private identity (weft-identity key file, 0600)
//! STATE_DIR/credential.json  controller URLs, TLS trust, node credential (0600)
//! STATE_DIR/netmap.json      last applied network map + SHA-256 checksum (0600)
//! ```
//!
//! Every file is written atomically (temp file created 0600, fsync, rename, fsync
//! dir). A cache that fails its checksum or does not parse is discarded with a
//! log line: the agent then runs with no peers until the controller answers
//! (fail closed, never allow-all).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use weft_identity::{Difficulty, Identity, SearchOptions, keyfile};
use weft_proto::netmap::NetworkMap;

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// What the agent needs to reconnect to its controller.
///
/// On disk the URLs are `controllers` (a list) plus `controller` (the first
/// of them, as files written before lists existed have it and as an older
/// weftd reads it); a file with only `controller` is read as a list of one.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "CredentialFile", into = "CredentialFile")]
pub struct Credential {
    /// Controller base URLs (replicas of one controller), at least one; the
    /// link moves from one to the next when the one in use fails.
    pub controllers: Vec<String>,
    /// The per-node bearer credential. Never logged.
    pub credential: String,
    /// PEM CA file to trust, if any.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Pinned SHA-256 certificate fingerprint (hex), if any.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// Cleartext to a non-loopback controller explicitly allowed.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Subnets this node offers as a gateway (`weft up --advertise-routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertise_routes: Vec<String>,
}

/// The file's shape of [`Credential`].
#[derive(Serialize, Deserialize)]
struct CredentialFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    controller: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    controllers: Vec<String>,
    credential: String,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    pin_sha256: Option<String>,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    advertise_routes: Vec<String>,
}

impl TryFrom<CredentialFile> for Credential {
    type Error = String;

    fn try_from(f: CredentialFile) -> Result<Self, String> {
        let controllers = if f.controllers.is_empty() {
            vec![f.controller]
        } else {
            f.controllers
        };
        if controllers.iter().any(String::is_empty) {
            return Err("no controller URL".into());
        }
        if controllers.len() > weft_api_client::MAX_URLS {
            return Err(format!(
                "{} controller URLs; at most {}",
                controllers.len(),
                weft_api_client::MAX_URLS
            ));
        }
        Ok(Credential {
            controllers,
            credential: f.credential,
            ca_file: f.ca_file,
            pin_sha256: f.pin_sha256,
            allow_insecure_http: f.allow_insecure_http,
            advertise_routes: f.advertise_routes,
        })
    }
}

impl From<Credential> for CredentialFile {
    fn from(c: Credential) -> Self {
        CredentialFile {
            controller: c.controllers.first().cloned().unwrap_or_default(),
            controllers: c.controllers,
            credential: c.credential,
            ca_file: c.ca_file,
            pin_sha256: c.pin_sha256,
            allow_insecure_http: c.allow_insecure_http,
            advertise_routes: c.advertise_routes,
        }
    }
}

impl Credential {
    /// The URLs as `weft up --controller` takes them (comma-separated).
    pub fn controller_list(&self) -> String {
        self.controllers.join(",")
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("controllers", &self.controllers)
            .field("credential", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("pin_sha256", &self.pin_sha256)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct CachedMap {
    checksum: String,
    map: serde_json::Value,
}

impl StateDir {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        // The same helper as the controller's and the relay's data directories.
        let loose = weft_tls::private_dir(root)
            .with_context(|| format!("opening state directory {}", root.display()))?;
        if let Some(mode) = loose {
            tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:04o}"),
                "state directory is accessible by other users; it holds private keys (chmod 700 it)"
            );
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn identity_path(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    fn credential_path(&self) -> PathBuf {
        self.root.join("credential.json")
    }

    fn map_path(&self) -> PathBuf {
        self.root.join("netmap.json")
    }

    /// Whether an identity has been minted (it may still fail to load).
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Loads the identity, minting one (with progress logs) on first start;
    /// `hashes_done` is kept up to date while minting (for the local API).
    pub fn load_or_mint_identity(
        &self,
        difficulty: Difficulty,
        cancel: &AtomicBool,
        hashes_done: &AtomicU64,
    ) -> anyhow::Result<Identity> {
        let path = self.identity_path();
        if path.exists() {
            let id = keyfile::load(&path)?;
            tracing::info!(node_key = %id.node_key(), "loaded identity");
            return Ok(id);
        }
        tracing::info!(
            difficulty = difficulty.bits(),
            "no identity yet: minting one (proof of work; this takes a few seconds)"
        );
        let expected = difficulty.expected_hashes();
        let mut last_pct = 0u64;
        let id = Identity::mint(
            &mut rand_core::OsRng,
            difficulty,
            &SearchOptions::default(),
            cancel,
            |hashes| {
                hashes_done.store(hashes, Ordering::Relaxed);
                let pct = (100.0 * hashes as f64 / expected) as u64;
                if pct >= last_pct + 25 && pct < 1000 {
                    last_pct = pct;
                    tracing::info!("proof of work: {pct}% of expected work done");
                }
            },
        )?;
        keyfile::save(&path, &id, false)?;
        tracing::info!(node_key = %id.node_key(), file = %path.display(), "minted identity");
        Ok(id)
    }

    /// Where a new identity waits while a key rotation is under way
    /// (`identity.next`, 0600): written before the controller is asked, renamed
    /// over `identity.key` once it confirmed.
    pub(crate) fn next_identity_path(&self) -> PathBuf {
        self.root.join("identity.next")
    }

    /// The identity of a key rotation under way, if there is one.
    pub(crate) fn load_next_identity(&self) -> anyhow::Result<Option<Identity>> {
        let path = self.next_identity_path();
        if !path.exists() {
            return Ok(None);
        }
        let id = keyfile::load(&path).with_context(|| {
            format!(
                "{} (a key rotation under way) is unusable; move it away to rotate again",
                path.display()
            )
        })?;
        Ok(Some(id))
    }

    /// Saves the identity of a key rotation (0600 from the first byte, never
    /// replacing one).
    pub(crate) fn save_next_identity(&self, id: &Identity) -> anyhow::Result<()> {
        keyfile::save(&self.next_identity_path(), id, false)
            .context("saving the new identity of a key rotation")
    }

    /// The controller has the new key: `identity.next` becomes `identity.key`
    /// (a rename, then the directory is synced).
    pub(crate) fn promote_next_identity(&self) -> anyhow::Result<()> {
        let (next, path) = (self.next_identity_path(), self.identity_path());
        fs::rename(&next, &path)
            .with_context(|| format!("renaming {} to {}", next.display(), path.display()))?;
        fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.root.display()))
    }

    /// The controller refused the new key for good: `identity.next` is moved
    /// aside (kept, never deleted) to `identity.next.refused-<unix ms>`.
    pub(crate) fn set_next_identity_aside(&self, now_ms: u64) -> anyhow::Result<PathBuf> {
        let next = self.next_identity_path();
        let aside = self.root.join(format!("identity.next.refused-{now_ms}"));
        fs::rename(&next, &aside)
            .with_context(|| format!("moving {} to {}", next.display(), aside.display()))?;
        Ok(aside)
    }

    /// The saved credential, if the node has joined.
    pub fn load_credential(&self) -> anyhow::Result<Option<Credential>> {
        let path = self.credential_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        check_private(&path)?;
        let c = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt; remove it and join again with `weft up --token ...`",
                path.display()
            )
        })?;
        Ok(Some(c))
    }

    /// Saves the credential (0600, atomic).
    pub fn save_credential(&self, c: &Credential) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(c)?;
        write_private(&self.credential_path(), &bytes)
    }

    /// Saves the map with a checksum (0600, atomic).
    pub fn save_map(&self, map: &NetworkMap) -> anyhow::Result<()> {
        let value = serde_json::to_value(map)?;
        let canonical = serde_json::to_vec(&value)?;
        let cached = CachedMap {
            checksum: hex(&Sha256::digest(&canonical)),
            map: value,
        };
        write_private(&self.map_path(), &serde_json::to_vec(&cached)?)
    }

    /// Loads the cached map. A missing cache is `Ok(None)`; a corrupt or
    /// unverifiable one is discarded (renamed aside) and reported as an error the
    /// caller logs.
    pub fn load_map(&self) -> anyhow::Result<Option<NetworkMap>> {
        let path = self.map_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let verdict = (|| -> Result<NetworkMap, &'static str> {
            let cached: CachedMap = serde_json::from_slice(&bytes).map_err(|_| "not valid JSON")?;
            let canonical = serde_json::to_vec(&cached.map).map_err(|_| "not valid JSON")?;
            if hex(&Sha256::digest(&canonical)) != cached.checksum {
                return Err("checksum mismatch");
            }
            serde_json::from_value(cached.map).map_err(|_| "not a network map of this version")
        })();
        match verdict {
            Ok(map) => Ok(Some(map)),
            Err(why) => {
                let aside = path.with_extension("json.corrupt");
                let _ = fs::rename(&path, &aside);
                bail!(
                    "cached network map {} is unusable ({why}); discarded (moved to {}), running with no peers until the controller answers",
                    path.display(),
                    aside.display()
                )
            }
        }
    }
}

fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = fs::metadata(path)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is accessible by other users (mode {mode:04o}); it holds a secret credential: chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600 from the first byte
/// (`weft-fs`: temporary file, fsync, rename, directory fsync).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    weft_fs::write_private(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use weft_proto::netmap::SelfNode;

    fn map() -> NetworkMap {
        NetworkMap {
            api_version: weft_proto::api::API_VERSION,
            version: 7,
            node: SelfNode {
                node_key: weft_proto::NodeKey::from_bytes([1; 32]),
                name: "a".into(),
                tags: vec![],
            },
            networks: vec![],
            relays: vec![],
            policy: None,
            data: vec![],
            secrets: vec![],
            host_firewall: None,
            dns_blocklist: None,
            services: vec![],
            provides: vec![],
            ssh_hosts: vec![],
        }
    }

    #[test]
    fn map_cache_round_trip_and_corruption_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        assert!(st.load_map().unwrap().is_none());
        st.save_map(&map()).unwrap();
        let mode = fs::metadata(st.map_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(st.load_map().unwrap(), Some(map()));

        let text = fs::read_to_string(st.map_path()).unwrap();
        fs::write(
            st.map_path(),
            text.replace("\"version\":7", "\"version\":8"),
        )
        .unwrap();
        let err = st.load_map().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(!st.map_path().exists(), "corrupt cache moved aside");
        assert!(st.load_map().unwrap().is_none());

        fs::write(st.map_path(), b"{trunc").unwrap();
        assert!(st.load_map().is_err());
    }

    #[test]
    fn credential_is_private_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        let c = Credential {
            controllers: vec!["https://c".into(), "https://c2:8443".into()],
            credential: "sekrit-123".into(),
            ca_file: None,
            pin_sha256: None,
            allow_insecure_http: false,
            advertise_routes: vec!["192.168.50.0/24".into()],
        };
        st.save_credential(&c).unwrap();
        assert_eq!(st.load_credential().unwrap(), Some(c.clone()));
        assert!(!format!("{c:?}").contains("sekrit"));
        fs::set_permissions(st.credential_path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(st.load_credential().is_err());
    }

    #[test]
    fn credential_files_with_one_url_still_load_and_lists_keep_the_first_for_old_readers() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        // A file written before controller lists existed.
        let old = r#"{"controller":"https://c:8443","credential":"k","ca_file":null,"pin_sha256":"ab","allow_insecure_http":false}"#;
        write_private(&st.credential_path(), old.as_bytes()).unwrap();
        let c = st.load_credential().unwrap().unwrap();
        assert_eq!(c.controllers, vec!["https://c:8443".to_owned()]);
        assert_eq!(c.pin_sha256.as_deref(), Some("ab"));

        // A list is written as `controllers`, and its first URL as
        // `controller` (what an older weftd reads).
        let two = Credential {
            controllers: vec!["https://a:8443".into(), "https://b:8443".into()],
            ..c
        };
        st.save_credential(&two).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(st.credential_path()).unwrap()).unwrap();
        assert_eq!(v["controller"], "https://a:8443");
        assert_eq!(v["controllers"][1], "https://b:8443");
        assert_eq!(st.load_credential().unwrap(), Some(two));
        assert_eq!(
            st.load_credential().unwrap().unwrap().controller_list(),
            "https://a:8443,https://b:8443"
        );

        // No URL at all is refused, naming the file.
        write_private(&st.credential_path(), br#"{"credential":"k"}"#).unwrap();
        let err = format!("{:#}", st.load_credential().unwrap_err());
        assert!(err.contains("credential.json is corrupt"), "{err}");
    }
}
