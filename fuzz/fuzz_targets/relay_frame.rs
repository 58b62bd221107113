//! Fuzz target: `weft_relay_core::fuzzing::relay_frame` (the corpus in `fuzz/corpora/relay_frame/` is
//! replayed by weft-relay-core's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_relay_core::fuzzing::relay_frame(data);
});
