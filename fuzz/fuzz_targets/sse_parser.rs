//! Fuzz target: `weft_proto::fuzzing::sse_parser` (the corpus in `fuzz/corpora/sse_parser/` is
//! replayed by weft-proto's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::sse_parser(data);
});
