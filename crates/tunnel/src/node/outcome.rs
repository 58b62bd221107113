//! What the node hands back: outcomes of inputs, transmits, events, status.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use weft_proto::NodeKey;

use super::*;
use crate::counters::DropReason;
use crate::path::PathKind;
use weft_policy::Direction;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dest {
    /// Directly over the UDP socket.
    Udp(SocketAddr),
    /// Through the relay, addressed to this peer.
    Relay(NodeKey),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: Dest,
    /// Bytes (WireGuard or discovery message).
    pub payload: Vec<u8>,
}

/// Something the shell may want to log or show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WireGuard session with this peer is established (first or after expiry).
    PeerUp {
        /// The peer.
        key: NodeKey,
    },
    /// The peer's session expired (no handshake for 3 minutes).
    PeerDown {
        /// The peer.
        key: NodeKey,
    },
    /// Packets to this peer now take another path (direct address, relay).
    PathChanged {
        /// The peer.
        key: NodeKey,
        /// The new path.
        path: PathKind,
    },
    /// The access policy dropped a packet (at most one event per peer per 10 s;
    /// every drop is counted).
    PolicyDrop {
        /// The peer on the other end.
        key: NodeKey,
        /// Outbound or inbound.
        direction: Direction,
        /// The packet and the rule that decided, in words.
        explanation: String,
        /// Drops for this peer since the last event.
        suppressed: u64,
    },
    /// A policy from the controller could not be used; everything is denied until
    /// a valid one arrives.
    PolicyRejected {
        /// Why.
        why: String,
    },
    /// The set of this node's reflexive addresses (as STUN servers see its UDP
    /// socket) changed; the shell reports them to the controller as candidates.
    ReflexiveAddresses {
        /// The current set.
        addrs: Vec<SocketAddr>,
    },
    /// A peer in the configuration was ignored (bad key, duplicate address, ourselves).
    PeerRejected {
        /// The peer.
        key: NodeKey,
        /// Why.
        why: &'static str,
    },
}

/// Result of a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum TunOutcome<'a> {
    /// Send this datagram.
    Send {
        /// Destination.
        dst: Dest,
        /// The encrypted datagram (in the caller's buffer).
        datagram: &'a [u8],
    },
    /// The packet waits for a handshake; handshake messages are in `poll_transmit`.
    Queued,
    /// Write this packet back to the TUN (an ICMP error for the sender).
    Reply(&'a [u8]),
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Result of a datagram received on the UDP socket.
#[derive(Debug, PartialEq, Eq)]
pub enum NetOutcome<'a> {
    /// Write this decrypted packet to the TUN of network `net`.
    WriteTun {
        /// Which network's TUN.
        net: NetIndex,
        /// The plaintext IP packet (in the caller's buffer).
        packet: &'a [u8],
    },
    /// Nothing for the TUN (handshake, keepalive); check `poll_transmit`.
    Handled,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Status of one peer, for `weft status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Identity key.
    pub key: NodeKey,
    /// Display name.
    pub name: String,
    /// Overlay addresses, per network.
    pub addresses: Vec<(NetIndex, IpAddr)>,
    /// The path packets take now.
    pub path: PathKind,
    /// How long the path has been in use.
    pub path_age: Option<Duration>,
    /// The direct address, when direct.
    pub endpoint: Option<SocketAddr>,
    /// Every candidate and what probing it found (for `weft why`).
    pub candidates: Vec<(SocketAddr, CandidateStats)>,
    /// Time since the current session's handshake.
    pub since_handshake: Option<Duration>,
    /// Time since something authenticated last arrived from the peer (directly
    /// or through the relay); `None`: never.
    pub last_heard: Option<Duration>,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
    /// Data packets sent (keepalives not counted).
    pub tx_packets: u64,
    /// Data packets received (keepalives not counted).
    pub rx_packets: u64,
    /// Packets dropped that were attributed to this peer.
    pub drops: DropCounters,
}
