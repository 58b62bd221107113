//! TLS for the API (shared code in `weft-tls`): TLS 1.2 and 1.3, ALPN http/1.1.

pub use weft_tls::{TlsError, TlsMaterial, fingerprint, write_private};

/// The API's TLS profile, for [`weft_tls::load`] and [`weft_tls::load_or_generate`].
pub const PROFILE: weft_tls::Profile = weft_tls::Profile {
    tls13_only: false,
    alpn: b"http/1.1",
};
