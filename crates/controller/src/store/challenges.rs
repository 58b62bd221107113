//! Registration challenges valid on every replica (migration 0016): the key
//! every replica MACs challenges with (`meta` row `challenge_key`, created
//! once under the write lock at the first start), and the challenges of
//! successful registrations (`used_challenges`), kept until they expire so
//! that a challenge is used once across replicas.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::StoreError;

/// Bytes of a challenge's MAC tag: its identity in the used set.
pub const TAG_LEN: usize = 16;

/// A challenge's MAC tag.
pub type ChallengeTag = [u8; TAG_LEN];

/// The `meta` key of the challenge key.
pub const KEY_META: &str = "challenge_key";

/// The challenge key: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ChallengeKey(pub [u8; 32]);

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(..)")
    }
}

impl ChallengeKey {
    /// As stored: unpadded URL-safe base64.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`ChallengeKey::encode`] text; anything else is corrupt.
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        fixed(s, "meta challenge_key").map(ChallengeKey)
    }
}

/// A used challenge: its tag, and when it expires (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsedChallengeRecord {
    /// The challenge's MAC tag.
    #[serde(with = "tag_b64")]
    pub tag: ChallengeTag,
    /// When the challenge expires, Unix ms.
    pub expires_ms: u64,
}

/// Encodes a tag as stored (unpadded URL-safe base64).
pub fn encode_tag(tag: &ChallengeTag) -> String {
    URL_SAFE_NO_PAD.encode(tag)
}

/// Parses a stored tag.
pub fn decode_tag(s: &str) -> Result<ChallengeTag, StoreError> {
    fixed(s, "used_challenges tag")
}

fn fixed<const N: usize>(s: &str, what: &str) -> Result<[u8; N], StoreError> {
    if s.len() > N * 2 {
        return Err(StoreError::Corrupt(format!("{what}: too long")));
    }
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{what}: not {N} bytes of base64")))
}

mod tag_b64 {
    use super::{ChallengeTag, decode_tag, encode_tag};

    pub(super) fn serialize<S: serde::Serializer>(
        t: &ChallengeTag,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_tag(t))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<ChallengeTag, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode_tag(&s).map_err(serde::de::Error::custom)
    }

    use serde::Deserialize as _;
}

/// A challenge row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeWrite {
    /// Stores the challenge key (the first start, under the write lock); a
    /// key already stored fails the batch rather than being replaced.
    CreateKey(ChallengeKey),
    /// A registration used a challenge (a tag already stored fails the batch).
    Use(UsedChallengeRecord),
    /// Deletes the used challenges with `expires_ms <= through_ms`.
    Prune {
        /// The newest expiry deleted, Unix ms.
        through_ms: u64,
    },
}

/// What a start settles under the write lock, read without loading
/// everything ([`super::Store::start_rows`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartRows {
    /// SHA-256 of the admin token, once created.
    pub admin_hash: Option<crate::secret::SecretHash>,
    /// The challenge key, once created.
    pub challenge_key: Option<ChallengeKey>,
}

/// The rows every driver must keep: the key is created once, used
/// challenges are single use and pruned by expiry. Runs on the driver under
/// test ([`super::testing::test_store`]).
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::store::Write;
    use crate::store::testing::test_store;

    fn used(n: u8, expires_ms: u64) -> UsedChallengeRecord {
        UsedChallengeRecord {
            tag: [n; TAG_LEN],
            expires_ms,
        }
    }

    #[test]
    fn the_key_is_created_once_and_used_challenges_are_single_use_until_pruned() {
        let mut s = test_store();
        assert_eq!(s.start_rows().unwrap(), StartRows::default());
        let key = ChallengeKey([7; 32]);
        s.apply(&[Write::Challenge(ChallengeWrite::CreateKey(key.clone()))])
            .unwrap();
        assert_eq!(s.start_rows().unwrap().challenge_key, Some(key.clone()));
        // Never replaced.
        assert!(
            s.apply(&[Write::Challenge(ChallengeWrite::CreateKey(ChallengeKey(
                [8; 32]
            )))])
            .is_err()
        );
        assert_eq!(s.start_rows().unwrap().challenge_key, Some(key));

        s.apply(&[
            Write::Challenge(ChallengeWrite::Use(used(1, 1_000))),
            Write::Challenge(ChallengeWrite::Use(used(2, 2_000))),
        ])
        .unwrap();
        assert!(
            s.apply(&[Write::Challenge(ChallengeWrite::Use(used(1, 1_000)))])
                .is_err(),
            "a tag is stored once"
        );
        let mut loaded = s.load().unwrap().used_challenges;
        loaded.sort_by_key(|u| u.expires_ms);
        assert_eq!(loaded, vec![used(1, 1_000), used(2, 2_000)]);
        s.apply(&[Write::Challenge(ChallengeWrite::Prune {
            through_ms: 1_000,
        })])
        .unwrap();
        assert_eq!(s.load().unwrap().used_challenges, vec![used(2, 2_000)]);
    }

    #[test]
    fn stored_text_round_trips_and_garbage_is_corrupt() {
        let k = ChallengeKey([0xab; 32]);
        assert_eq!(ChallengeKey::decode(&k.encode()).unwrap(), k);
        assert!(ChallengeKey::decode("short").is_err());
        assert!(ChallengeKey::decode(&"A".repeat(10_000)).is_err());
        let u = used(9, 5);
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(
            serde_json::from_str::<UsedChallengeRecord>(&json).unwrap(),
            u
        );
        assert!(decode_tag("!!").is_err());
    }
}
