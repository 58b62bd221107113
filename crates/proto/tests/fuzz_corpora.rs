//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! parsers on stable Rust. A missing or empty corpus fails the test.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::path::PathBuf;

use weft_proto::fuzzing;

fn replay(target: &str, run: fn(&[u8]), at_least: usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpora")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        n += 1;
    }
    assert!(
        n >= at_least,
        "{target}: only {n} corpus files in {}",
        dir.display()
    );
}

#[test]
fn relay_frame_corpus() {
    replay("relay_frame", fuzzing::relay_frame, 8);
}

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
