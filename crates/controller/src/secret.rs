//! Bearer secrets: the admin token, join tokens, node credentials and relay tokens.
//!
//! Each is 32 random bytes (256 bits) in unpadded URL-safe base64 behind a prefix
//! that says what it is (`weft_admin_`, `weft_join_`, `weft_node_`, `weft_relay_`), which makes
//! leaked secrets easy to recognise and to scan for. Only SHA-256 hashes are
//! stored: with 256 bits of entropy a fast hash is enough (no password hashing),
//! and comparisons are constant-time.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of the admin token.
pub const ADMIN_PREFIX: &str = "weft_admin_";
/// Prefix of join tokens.
pub const JOIN_PREFIX: &str = "weft_join_";
/// Prefix of node credentials.
pub const NODE_PREFIX: &str = "weft_node_";
/// Prefix of relay tokens.
pub const RELAY_PREFIX: &str = "weft_relay_";

/// Longest secret accepted from a client (bounds hashing work).
pub const MAX_SECRET_LEN: usize = 128;

/// SHA-256 of a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hashes a secret.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({self})")
    }
}

impl serde::Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for SecretHash {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err("hash must be 64 hex digits");
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| "not hex")?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| "not hex")?;
        }
        Ok(Self(out))
    }
}

/// Generates a secret with `prefix`; returns it and its hash.
pub fn generate(prefix: &str, rng: &mut impl CryptoRngCore) -> (String, SecretHash) {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let secret = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = SecretHash::of(&secret);
    (secret, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trip_and_ct_eq() {
        let (s, h) = generate(JOIN_PREFIX, &mut rand_core::OsRng);
        assert!(s.starts_with(JOIN_PREFIX));
        assert_eq!(s.len(), JOIN_PREFIX.len() + 43);
        assert_eq!(h, SecretHash::of(&s));
        assert_eq!(h.to_string().parse::<SecretHash>(), Ok(h));
        assert!(h.ct_eq(&SecretHash::of(&s)));
        assert!(!h.ct_eq(&SecretHash::of("other")));
        assert!("zz".parse::<SecretHash>().is_err());
    }
}
