//! Fuzz target: `weft_dns::fuzzing::dns_query` (the corpus in `fuzz/corpora/dns_query/` is
//! replayed by weft-dns's `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_dns::fuzzing::dns_query(data);
});
