//! The crate's only clock read: the server shell takes `now` here and passes it
//! to the pure cache.

use std::time::Instant;

/// Monotonic now.
#[expect(
    clippy::disallowed_methods,
    reason = "the single sanctioned clock read of the DNS server shell"
)]
pub(crate) fn now() -> Instant {
    Instant::now()
}
