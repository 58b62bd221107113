//! Fuzz entry point of the relay frame codec, shared by the cargo-fuzz target
//! `fuzz/fuzz_targets/relay_frame.rs` and the corpus replay test
//! (`tests/fuzz_corpora.rs`), so CI exercises exactly what the fuzzer runs, on
//! stable Rust. It must not panic on any input; the assertions inside are the
//! properties being fuzzed.

use weft_proto::fuzzing::chunks;

use crate::frame::{Frame, FrameDecoder, MAX_FRAME};

/// The relay frame decoder over a stream split at arbitrary points.
pub fn relay_frame(data: &[u8]) {
    let mut d = FrameDecoder::new();
    'stream: for chunk in chunks(data) {
        d.feed(chunk);
        while let Some(r) = d.next_frame() {
            match r {
                Ok(f) => {
                    let bytes = f.to_vec();
                    assert_eq!(bytes.len(), f.encoded_len());
                    assert_eq!(Frame::decode(&bytes), Ok((f, bytes.len())));
                }
                Err(e) if e.is_fatal() => break 'stream,
                Err(_) => {}
            }
        }
        assert!(d.buffered() <= MAX_FRAME + 97);
    }
    let _ = Frame::decode(data);
}
