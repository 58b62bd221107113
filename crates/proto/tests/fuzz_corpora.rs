//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! parsers on stable Rust. A missing or empty corpus fails the test.

use weft_proto::fuzzing;

#[path = "../../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn stun_message_corpus() {
    replay("stun_message", fuzzing::stun_message, 6);
}

#[test]
fn sse_parser_corpus() {
    replay("sse_parser", fuzzing::sse_parser, 4);
}

#[test]
fn map_event_decode_corpus() {
    replay("map_event_decode", fuzzing::map_event_decode, 4);
}

#[test]
fn local_api_corpus() {
    replay("local_api", fuzzing::local_api, 4);
}

#[test]
fn dns_blocklist_corpus() {
    replay("dns_blocklist", fuzzing::dns_blocklist, 6);
}
