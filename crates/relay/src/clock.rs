//! The one place the relay reads the clock; everything else gets time as an
//! argument.
#![expect(
    clippy::disallowed_methods,
    reason = "the relay's I/O shell reads the clock here and passes it down"
)]

use std::time::Instant;

/// A monotonic instant.
pub(crate) fn now() -> Instant {
    Instant::now()
}
