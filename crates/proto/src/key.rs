//! The node identity key as it appears on the wire and to users.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A node's public identity: its 32-byte Ed25519 public key.
///
/// Displayed and parsed as unpadded URL-safe base64 (43 characters), so it can be
/// used in URL paths and file names unescaped. The bytes are not validated as a
/// curve point here; `weft-identity` does that when it verifies a signature.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey([u8; 32]);

/// Why a string is not a [`NodeKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDecodeError {
    /// The text is not unpadded URL-safe base64.
    #[error("node key is not URL-safe base64 without padding")]
    Base64,
    /// The text decodes to something other than 32 bytes.
    #[error("node key must be 32 bytes (43 base64 characters), got {0} bytes")]
    Length(usize),
}

impl NodeKey {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 43;

    /// Wraps raw public-key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({self})")
    }
}

impl FromStr for NodeKey {
    type Err = KeyDecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bound the work before decoding: a valid key is exactly 43 characters.
        if s.len() != Self::TEXT_LEN {
            return Err(KeyDecodeError::Length(s.len() * 3 / 4));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| KeyDecodeError::Base64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyDecodeError::Length(bytes.len()))?;
        Ok(Self(arr))
    }
}

impl serde::Serialize for NodeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trip(bytes in any::<[u8; 32]>()) {
            let key = NodeKey::from_bytes(bytes);
            let text = key.to_string();
            prop_assert_eq!(text.len(), NodeKey::TEXT_LEN);
            prop_assert_eq!(text.parse::<NodeKey>(), Ok(key));
        }

        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = s.parse::<NodeKey>();
        }
    }

    #[test]
    fn rejects_wrong_length_and_alphabet() {
        assert!(matches!(
            "abc".parse::<NodeKey>(),
            Err(KeyDecodeError::Length(_))
        ));
        let bad = "+".repeat(NodeKey::TEXT_LEN);
        assert_eq!(bad.parse::<NodeKey>(), Err(KeyDecodeError::Base64));
    }

    #[test]
    fn serde_uses_text_form() {
        let key = NodeKey::from_bytes([7; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        let back: NodeKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
    }
}
