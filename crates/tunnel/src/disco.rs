//! Discovery messages: authenticated, encrypted ping/pong between two node keys,
//! sent over UDP to candidate addresses to find (and keep checking) a direct path.
//!
//! ```text
//! 0..8    magic "WEFTDSC1"   (WireGuard messages start with 1..4 and three zeros)
//! 8..40   sender's node key (Ed25519 public key)
//! 40..52  nonce (random)
//! 52..    ChaCha20-Poly1305(key, nonce, aad = bytes 0..40) of the body, + 16-byte tag
//! body:   type (1 = ping, 2 = pong) | tx id (8) | pong only: observed source
//!         address: family (4 or 6) | address (4 or 16) | port (2, big endian)
//! ```
//!
//! The key is `SHA-256("weft/disco/v1" || X25519(our secret, peer public))`, the
//! same on both sides, so only the two peers can make or read their messages.
//! Parsing is bounded ([`MAX_LEN`]) and never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use weft_proto::NodeKey;

/// First bytes of every discovery message.
pub const MAGIC: &[u8; 8] = b"WEFTDSC1";
const HEADER: usize = 8 + 32 + 12;
const TAG: usize = 16;
/// Largest discovery message (a pong with an IPv6 address).
pub const MAX_LEN: usize = HEADER + 1 + 8 + 1 + 16 + 2 + TAG;

/// A discovery message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disco {
    /// "Can you hear me on this path?"
    Ping {
        /// Transaction id echoed in the pong.
        tx: u64,
    },
    /// "Yes; your packet came from `observed`."
    Pong {
        /// The ping's transaction id.
        tx: u64,
        /// The source address the ping arrived from (the sender's reflexive address
        /// on that path).
        observed: SocketAddr,
    },
}

/// Why bytes are not an acceptable discovery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// Too short, too long, or not starting with the magic.
    #[error("malformed discovery message")]
    Malformed,
    /// Decryption failed: wrong key, tampered, or not from that peer.
    #[error("discovery message failed authentication")]
    Auth,
}

/// Whether a datagram is a discovery message (cheap check on the magic).
pub fn is_disco(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER + TAG && datagram.starts_with(MAGIC)
}

/// The sender key of a discovery message, before authentication (to pick the key).
pub fn sender(datagram: &[u8]) -> Result<NodeKey, DiscoError> {
    if !is_disco(datagram) || datagram.len() > MAX_LEN {
        return Err(DiscoError::Malformed);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&datagram[8..40]);
    Ok(NodeKey::from_bytes(k))
}

/// The symmetric key for one pair of nodes.
pub struct DiscoKey(LessSafeKey);

impl DiscoKey {
    /// Derives the pair key from an X25519 shared secret.
    pub fn from_shared(shared: &[u8; 32]) -> Self {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(b"weft/disco/v1");
        h.update(shared);
        let k: [u8; 32] = h.finalize().into();
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &k)
            .unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key"));
        Self(LessSafeKey::new(unbound))
    }

    /// Seals `msg` from `sender` with `nonce`.
    pub fn seal(&self, sender: &NodeKey, nonce: [u8; 12], msg: &Disco) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(sender.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(30);
        match msg {
            Disco::Ping { tx } => {
                body.push(1);
                body.extend_from_slice(&tx.to_be_bytes());
            }
            Disco::Pong { tx, observed } => {
                body.push(2);
                body.extend_from_slice(&tx.to_be_bytes());
                match observed.ip() {
                    IpAddr::V4(v4) => {
                        body.push(4);
                        body.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        body.push(6);
                        body.extend_from_slice(&v6.octets());
                    }
                }
                body.extend_from_slice(&observed.port().to_be_bytes());
            }
        }
        let aad = Aad::from(&out[..40]);
        let tag =
            self.0
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, &mut body);
        out.extend_from_slice(&body);
        // Sealing with a valid key cannot fail for these small inputs.
        if let Ok(tag) = tag {
            out.extend_from_slice(tag.as_ref());
        }
        out
    }

    /// Authenticates and parses a message (the caller already looked the key up by
    /// [`sender`]).
    pub fn open(&self, datagram: &[u8]) -> Result<Disco, DiscoError> {
        if !is_disco(datagram) || datagram.len() > MAX_LEN {
            return Err(DiscoError::Malformed);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&datagram[40..52]);
        let mut body = datagram[HEADER..].to_vec();
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&datagram[..40]),
                &mut body,
            )
            .map_err(|_| DiscoError::Auth)?;
        parse_body(plain)
    }
}

fn parse_body(b: &[u8]) -> Result<Disco, DiscoError> {
    let (&kind, rest) = b.split_first().ok_or(DiscoError::Malformed)?;
    let tx = u64::from_be_bytes(
        rest.get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or(DiscoError::Malformed)?,
    );
    let rest = &rest[8..];
    match kind {
        1 if rest.is_empty() => Ok(Disco::Ping { tx }),
        2 => {
            let (&fam, rest) = rest.split_first().ok_or(DiscoError::Malformed)?;
            let (ip, rest): (IpAddr, &[u8]) = match fam {
                4 if rest.len() == 6 => (
                    IpAddr::V4(Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3])),
                    &rest[4..],
                ),
                6 if rest.len() == 18 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&rest[..16]);
                    (IpAddr::V6(Ipv6Addr::from(o)), &rest[16..])
                }
                _ => return Err(DiscoError::Malformed),
            };
            let port = u16::from_be_bytes([rest[0], rest[1]]);
            Ok(Disco::Pong {
                tx,
                observed: SocketAddr::new(ip, port),
            })
        }
        _ => Err(DiscoError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> DiscoKey {
        DiscoKey::from_shared(&[b; 32])
    }

    #[test]
    fn round_trip_ping_and_pong() {
        let k = key(1);
        let me = NodeKey::from_bytes([9; 32]);
        for msg in [
            Disco::Ping { tx: 42 },
            Disco::Pong {
                tx: 7,
                observed: "198.51.100.4:40000".parse().unwrap(),
            },
            Disco::Pong {
                tx: 8,
                observed: "[2001:db8::1]:1".parse().unwrap(),
            },
        ] {
            let bytes = k.seal(&me, [3; 12], &msg);
            assert!(bytes.len() <= MAX_LEN);
            assert!(is_disco(&bytes));
            assert_eq!(sender(&bytes), Ok(me));
            assert_eq!(k.open(&bytes), Ok(msg));
        }
    }

    #[test]
    fn wrong_key_tampering_and_sender_swap_fail() {
        let me = NodeKey::from_bytes([9; 32]);
        let bytes = key(1).seal(&me, [0; 12], &Disco::Ping { tx: 1 });
        assert_eq!(key(2).open(&bytes), Err(DiscoError::Auth));
        for i in 8..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(key(1).open(&b).is_err(), "flip at {i} accepted");
        }
        assert_eq!(
            key(1).open(&bytes[..bytes.len() - 1]),
            Err(DiscoError::Auth)
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = sender(&bytes);
            let _ = key(1).open(&bytes);
            let mut b = bytes.clone();
            if b.len() >= 8 { b[..8].copy_from_slice(MAGIC); }
            let _ = key(1).open(&b);
            let _ = parse_body(&bytes);
        }
    }
}
