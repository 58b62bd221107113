//! Transport data (whitepaper §5.4.6): one keypair per completed handshake, its
//! counter nonce and its replay window.

use std::time::Instant;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{DATA_HEADER, Error, MSG_DATA, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::wg::crypto::TAG_LEN;

/// Counters seen within this many below the highest are checked one by one.
const WINDOW_WORDS: usize = 64;
/// Bits in the replay window (4096; RFC 6479 keeps one word of slack).
pub const WINDOW_BITS: u64 = (WINDOW_WORDS as u64 - 1) * 64;

/// A sliding window over received counters (RFC 6479): a counter is accepted once,
/// and only if it is at most [`WINDOW_BITS`] below the highest seen.
#[derive(Clone)]
pub struct ReplayWindow {
    highest: u64,
    seen_any: bool,
    words: [u64; WINDOW_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: 0,
            seen_any: false,
            words: [0; WINDOW_WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` could be accepted (checked before decrypting).
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if !self.seen_any || counter > self.highest {
            return true;
        }
        if self.highest - counter >= WINDOW_BITS {
            return false;
        }
        let word = self.words[(counter / 64) as usize % WINDOW_WORDS];
        word & (1 << (counter % 64)) == 0
    }

    /// Records `counter` (after it authenticated); `false` if it was a replay.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let block = counter / 64;
        if !self.seen_any || counter > self.highest {
            let current = if self.seen_any { self.highest / 64 } else { 0 };
            let fresh = if self.seen_any {
                (block - current).min(WINDOW_WORDS as u64)
            } else {
                WINDOW_WORDS as u64
            };
            for i in 1..=fresh {
                self.words[((current + i) % WINDOW_WORDS as u64) as usize] = 0;
            }
            self.highest = counter;
            self.seen_any = true;
        }
        self.words[(block % WINDOW_WORDS as u64) as usize] |= 1 << (counter % 64);
        true
    }
}

/// The keys of one session, in one direction each.
pub struct Keypair {
    send: LessSafeKey,
    recv: LessSafeKey,
    /// Our index: the peer puts it in every message to us.
    pub local_index: u32,
    /// The peer's index: we put it in every message to the peer.
    pub remote_index: u32,
    send_counter: u64,
    replay: ReplayWindow,
    /// When the handshake that made it completed.
    pub created: Instant,
    /// Whether we initiated that handshake.
    pub initiator: bool,
}

impl Keypair {
    /// A session from the two transport keys.
    pub fn new(
        send: &[u8; 32],
        recv: &[u8; 32],
        local_index: u32,
        remote_index: u32,
        created: Instant,
        initiator: bool,
    ) -> Self {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k)
                    .unwrap_or_else(|_| unreachable!("32-byte key")),
            )
        };
        Self {
            send: key(send),
            recv: key(recv),
            local_index,
            remote_index,
            send_counter: 0,
            replay: ReplayWindow::default(),
            created,
            initiator,
        }
    }

    /// Whether it may still carry data at `now`.
    pub fn usable(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    /// Whether another message can be sent with it.
    pub fn can_send(&self, now: Instant) -> bool {
        self.usable(now) && self.send_counter < REJECT_AFTER_MESSAGES
    }

    /// Encrypts `packet` into a transport data message in `out` (at least
    /// `packet.len() + 32` bytes) and returns its length.
    pub fn seal(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        self.seal_with(packet, out, |_| {})
    }

    /// [`Keypair::seal`], with `patch` applied to the plaintext once it is in
    /// `out` (a service VIP rewrite: no extra copy of the packet).
    pub fn seal_with(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
        patch: impl FnOnce(&mut [u8]),
    ) -> Result<usize, Error> {
        let n = DATA_HEADER + packet.len() + TAG_LEN;
        if out.len() < n {
            return Err(Error::BufferTooSmall);
        }
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(Error::UnknownSession);
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        out[..4].copy_from_slice(&u32::from(MSG_DATA).to_le_bytes());
        out[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let body = &mut out[DATA_HEADER..n];
        let (plain, tag_out) = body.split_at_mut(packet.len());
        plain.copy_from_slice(packet);
        patch(plain);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), plain)
            .map_err(|_| Error::BufferTooSmall)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(n)
    }

    /// Decrypts a transport data message into `out` (at least as long as the
    /// message) and returns the plaintext length (0: a keepalive).
    pub fn open(&mut self, msg: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let Some(sealed_len) = msg.len().checked_sub(DATA_HEADER) else {
            return Err(Error::Malformed);
        };
        if sealed_len < TAG_LEN {
            return Err(Error::Malformed);
        }
        if out.len() < sealed_len {
            return Err(Error::BufferTooSmall);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&msg[8..16]);
        let counter = u64::from_le_bytes(c);
        if !self.replay.check(counter) {
            return Err(Error::Replay);
        }
        let buf = &mut out[..sealed_len];
        buf.copy_from_slice(&msg[DATA_HEADER..]);
        let n = self
            .recv
            .open_in_place(nonce(counter), Aad::empty(), buf)
            .map_err(|_| Error::BadAuth)?
            .len();
        if !self.replay.update(counter) {
            return Err(Error::Replay);
        }
        Ok(n)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_each_counter_once() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(w.update(3), "late but inside the window");
        assert!(!w.update(3));
        assert!(!w.update(5));
        assert!(w.update(1));
    }

    #[test]
    fn replay_window_slides_and_rejects_what_fell_out() {
        let mut w = ReplayWindow::default();
        for c in 0..10_000 {
            if c % 3 != 1 {
                assert!(w.update(c));
            }
        }
        // Inside the window: the gaps are still open, the rest is closed.
        assert!(w.check(9_997));
        assert!(!w.check(9_998));
        assert!(!w.check(9_999));
        let oldest = 9_999 - WINDOW_BITS + 1;
        assert_eq!(oldest % 3, 1, "a gap");
        assert!(w.check(oldest));
        assert!(!w.check(oldest - 3), "a gap, but too old");
        // A big jump clears the window.
        assert!(w.update(1_000_000));
        assert!(w.update(1_000_000 - 1));
        assert!(!w.update(1_000_000 - WINDOW_BITS));
        assert!(w.update(1_000_000 - WINDOW_BITS + 1));
        // At least 2048 counters of reordering survive.
        const { assert!(WINDOW_BITS >= 2048) };
        assert!(!w.check(REJECT_AFTER_MESSAGES));
    }

    #[test]
    fn replay_window_matches_a_set_model() {
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest = 0u64;
        let mut x = 0x1234_5678_u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = if x.is_multiple_of(5) {
                highest + x % 3000
            } else {
                highest.saturating_sub(x % 5000)
            };
            let expect = !seen.contains(&c) && (seen.is_empty() || c + WINDOW_BITS > highest);
            assert_eq!(w.update(c), expect, "counter {c} highest {highest}");
            if expect {
                seen.insert(c);
                highest = highest.max(c);
            }
        }
    }
}
