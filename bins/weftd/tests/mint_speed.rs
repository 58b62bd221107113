//! Minting is as fast in a dev build as the optimised hash allows.
//!
//! This test crate is a workspace member, so a dev build compiles it at
//! opt-level 0, like `weftd` and `weft` themselves. Anything of the proof-of-work
//! search that is compiled here instead of in `weft-identity` (which the
//! workspace profile optimises even in dev builds) makes minting slow: before the
//! search loop stopped being generic, a debug `weft identity new` took 30 to 100
//! times longer than a release one.

#![allow(clippy::disallowed_methods, reason = "the test measures real time")]

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_identity::pow::{self, Difficulty, MintError, SearchOptions};
use weft_proto::NodeKey;

/// Hashes per second of `pow::search` on one thread, as seen by a caller in
/// this (unoptimised) crate.
fn search_rate(key: &NodeKey, run_for: Duration) -> f64 {
    let cancel = AtomicBool::new(false);
    let start = Instant::now();
    let opts = SearchOptions {
        threads: NonZeroUsize::MIN,
        report_every: Duration::from_millis(20),
    };
    let res = pow::search(key, Difficulty::MAX, &opts, &cancel, |_| {
        if start.elapsed() >= run_for {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    match res {
        Err(MintError::Cancelled { hashes }) => hashes as f64 / elapsed,
        Ok(p) => panic!("found a difficulty-40 proof by chance: nonce {}", p.nonce),
    }
}

/// Hashes per second of `pow::pow_hash`, a non-generic function compiled (and
/// optimised) in `weft-identity`; each call absorbs the key again, so it does
/// two SHA-256 compressions where the search does one.
fn reference_rate(key: &NodeKey, run_for: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    let mut acc = 0u8;
    while start.elapsed() < run_for {
        for _ in 0..4096 {
            acc ^= pow::pow_hash(key, n)[0];
            n += 1;
        }
    }
    std::hint::black_box(acc);
    n as f64 / start.elapsed().as_secs_f64()
}

#[test]
fn search_called_from_an_unoptimised_crate_runs_at_optimised_speed() {
    let key = NodeKey::from_bytes([7; 32]);
    let run_for = Duration::from_millis(600);
    // Interleaved and best-of-three, so a busy machine slows both sides alike.
    let mut search = 0f64;
    let mut reference = 0f64;
    for _ in 0..3 {
        reference = reference.max(reference_rate(&key, run_for));
        search = search.max(search_rate(&key, run_for));
    }
    eprintln!("search {search:.0} hashes/s, reference {reference:.0} hashes/s (one thread)");
    // Optimised, the search is about twice the reference (one compression per
    // nonce instead of two); compiled at opt-level 0 it was 20 to 100 times slower.
    assert!(
        search >= 0.5 * reference,
        "pow::search runs at {search:.0} hashes/s, the optimised single hash at \
         {reference:.0}/s: part of the search is compiled unoptimised in the caller"
    );
}
