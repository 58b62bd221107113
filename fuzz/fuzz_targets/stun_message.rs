//! Fuzz target: `weft_proto::fuzzing::stun_message` (the corpus in `fuzz/corpora/stun_message/` is
//! replayed by weft-proto's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::stun_message(data);
});
