//! Fuzz target: `weft_policy::fuzzing::policy_match` (the corpus in `fuzz/corpora/policy_match/` is
//! replayed by weft-policy's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_policy::fuzzing::policy_match(data);
});
