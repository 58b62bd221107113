//! WireGuard's primitives (whitepaper §5.4): BLAKE2s `HASH`, `MAC` and `HMAC`, the
//! HKDF-style `KDF`, ChaCha20-Poly1305 `AEAD`, XChaCha20-Poly1305 `XAEAD`, X25519;
//! plus the core's seeded random stream and its TAI64N clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Tag, XChaCha20Poly1305, XNonce};
use hmac::SimpleHmac;
use x25519_dalek::{PublicKey, StaticSecret};

/// A Poly1305 tag's length.
pub const TAG_LEN: usize = 16;

/// `HASH(input)`: BLAKE2s-256 over the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `MAC(key, input)`: keyed BLAKE2s with a 16-byte output.
pub fn mac(key: &[u8; 32], input: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new(key.into());
    Mac::update(&mut m, input);
    m.finalize_fixed().into()
}

/// `HMAC(key, input)` with BLAKE2s.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// `KDF_n(key, input)` for n = 1..3: the outputs τ1..τn.
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let t0 = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut prev: [u8; 32] = [0; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        let counter = [i as u8 + 1];
        prev = if i == 0 {
            hmac(&t0, &[&counter])
        } else {
            hmac(&t0, &[&prev, &counter])
        };
        *slot = prev;
    }
    out
}

fn aead_nonce(counter: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// `AEAD(key, counter, plain, auth)` in place: `buf` holds the plaintext and
/// `TAG_LEN` spare bytes at its end for the tag.
pub fn aead_seal(key: &[u8; 32], counter: u64, buf: &mut [u8], auth: &[u8]) {
    let n = buf.len() - TAG_LEN;
    let (plain, tag_out) = buf.split_at_mut(n);
    let cipher = ChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(&aead_nonce(counter), auth, plain)
        .unwrap_or_else(|_| unreachable!("handshake fields are tiny"));
    tag_out.copy_from_slice(&tag);
}

/// Opens `sealed` (ciphertext and tag) into `out` (`sealed.len() - TAG_LEN`
/// bytes); `false` when it does not authenticate.
pub fn aead_open(key: &[u8; 32], counter: u64, sealed: &[u8], auth: &[u8], out: &mut [u8]) -> bool {
    let Some(n) = sealed.len().checked_sub(TAG_LEN) else {
        return false;
    };
    if out.len() != n {
        return false;
    }
    out.copy_from_slice(&sealed[..n]);
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(
            &aead_nonce(counter),
            auth,
            out,
            Tag::from_slice(&sealed[n..]),
        )
        .is_ok()
}

/// `XAEAD(key, nonce, plain, auth)` for a 16-byte plaintext (the cookie).
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], plain: &[u8; 16], auth: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(plain);
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), auth, &mut out[..16])
        .unwrap_or_else(|_| unreachable!("16 bytes"));
    out[16..].copy_from_slice(&tag);
    out
}

/// Opens an `XAEAD`-sealed cookie.
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    sealed: &[u8; 32],
    auth: &[u8],
) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    out.copy_from_slice(&sealed[..16]);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            auth,
            &mut out,
            Tag::from_slice(&sealed[16..]),
        )
        .ok()
        .map(|()| out)
}

/// `DH(private, public)`; `None` for a non-contributory (all-zero) result, which
/// WireGuard refuses.
pub fn dh(private: &StaticSecret, public: &[u8; 32]) -> Option<[u8; 32]> {
    let shared = private.diffie_hellman(&PublicKey::from(*public));
    shared.was_contributory().then(|| shared.to_bytes())
}

/// The public key of `private`.
pub fn public_of(private: &StaticSecret) -> [u8; 32] {
    PublicKey::from(private).to_bytes()
}

/// The core's only source of randomness: the ChaCha20 keystream keyed by the whole
/// 32-byte seed. Seeded from the OS by the agent, it is as strong as the OS's
/// generator; seeded by a test or simulation, it replays exactly.
pub struct Rng {
    cipher: ChaCha20,
}

impl Rng {
    /// A stream keyed by `seed` (all 256 bits).
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            cipher: ChaCha20::new(&seed.into(), &[0u8; 12].into()),
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
        self.cipher.apply_keystream(buf);
    }

    /// The next `N` bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    /// The next 64-bit value.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// A fresh X25519 private key.
    pub fn secret(&mut self) -> StaticSecret {
        StaticSecret::from(self.bytes::<32>())
    }
}

/// TAI64's label for the Unix epoch: 2^62 plus TAI's 37 s lead over UTC (as
/// boringtun, which weft used before, counts; Linux counts 10 s). A responder
/// refuses initiations not newer than the last one, so a node restarted with
/// another base would be locked out for the difference.
const TAI64_BASE: u64 = (1 << 62) + 37;

/// Wall time derived from the caller's monotonic `now`: a wall-clock reading taken
/// together with an `Instant`, plus the time elapsed since. Virtual time therefore
/// gives virtual wall time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base_instant: Instant,
    base_wall: Duration,
    last: [u8; 12],
}

impl WallClock {
    /// `wall` was the wall-clock time at `now`.
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        Self {
            base_instant: now,
            base_wall: wall.duration_since(UNIX_EPOCH).unwrap_or_default(),
            last: [0; 12],
        }
    }

    /// The TAI64N timestamp for `now`, strictly greater than every earlier one
    /// (two initiations at one instant must not look like a replay).
    pub fn tai64n(&mut self, now: Instant) -> [u8; 12] {
        let t = self.base_wall + now.saturating_duration_since(self.base_instant);
        let mut ts = [0u8; 12];
        ts[..8].copy_from_slice(&(TAI64_BASE + t.as_secs()).to_be_bytes());
        ts[8..].copy_from_slice(&t.subsec_nanos().to_be_bytes());
        if ts <= self.last {
            ts = self.last;
            let nanos = u32::from_be_bytes([ts[8], ts[9], ts[10], ts[11]]) + 1;
            if nanos >= 1_000_000_000 {
                let secs = u64::from_be_bytes(ts[..8].try_into().unwrap_or([0; 8])) + 1;
                ts[..8].copy_from_slice(&secs.to_be_bytes());
                ts[8..].copy_from_slice(&0u32.to_be_bytes());
            } else {
                ts[8..].copy_from_slice(&nanos.to_be_bytes());
            }
        }
        self.last = ts;
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_uses_the_whole_seed_and_replays() {
        let mut a = Rng::new([1; 32]);
        let mut b = Rng::new([1; 32]);
        assert_eq!(a.bytes::<64>(), b.bytes::<64>());
        let mut seed = [1; 32];
        seed[31] = 2;
        let mut c = Rng::new(seed);
        let mut a = Rng::new([1; 32]);
        assert_ne!(a.bytes::<32>(), c.bytes::<32>());
    }

    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real Instant to start from")]
    fn tai64n_follows_now_and_never_repeats() {
        let start = Instant::now();
        let mut w = WallClock::new(start, UNIX_EPOCH + Duration::from_secs(1_000));
        let a = w.tai64n(start);
        let b = w.tai64n(start);
        assert!(b > a);
        let c = w.tai64n(start + Duration::from_secs(5));
        assert_eq!(
            u64::from_be_bytes(c[..8].try_into().unwrap()),
            TAI64_BASE + 1_005
        );
    }
}
