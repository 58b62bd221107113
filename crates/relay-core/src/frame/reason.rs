//! Reason codes: why a login was refused or a session closed ([`Reason`]),
//! why a destination is unreachable ([`PeerGoneReason`]).

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
