//! rustls client configuration: system roots, a CA file, or a pinned leaf
//! certificate fingerprint.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig as TlsConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};

use crate::ClientError;
use crate::client::Trust;

/// Parses `sha256:<64 hex>` (the prefix and `:` separators between bytes are
/// optional; case-insensitive).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ClientError> {
    let bad = || ClientError::Trust("fingerprint must be sha256:<64 hex digits>".into());
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    if s.len() > 200 {
        return Err(bad());
    }
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn client_config(trust: &Trust) -> Result<(Arc<TlsConfig>, SeenCert), ClientError> {
    tls_client_config_seen(trust, &[b"http/1.1"])
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting
/// `trust` and offering the ALPN protocols `alpn`; for other TLS protocols that
/// trust servers the same way as the API client (the relay client uses it).
pub fn tls_client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<Arc<TlsConfig>, ClientError> {
    tls_client_config_seen(trust, alpn).map(|(c, _)| c)
}

/// The SHA-256 of the last end-entity certificate a server presented to a
/// configuration from [`tls_client_config_seen`] (for [`tls_failure_hint`]).
#[derive(Debug, Clone, Default)]
pub struct SeenCert(Arc<Mutex<Option<[u8; 32]>>>);

impl SeenCert {
    /// The fingerprint last seen, if a server got as far as presenting one.
    pub fn get(&self) -> Option<[u8; 32]> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, fp: [u8; 32]) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fp);
    }
}

/// `sha256:<hex>`, the spelling `--pin-sha256` takes and the servers print.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("sha256:");
    for b in fp {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// [`tls_client_config`] that also records the certificate each server
/// presents, so a failed handshake can say which one it was.
pub fn tls_client_config_seen(
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<(Arc<TlsConfig>, SeenCert), ClientError> {
    let provider = provider();
    let builder = TlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Trust(e.to_string()))?;
    let seen = SeenCert::default();
    let inner: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Fingerprint(pin) => Arc::new(PinnedVerifier {
            pin: *pin,
            provider: provider.clone(),
        }),
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Trust(format!("reading CA file {}: {e}", path.display()))
            })?;
            webpki(roots_from_pem(&pem)?, &provider)?
        }
        Trust::CaPem(pem) => webpki(roots_from_pem(pem)?, &provider)?,
        Trust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientError::Trust(
                    "no system CA certificates found; pass a CA file or a certificate fingerprint"
                        .into(),
                ));
            }
            webpki(roots, &provider)?
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording {
            inner,
            seen: seen.clone(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), seen))
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, ClientError> {
    let v: Arc<dyn ServerCertVerifier> =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ClientError::Trust(e.to_string()))?;
    Ok(v)
}

/// What a failed TLS handshake means for the user, when it is the server's
/// certificate that was refused: which certificate (its fingerprint) and what
/// to pass (`--pin-sha256`, `--ca-file`). `None` for other failures.
pub fn tls_failure_hint(
    err: &std::io::Error,
    seen: Option<[u8; 32]>,
    trust: &Trust,
) -> Option<String> {
    let rustls::Error::InvalidCertificate(why) = err.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    let seen = seen.map_or_else(|| "unknown".to_owned(), |fp| format_fingerprint(&fp));
    Some(match trust {
        Trust::Fingerprint(pin) => format!(
            "the server's certificate has fingerprint {seen}, not the pinned {}: check \
             --pin-sha256 against the fingerprint the server printed when it started (a new \
             certificate, or someone in between)",
            format_fingerprint(pin)
        ),
        Trust::CaFile(_) | Trust::CaPem(_) => format!(
            "the server's certificate ({seen}) is not trusted by the CA given ({why:?}): pass \
             --ca-file with the CA that signed it, or --pin-sha256 {seen} once you have checked \
             that this is the fingerprint the server printed when it started"
        ),
        Trust::SystemRoots => format!(
            "the server's certificate ({seen}) is not trusted by the system's CAs ({why:?}): \
             for a self-signed server pass --pin-sha256 {seen} once you have checked that this is \
             the fingerprint it printed when it started, or --ca-file with the CA that signed it"
        ),
    })
}

/// Records the end-entity certificate's fingerprint, then lets `inner` decide.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: SeenCert,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.set(Sha256::digest(end_entity.as_ref()).into());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ClientError::Trust(format!("CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Trust(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Trust("CA file holds no certificate".into()));
    }
    Ok(roots)
}

/// Accepts exactly the server certificate whose SHA-256 is pinned, whatever its
/// names or validity dates (the pin is the trust decision); handshake
/// signatures are still verified, so the server must hold the key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let hex = "ab".repeat(32);
        let want = [0xab; 32];
        assert_eq!(parse_fingerprint(&hex).unwrap(), want);
        assert_eq!(parse_fingerprint(&format!("sha256:{hex}")).unwrap(), want);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), want);
        assert!(parse_fingerprint("sha256:abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
