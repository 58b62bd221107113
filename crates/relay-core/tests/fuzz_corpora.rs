//! Replays the committed relay frame corpus (`fuzz/corpora/relay_frame/`)
//! through the entry point the cargo-fuzz target calls, so CI exercises the
//! codec on stable Rust. A missing or empty corpus fails the test.

use weft_relay_core::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn relay_frame_corpus() {
    replay("relay_frame", fuzzing::relay_frame, 8);
}
