//! Proof-of-work throughput: hashes per second on one core, verification cost, and
//! the time to mint at the default difficulty on one core and on all cores.
//!
//! `cargo bench -p weft-identity --bench pow`. The D=24 groups are slow by design
//! (each sample is a full search); set `WEFT_BENCH_D24=0` to skip them.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft_identity::pow::{self, Difficulty, SearchOptions};
use weft_identity::{NodeKey, ProofOfWork};

fn hashing(c: &mut Criterion) {
    let key = NodeKey::from_bytes([42; 32]);
    let mut g = c.benchmark_group("pow");
    g.throughput(Throughput::Elements(1));
    let mut nonce = 0u64;
    g.bench_function("hash", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            black_box(pow::pow_hash(black_box(&key), nonce))
        })
    });
    let proof = ProofOfWork { nonce: 7 };
    g.bench_function("verify", |b| {
        b.iter(|| black_box(proof.verify(black_box(&key), Difficulty::new(0).unwrap_or_default())))
    });
    g.finish();
}

fn minting(c: &mut Criterion) {
    if std::env::var("WEFT_BENCH_D24").as_deref() == Ok("0") {
        return;
    }
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let mut g = c.benchmark_group("mint-d24");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    let d = Difficulty::DEFAULT;
    let mut seed = 0u8;
    for threads in [NonZeroUsize::MIN, cores] {
        let opts = SearchOptions {
            threads,
            ..SearchOptions::default()
        };
        g.bench_with_input(BenchmarkId::new("threads", threads), &opts, |b, opts| {
            b.iter(|| {
                // A different key each time: the search length is geometric.
                seed = seed.wrapping_add(1);
                let key = NodeKey::from_bytes([seed; 32]);
                black_box(pow::search(&key, d, opts, &AtomicBool::new(false), |_| {}))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, minting);
criterion_main!(benches);
