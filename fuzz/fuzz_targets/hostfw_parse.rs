//! Fuzz target: `weft_policy::fuzzing::hostfw_parse` (the corpus in `fuzz/corpora/hostfw_parse/` is
//! replayed by weft-policy's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_policy::fuzzing::hostfw_parse(data);
});
