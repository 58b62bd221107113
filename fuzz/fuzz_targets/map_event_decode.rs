//! Fuzz target: `weft_proto::fuzzing::map_event_decode` (the corpus in `fuzz/corpora/map_event_decode/` is
//! replayed by weft-proto's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::map_event_decode(data);
});
