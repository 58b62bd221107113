//! Shared by every crate's `tests/fuzz_corpora.rs` (included with `#[path]`):
//! replays the committed corpus `fuzz/corpora/<target>/` through the entry point
//! the cargo-fuzz target calls, so CI exercises it on stable Rust. A missing or
//! too small corpus, or an input that panics, fails the test.
//! (Not a fuzz target: the fuzz package lists its targets by name.)

use std::path::PathBuf;

pub(crate) fn replay(target: &str, run: fn(&[u8]), at_least: usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpora")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .path();
        if !path.is_file() {
            continue;
        }
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
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
