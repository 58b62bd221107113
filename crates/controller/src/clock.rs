//! The one place that reads the clock; everything else gets time as an argument.
#![expect(
    clippy::disallowed_methods,
    reason = "the controller's I/O shell reads the clock here and passes it down"
)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A monotonic instant.
pub fn now() -> Instant {
    Instant::now()
}
