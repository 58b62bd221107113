//! Fuzz target: `weft_proto::fuzzing::relay_frame` (the corpus in `fuzz/corpora/relay_frame/` is
//! replayed by weft-proto's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::relay_frame(data);
});
