//! Server TLS material for weft's servers (controller and relay): a certificate
//! chain from PEM files, or a self-signed pair generated on first start and kept
//! in the data directory, so its fingerprint (which clients pin) stays the same
//! across restarts. Also the `sha256:<hex>` fingerprint format and the atomic
//! 0600 file writes both servers use for their state files.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

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

/// Loads `dir/cert.pem` + `dir/key.pem`, generating them first if absent. The
/// certificate names `localhost`, `127.0.0.1`, `::1` and `extra_names`.
pub fn load_or_generate(
    dir: &Path,
    extra_names: &[String],
    profile: Profile,
) -> Result<TlsMaterial, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
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

/// Writes a file atomically with mode 0600 from the first byte.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const P: Profile = Profile {
        tls13_only: true,
        alpn: b"test/1",
    };

    #[test]
    fn generated_pair_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path(), &["relay.test".into()], P).unwrap();
        let b = load_or_generate(dir.path(), &[], P).unwrap();
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
    fn missing_or_empty_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err = load(&empty, &empty, P).err().unwrap().to_string();
        assert!(err.contains("empty.pem"), "{err}");
    }
}
