//! Proof of work over a node's public key.
//!
//! `hash = SHA-256(POW_DOMAIN_TAG || public_key || nonce.to_le_bytes())` must have at
//! least D leading zero bits. The tag and the key fill exactly one 64-byte SHA-256
//! block, so a search absorbs them once and then costs one compression per nonce.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::NodeKey;

/// Domain separation tag, exactly 32 bytes so tag + key form one SHA-256 block.
pub const POW_DOMAIN_TAG: &[u8; 32] = b"weft-node-identity-pow/v1:sha256";

/// How many leading zero bits a proof must have.
///
/// Accepted range: 0 to [`Difficulty::MAX`] (40). Each extra bit doubles the
/// expected work: at D = 24 a search takes 2^24 ≈ 16.8 million hashes on average
/// (about a second on one modern core); D = 40 is about 65,000 times that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Difficulty(u8);

/// A difficulty outside the accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("difficulty {0} is out of range: accepted is 0 to {max}", max = Difficulty::MAX.0)]
pub struct DifficultyError(pub u32);

impl Difficulty {
    /// The highest accepted difficulty (expected 2^40 hashes: hours on a laptop).
    pub const MAX: Difficulty = Difficulty(40);
    /// The default: about a second of one core's work.
    pub const DEFAULT: Difficulty = Difficulty(24);

    /// Checks the range.
    pub fn new(bits: u32) -> Result<Self, DifficultyError> {
        match u8::try_from(bits) {
            Ok(b) if b <= Self::MAX.0 => Ok(Self(b)),
            _ => Err(DifficultyError(bits)),
        }
    }

    /// The number of leading zero bits.
    pub const fn bits(self) -> u32 {
        self.0 as u32
    }

    /// The expected number of hashes a search needs (2^D).
    pub fn expected_hashes(self) -> f64 {
        2f64.powi(i32::from(self.0))
    }
}

impl Default for Difficulty {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for Difficulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Difficulty {
    type Err = DifficultyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bits: u32 = s.trim().parse().map_err(|_| DifficultyError(u32::MAX))?;
        Self::new(bits)
    }
}

/// A nonce that, hashed with a public key, meets some difficulty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofOfWork {
    /// The nonce found by the search.
    pub nonce: u64,
}

/// Why a proof of work is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    /// The hash has fewer leading zero bits than required. Mint a new identity with
    /// at least the required difficulty.
    #[error("proof of work too weak: {achieved} leading zero bits, {required} required")]
    TooWeak {
        /// Leading zero bits of the hash.
        achieved: u32,
        /// What the verifier requires.
        required: u32,
    },
}

/// Why minting stopped without a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The cancel flag was raised (for example by Ctrl-C).
    #[error("proof-of-work search cancelled after {hashes} hashes")]
    Cancelled {
        /// Hashes computed before cancellation.
        hashes: u64,
    },
}

/// Hashes one candidate.
pub fn pow_hash(key: &NodeKey, nonce: u64) -> [u8; 32] {
    let mut h = prefix_state(key);
    h.update(nonce.to_le_bytes());
    h.finalize().into()
}

/// Counts the leading zero bits of a hash.
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

impl ProofOfWork {
    /// The difficulty this proof reaches for `key` (its leading zero bits).
    pub fn achieved(&self, key: &NodeKey) -> u32 {
        leading_zero_bits(&pow_hash(key, self.nonce))
    }

    /// Verifies with one hash that this proof reaches `required` for `key`.
    pub fn verify(&self, key: &NodeKey, required: Difficulty) -> Result<u32, PowError> {
        let achieved = self.achieved(key);
        if achieved >= required.bits() {
            Ok(achieved)
        } else {
            Err(PowError::TooWeak {
                achieved,
                required: required.bits(),
            })
        }
    }
}

/// How to run a search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Worker threads (default: all available cores).
    pub threads: NonZeroUsize,
    /// How often the progress callback runs (default 200 ms).
    pub report_every: Duration,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            report_every: Duration::from_millis(200),
        }
    }
}

/// Searches for a nonce meeting `difficulty` for `key`, on `opts.threads` threads.
///
/// `progress` is called on the calling thread every `opts.report_every` with the
/// number of hashes computed so far; the caller owns the clock, so it computes
/// rates and ETAs. Raising `cancel` stops every worker within a few milliseconds.
pub fn search(
    key: &NodeKey,
    difficulty: Difficulty,
    opts: &SearchOptions,
    cancel: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<ProofOfWork, MintError> {
    // The search itself is not generic: a generic function is compiled in the
    // crate that calls it, with that crate's optimisation level, so in a dev
    // build (opt-level 0 for workspace members) the hashing loop and SHA-256's
    // inlined buffer code ran ~100x slower than in release. Non-generic, it is
    // compiled here, under `[profile.dev.package.weft-identity] opt-level = 3`.
    search_dyn(key, difficulty, opts, cancel, &mut progress)
}

#[inline(never)]
fn search_dyn(
    key: &NodeKey,
    difficulty: Difficulty,
    opts: &SearchOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<ProofOfWork, MintError> {
    // Workers claim nonces in chunks, so each hash costs no shared-memory traffic.
    const CHUNK: u64 = 1 << 14;
    let next_chunk = AtomicU64::new(0);
    let hashes = AtomicU64::new(0);
    let found = AtomicBool::new(false);
    let best = std::sync::Mutex::new(None::<u64>);
    let base = prefix_state(key);
    let need = difficulty.bits();

    std::thread::scope(|s| {
        for _ in 0..opts.threads.get() {
            s.spawn(|| {
                while !found.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
                    let start = next_chunk.fetch_add(CHUNK, Ordering::Relaxed);
                    for nonce in start..start.saturating_add(CHUNK) {
                        let mut h = base.clone();
                        h.update(nonce.to_le_bytes());
                        let out: [u8; 32] = h.finalize().into();
                        if leading_zero_bits(&out) >= need {
                            found.store(true, Ordering::Relaxed);
                            if let Ok(mut b) = best.lock() {
                                // Keep the smallest winning nonce found so far.
                                *b = Some(b.map_or(nonce, |old| old.min(nonce)));
                            }
                            break;
                        }
                    }
                    hashes.fetch_add(CHUNK, Ordering::Relaxed);
                }
            });
        }
        // The calling thread reports progress until the workers finish.
        while !found.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
            park_for(opts.report_every, &found, cancel);
            progress(hashes.load(Ordering::Relaxed));
        }
    });

    let nonce = best.lock().ok().and_then(|b| *b);
    match nonce {
        Some(nonce) => Ok(ProofOfWork { nonce }),
        None => Err(MintError::Cancelled {
            hashes: hashes.load(Ordering::Relaxed),
        }),
    }
}

/// Sleeps up to `total`, waking early when the search ends or is cancelled.
fn park_for(total: Duration, found: &AtomicBool, cancel: &AtomicBool) {
    let step = Duration::from_millis(10);
    let mut slept = Duration::ZERO;
    while slept < total && !found.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

fn prefix_state(key: &NodeKey) -> Sha256 {
    let mut h = Sha256::new();
    h.update(POW_DOMAIN_TAG);
    h.update(key.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn leading_zeros_counts_bits_across_bytes() {
        let mut h = [0xffu8; 32];
        assert_eq!(leading_zero_bits(&h), 0);
        h[0] = 0;
        h[1] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&h), 11);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
    }

    #[test]
    fn difficulty_range_is_enforced() {
        assert!(Difficulty::new(0).is_ok());
        assert!(Difficulty::new(40).is_ok());
        assert_eq!(Difficulty::new(41), Err(DifficultyError(41)));
        assert!("abc".parse::<Difficulty>().is_err());
        assert_eq!("24".parse::<Difficulty>(), Ok(Difficulty::DEFAULT));
    }

    #[test]
    fn search_meets_difficulty_and_verify_boundaries() {
        let key = NodeKey::from_bytes([3; 32]);
        let d = Difficulty::new(12).unwrap();
        let pow = search(
            &key,
            d,
            &SearchOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        let achieved = pow.achieved(&key);
        assert!(achieved >= 12);
        // Exactly at the achieved level passes; one bit above fails.
        assert_eq!(
            pow.verify(&key, Difficulty::new(achieved).unwrap()),
            Ok(achieved)
        );
        if achieved < 40 {
            let above = Difficulty::new(achieved + 1).unwrap();
            assert_eq!(
                pow.verify(&key, above),
                Err(PowError::TooWeak {
                    achieved,
                    required: achieved + 1
                })
            );
        }
    }

    #[test]
    fn proof_is_bound_to_its_key() {
        let key = NodeKey::from_bytes([9; 32]);
        let d = Difficulty::new(16).unwrap();
        let pow = search(
            &key,
            d,
            &SearchOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        let mut other = *key.as_bytes();
        other[31] ^= 1;
        // A different key with the same nonce reaches 16 bits with probability 2^-16.
        assert!(pow.verify(&NodeKey::from_bytes(other), d).is_err());
        let tampered = ProofOfWork {
            nonce: pow.nonce ^ 1,
        };
        assert!(tampered.verify(&key, d).is_err());
    }

    #[test]
    fn cancel_stops_the_search() {
        let key = NodeKey::from_bytes([1; 32]);
        let cancel = AtomicBool::new(false);
        let mut calls = 0;
        let res = search(
            &key,
            Difficulty::MAX,
            &SearchOptions {
                report_every: Duration::from_millis(20),
                ..SearchOptions::default()
            },
            &cancel,
            |_| {
                calls += 1;
                if calls == 3 {
                    cancel.store(true, Ordering::Relaxed);
                }
            },
        );
        assert!(matches!(res, Err(MintError::Cancelled { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn verify_agrees_with_hash(key in any::<[u8; 32]>(), nonce in any::<u64>(), d in 0u32..=40) {
            let key = NodeKey::from_bytes(key);
            let pow = ProofOfWork { nonce };
            let lz = leading_zero_bits(&pow_hash(&key, nonce));
            let d = Difficulty::new(d).unwrap();
            prop_assert_eq!(pow.verify(&key, d).is_ok(), lz >= d.bits());
        }
    }
}
