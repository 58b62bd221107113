//! Fuzz target: `weft_agent::fuzzing::netmap_apply` (the corpus in `fuzz/corpora/netmap_apply/` is
//! replayed by weft-agent's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_agent::fuzzing::netmap_apply(data);
});
