//! Fuzz target: `weft_proto::fuzzing::local_api` (the corpus in `fuzz/corpora/local_api/` is
//! replayed by weft-proto's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::local_api(data);
});
