//! TLS for the relay (shared code in `weft-tls`): TLS 1.3 only (the login is
//! bound to the session with a TLS 1.3 exporter), ALPN `weft-relay/1`.

use std::path::Path;

use weft_proto::relay::ALPN;
pub use weft_tls::{TlsError, TlsMaterial, fingerprint, write_private};

const PROFILE: weft_tls::Profile = weft_tls::Profile {
    tls13_only: true,
    alpn: ALPN,
};

/// Loads a PEM certificate chain and private key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsMaterial, TlsError> {
    weft_tls::load(cert_path, key_path, PROFILE)
}

/// Loads `dir/cert.pem` + `dir/key.pem`; generates a self-signed pair (names
/// `localhost`, `127.0.0.1`, `::1` and `extra_names`) only if `create`, and
/// otherwise refuses a missing half with [`TlsError::Missing`].
pub fn load_or_generate(
    dir: &Path,
    extra_names: &[String],
    create: bool,
) -> Result<TlsMaterial, TlsError> {
    weft_tls::load_or_generate(dir, extra_names, PROFILE, create)
}
