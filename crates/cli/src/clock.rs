//! The `weft` CLI's one clock: every reading of the monotonic clock and the
//! wall clock in this crate goes through here (the clippy lint
//! `disallowed_methods` bans them elsewhere).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock: round-trip times, deadlines, progress rates.
#[expect(
    clippy::disallowed_methods,
    reason = "the CLI's I/O shell reads the clock here, and only here"
)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// The wall clock in Unix milliseconds (how long a failure has lasted, from
/// the agent's `since_unix_ms`); 0 before 1970.
#[expect(
    clippy::disallowed_methods,
    reason = "the CLI's I/O shell reads the clock here, and only here"
)]
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
