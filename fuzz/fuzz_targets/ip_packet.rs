//! Fuzz target: `weft_tunnel::fuzzing::ip_packet` (the corpus in `fuzz/corpora/ip_packet/` is
//! replayed by weft-tunnel's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_tunnel::fuzzing::ip_packet(data);
});
