//! Why packets are dropped, counted per reason.

use std::fmt;

/// Why the data plane refused a packet. Counted, never logged per packet above TRACE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Bytes from the TUN that are not a valid IPv4/IPv6 packet.
    MalformedIp,
    /// Destination is not an address of any peer (answered with ICMP unreachable).
    NoRoute,
    /// A datagram that is not a well-formed WireGuard message.
    NotWireGuard,
    /// A handshake from a key that is not one of our peers.
    UnknownPeer,
    /// A message for a session index we do not have (stale, removed peer, forged).
    UnknownSession,
    /// Authentication failed: bad MAC, AEAD tag, key or timestamp.
    BadAuth,
    /// A data packet whose counter was already seen (replay).
    Replay,
    /// Decrypted fine, but the inner source address is not one of the sending
    /// peer's addresses (spoofing).
    SpoofedSource,
    /// Decrypted fine, but the inner destination is not an address of this node.
    NotForUs,
    /// Handshake flood protection asked the sender for a cookie.
    UnderLoad,
    /// The caller's output buffer was too small (a bug in the shell; never panics).
    BufferTooSmall,
    /// The WireGuard session expired or could not be used.
    SessionError,
    /// A handshake response for a handshake this node already replaced (both sides
    /// initiated at once). Harmless.
    StaleHandshake,
    /// A discovery message that is malformed, fails authentication, or answers no
    /// ping of ours.
    BadDisco,
    /// No path to the peer at all (no direct address, no relay, no candidate).
    NoPath,
    /// The access policy has no rule allowing the packet (default deny).
    PolicyNoRule,
    /// A deny rule of the access policy matched the packet.
    PolicyDenied,
    /// The node has no usable access policy (the map carried none, or one this
    /// build cannot read): every packet is dropped (fail closed).
    NoPolicy,
    /// A STUN message that is malformed or answers no request of ours.
    BadStun,
    /// A packet to a service VIP with no usable instance (none listed, or all
    /// unhealthy): answered with ICMP host unreachable.
    ServiceNoInstance,
    /// A packet to a service VIP that is not TCP/UDP to one of the service's
    /// ports (or a non-first fragment): answered with ICMP port unreachable.
    ServicePort,
}

impl DropReason {
    /// All reasons, in display order.
    pub const ALL: [DropReason; 21] = [
        DropReason::MalformedIp,
        DropReason::NoRoute,
        DropReason::NotWireGuard,
        DropReason::UnknownPeer,
        DropReason::UnknownSession,
        DropReason::BadAuth,
        DropReason::Replay,
        DropReason::SpoofedSource,
        DropReason::NotForUs,
        DropReason::UnderLoad,
        DropReason::BufferTooSmall,
        DropReason::SessionError,
        DropReason::StaleHandshake,
        DropReason::BadDisco,
        DropReason::NoPath,
        DropReason::PolicyNoRule,
        DropReason::PolicyDenied,
        DropReason::NoPolicy,
        DropReason::BadStun,
        DropReason::ServiceNoInstance,
        DropReason::ServicePort,
    ];

    /// A stable snake_case name (status output, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MalformedIp => "malformed_ip",
            DropReason::NoRoute => "no_route",
            DropReason::NotWireGuard => "not_wireguard",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownSession => "unknown_session",
            DropReason::BadAuth => "bad_auth",
            DropReason::Replay => "replay",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnderLoad => "under_load",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::SessionError => "session_error",
            DropReason::StaleHandshake => "stale_handshake",
            DropReason::BadDisco => "bad_disco",
            DropReason::NoPath => "no_path",
            DropReason::PolicyNoRule => "policy_no_rule",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::NoPolicy => "no_policy",
            DropReason::BadStun => "bad_stun",
            DropReason::ServiceNoInstance => "service_no_instance",
            DropReason::ServicePort => "service_port",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter per [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    /// Adds one.
    pub fn add(&mut self, r: DropReason) {
        self.0[r.slot()] = self.0[r.slot()].saturating_add(1);
    }

    /// The count for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.slot()]
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counters, in display order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }
}
