//! What goes into and comes out of [`RelayCore`](super::RelayCore): its
//! settings, member-set updates, actions for the shell, log events, drop reasons
//! and counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use weft_proto::NodeKey;

use crate::frame::{FrameError, Reason};

/// A connection, numbered by the shell.
pub type ConnId = u64;

/// Core settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// A connection must log in within this time (default 10 s).
    pub login_timeout: Duration,
    /// A session that receives nothing (not even a ping) for this long is closed
    /// (default 90 s; clients ping every 25 s).
    pub idle_timeout: Duration,
    /// Frames queued per connection at most (default 512).
    pub queue_frames: usize,
    /// Bytes of payload queued per connection at most (default 1 MiB: about
    /// 700 full-size WireGuard packets; the frame cap usually binds first).
    pub queue_bytes: usize,
    /// How long the last member set stays valid after its source went away
    /// (default 5 min). Then the relay serves nobody until it has a set again.
    pub membership_grace: Duration,
    /// At most one `PeerGone{NotConnected}` per (sender, destination) per this
    /// interval (default 5 s).
    pub peer_gone_interval: Duration,
    /// Senders within this window learn that a session ended (default 60 s).
    pub recent_sender_window: Duration,
    /// Destinations and senders remembered per connection for the two rules
    /// above (default 256; the oldest is forgotten first).
    pub max_tracked_peers: usize,
    /// Connections at most (default 100,000); more are refused `Overloaded`.
    pub max_connections: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            login_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            queue_frames: 512,
            queue_bytes: 1 << 20,
            membership_grace: Duration::from_secs(300),
            peer_gone_interval: Duration::from_secs(5),
            recent_sender_window: Duration::from_secs(60),
            max_tracked_peers: 256,
            max_connections: 100_000,
        }
    }
}

/// A change of the member set, from the controller link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipUpdate {
    /// The whole set (the link is up).
    Snapshot(Vec<NodeKey>),
    /// Keys added and removed.
    Delta {
        /// New members.
        added: Vec<NodeKey>,
        /// Keys no longer members: their sessions end at once.
        removed: Vec<NodeKey>,
    },
    /// The link to the controller broke: the grace period starts.
    LinkDown,
}

/// Why a packet or frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The destination has no session here.
    UnknownDestination,
    /// The sender or destination is not a member (also: frames of a refused or
    /// closing connection).
    NotMember,
    /// The destination's queue was full (counted against the destination).
    QueueFull,
    /// A header announced more than the frame cap (the connection is closed).
    Oversize,
    /// A body did not have the size its type requires (a lying length).
    Malformed,
    /// An unknown frame type.
    UnknownType,
    /// The stream ended inside a frame.
    Truncated,
    /// A frame that is not allowed in this direction or state.
    Unexpected,
    /// A frame other than `ClientLogin` before login.
    Unauthenticated,
}

impl DropReason {
    /// Every reason, in display order.
    pub const ALL: [DropReason; 9] = [
        DropReason::UnknownDestination,
        DropReason::NotMember,
        DropReason::QueueFull,
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::UnknownType,
        DropReason::Truncated,
        DropReason::Unexpected,
        DropReason::Unauthenticated,
    ];

    /// A stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::NotMember => "not_member",
            DropReason::QueueFull => "queue_full",
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::UnknownType => "unknown_type",
            DropReason::Truncated => "truncated",
            DropReason::Unexpected => "unexpected",
            DropReason::Unauthenticated => "unauthenticated",
        }
    }

    pub(crate) fn of(e: &FrameError) -> Self {
        match e {
            FrameError::Oversize { .. } => DropReason::Oversize,
            FrameError::UnknownType { .. } => DropReason::UnknownType,
            FrameError::BadLength { .. } => DropReason::Malformed,
            FrameError::Truncated { .. } => DropReason::Truncated,
        }
    }
}

/// Relay-wide counters (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted by the shell.
    pub connections: u64,
    /// Successful logins.
    pub logins_ok: u64,
    /// Refused logins, by reason.
    pub logins_refused: BTreeMap<Reason, u64>,
    /// Sessions closed by the relay, by reason.
    pub sessions_closed: BTreeMap<Reason, u64>,
    /// Packets forwarded.
    pub forwarded_packets: u64,
    /// Payload bytes forwarded.
    pub forwarded_bytes: u64,
    /// `PeerGone` notices queued.
    pub peer_gone_sent: u64,
    /// Drops, by reason.
    pub drops: BTreeMap<DropReason, u64>,
}

impl Counters {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// One line: `key=value` pairs, every drop reason included.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "connections={} logins_ok={} logins_refused={} forwarded_packets={} forwarded_bytes={} peer_gone_sent={}",
            self.connections,
            self.logins_ok,
            self.logins_refused.values().sum::<u64>(),
            self.forwarded_packets,
            self.forwarded_bytes,
            self.peer_gone_sent,
        );
        for r in DropReason::ALL {
            let _ = write!(s, " drop_{}={}", r.as_str(), self.dropped(r));
        }
        s
    }
}

/// What the outbound queues hold at one moment
/// ([`RelayCore::queue_depths`](super::RelayCore::queue_depths)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Frames queued, all connections.
    pub frames: usize,
    /// Payload bytes queued, all connections.
    pub bytes: usize,
    /// Frames in the fullest queue.
    pub max_frames: usize,
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Frames received from the client.
    pub frames_in: u64,
    /// Frames handed to its writer.
    pub frames_out: u64,
    /// Packets for it dropped because its queue was full.
    pub dropped_queue_full: u64,
    /// Bad frames it sent.
    pub bad_frames: u64,
}

/// An instruction to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The connection has frames queued: wake its writer.
    Wake(ConnId),
    /// Stop reading the connection; its writer flushes the queue (which ends
    /// with the final notice) and closes the stream.
    Close(ConnId),
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node logged in.
    LoggedIn {
        /// Connection.
        conn: ConnId,
        /// Node.
        key: NodeKey,
        /// It replaced an older session of the same key.
        replaced: bool,
    },
    /// A login was refused.
    LoginRefused {
        /// Connection.
        conn: ConnId,
        /// The key it claimed, if it got that far.
        key: Option<NodeKey>,
        /// Why.
        reason: Reason,
    },
    /// The relay ended a session.
    SessionClosed {
        /// Connection.
        conn: ConnId,
        /// Node.
        key: NodeKey,
        /// Why.
        reason: Reason,
    },
    /// A connection ended.
    Disconnected {
        /// Connection.
        conn: ConnId,
        /// Its node, if it was logged in.
        key: Option<NodeKey>,
    },
    /// A bad frame arrived.
    BadFrame {
        /// Connection.
        conn: ConnId,
        /// What was wrong.
        error: FrameError,
    },
    /// A member set arrived.
    MembershipKnown {
        /// Its size.
        members: usize,
    },
    /// The member source went away: the grace period started.
    MembershipStale,
    /// The grace period ended: the relay serves nobody.
    MembershipUnknown,
}

/// What [`RelayCore::take_outbound`](super::RelayCore::take_outbound) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// The connection is open (the frames taken, if any, are to be written).
    Open,
    /// The connection is closing and this was the last of its queue: write the
    /// frames taken, then close the stream.
    Closing,
    /// No such connection (it ended): stop.
    Gone,
}

/// Where the member set stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipState {
    /// No set: every login is refused.
    Unknown,
    /// A current set.
    Known {
        /// Its size.
        members: usize,
    },
    /// The last set, kept until `until` because its source went away.
    Stale {
        /// Its size.
        members: usize,
        /// When the grace period ends.
        until: Instant,
    },
}
