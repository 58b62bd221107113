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

/// Wall time, Unix milliseconds (the query log's timestamps).
#[expect(
    clippy::disallowed_methods,
    reason = "the DNS shell's one wall-clock read, for query log timestamps"
)]
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
