//! The agent's only access to the clocks. Cores get `now` from here, as values.

use std::time::Instant;

/// Monotonic now.
#[expect(
    clippy::disallowed_methods,
    reason = "the single sanctioned clock read of the agent"
)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall-clock now in milliseconds since the Unix epoch (for status timestamps).
#[expect(
    clippy::disallowed_methods,
    reason = "the single sanctioned wall-clock read of the agent"
)]
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
