//! Fuzz target: `weft_controller::fuzzing::controller_request` (the corpus in `fuzz/corpora/controller_request/` is
//! replayed by weft-controller's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_controller::fuzzing::controller_request(data);
});
