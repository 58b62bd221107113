//! TLS for the relay: a certificate from files, or a self-signed one generated
//! on first start and kept in the data directory (so its fingerprint, which the
//! controller hands to nodes for pinning, stays the same across restarts).
//! TLS 1.3 only (the login is bound to the session with a TLS 1.3 exporter),
//! ALPN `weft-relay/1`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use weft_proto::relay::ALPN;

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

/// A ready server configuration and its fingerprint.
pub struct TlsMaterial {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// `sha256:<64 lowercase hex>` of the leaf certificate, for pinning.
    pub fingerprint: String,
    /// The certificate file.
    pub cert_path: PathBuf,
}

/// `sha256:<64 lowercase hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: String = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsMaterial, TlsError> {
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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsMaterial {
        config: Arc::new(config),
        fingerprint,
        cert_path: cert_path.to_owned(),
    })
}

/// Loads `dir/cert.pem` + `dir/key.pem`, generating them first if absent. The
/// certificate names `localhost`, `127.0.0.1`, `::1` and `extra_names`.
pub fn load_or_generate(dir: &Path, extra_names: &[String]) -> Result<TlsMaterial, TlsError> {
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
    load(&cert_path, &key_path)
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
    fs::rename(&tmp, path)
}
