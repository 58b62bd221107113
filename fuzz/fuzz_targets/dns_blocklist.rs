//! Fuzz target: `weft_proto::fuzzing::dns_blocklist` (the corpus in
//! `fuzz/corpora/dns_blocklist/` is replayed by weft-proto's
//! `tests/fuzz_corpora.rs` on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weft_proto::fuzzing::dns_blocklist(data);
});
