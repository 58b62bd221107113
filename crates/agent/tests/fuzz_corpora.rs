//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! agent's application of map JSON on stable Rust. A missing or empty corpus fails the test.

use weft_agent::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn netmap_apply_corpus() {
    replay("netmap_apply", fuzzing::netmap_apply, 4);
}
