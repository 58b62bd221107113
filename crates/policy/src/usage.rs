//! Usage accounting from the connection table: bytes, packets and flows per
//! (peer, service port, protocol), with no second pass over packets.
//!
//! Every tracked flow carries its own counters; the packet that looked the flow
//! up adds its length to them ([`Engine::decide_metered`](crate::Engine::decide_metered)).
//! When a flow leaves the table (expired, evicted, ended by a policy change,
//! replaced by a new connection on the same ports) its counters fold into a
//! bounded table of totals. Usage is those totals plus the live flows, so every
//! counter only grows for the engine's lifetime (and across engines, see
//! [`Engine::take_usage`](crate::Engine::take_usage)).
//!
//! The totals table holds at most [`UsageTable::capacity`] keys. A flow's key is
//! reserved when the flow opens; a flow that opens while the table is full and
//! its key absent counts in the `other` bucket for its whole life, so a key's
//! counters never move between buckets (a monotonic counter stays monotonic).
//! Keys are never removed.
//!
//! The peer is an opaque `u32` the caller chooses when a flow opens (the tunnel
//! maps its peers' keys to stable numbers); the service port is the destination
//! port of the packet that opened the flow (0 for ICMP echo and other
//! protocols); tx is what this node sent (egress), rx what it received.

use std::collections::BTreeMap;

/// Keys the totals table holds by default.
pub const USAGE_CAPACITY: usize = 1024;

/// One usage bucket: which peer, which service, which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    /// The caller's number for the peer (see the module docs).
    pub peer: u32,
    /// The destination port of the flow's opening packet (0 without ports).
    pub port: u16,
    /// The IP protocol number.
    pub proto: u8,
}

/// Counters of one bucket (or one flow): bytes and packets each way (tx is
/// what this node sent), flows opened. The upload's type, so the agent sends
/// what the table holds.
pub use weft_proto::usage::UsageCounters;

/// What a flow's traffic counts towards: its key, or `other` (`None`) when the
/// table was full as it opened.
pub(crate) type Bucket = Option<UsageKey>;

/// The bounded totals of flows that left the connection table.
#[derive(Debug, Clone)]
pub struct UsageTable {
    capacity: usize,
    totals: BTreeMap<UsageKey, UsageCounters>,
    other: UsageCounters,
}

impl UsageTable {
    /// An empty table holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        UsageTable {
            capacity,
            totals: BTreeMap::new(),
            other: UsageCounters::default(),
        }
    }

    /// The most keys it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bucket of a flow opening now under `key`: the key, reserved if it is
    /// new and there is room; else `other`.
    pub(crate) fn reserve(&mut self, key: UsageKey) -> Bucket {
        if self.totals.contains_key(&key) {
            return Some(key);
        }
        if self.totals.len() >= self.capacity {
            return None;
        }
        self.totals.insert(key, UsageCounters::default());
        Some(key)
    }

    /// Folds a finished flow's counters into its bucket.
    pub(crate) fn fold(&mut self, bucket: Bucket, counts: &UsageCounters) {
        match bucket.and_then(|k| self.totals.get_mut(&k)) {
            Some(t) => t.add(counts),
            None => self.other.add(counts),
        }
    }

    /// Folds every bucket of `older` (an engine this one replaces) in; keys that
    /// do not fit go to `other`.
    pub fn absorb(&mut self, older: UsageTable) {
        for (key, counts) in older.totals {
            let bucket = self.reserve(key);
            self.fold(bucket, &counts);
        }
        self.other.add(&older.other);
    }

    /// The totals, live flows not included.
    pub fn usage(&self) -> Usage {
        Usage {
            buckets: self.totals.clone(),
            other: self.other,
        }
    }
}

impl Default for UsageTable {
    fn default() -> Self {
        UsageTable::new(USAGE_CAPACITY)
    }
}

/// Usage at one instant: totals plus live flows. Every counter is monotonic
/// for the life of the table it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per key, in key order.
    pub buckets: BTreeMap<UsageKey, UsageCounters>,
    /// Flows that opened while the table was full.
    pub other: UsageCounters,
}

impl Usage {
    pub(crate) fn add(&mut self, bucket: Bucket, counts: &UsageCounters) {
        match bucket {
            Some(k) => self.buckets.entry(k).or_default().add(counts),
            None => self.other.add(counts),
        }
    }
}
