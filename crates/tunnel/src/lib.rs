//! weft's sans-IO data-plane core.
//!
//! One [`Node`] per overlay network holds the peers, their WireGuard sessions
//! ([`wg`], weft's own sans-IO WireGuard), the cryptokey routing table (overlay address → peer)
//! and the drop counters. It performs no I/O: the agent's shell moves bytes between
//! the TUN device, the UDP socket and this state machine.
//!
//! # Drive contract
//!
//! 1. Inputs: [`Node::apply_config`] (from the network map), [`Node::handle_tun_packet`]
//!    (a packet read from the TUN), [`Node::handle_datagram`] (a datagram from the UDP
//!    socket), [`Node::handle_relay_frame`] (a WireGuard message the relay delivered),
//!    [`Node::set_relay_available`], [`Node::handle_timeout`] (when
//!    [`Node::poll_timeout`]'s deadline passes). Every input carries `now`.
//! 2. Hot-path inputs write into a caller-owned buffer and return what to do with it
//!    ([`TunOutcome`], [`NetOutcome`]), so a shell can reuse one buffer per packet
//!    (or a pool per batch) and never allocate per data packet.
//!    [`Node::handle_tun_batch`] and [`Node::handle_datagram_batch`] take the packets
//!    of one batched read and fill a [`batch::DatagramBatch`] (encrypted datagrams
//!    grouped for UDP GSO sends) or a [`batch::PacketBatch`] (packets for the TUN),
//!    doing per packet exactly what the one-packet methods do.
//! 3. After every input, drain [`Node::poll_transmit`] (handshakes, keepalives,
//!    packets released by a handshake) and [`Node::poll_event`] until `None`, then
//!    re-read [`Node::poll_timeout`].
//!
//! Paths ([`path`]): a peer is reachable over the relay at once; discovery
//! ping/pong ([`disco`], authenticated and encrypted per pair) over every candidate
//! address upgrades it to a direct UDP path, which is kept while it answers and
//! abandoned for the relay within seconds when it goes quiet.
//!
//! Every packet is checked: outbound, the destination must be a peer's address
//! (else an ICMP unreachable goes back to the sender); inbound, only datagrams that
//! a peer's session authenticates, whose inner source is one of that peer's
//! addresses (anti-spoofing) and whose destination is this node reach the TUN.
//! Everything else is dropped and counted by [`DropReason`].
//!
//! Time and randomness: nothing in this crate reads a clock or the OS's random
//! generator. Every timer (WireGuard's rekey, expiry, handshake retry and
//! keepalives; discovery; STUN; conntrack) runs on the `now` passed in, and
//! WireGuard's TAI64N handshake timestamps are the wall-clock reading given to
//! [`Node::with_wall_clock`] plus the `now` elapsed since. Every random byte
//! (ephemeral keys, session indices, cookie secrets, retry jitter, discovery and
//! STUN nonces) comes from one ChaCha20 stream keyed by the node's whole 32-byte
//! seed. The same seed and the same inputs therefore give byte-identical
//! outputs, and a simulation under virtual time runs minutes of protocol in
//! milliseconds.

// Hash iteration order must not reach output (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

pub mod batch;
mod counters;
pub mod disco;
#[doc(hidden)]
pub mod fuzzing;
pub mod ip;
mod node;
pub mod path;
pub mod wg;

pub use counters::{DropCounters, DropReason};
pub use node::{Backend, MAX_SERVICE_FLOWS, ServiceNat, ServiceStatus};
pub use node::{
    Dest, Event, MAX_USAGE_PEERS, MIN_OUT_BUF, NetIndex, NetOutcome, NetworkConfig, Node,
    NodeConfig, NodeUsage, PeerConfig, PeerStatus, PeerUsage, Transmit, TunOutcome, WG_OVERHEAD,
};
pub use node::{MAX_DISTINCT, MAX_REFUSAL_PEERS, Refusals, RefusedAttempts};
