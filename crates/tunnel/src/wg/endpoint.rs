//! A WireGuard endpoint with exactly one peer and no paths: what the fuzz harness
//! and the tests use as the other end of a [`Node`](crate::Node). It handles
//! messages the way `Node` does (MAC1 and load before any Diffie-Hellman, cookie
//! replies, queued packets released by a handshake).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::{Encrypted, Error, Local, Message, Rng, TimerAction, Tunnel};

/// One end of a WireGuard session.
pub struct Endpoint {
    /// Our identity, random stream and clock.
    pub local: Local,
    /// The session with the one peer.
    pub tunnel: Tunnel,
    buf: Vec<u8>,
}

/// What a received message produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    /// Messages to send back (response, cookie, keepalive, released packets).
    pub replies: Vec<Vec<u8>>,
    /// The decrypted packet of a transport data message (empty: a keepalive).
    pub plaintext: Option<Vec<u8>>,
}

impl Endpoint {
    /// An endpoint with static secret `secret` and random stream `seed`, whose
    /// one peer has static public key `remote`; see [`Tunnel::new`] and
    /// [`Local::new`] for the rest.
    pub fn new(
        secret: [u8; 32],
        seed: [u8; 32],
        remote: [u8; 32],
        index_base: u32,
        persistent_keepalive: Option<Duration>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Self> {
        let local = Local::new(secret, Rng::new(seed), now, wall, 100);
        let tunnel = Tunnel::new(&local, remote, index_base, persistent_keepalive, now)?;
        Some(Self {
            local,
            tunnel,
            buf: vec![0u8; 65_536 + super::DATA_OVERHEAD],
        })
    }

    /// Handles message `msg` from `from`.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &[u8],
    ) -> Result<Received, Error> {
        let mut got = Received::default();
        match Message::parse(msg)? {
            Message::Initiation { .. } => {
                if !self.local.check_mac1(msg) {
                    return Err(Error::BadAuth);
                }
                if self.local.under_load() && !self.local.check_mac2(now, msg, &from) {
                    let n = self.local.cookie_reply(now, msg, &from, &mut self.buf)?;
                    got.replies.push(self.buf[..n].to_vec());
                    return Ok(got);
                }
                let init = self.local.consume_initiation(msg)?;
                let n = match self
                    .tunnel
                    .respond(&mut self.local, &init, now, &mut self.buf)
                {
                    Err(Error::Replay) => self
                        .tunnel
                        .repeat_response(&init, now, &mut self.buf)
                        .ok_or(Error::Replay)?,
                    r => r?,
                };
                got.replies.push(self.buf[..n].to_vec());
            }
            Message::Response { .. } => {
                if !self.local.check_mac1(msg) {
                    return Err(Error::BadAuth);
                }
                self.tunnel.receive_response(&self.local, msg, now)?;
                let replies = &mut got.replies;
                self.tunnel
                    .flush(now, true, &mut self.buf, |m| replies.push(m.to_vec()));
            }
            Message::Cookie { .. } => self.tunnel.receive_cookie(msg, now)?,
            Message::Data { .. } => {
                let n = self.tunnel.decrypt(now, msg, &mut self.buf)?;
                got.plaintext = Some(self.buf[..n].to_vec());
                if self.tunnel.has_releasable(now) {
                    let replies = &mut got.replies;
                    self.tunnel
                        .flush(now, false, &mut self.buf, |m| replies.push(m.to_vec()));
                }
            }
        }
        Ok(got)
    }

    /// Encrypts `packet` (any bytes; empty: a keepalive), or queues it behind a
    /// handshake; returns what happened and the message to send (if any).
    pub fn send(&mut self, now: Instant, packet: &[u8]) -> Result<(Encrypted, Vec<u8>), Error> {
        if self.buf.len() < packet.len() + super::DATA_OVERHEAD {
            return Err(Error::BufferTooSmall);
        }
        let e = self
            .tunnel
            .encrypt(&mut self.local, now, packet, &mut self.buf)?;
        let msg = match e {
            Encrypted::Data(n) | Encrypted::Initiation(n) => self.buf[..n].to_vec(),
            Encrypted::Queued => Vec::new(),
        };
        Ok((e, msg))
    }

    /// Runs the timers; returns what they did and the message to send (if any).
    pub fn timers(&mut self, now: Instant) -> (TimerAction, Vec<u8>) {
        let a = self
            .tunnel
            .update_timers(&mut self.local, now, &mut self.buf);
        let msg = match a {
            TimerAction::Send(n) => self.buf[..n].to_vec(),
            TimerAction::Idle | TimerAction::Expired => Vec::new(),
        };
        (a, msg)
    }
}
