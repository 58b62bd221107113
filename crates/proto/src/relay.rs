//! The relay wire protocol: length-prefixed binary frames inside a TLS 1.3 stream
//! (ALPN [`ALPN`]), addressed by node key.
//!
//! # Frame format
//!
//! ```text
//! +--------+----------------+---------------------------+
//! | type   | body length    | body (length bytes)        |
//! | 1 byte | 4 bytes, BE    | at most MAX_BODY bytes     |
//! +--------+----------------+---------------------------+
//! ```
//!
//! | type | name | direction | body |
//! |---|---|---|---|
//! | 1 | `ServerChallenge` | relay → client | nonce (32) |
//! | 2 | `ClientLogin` | client → relay | node key (32), signature (64), protocol version (u16 BE) |
//! | 3 | `LoginOk` | relay → client | empty |
//! | 4 | `LoginRefused` | relay → client | reason (u8) |
//! | 5 | `Send` | client → relay | destination key (32), payload (0..=64 KiB) |
//! | 6 | `Recv` | relay → client | source key (32), payload (0..=64 KiB) |
//! | 7 | `PeerGone` | relay → client | key (32), reason (u8) |
//! | 8 | `Restarting` | relay → client | reconnect hint in ms (u32 BE) |
//! | 9 | `Ping` | both | 8 opaque bytes |
//! | 10 | `Pong` | both | the 8 bytes of the ping |
//! | 11 | `Closed` | relay → client | reason (u8); the relay closes the stream next |
//!
//! # Login
//!
//! The relay opens with `ServerChallenge{nonce}`. The client answers
//! `ClientLogin{node_key, signature, version}` where `signature` is
//! `Identity::sign(LOGIN_SIGNATURE_CONTEXT, login_signed_message(nonce, binding))`
//! and `binding` is 32 bytes of TLS keying material exported with
//! [`TLS_EXPORTER_LABEL`] (RFC 8446 §7.5, no context). The exporter value is
//! unique to one TLS session, so a signature cannot be replayed on another
//! connection, not even by a relay that forwards the challenge of a second relay:
//! the login is bound to the TLS channel the client itself verified. The relay
//! then answers `LoginOk` or `LoginRefused{reason}` (and closes).
//!
//! # Parsing
//!
//! Parsing is checked (smoltcp style): every length is bounded before anything is
//! buffered, a body must have exactly the size its type requires, and a value that
//! can be constructed can always be encoded ([`Payload`] enforces the payload
//! cap). A bad body ([`FrameError::is_fatal`] is `false`) is skipped, so the
//! stream stays in sync; a header announcing more than [`MAX_BODY`] bytes is
//! fatal, because the stream cannot be resynchronised without reading it.
//! Nothing here panics on any input.

use bytes::{Buf as _, Bytes, BytesMut};

use crate::NodeKey;

/// TLS ALPN protocol name of the relay protocol.
pub const ALPN: &[u8] = b"weft-relay/1";

/// Version of the frame protocol sent in `ClientLogin`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Signature context of a relay login (see [`login_signed_message`]).
pub const LOGIN_SIGNATURE_CONTEXT: &str = "weft/relay-login/v1";

/// Label of the TLS exporter whose 32-byte output binds a login to its TLS session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-relay-login-v1";

/// Length of the challenge nonce.
pub const NONCE_LEN: usize = 32;

/// Length of a node key on the wire.
pub const KEY_LEN: usize = 32;

/// Length of the frame header (type and body length).
pub const HEADER_LEN: usize = 5;

/// Largest payload of a `Send`/`Recv` frame: 64 KiB, far above any WireGuard
/// packet (at most the tunnel MTU plus 32 bytes), so a valid packet always fits.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Largest body of any frame (a `Send`/`Recv` with the largest payload).
pub const MAX_BODY: usize = KEY_LEN + MAX_PAYLOAD;

/// Largest encoded frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_BODY;

/// The message a node signs, under [`LOGIN_SIGNATURE_CONTEXT`], to log in:
/// `nonce (32 bytes) || TLS exporter output (32 bytes)`.
pub fn login_signed_message(nonce: &[u8; NONCE_LEN], channel_binding: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(nonce);
    out[32..].copy_from_slice(channel_binding);
    out
}

/// Frame type codes.
pub mod frame_type {
    /// `ServerChallenge`.
    pub const SERVER_CHALLENGE: u8 = 1;
    /// `ClientLogin`.
    pub const CLIENT_LOGIN: u8 = 2;
    /// `LoginOk`.
    pub const LOGIN_OK: u8 = 3;
    /// `LoginRefused`.
    pub const LOGIN_REFUSED: u8 = 4;
    /// `Send`.
    pub const SEND: u8 = 5;
    /// `Recv`.
    pub const RECV: u8 = 6;
    /// `PeerGone`.
    pub const PEER_GONE: u8 = 7;
    /// `Restarting`.
    pub const RESTARTING: u8 = 8;
    /// `Ping`.
    pub const PING: u8 = 9;
    /// `Pong`.
    pub const PONG: u8 = 10;
    /// `Closed`.
    pub const CLOSED: u8 = 11;
}

/// A packet carried by the relay: at most [`MAX_PAYLOAD`] bytes. The relay
/// never looks inside (it is WireGuard ciphertext).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(Bytes);

/// A payload over [`MAX_PAYLOAD`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("relay payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
pub struct PayloadTooLarge(pub usize);

impl Payload {
    /// Wraps `bytes` if they fit in a frame.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, PayloadTooLarge> {
        let bytes = bytes.into();
        if bytes.len() > MAX_PAYLOAD {
            return Err(PayloadTooLarge(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Copies `bytes` if they fit in a frame.
    pub fn copy_from_slice(bytes: &[u8]) -> Result<Self, PayloadTooLarge> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(PayloadTooLarge(bytes.len()));
        }
        Ok(Self(Bytes::copy_from_slice(bytes)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, by value.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext is noise to a reader; its length is what matters.
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// Why the relay refused a login or closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The controller does not list the key as a member (unknown, disabled or
    /// removed node).
    NotMember,
    /// The relay does not currently know the member list (controller unreachable
    /// for longer than its grace period, or not yet fetched): it serves nobody.
    MembershipUnknown,
    /// The login signature does not verify for the key, nonce and TLS session.
    BadSignature,
    /// The client speaks a protocol version the relay does not.
    UnsupportedVersion,
    /// A newer login with the same key replaced this session.
    Replaced,
    /// The client broke the protocol (a frame before login, a fatal framing error).
    Protocol,
    /// Nothing was received for too long.
    IdleTimeout,
    /// The client did not log in in time.
    LoginTimeout,
    /// The relay has too many connections.
    Overloaded,
    /// A code this build does not know.
    Other(u8),
}

impl Reason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Reason::NotMember => 1,
            Reason::MembershipUnknown => 2,
            Reason::BadSignature => 3,
            Reason::UnsupportedVersion => 4,
            Reason::Replaced => 5,
            Reason::Protocol => 6,
            Reason::IdleTimeout => 7,
            Reason::LoginTimeout => 8,
            Reason::Overloaded => 9,
            Reason::Other(c) => c,
        }
    }

    /// Decodes a wire code; unknown codes become [`Reason::Other`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Reason::NotMember,
            2 => Reason::MembershipUnknown,
            3 => Reason::BadSignature,
            4 => Reason::UnsupportedVersion,
            5 => Reason::Replaced,
            6 => Reason::Protocol,
            7 => Reason::IdleTimeout,
            8 => Reason::LoginTimeout,
            9 => Reason::Overloaded,
            c => Reason::Other(c),
        }
    }

    /// Whether retrying the login unchanged is pointless until something changes
    /// on the controller or the client (as opposed to a transient condition).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Reason::NotMember | Reason::BadSignature | Reason::UnsupportedVersion
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Reason::NotMember => "not a member",
            Reason::MembershipUnknown => "membership unknown",
            Reason::BadSignature => "bad login signature",
            Reason::UnsupportedVersion => "unsupported protocol version",
            Reason::Replaced => "replaced by a newer login",
            Reason::Protocol => "protocol violation",
            Reason::IdleTimeout => "idle timeout",
            Reason::LoginTimeout => "login timeout",
            Reason::Overloaded => "relay overloaded",
            Reason::Other(c) => return write!(f, "reason code {c}"),
        };
        f.write_str(s)
    }
}

/// Why a destination cannot be reached through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerGoneReason {
    /// The destination has no session on this relay.
    NotConnected,
    /// The destination's session ended (it disconnected or was removed).
    Disconnected,
    /// A code this build does not know.
    Other(u8),
}

impl PeerGoneReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            PeerGoneReason::NotConnected => 1,
            PeerGoneReason::Disconnected => 2,
            PeerGoneReason::Other(c) => c,
        }
    }

    /// Decodes a wire code; unknown codes become [`PeerGoneReason::Other`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => PeerGoneReason::NotConnected,
            2 => PeerGoneReason::Disconnected,
            c => PeerGoneReason::Other(c),
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Relay → client, first frame: sign this nonce to log in.
    ServerChallenge {
        /// Fresh random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// Client → relay, first frame: who I am and proof of it.
    ClientLogin {
        /// The node's identity key.
        node_key: NodeKey,
        /// Ed25519 signature over [`login_signed_message`] under
        /// [`LOGIN_SIGNATURE_CONTEXT`].
        signature: [u8; 64],
        /// [`PROTOCOL_VERSION`] of the client.
        version: u16,
    },
    /// Relay → client: logged in.
    LoginOk,
    /// Relay → client: login refused; the relay closes the stream.
    LoginRefused {
        /// Why.
        reason: Reason,
    },
    /// Client → relay: deliver `payload` to `dst`.
    Send {
        /// The destination node.
        dst: NodeKey,
        /// The packet.
        payload: Payload,
    },
    /// Relay → client: `src` sent `payload`.
    Recv {
        /// The sending node (authenticated by its login).
        src: NodeKey,
        /// The packet.
        payload: Payload,
    },
    /// Relay → client: packets to `key` are not being delivered.
    PeerGone {
        /// The destination.
        key: NodeKey,
        /// Why.
        reason: PeerGoneReason,
    },
    /// Relay → client: the relay is restarting; reconnect after about
    /// `retry_after_ms` milliseconds.
    Restarting {
        /// Reconnect hint.
        retry_after_ms: u32,
    },
    /// Either direction: answer with a `Pong` carrying the same bytes.
    Ping {
        /// Opaque.
        data: [u8; 8],
    },
    /// Either direction: the answer to a `Ping`.
    Pong {
        /// The ping's bytes.
        data: [u8; 8],
    },
    /// Relay → client: the relay ends this session; the stream closes next.
    Closed {
        /// Why.
        reason: Reason,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a body over [`MAX_BODY`] bytes. Fatal: the stream
    /// cannot be resynchronised.
    #[error("frame body of {len} bytes exceeds the {MAX_BODY}-byte limit")]
    Oversize {
        /// The announced length.
        len: u32,
    },
    /// The type code is not one this build knows. The body was skipped.
    #[error("unknown frame type {ty} ({len} bytes skipped)")]
    UnknownType {
        /// The type code.
        ty: u8,
        /// Body length.
        len: usize,
    },
    /// The body length is not what the type requires (a lying length). The body
    /// was skipped.
    #[error("frame type {ty} cannot have a {len}-byte body")]
    BadLength {
        /// The type code.
        ty: u8,
        /// Body length.
        len: usize,
    },
    /// The input ended inside a frame (only from whole-buffer decoding).
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
}

impl FrameError {
    /// Whether the stream must be dropped (nothing after this can be parsed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::Oversize { .. } | FrameError::Truncated { .. }
        )
    }
}

fn key_at(b: &[u8]) -> NodeKey {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&b[..KEY_LEN]);
    NodeKey::from_bytes(k)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl Frame {
    /// The type code.
    pub fn frame_type(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::ServerChallenge { .. } => SERVER_CHALLENGE,
            Frame::ClientLogin { .. } => CLIENT_LOGIN,
            Frame::LoginOk => LOGIN_OK,
            Frame::LoginRefused { .. } => LOGIN_REFUSED,
            Frame::Send { .. } => SEND,
            Frame::Recv { .. } => RECV,
            Frame::PeerGone { .. } => PEER_GONE,
            Frame::Restarting { .. } => RESTARTING,
            Frame::Ping { .. } => PING,
            Frame::Pong { .. } => PONG,
            Frame::Closed { .. } => CLOSED,
        }
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::ServerChallenge { .. } => "server_challenge",
            Frame::ClientLogin { .. } => "client_login",
            Frame::LoginOk => "login_ok",
            Frame::LoginRefused { .. } => "login_refused",
            Frame::Send { .. } => "send",
            Frame::Recv { .. } => "recv",
            Frame::PeerGone { .. } => "peer_gone",
            Frame::Restarting { .. } => "restarting",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Closed { .. } => "closed",
        }
    }

    /// Length of the body.
    pub fn body_len(&self) -> usize {
        match self {
            Frame::ServerChallenge { .. } => NONCE_LEN,
            Frame::ClientLogin { .. } => KEY_LEN + 64 + 2,
            Frame::LoginOk => 0,
            Frame::LoginRefused { .. } | Frame::Closed { .. } => 1,
            Frame::Send { payload, .. } | Frame::Recv { payload, .. } => KEY_LEN + payload.len(),
            Frame::PeerGone { .. } => KEY_LEN + 1,
            Frame::Restarting { .. } => 4,
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
        }
    }

    /// Length of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        encode_header(self.frame_type(), self.body_len(), out);
        match self {
            Frame::ServerChallenge { nonce } => out.extend_from_slice(nonce),
            Frame::ClientLogin {
                node_key,
                signature,
                version,
            } => {
                out.extend_from_slice(node_key.as_bytes());
                out.extend_from_slice(signature);
                out.extend_from_slice(&version.to_be_bytes());
            }
            Frame::LoginOk => {}
            Frame::LoginRefused { reason } | Frame::Closed { reason } => out.push(reason.code()),
            Frame::Send { dst: key, payload } | Frame::Recv { src: key, payload } => {
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(payload);
            }
            Frame::PeerGone { key, reason } => {
                out.extend_from_slice(key.as_bytes());
                out.push(reason.code());
            }
            Frame::Restarting { retry_after_ms } => {
                out.extend_from_slice(&retry_after_ms.to_be_bytes());
            }
            Frame::Ping { data } | Frame::Pong { data } => out.extend_from_slice(data),
        }
    }

    /// The encoded frame.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Parses a body of type `ty`. `body` is at most [`MAX_BODY`] bytes when it
    /// comes from [`FrameDecoder`]; longer bodies are refused here too.
    pub fn parse_body(ty: u8, body: Bytes) -> Result<Frame, FrameError> {
        use frame_type::*;
        let len = body.len();
        let bad = || FrameError::BadLength { ty, len };
        if len > MAX_BODY {
            return Err(FrameError::Oversize {
                len: u32::try_from(len).unwrap_or(u32::MAX),
            });
        }
        let exact = |n: usize| if len == n { Ok(()) } else { Err(bad()) };
        let frame = match ty {
            SERVER_CHALLENGE => {
                exact(NONCE_LEN)?;
                Frame::ServerChallenge {
                    nonce: array(&body),
                }
            }
            CLIENT_LOGIN => {
                exact(KEY_LEN + 64 + 2)?;
                Frame::ClientLogin {
                    node_key: key_at(&body),
                    signature: array(&body[KEY_LEN..]),
                    version: u16::from_be_bytes(array(&body[KEY_LEN + 64..])),
                }
            }
            LOGIN_OK => {
                exact(0)?;
                Frame::LoginOk
            }
            LOGIN_REFUSED => {
                exact(1)?;
                Frame::LoginRefused {
                    reason: Reason::from_code(body[0]),
                }
            }
            CLOSED => {
                exact(1)?;
                Frame::Closed {
                    reason: Reason::from_code(body[0]),
                }
            }
            SEND | RECV => {
                if len < KEY_LEN {
                    return Err(bad());
                }
                let key = key_at(&body);
                let mut payload = body;
                payload.advance(KEY_LEN);
                // Cannot fail: the body is at most MAX_BODY = KEY_LEN + MAX_PAYLOAD.
                let payload = Payload::new(payload).map_err(|_| bad())?;
                if ty == SEND {
                    Frame::Send { dst: key, payload }
                } else {
                    Frame::Recv { src: key, payload }
                }
            }
            PEER_GONE => {
                exact(KEY_LEN + 1)?;
                Frame::PeerGone {
                    key: key_at(&body),
                    reason: PeerGoneReason::from_code(body[KEY_LEN]),
                }
            }
            RESTARTING => {
                exact(4)?;
                Frame::Restarting {
                    retry_after_ms: u32::from_be_bytes(array(&body)),
                }
            }
            PING => {
                exact(8)?;
                Frame::Ping { data: array(&body) }
            }
            PONG => {
                exact(8)?;
                Frame::Pong { data: array(&body) }
            }
            _ => return Err(FrameError::UnknownType { ty, len }),
        };
        Ok(frame)
    }

    /// Decodes one frame from the start of `buf`; returns it and the bytes it
    /// used. A skippable error (see [`FrameError::is_fatal`]) still consumes the
    /// frame: [`FrameDecoder`] is the streaming form of this.
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), (FrameError, usize)> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Err((
                FrameError::Truncated {
                    have: buf.len(),
                    need: HEADER_LEN,
                },
                buf.len(),
            ));
        };
        let (ty, len) = parse_header(header).map_err(|e| (e, buf.len()))?;
        let need = HEADER_LEN + len;
        let Some(body) = buf.get(HEADER_LEN..need) else {
            return Err((
                FrameError::Truncated {
                    have: buf.len(),
                    need,
                },
                buf.len(),
            ));
        };
        Frame::parse_body(ty, Bytes::copy_from_slice(body))
            .map(|f| (f, need))
            .map_err(|e| (e, need))
    }
}

/// Appends a frame header to `out`. `body_len` must be at most [`MAX_BODY`]
/// (the frames of this module always are).
pub fn encode_header(ty: u8, body_len: usize, out: &mut Vec<u8>) {
    out.push(ty);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
}

/// Appends a `Send` frame without building a [`Frame`] (no payload copy into a
/// [`Bytes`]). Fails when `payload` is over [`MAX_PAYLOAD`].
pub fn encode_send(
    dst: &NodeKey,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), PayloadTooLarge> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PayloadTooLarge(payload.len()));
    }
    out.reserve(HEADER_LEN + KEY_LEN + payload.len());
    encode_header(frame_type::SEND, KEY_LEN + payload.len(), out);
    out.extend_from_slice(dst.as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

fn parse_header(h: &[u8]) -> Result<(u8, usize), FrameError> {
    let ty = h[0];
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    match usize::try_from(len) {
        Ok(l) if l <= MAX_BODY => Ok((ty, l)),
        _ => Err(FrameError::Oversize { len }),
    }
}

/// Incremental decoder for a byte stream: [`feed`](Self::feed) what arrives,
/// then call [`next_frame`](Self::next_frame) until `None`.
///
/// It buffers at most one incomplete frame (≤ [`MAX_FRAME`] bytes) beyond what
/// the caller fed since the last drain. After a fatal error it returns that error
/// again on every call and the caller must drop the stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next frame, a skipped bad frame (`Err` with `is_fatal() == false`), a
    /// fatal error, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let header = self.buf.get(..HEADER_LEN)?;
        let (ty, len) = match parse_header(header) {
            Ok(h) => h,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = BytesMut::new();
                return Some(Err(e));
            }
        };
        if self.buf.len() < HEADER_LEN + len {
            // Reserve once for the whole frame (bounded by MAX_FRAME).
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return None;
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Some(Frame::parse_body(ty, body))
    }

    /// Bytes held that do not yet form a complete frame. Non-zero when the
    /// stream ends means the last frame was truncated.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::from_bytes([b; 32])
    }

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::ServerChallenge { nonce: [7; 32] },
            Frame::ClientLogin {
                node_key: key(1),
                signature: [2; 64],
                version: PROTOCOL_VERSION,
            },
            Frame::LoginOk,
            Frame::LoginRefused {
                reason: Reason::NotMember,
            },
            Frame::Send {
                dst: key(3),
                payload: Payload::copy_from_slice(b"ciphertext").unwrap(),
            },
            Frame::Recv {
                src: key(4),
                payload: Payload::default(),
            },
            Frame::PeerGone {
                key: key(5),
                reason: PeerGoneReason::Disconnected,
            },
            Frame::Restarting {
                retry_after_ms: 500,
            },
            Frame::Ping { data: [9; 8] },
            Frame::Pong { data: [9; 8] },
            Frame::Closed {
                reason: Reason::Replaced,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_has_the_documented_layout() {
        for f in all_kinds() {
            let bytes = f.to_vec();
            assert_eq!(bytes.len(), f.encoded_len());
            assert_eq!(bytes[0], f.frame_type());
            assert_eq!(
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
                f.body_len()
            );
            assert_eq!(Frame::decode(&bytes), Ok((f.clone(), bytes.len())));
        }
        let send = Frame::Send {
            dst: key(3),
            payload: Payload::copy_from_slice(b"abc").unwrap(),
        }
        .to_vec();
        let mut direct = Vec::new();
        encode_send(&key(3), b"abc", &mut direct).unwrap();
        assert_eq!(send, direct);
        assert_eq!(&send[..5], &[5, 0, 0, 0, 35]);
    }

    #[test]
    fn payload_cap_is_enforced_on_both_sides() {
        assert!(Payload::new(vec![0u8; MAX_PAYLOAD]).is_ok());
        assert_eq!(
            Payload::new(vec![0u8; MAX_PAYLOAD + 1]),
            Err(PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        assert!(encode_send(&key(1), &vec![0u8; MAX_PAYLOAD + 1], &mut Vec::new()).is_err());
        let mut d = FrameDecoder::new();
        let mut hdr = Vec::new();
        encode_header(frame_type::SEND, MAX_BODY + 1, &mut hdr);
        d.feed(&hdr);
        let e = d.next_frame().unwrap().unwrap_err();
        assert!(e.is_fatal());
        assert_eq!(
            e,
            FrameError::Oversize {
                len: (MAX_BODY + 1) as u32
            }
        );
        // Sticky: the stream is unusable.
        d.feed(&Frame::LoginOk.to_vec());
        assert_eq!(d.next_frame(), Some(Err(e)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn bad_bodies_are_skipped_and_the_stream_stays_in_sync() {
        let mut stream = Vec::new();
        // Unknown type with a body.
        encode_header(200, 3, &mut stream);
        stream.extend_from_slice(b"xyz");
        // A ping whose length lies (4 instead of 8).
        encode_header(frame_type::PING, 4, &mut stream);
        stream.extend_from_slice(&[1, 2, 3, 4]);
        // A send too short to hold a key.
        encode_header(frame_type::SEND, 10, &mut stream);
        stream.extend_from_slice(&[0; 10]);
        Frame::LoginOk.encode(&mut stream);
        let mut d = FrameDecoder::new();
        d.feed(&stream);
        assert_eq!(
            d.next_frame(),
            Some(Err(FrameError::UnknownType { ty: 200, len: 3 }))
        );
        assert_eq!(
            d.next_frame(),
            Some(Err(FrameError::BadLength {
                ty: frame_type::PING,
                len: 4
            }))
        );
        assert!(matches!(
            d.next_frame(),
            Some(Err(FrameError::BadLength { ty: 5, len: 10 }))
        ));
        assert_eq!(d.next_frame(), Some(Ok(Frame::LoginOk)));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn truncation_is_visible() {
        let bytes = Frame::Ping { data: [1; 8] }.to_vec();
        let mut d = FrameDecoder::new();
        d.feed(&bytes[..7]);
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.buffered(), 7);
        assert!(matches!(
            Frame::decode(&bytes[..7]),
            Err((FrameError::Truncated { have: 7, need: 13 }, 7))
        ));
        assert!(matches!(
            Frame::decode(&bytes[..2]),
            Err((FrameError::Truncated { have: 2, need: 5 }, 2))
        ));
    }

    #[test]
    fn reasons_round_trip_and_unknown_codes_survive() {
        for c in 0..=255u8 {
            assert_eq!(Reason::from_code(c).code(), c);
            assert_eq!(PeerGoneReason::from_code(c).code(), c);
        }
        assert_eq!(Reason::from_code(1), Reason::NotMember);
        assert!(Reason::NotMember.is_permanent());
        assert!(!Reason::MembershipUnknown.is_permanent());
        assert_eq!(Reason::Other(77).to_string(), "reason code 77");
    }

    #[test]
    fn login_message_binds_nonce_and_channel() {
        let m = login_signed_message(&[1; 32], &[2; 32]);
        assert_ne!(m, login_signed_message(&[1; 32], &[3; 32]));
        assert_ne!(m, login_signed_message(&[4; 32], &[2; 32]));
    }

    fn arb_key() -> impl Strategy<Value = NodeKey> {
        any::<[u8; 32]>().prop_map(NodeKey::from_bytes)
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        proptest::collection::vec(any::<u8>(), 0..2048)
            .prop_map(|v| Payload::new(v).unwrap_or_default())
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|nonce| Frame::ServerChallenge { nonce }),
            (
                arb_key(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<u16>()
            )
                .prop_map(|(node_key, a, b, version)| {
                    let mut signature = [0u8; 64];
                    signature[..32].copy_from_slice(&a);
                    signature[32..].copy_from_slice(&b);
                    Frame::ClientLogin {
                        node_key,
                        signature,
                        version,
                    }
                }),
            Just(Frame::LoginOk),
            any::<u8>().prop_map(|c| Frame::LoginRefused {
                reason: Reason::from_code(c)
            }),
            (arb_key(), arb_payload()).prop_map(|(dst, payload)| Frame::Send { dst, payload }),
            (arb_key(), arb_payload()).prop_map(|(src, payload)| Frame::Recv { src, payload }),
            (arb_key(), any::<u8>()).prop_map(|(key, c)| Frame::PeerGone {
                key,
                reason: PeerGoneReason::from_code(c)
            }),
            any::<u32>().prop_map(|retry_after_ms| Frame::Restarting { retry_after_ms }),
            any::<[u8; 8]>().prop_map(|data| Frame::Ping { data }),
            any::<[u8; 8]>().prop_map(|data| Frame::Pong { data }),
            any::<u8>().prop_map(|c| Frame::Closed {
                reason: Reason::from_code(c)
            }),
        ]
    }

    proptest! {
        #[test]
        fn streams_round_trip_however_they_are_cut(
            frames in proptest::collection::vec(arb_frame(), 0..12),
            cuts in proptest::collection::vec(0usize..4096, 0..8),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(&mut stream);
            }
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.feed(&stream[w[0]..w[1]]);
                while let Some(f) = d.next_frame() {
                    got.push(f.unwrap());
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut d = FrameDecoder::new();
            'outer: for c in &chunks {
                d.feed(c);
                while let Some(r) = d.next_frame() {
                    match r {
                        Ok(f) => {
                            // Whatever parses re-encodes to something that parses the same.
                            let bytes = f.to_vec();
                            prop_assert_eq!(Frame::decode(&bytes), Ok((f, bytes.len())));
                        }
                        Err(e) if e.is_fatal() => break 'outer,
                        Err(_) => {}
                    }
                }
                prop_assert!(d.buffered() <= MAX_FRAME + 300);
            }
            for c in &chunks {
                let _ = Frame::decode(c);
            }
        }
    }
}
