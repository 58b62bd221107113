//! [`Payload`]: a packet the relay carries, capped at [`MAX_PAYLOAD`] bytes.

use bytes::Bytes;

use super::MAX_PAYLOAD;

/// A packet carried by the relay: at most [`MAX_PAYLOAD`] bytes. The relay
/// never looks inside (it is WireGuard ciphertext).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(Bytes);

/// A payload over [`MAX_PAYLOAD`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("relay payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
pub struct PayloadTooLarge(pub usize);

impl Payload {
    /// Wraps `bytes` if they fit in a frame.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, PayloadTooLarge> {
        let bytes = bytes.into();
        if bytes.len() > MAX_PAYLOAD {
            return Err(PayloadTooLarge(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Copies `bytes` if they fit in a frame.
    pub fn copy_from_slice(bytes: &[u8]) -> Result<Self, PayloadTooLarge> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(PayloadTooLarge(bytes.len()));
        }
        Ok(Self(Bytes::copy_from_slice(bytes)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, by value.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext is noise to a reader; its length is what matters.
        write!(f, "Payload({} bytes)", self.0.len())
    }
}
