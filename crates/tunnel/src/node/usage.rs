//! Usage accounting per peer and service: the policy engine's connection table
//! counts every packet in the flow it already looked up (see
//! `weft_policy::usage`); this module gives peers the stable numbers the engine
//! keys its buckets by, keeps the totals across engine replacements, and turns
//! the numbers back into keys for [`Node::usage`].
//!
//! Memory is bounded: at most [`MAX_USAGE_PEERS`] peers get a number (later
//! ones share [`UNNUMBERED`], shown as no key) and the engine keeps at most
//! `weft_policy::USAGE_CAPACITY` buckets, overflow in `other`. A number is never
//! reused, so a peer's counters only grow while the node lives.

use std::collections::BTreeMap;

use weft_policy::{UsageCounters, UsageTable};
use weft_proto::NodeKey;

use super::Node;

/// Peers that get a usage number, ever, per node.
pub const MAX_USAGE_PEERS: usize = 65_536;
/// The number shared by peers beyond [`MAX_USAGE_PEERS`].
const UNNUMBERED: u32 = u32::MAX;

/// One usage bucket as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerUsage {
    /// The peer (`None`: a peer beyond [`MAX_USAGE_PEERS`]).
    pub peer: Option<NodeKey>,
    /// The destination port of the packet that opened the flows (0: none).
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Bytes, packets and flows.
    pub counts: UsageCounters,
}

/// Usage since the node started: monotonic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Per (peer, port, protocol), in the engine's order.
    pub buckets: Vec<PeerUsage>,
    /// Flows that opened while the bucket table was full.
    pub other: UsageCounters,
}

/// The node's side of usage accounting.
#[derive(Debug, Default)]
pub(super) struct UsageIds {
    ids: BTreeMap<NodeKey, u32>,
    keys: Vec<NodeKey>,
    /// Totals of an engine dropped while no policy was in force.
    parked: Option<UsageTable>,
}

impl UsageIds {
    /// The number of `key` (assigned on first use; only when a flow opens).
    pub(super) fn peer_id(&mut self, key: NodeKey) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        if self.keys.len() >= MAX_USAGE_PEERS {
            return UNNUMBERED;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key);
        self.ids.insert(key, id);
        id
    }

    /// Keeps the totals of an engine dropped without a successor.
    pub(super) fn park(&mut self, totals: UsageTable) {
        match &mut self.parked {
            Some(p) => p.absorb(totals),
            None => self.parked = Some(totals),
        }
    }

    /// The parked totals, for the next engine.
    pub(super) fn unpark(&mut self) -> Option<UsageTable> {
        self.parked.take()
    }
}

impl Node {
    /// Bytes, packets and flows per (peer, service port, protocol) since this
    /// node started, counted by the policy's connection table: the totals of
    /// flows that ended plus the live ones. Every counter only grows.
    pub fn usage(&self) -> NodeUsage {
        let usage = match &self.policy {
            Some(engine) => engine.usage(),
            None => self
                .usage
                .parked
                .as_ref()
                .map(UsageTable::usage)
                .unwrap_or_default(),
        };
        NodeUsage {
            buckets: usage
                .buckets
                .iter()
                .map(|(k, counts)| PeerUsage {
                    peer: self.usage.keys.get(k.peer as usize).copied(),
                    port: k.port,
                    proto: k.proto,
                    counts: *counts,
                })
                .collect(),
            other: usage.other,
        }
    }
}
