//! Fuzz target: `weft_tunnel::fuzzing::disco_message` (the corpus in `fuzz/corpora/disco_message/` is
//! replayed by weft-tunnel's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_tunnel::fuzzing::disco_message(data);
});
