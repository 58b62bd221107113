//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! controller's request-body decoding and validation on stable Rust. A missing or empty corpus fails the test.

use weft_controller::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn controller_request_corpus() {
    replay("controller_request", fuzzing::controller_request, 8);
}
