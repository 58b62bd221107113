//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! DNS query handler on stable Rust. A missing or empty corpus fails the test.

use weft_dns::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn dns_query_corpus() {
    replay("dns_query", fuzzing::dns_query, 4);
}
