//! Fuzz target: `weft_tunnel::fuzzing::tunnel_datagram` (the corpus in `fuzz/corpora/tunnel_datagram/` is
//! replayed by weft-tunnel's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_tunnel::fuzzing::tunnel_datagram(data);
});
