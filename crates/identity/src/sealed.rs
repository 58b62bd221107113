//! Sealed boxes: encrypt to a node's X25519 public key so that only the node can
//! read the message (the admin CLI seals secrets; the controller stores and relays
//! only the ciphertext; the agent opens them with [`Identity::x25519_secret`]).
//!
//! Construction (version 1), anonymous sender:
//!
//! - the sender draws a fresh ephemeral X25519 secret `esk` (passed in: this module
//!   is sans-IO and never reads randomness itself), `epk = X25519(esk, base)`;
//! - `shared = X25519(esk, rpk)`; a non-contributory (all-zero) result, from a
//!   low-order recipient or ephemeral point, is refused;
//! - `key = BLAKE2s-256(len(CONTEXT) || CONTEXT || shared || epk || rpk)` with
//!   `CONTEXT` = [`SEALED_CONTEXT`], binding the key to both public keys;
//! - ChaCha20-Poly1305 with an all-zero nonce (one key per message, since `esk` is
//!   fresh every time) and the header `version || epk` as associated data.
//!
//! Wire format: `0x01 || epk (32) || ciphertext || tag (16)`, so a sealed value is
//! [`SEALED_OVERHEAD`] bytes longer than its plaintext.
//!
//! [`Identity::x25519_secret`]: crate::Identity::x25519_secret

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The domain-separation string of the key derivation.
pub const SEALED_CONTEXT: &str = "weft/sealed-box/v1";
/// The format version byte that starts every sealed value.
pub const SEALED_VERSION: u8 = 1;
const EPK_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + EPK_LEN;
/// Bytes a sealed value adds to its plaintext: version, ephemeral key, tag.
pub const SEALED_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Why a value could not be sealed or opened. Deliberately coarse on open: a wrong
/// key and a tampered ciphertext are the same failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than the fixed overhead.
    #[error("sealed value too short: {len} bytes, at least {SEALED_OVERHEAD} needed")]
    TooShort {
        /// The length received.
        len: usize,
    },
    /// The first byte is not a version this code reads.
    #[error("sealed value has version {0}, this build reads version {SEALED_VERSION}")]
    Version(u8),
    /// The recipient or ephemeral key is a low-order point (the shared secret is zero).
    #[error("the X25519 key is a low-order point; refusing it")]
    WeakKey,
    /// Authentication failed: wrong recipient key, or the value was altered.
    #[error("sealed value does not open with this key (wrong node key or altered ciphertext)")]
    Open,
    /// The plaintext is too large for the AEAD (never in practice).
    #[error("plaintext too large to seal")]
    TooLarge,
}

/// Seals `plaintext` to the recipient's X25519 public key, using
/// `ephemeral_secret` (32 fresh random bytes, used once) for the ephemeral key.
pub fn seal(
    recipient_x25519_pub: &[u8; 32],
    plaintext: &[u8],
    ephemeral_secret: &[u8; 32],
) -> Result<Vec<u8>, SealError> {
    let esk = StaticSecret::from(*ephemeral_secret);
    let epk = PublicKey::from(&esk);
    let shared = esk.diffie_hellman(&PublicKey::from(*recipient_x25519_pub));
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let key = derive_key(shared.as_bytes(), epk.as_bytes(), recipient_x25519_pub);
    let mut out = Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD);
    out.push(SEALED_VERSION);
    out.extend_from_slice(epk.as_bytes());
    out.extend_from_slice(plaintext);
    let (header, body) = out.split_at_mut(HEADER_LEN);
    let tag = ChaCha20Poly1305::new((&*key).into())
        .encrypt_in_place_detached(&Default::default(), header, body)
        .map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a value made by [`seal`] with the recipient's X25519 secret (for a node:
/// [`Identity::x25519_secret`](crate::Identity::x25519_secret)).
pub fn open(x25519_secret: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < SEALED_OVERHEAD {
        return Err(SealError::TooShort { len: sealed.len() });
    }
    if sealed[0] != SEALED_VERSION {
        return Err(SealError::Version(sealed[0]));
    }
    let (header, rest) = sealed.split_at(HEADER_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut epk = [0u8; EPK_LEN];
    epk.copy_from_slice(&header[1..]);
    let secret = StaticSecret::from(*x25519_secret);
    let rpk = PublicKey::from(&secret);
    let shared = secret.diffie_hellman(&PublicKey::from(epk));
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let key = derive_key(shared.as_bytes(), &epk, rpk.as_bytes());
    let mut plain = body.to_vec();
    ChaCha20Poly1305::new((&*key).into())
        .decrypt_in_place_detached(
            &Default::default(),
            header,
            &mut plain,
            Tag::from_slice(tag),
        )
        .map_err(|_| SealError::Open)?;
    Ok(plain)
}

fn derive_key(shared: &[u8; 32], epk: &[u8; 32], rpk: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Blake2s256::new();
    h.update((SEALED_CONTEXT.len() as u64).to_le_bytes());
    h.update(SEALED_CONTEXT.as_bytes());
    h.update(shared);
    h.update(epk);
    h.update(rpk);
    Zeroizing::new(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Difficulty, Identity, SearchOptions, x25519_public_of};
    use proptest::prelude::*;
    use std::sync::atomic::AtomicBool;

    fn pair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let secret = [seed; 32];
        let public = PublicKey::from(&StaticSecret::from(secret)).to_bytes();
        (secret, public)
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(
            plain in proptest::collection::vec(any::<u8>(), 0..2048),
            rsk in any::<[u8; 32]>(),
            esk in any::<[u8; 32]>(),
        ) {
            let rpk = PublicKey::from(&StaticSecret::from(rsk)).to_bytes();
            let sealed = seal(&rpk, &plain, &esk).unwrap();
            prop_assert_eq!(sealed.len(), plain.len() + SEALED_OVERHEAD);
            prop_assert_eq!(open(&rsk, &sealed).unwrap(), plain.clone());
            if !plain.is_empty() {
                // The plaintext does not appear in the output.
                prop_assert!(plain.len() < 8 || !sealed.windows(plain.len()).any(|w| w == &plain[..]));
            }
        }

        #[test]
        fn any_single_bit_flip_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 0..256),
            bit in any::<usize>(),
        ) {
            let (rsk, rpk) = pair(7);
            let mut sealed = seal(&rpk, &plain, &[9; 32]).unwrap();
            let bit = bit % (sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open(&rsk, &sealed).is_err());
        }
    }

    #[test]
    fn a_node_identity_opens_what_was_sealed_to_its_node_key() {
        let id = Identity::mint(
            &mut rand_core::OsRng,
            Difficulty::new(4).unwrap(),
            &SearchOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        let rpk = x25519_public_of(&id.node_key()).unwrap();
        let sealed = seal(&rpk, b"db-password", &[42; 32]).unwrap();
        assert_eq!(open(&id.x25519_secret(), &sealed).unwrap(), b"db-password");
    }

    #[test]
    fn the_wrong_key_does_not_open() {
        let (_, rpk) = pair(1);
        let (other, _) = pair(2);
        let sealed = seal(&rpk, b"secret", &[3; 32]).unwrap();
        assert_eq!(open(&other, &sealed), Err(SealError::Open));
    }

    #[test]
    fn tampered_values_are_refused() {
        let (rsk, rpk) = pair(1);
        let sealed = seal(&rpk, b"secret value", &[3; 32]).unwrap();
        // body, tag, ephemeral key
        for i in [HEADER_LEN, sealed.len() - 1, 5] {
            let mut t = sealed.clone();
            t[i] ^= 0x80;
            assert!(open(&rsk, &t).is_err(), "byte {i}");
        }
        let mut v = sealed.clone();
        v[0] = 2;
        assert_eq!(open(&rsk, &v), Err(SealError::Version(2)));
        assert_eq!(
            open(&rsk, &sealed[..SEALED_OVERHEAD - 1]),
            Err(SealError::TooShort {
                len: SEALED_OVERHEAD - 1
            })
        );
        // Truncated by one byte of tag: not a valid value.
        assert_eq!(
            open(&rsk, &sealed[..sealed.len() - 1]),
            Err(SealError::Open)
        );
        // Appended byte: refused too.
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open(&rsk, &longer), Err(SealError::Open));
    }

    #[test]
    fn an_empty_plaintext_seals_and_opens() {
        let (rsk, rpk) = pair(4);
        let sealed = seal(&rpk, b"", &[5; 32]).unwrap();
        assert_eq!(sealed.len(), SEALED_OVERHEAD);
        assert_eq!(open(&rsk, &sealed).unwrap(), b"");
    }

    #[test]
    fn low_order_keys_are_refused() {
        assert_eq!(seal(&[0; 32], b"x", &[5; 32]), Err(SealError::WeakKey));
        let (rsk, rpk) = pair(4);
        let mut sealed = seal(&rpk, b"x", &[5; 32]).unwrap();
        sealed[1..HEADER_LEN].fill(0);
        assert_eq!(open(&rsk, &sealed), Err(SealError::WeakKey));
    }

    #[test]
    fn the_map_s_bounds_agree_with_the_format() {
        assert_eq!(SEALED_OVERHEAD, weft_proto::data::SEALED_OVERHEAD);
        assert_eq!(SEALED_VERSION, weft_proto::data::SEALED_VERSION);
        let (_, rpk) = pair(1);
        let sealed = seal(&rpk, b"x", &[2; 32]).unwrap();
        assert!(weft_proto::data::decode_sealed(&weft_proto::data::encode_sealed(&sealed)).is_ok());
    }

    #[test]
    fn two_seals_of_the_same_value_differ_by_ephemeral_key() {
        let (_, rpk) = pair(1);
        let a = seal(&rpk, b"same", &[1; 32]).unwrap();
        let b = seal(&rpk, b"same", &[2; 32]).unwrap();
        assert_ne!(a, b);
    }
}
