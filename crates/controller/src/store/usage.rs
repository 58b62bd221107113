//! The rows of usage accounting (migration 0006): the last value of each
//! uploaded series, and hourly buckets of what it grew by. The diffing that
//! turns one into the other is [`crate::model::usage`].

use weft_proto::usage::UsageCounters;

/// Buckets older than this are deleted (400 days, in milliseconds).
pub const USAGE_RETENTION_MS: u64 = 400 * 24 * 3_600_000;

/// What kind of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeriesKind {
    /// Flow traffic with one peer to one service.
    Flow,
    /// The data plane's overflow bucket.
    Other,
    /// A sidecar user's bytes.
    User,
}

impl SeriesKind {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesKind::Flow => "flow",
            SeriesKind::Other => "other",
            SeriesKind::User => "user",
        }
    }

    /// Parses [`SeriesKind::as_str`].
    pub fn parse(s: &str) -> Option<SeriesKind> {
        match s {
            "flow" => Some(SeriesKind::Flow),
            "other" => Some(SeriesKind::Other),
            "user" => Some(SeriesKind::User),
            _ => None,
        }
    }
}

/// Which series of a node (the fields its kind does not use are empty or 0).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Its kind.
    pub kind: SeriesKind,
    /// The peer's node key text ('' when none).
    pub peer: String,
    /// IP protocol number.
    pub proto: u8,
    /// Service port.
    pub port: u16,
    /// Sidecar user id.
    pub user: String,
}

/// The last uploaded value of one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCounterRecord {
    /// The uploading node.
    pub node_id: u64,
    /// The series.
    pub key: SeriesKey,
    /// The agent run that uploaded it.
    pub run_id: String,
    /// The sidecar's `core_uptime_sec` (user series; 0 otherwise).
    pub epoch: u64,
    /// The counters as uploaded (user series: bytes in `tx_bytes`).
    pub counters: UsageCounters,
    /// When it arrived (Unix milliseconds).
    pub updated_ms: u64,
}

/// What one series grew by within one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucketRecord {
    /// The uploading node.
    pub node_id: u64,
    /// Start of the bucket (Unix milliseconds, a multiple of the bucket size).
    pub bucket_ms: u64,
    /// The series.
    pub key: SeriesKey,
    /// The growth (added to what the bucket holds).
    pub delta: UsageCounters,
}

/// A series' growth summed over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSum {
    /// The uploading node.
    pub node_id: u64,
    /// The series.
    pub key: SeriesKey,
    /// The sums.
    pub counters: UsageCounters,
}
