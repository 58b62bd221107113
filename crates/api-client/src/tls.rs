//! rustls client configuration: system roots, a CA file, or a pinned leaf
//! certificate fingerprint.

use std::sync::Arc;

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

pub(crate) fn client_config(trust: &Trust) -> Result<Arc<TlsConfig>, ClientError> {
    tls_client_config(trust, &[b"http/1.1"])
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting
/// `trust` and offering the ALPN protocols `alpn`; for other TLS protocols that
/// trust servers the same way as the API client (the relay client uses it).
pub fn tls_client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<Arc<TlsConfig>, ClientError> {
    let provider = provider();
    let builder = TlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Trust(e.to_string()))?;
    let mut config = match trust {
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Trust(format!("reading CA file {}: {e}", path.display()))
            })?;
            builder
                .with_root_certificates(roots_from_pem(&pem)?)
                .with_no_client_auth()
        }
        Trust::CaPem(pem) => builder
            .with_root_certificates(roots_from_pem(pem)?)
            .with_no_client_auth(),
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
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
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
