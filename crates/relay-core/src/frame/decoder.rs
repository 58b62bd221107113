//! [`FrameDecoder`]: frames from a byte stream that arrives in pieces.

use bytes::{Buf as _, BytesMut};

use super::codec::parse_header;
use super::{Frame, FrameError, HEADER_LEN};

/// Incremental decoder for a byte stream: [`feed`](Self::feed) what arrives,
/// then call [`next_frame`](Self::next_frame) until `None`.
///
/// It buffers at most one incomplete frame (≤ [`MAX_FRAME`](super::MAX_FRAME) bytes) beyond what
/// the caller fed since the last drain. After a fatal error it returns that error
/// again on every call and the caller must drop the stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next frame, a skipped bad frame (`Err` with `is_fatal() == false`), a
    /// fatal error, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let header = self.buf.get(..HEADER_LEN)?;
        let (ty, len) = match parse_header(header) {
            Ok(h) => h,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = BytesMut::new();
                return Some(Err(e));
            }
        };
        if self.buf.len() < HEADER_LEN + len {
            // Reserve once for the whole frame (bounded by MAX_FRAME).
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return None;
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Some(Frame::parse_body(ty, body))
    }

    /// Bytes held that do not yet form a complete frame. Non-zero when the
    /// stream ends means the last frame was truncated.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
