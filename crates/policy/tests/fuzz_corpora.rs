//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! policy parser and packet matcher on stable Rust. A missing or empty corpus fails the test.

use weft_policy::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn policy_parse_corpus() {
    replay("policy_parse", fuzzing::policy_parse, 4);
}

#[test]
fn policy_match_corpus() {
    replay("policy_match", fuzzing::policy_match, 4);
}

#[test]
fn hostfw_parse_corpus() {
    replay("hostfw_parse", fuzzing::hostfw_parse, 7);
}
