//! Replays every committed fuzz corpus file (`fuzz/corpora/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so CI exercises the
//! controller's request-body decoding and validation on stable Rust. A missing or empty corpus fails the test.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::path::PathBuf;

use weft_controller::fuzzing;

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
fn controller_request_corpus() {
    replay("controller_request", fuzzing::controller_request, 8);
}
