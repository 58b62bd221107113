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

mod codec;
mod decoder;
mod payload;
mod reason;

pub use codec::{Frame, FrameError, encode_header, encode_send};
pub use decoder::FrameDecoder;
pub use payload::{Payload, PayloadTooLarge};
pub use reason::{PeerGoneReason, Reason};

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

#[cfg(test)]
mod tests;
