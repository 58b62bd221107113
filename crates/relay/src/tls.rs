//! TLS for the relay (shared code in `weft-tls`): TLS 1.3 only (the login is
//! bound to the session with a TLS 1.3 exporter), ALPN `weft-relay/1`.

use weft_relay_core::frame::ALPN;
pub use weft_tls::{TlsError, TlsMaterial, fingerprint, write_private};

/// The relay's TLS profile, for [`weft_tls::load`] and [`weft_tls::load_or_generate`].
pub const PROFILE: weft_tls::Profile = weft_tls::Profile {
    tls13_only: true,
    alpn: ALPN,
};
