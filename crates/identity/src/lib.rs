//! weft node identity.
//!
//! A node is its Ed25519 public key ([`weft_proto::NodeKey`]). This crate owns:
//!
//! - [`Identity`]: the Ed25519 signing key, its proof of work, signatures with a
//!   domain-separating context, and the **derived** X25519 key the data plane uses
//!   for WireGuard (see [`Identity::x25519_secret`]).
//! - [`pow`]: the proof of work that makes identities costly to mint and cheap to
//!   verify: a nonce such that `SHA-256(POW_DOMAIN_TAG || public key || nonce_le64)`
//!   has at least D leading zero bits. Minting spreads the search over threads and
//!   can be cancelled; verification is one hash.
//! - [`keyfile`]: the versioned on-disk format of a private identity, written
//!   atomically with mode 0600 from the first byte, and refused on load when other
//!   users can read it, or when it is truncated or corrupt.
//!
//! - [`sealed`]: sealed boxes to a node's X25519 key (admin secrets the controller
//!   stores only as ciphertext; the node opens them).
//!
//! Randomness comes in as an argument (`CryptoRngCore`); the crate never reads the
//! clock. `keyfile` is the one module that touches the filesystem, so the agent and
//! the CLI store keys the same way.

// Hash iteration order must not reach output (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

pub mod keyfile;
pub mod pow;
pub mod sealed;

mod keys;

pub use keys::{
    Identity, SignatureError, X25519_DERIVATION, fingerprint, verify_signature, x25519_public_of,
};
pub use pow::{Difficulty, DifficultyError, MintError, PowError, ProofOfWork, SearchOptions};
pub use weft_proto::NodeKey;
