//! [`Frame`]: encoding, and decoding of one whole frame.

use bytes::{Buf as _, Bytes};
use weft_proto::NodeKey;

use super::{
    HEADER_LEN, KEY_LEN, MAX_BODY, MAX_PAYLOAD, NONCE_LEN, Payload, PayloadTooLarge,
    PeerGoneReason, Reason, frame_type,
};

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
        /// Ed25519 signature over [`login_signed_message`](super::login_signed_message) under
        /// [`LOGIN_SIGNATURE_CONTEXT`](super::LOGIN_SIGNATURE_CONTEXT).
        signature: [u8; 64],
        /// [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) of the client.
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
    /// comes from [`FrameDecoder`](super::FrameDecoder); longer bodies are refused here too.
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
    /// frame: [`FrameDecoder`](super::FrameDecoder) is the streaming form of this.
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

pub(super) fn parse_header(h: &[u8]) -> Result<(u8, usize), FrameError> {
    let ty = h[0];
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    match usize::try_from(len) {
        Ok(l) if l <= MAX_BODY => Ok((ty, l)),
        _ => Err(FrameError::Oversize { len }),
    }
}
