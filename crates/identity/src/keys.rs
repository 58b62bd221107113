//! The identity key pair, signatures and the derived X25519 key.

use std::fmt;
use std::sync::atomic::AtomicBool;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::NodeKey;
use crate::pow::{self, Difficulty, MintError, ProofOfWork, SearchOptions};

/// How the data plane's X25519 key relates to the identity (documentation string,
/// also shown by `weft identity show`).
///
/// The X25519 secret is the Ed25519 secret scalar (`SHA-512(seed)[..32]`, clamped
/// by X25519), and the X25519 public key is the birational (Montgomery) image of the
/// Ed25519 public key — the conversion libsodium calls
/// `crypto_sign_ed25519_sk_to_curve25519`. Anyone holding a node's identity key
/// can therefore compute its WireGuard public key without extra signatures, and
/// the node cannot present a WireGuard key that is not bound to its identity.
pub const X25519_DERIVATION: &str =
    "derived: X25519 = Montgomery form of the Ed25519 key (libsodium ed25519_sk_to_curve25519)";

/// A node's private identity: Ed25519 signing key plus its proof of work.
///
/// The secret is zeroized on drop and never printed: `Debug` shows the public key.
pub struct Identity {
    signing: SigningKey,
    pow: ProofOfWork,
}

/// A signature that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key bytes are not a valid Ed25519 point.
    #[error("public key is not a valid Ed25519 key")]
    BadKey,
    /// The signature is malformed or does not match key, context and message.
    #[error("signature does not verify for this key and message")]
    Mismatch,
}

impl Identity {
    /// Mints a new identity: a fresh key from `rng`, then a proof-of-work search
    /// (see [`pow::search`] for `opts`, `cancel` and `progress`).
    pub fn mint(
        rng: &mut impl CryptoRngCore,
        difficulty: Difficulty,
        opts: &SearchOptions,
        cancel: &AtomicBool,
        progress: impl FnMut(u64),
    ) -> Result<Self, MintError> {
        let signing = SigningKey::generate(rng);
        let key = NodeKey::from_bytes(signing.verifying_key().to_bytes());
        let pow = pow::search(&key, difficulty, opts, cancel, progress)?;
        Ok(Self { signing, pow })
    }

    /// Rebuilds an identity from its 32-byte secret seed and nonce (the key file's
    /// content). The proof is not checked here; callers verify it against their
    /// required difficulty.
    pub fn from_parts(secret_seed: &[u8; 32], pow: ProofOfWork) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret_seed),
            pow,
        }
    }

    /// The 32-byte secret seed, for the key file only.
    pub fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity.
    pub fn node_key(&self) -> NodeKey {
        NodeKey::from_bytes(self.signing.verifying_key().to_bytes())
    }

    /// The proof of work.
    pub fn pow(&self) -> ProofOfWork {
        self.pow
    }

    /// Leading zero bits the proof reaches for this key.
    pub fn difficulty_reached(&self) -> u32 {
        self.pow.achieved(&self.node_key())
    }

    /// Signs `message` under a context string that names its purpose (for example
    /// `"weft/register/v1"`), so a signature for one purpose is useless for another.
    pub fn sign(&self, context: &str, message: &[u8]) -> [u8; 64] {
        self.signing
            .sign(&signed_bytes(context, message))
            .to_bytes()
    }

    /// The X25519 secret the data plane uses (see [`X25519_DERIVATION`]).
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }

    /// The X25519 public key for this identity.
    pub fn x25519_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_montgomery().to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_key", &self.node_key())
            .field("pow", &self.pow)
            .finish_non_exhaustive()
    }
}

/// Verifies a signature made with [`Identity::sign`].
pub fn verify_signature(
    key: &NodeKey,
    context: &str,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let vk = VerifyingKey::from_bytes(key.as_bytes()).map_err(|_| SignatureError::BadKey)?;
    let sig = Signature::from_bytes(signature);
    vk.verify(&signed_bytes(context, message), &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// Computes the X25519 public key of a peer from its identity key (see
/// [`X25519_DERIVATION`]).
pub fn x25519_public_of(key: &NodeKey) -> Result<[u8; 32], SignatureError> {
    let vk = VerifyingKey::from_bytes(key.as_bytes()).map_err(|_| SignatureError::BadKey)?;
    Ok(vk.to_montgomery().to_bytes())
}

/// A short, human-comparable fingerprint of a node key: the first 8 bytes of
/// `SHA-256(key)` as colon-separated hex pairs of bytes (`1a2b:3c4d:5e6f:7081`).
pub fn fingerprint(key: &NodeKey) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    d[..8]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

fn signed_bytes(context: &str, message: &[u8]) -> Vec<u8> {
    // Length-prefix the context so no (context, message) pair aliases another.
    let mut v = Vec::with_capacity(8 + context.len() + message.len());
    v.extend_from_slice(&(context.len() as u64).to_le_bytes());
    v.extend_from_slice(context.as_bytes());
    v.extend_from_slice(message);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::MontgomeryPoint;
    use rand_core::OsRng;

    fn quick() -> Identity {
        Identity::mint(
            &mut OsRng,
            Difficulty::new(8).unwrap(),
            &SearchOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap()
    }

    #[test]
    fn signatures_are_bound_to_context_key_and_message() {
        let id = quick();
        let key = id.node_key();
        let sig = id.sign("weft/test/v1", b"hello");
        assert_eq!(
            verify_signature(&key, "weft/test/v1", b"hello", &sig),
            Ok(())
        );
        assert_eq!(
            verify_signature(&key, "weft/other/v1", b"hello", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&key, "weft/test/v1", b"hellO", &sig),
            Err(SignatureError::Mismatch)
        );
        let other = quick();
        assert_eq!(
            verify_signature(&other.node_key(), "weft/test/v1", b"hello", &sig),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn x25519_public_matches_secret() {
        let id = quick();
        let from_secret = MontgomeryPoint::mul_base_clamped(*id.x25519_secret());
        assert_eq!(from_secret.to_bytes(), id.x25519_public());
        assert_eq!(
            x25519_public_of(&id.node_key()).unwrap(),
            id.x25519_public()
        );
    }

    #[test]
    fn debug_never_shows_secret() {
        let id = quick();
        let dbg = format!("{id:?}");
        let seed = id.secret_seed();
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, *seed);
        assert!(!dbg.contains(&hex) && !dbg.contains(&b64));
        assert!(dbg.contains(&id.node_key().to_string()));
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let k = NodeKey::from_bytes([0; 32]);
        let f = fingerprint(&k);
        assert_eq!(f.len(), 19);
        assert_eq!(f, fingerprint(&k));
        assert_ne!(f, fingerprint(&NodeKey::from_bytes([1; 32])));
    }

    #[test]
    fn from_parts_round_trips() {
        let id = quick();
        let back = Identity::from_parts(&id.secret_seed(), id.pow());
        assert_eq!(back.node_key(), id.node_key());
        assert_eq!(back.difficulty_reached(), id.difficulty_reached());
    }
}
