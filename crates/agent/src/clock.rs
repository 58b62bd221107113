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
