//! The one place the relay reads the clock; everything else gets time as an
//! argument.
#![expect(
    clippy::disallowed_methods,
    reason = "the relay's I/O shell reads the clock here and passes it down"
)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A monotonic instant.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Seconds since the Unix epoch (names a file moved aside); 0 before 1970.
pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
