//! WireGuard, written from the whitepaper ("WireGuard: Next Generation Kernel
//! Network Tunnel", §5 and §6) as a sans-IO state machine: every clock reading is
//! the `now` the caller passes and every random byte comes from the caller's seeded
//! [`Rng`], so a run replays exactly.
//!
//! - [`handshake`]: this node's static identity ([`Local`]): Noise_IKpsk2
//!   initiation and response (zero pre-shared key), MAC1/MAC2, cookie replies
//!   under load, TAI64N timestamps.
//! - [`session`]: transport data keypairs, in-place ChaCha20-Poly1305 (ring) with
//!   the counter nonce and a 4032-bit replay window.
//! - [`tunnel`]: one peer's [`Tunnel`]: current, previous and next keypairs,
//!   packets queued behind a handshake, and the timers of §6.

use std::time::Duration;

pub mod crypto;
pub mod endpoint;
pub mod handshake;
pub mod session;
pub mod tunnel;

pub use crypto::{Rng, WallClock};
pub use handshake::{Initiation, Local};
pub use tunnel::{Encrypted, TimerAction, Tunnel};

/// Message type of a handshake initiation.
pub const MSG_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const MSG_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const MSG_COOKIE: u8 = 3;
/// Message type of transport data (keepalives too).
pub const MSG_DATA: u8 = 4;
/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_LEN: usize = 64;
/// Header of a transport data message (type, receiver index, counter).
pub const DATA_HEADER: usize = 16;
/// Overhead of a transport data message: header and tag.
pub const DATA_OVERHEAD: usize = DATA_HEADER + crypto::TAG_LEN;

/// After this many messages a keypair sends no more (§6.1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator rekeys when it sends with a keypair this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair this old carries no more data.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake retries give up after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A handshake without an answer is retried after this (plus up to 333 ms jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Data received and nothing sent back for this long: a keepalive goes out.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A cookie from a responder under load is used this long.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// Why a WireGuard message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a well-formed WireGuard message.
    #[error("not a WireGuard message")]
    Malformed,
    /// MAC1, a Diffie-Hellman result, an AEAD tag or a cookie did not check out.
    #[error("authentication failed")]
    BadAuth,
    /// A transport counter or handshake timestamp seen before.
    #[error("replayed")]
    Replay,
    /// No usable keypair for the receiver index.
    #[error("no session for this index")]
    UnknownSession,
    /// A response or cookie for a handshake that is no longer under way.
    #[error("handshake no longer under way")]
    Stale,
    /// The output buffer is too small.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// A WireGuard message, by type, with the fields needed to route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Handshake initiation.
    Initiation {
        /// The initiator's index.
        sender: u32,
    },
    /// Handshake response.
    Response {
        /// The responder's index.
        sender: u32,
        /// Our index, from the initiation.
        receiver: u32,
    },
    /// Cookie reply.
    Cookie {
        /// Our index, from the message the cookie answers.
        receiver: u32,
    },
    /// Transport data.
    Data {
        /// Our index.
        receiver: u32,
    },
}

fn le32(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_le_bytes(x)
}

impl Message {
    /// Classifies `msg` by its type and length (reserved bytes must be zero).
    pub fn parse(msg: &[u8]) -> Result<Self, Error> {
        if msg.len() < 4 {
            return Err(Error::Malformed);
        }
        let ty = le32(msg);
        match (ty, msg.len()) {
            (1, INITIATION_LEN) => Ok(Self::Initiation {
                sender: le32(&msg[4..]),
            }),
            (2, RESPONSE_LEN) => Ok(Self::Response {
                sender: le32(&msg[4..]),
                receiver: le32(&msg[8..]),
            }),
            (3, COOKIE_LEN) => Ok(Self::Cookie {
                receiver: le32(&msg[4..]),
            }),
            (4, n) if n >= DATA_OVERHEAD => Ok(Self::Data {
                receiver: le32(&msg[4..]),
            }),
            _ => Err(Error::Malformed),
        }
    }

    /// Our index the message is addressed to (none for an initiation).
    pub fn receiver(&self) -> Option<u32> {
        match *self {
            Self::Initiation { .. } => None,
            Self::Response { receiver, .. }
            | Self::Cookie { receiver }
            | Self::Data { receiver } => Some(receiver),
        }
    }
}

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;
