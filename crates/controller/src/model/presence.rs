//! Debounced presence: when a node counts as online for its peers.
//!
//! A node is *online* once one of its map streams has stayed open for
//! [`PresenceConfig::online_after`], and goes *offline* only after it has had no
//! stream for [`PresenceConfig::offline_after`]. Changes in between cost nobody
//! anything: a stream that opens and closes within the first window, or a
//! reconnect within the grace period, moves no map version and sends no peer
//! an update. Only the published transitions reach the [`World`](super::World)
//! (as `Op::Presence`), and each one is a map change for every peer that sees
//! the node.
//!
//! Pure: time comes in as `now`; the engine's presence thread feeds stream
//! opens and closes in and wakes at [`Presence::next_deadline`].
//!
//! Presence is not stored, but a restart must not make the whole fleet flap:
//! every node flipping offline and back online would send every peer an
//! update about every other (O(n²) after a restart of an n-node mesh). So a
//! controller starts with the nodes seen within [`SEEN_WINDOW_SECS`] taken as
//! online ([`assumed_online`], [`Presence::assume_online`]): one whose stream
//! comes back within [`RESTART_GRACE`] (plus the offline window) costs
//! nothing; one that does not goes offline then, as if its stream had closed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{NodeId, World};

/// A node whose last sign of life (a presence change, a report, its
/// registration) is this recent when the controller starts is taken as online.
/// Agents report every 30 s.
pub(crate) const SEEN_WINDOW_SECS: u64 = 120;

/// How long after a start an assumed-online node has to open a stream again
/// before its offline window starts.
pub const RESTART_GRACE: Duration = Duration::from_secs(60);

/// The enabled nodes seen within [`SEEN_WINDOW_SECS`] before `now_secs`.
pub fn assumed_online(world: &World, now_secs: u64) -> Vec<NodeId> {
    world
        .node_ids()
        .filter_map(|id| world.node(id))
        .filter(|n| !n.rec.disabled)
        .filter(|n| {
            n.rec
                .last_seen
                .is_some_and(|s| s.saturating_add(SEEN_WINDOW_SECS) >= now_secs)
        })
        .map(|n| n.rec.id)
        .collect()
}

/// The two debounce windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// How long a stream must stay open before its node counts as online.
    pub online_after: Duration,
    /// How long a node must be without a stream before it counts as offline.
    pub offline_after: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            online_after: Duration::from_secs(5),
            offline_after: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Open streams now.
    streams: u32,
    /// When `streams` last went from 0 to 1 or from 1 to 0.
    since: Instant,
    /// What peers were told.
    online: bool,
    /// When the published state flips unless something happens first.
    deadline: Option<Instant>,
}

/// The presence tracker. Holds an entry only for nodes with a stream open or
/// published online, so its size follows the connected nodes.
#[derive(Debug)]
pub struct Presence {
    cfg: PresenceConfig,
    nodes: BTreeMap<NodeId, Entry>,
    pending: BTreeSet<(Instant, NodeId)>,
}

impl Presence {
    /// Nobody online.
    pub fn new(cfg: PresenceConfig) -> Self {
        Self {
            cfg,
            nodes: BTreeMap::new(),
            pending: BTreeSet::new(),
        }
    }

    /// A map stream of `node` opened.
    pub fn opened(&mut self, node: NodeId, now: Instant) {
        let e = self.nodes.entry(node).or_insert(Entry {
            streams: 0,
            since: now,
            online: false,
            deadline: None,
        });
        if e.streams == 0 {
            e.since = now;
        }
        e.streams = e.streams.saturating_add(1);
        self.reschedule(node);
    }

    /// Takes `nodes` as online without a stream (peers were told so before a
    /// restart): each goes offline unless a stream of it opens within
    /// `grace` plus the offline window.
    pub fn assume_online(&mut self, nodes: &[NodeId], now: Instant, grace: Duration) {
        let since = now.checked_add(grace).unwrap_or(now);
        for &node in nodes {
            self.nodes.insert(
                node,
                Entry {
                    streams: 0,
                    since,
                    online: true,
                    deadline: None,
                },
            );
            self.reschedule(node);
        }
    }

    /// A map stream of `node` closed.
    pub fn closed(&mut self, node: NodeId, now: Instant) {
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        if e.streams == 0 {
            return;
        }
        e.streams -= 1;
        if e.streams == 0 {
            e.since = now;
        }
        self.reschedule(node);
    }

    /// When [`Presence::poll`] has something to publish next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// The transitions due at `now`, in deadline order: `(node, online)`.
    pub fn poll(&mut self, now: Instant) -> Vec<(NodeId, bool)> {
        let mut out = Vec::new();
        while let Some(&(at, node)) = self.pending.first() {
            if at > now {
                break;
            }
            self.pending.pop_first();
            let Some(e) = self.nodes.get_mut(&node) else {
                continue;
            };
            e.deadline = None;
            e.online = e.streams > 0;
            out.push((node, e.online));
            self.reschedule(node);
        }
        out
    }

    /// Every node peers were told is online through this tracker (to
    /// announce again after this replica's presence was withdrawn).
    pub fn online_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, e)| e.online)
            .map(|(n, _)| *n)
            .collect()
    }

    /// What peers were told about `node`.
    pub fn is_online(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.online)
    }

    /// Recomputes `node`'s deadline; forgets it when it is offline with no
    /// stream.
    fn reschedule(&mut self, node: NodeId) {
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        if let Some(old) = e.deadline.take() {
            self.pending.remove(&(old, node));
        }
        let wait = match (e.streams > 0, e.online) {
            (true, false) => Some(self.cfg.online_after),
            (false, true) => Some(self.cfg.offline_after),
            (false, false) => {
                self.nodes.remove(&node);
                return;
            }
            (true, true) => None,
        };
        // A window too long to represent never ends.
        e.deadline = wait.and_then(|w| e.since.checked_add(w));
        if let Some(at) = e.deadline {
            self.pending.insert((at, node));
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "a test needs some origin instant"
)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn tracker() -> (Presence, Instant) {
        (
            Presence::new(PresenceConfig {
                online_after: 5 * S,
                offline_after: 15 * S,
            }),
            Instant::now(),
        )
    }

    #[test]
    fn online_after_the_stream_lived_long_enough_and_only_once() {
        let (mut p, t0) = tracker();
        p.opened(1, t0);
        assert_eq!(p.next_deadline(), Some(t0 + 5 * S));
        assert!(p.poll(t0 + 4 * S).is_empty());
        assert!(!p.is_online(1));
        assert_eq!(p.poll(t0 + 5 * S), vec![(1, true)]);
        assert!(p.is_online(1));
        assert_eq!(p.next_deadline(), None);
        // A second stream of the same node changes nothing.
        p.opened(1, t0 + 6 * S);
        p.closed(1, t0 + 7 * S);
        assert!(p.poll(t0 + 60 * S).is_empty());
        assert!(p.is_online(1));
    }

    #[test]
    fn a_flapping_stream_never_publishes_anything() {
        let (mut p, t0) = tracker();
        let mut t = t0;
        for _ in 0..20 {
            p.opened(7, t);
            t += S;
            assert!(p.poll(t).is_empty());
            p.closed(7, t);
            t += S / 2;
            assert!(p.poll(t).is_empty());
        }
        assert!(!p.is_online(7));
        // Nothing is kept for a node with no stream that is offline.
        assert_eq!(p.next_deadline(), None);
        assert!(p.nodes.is_empty() && p.pending.is_empty());
        assert!(p.poll(t + 3600 * S).is_empty());
    }

    #[test]
    fn offline_only_after_the_grace_period_and_reconnects_within_it_are_free() {
        let (mut p, t0) = tracker();
        p.opened(1, t0);
        assert_eq!(p.poll(t0 + 5 * S), vec![(1, true)]);
        // Reconnects within the grace period: nothing.
        let mut t = t0 + 10 * S;
        for _ in 0..20 {
            p.closed(1, t);
            t += 2 * S;
            assert!(p.poll(t).is_empty());
            p.opened(1, t);
            t += S;
            assert!(p.poll(t).is_empty());
        }
        assert!(p.is_online(1));
        // Gone for good: offline once the grace period has passed.
        p.closed(1, t);
        assert_eq!(p.next_deadline(), Some(t + 15 * S));
        assert!(p.poll(t + 14 * S).is_empty());
        assert_eq!(p.poll(t + 15 * S), vec![(1, false)]);
        assert!(!p.is_online(1));
        assert!(p.nodes.is_empty() && p.pending.is_empty());
    }

    #[test]
    fn the_window_restarts_when_the_last_stream_ends() {
        let (mut p, t0) = tracker();
        p.opened(1, t0);
        p.opened(1, t0 + S);
        p.closed(1, t0 + 2 * S);
        // One stream is still open since t0: online at t0 + 5 s.
        assert_eq!(p.poll(t0 + 5 * S), vec![(1, true)]);
        let (mut p, t0) = tracker();
        p.opened(1, t0);
        p.closed(1, t0 + 4 * S);
        p.opened(1, t0 + 4 * S);
        // The new stream must live its own 5 s.
        assert!(p.poll(t0 + 8 * S).is_empty());
        assert_eq!(p.poll(t0 + 9 * S), vec![(1, true)]);
    }

    #[test]
    fn several_nodes_come_out_in_deadline_order() {
        let (mut p, t0) = tracker();
        p.opened(3, t0 + 2 * S);
        p.opened(1, t0 + S);
        p.opened(2, t0);
        p.closed(9, t0); // never opened: ignored
        assert_eq!(p.poll(t0 + 10 * S), vec![(2, true), (1, true), (3, true)]);
    }

    #[test]
    fn nodes_assumed_online_stay_online_if_they_come_back_within_the_grace() {
        let (mut p, t0) = tracker();
        p.assume_online(&[1, 2, 3], t0, 60 * S);
        assert!(p.is_online(1) && p.is_online(2) && p.is_online(3));
        // 1 reconnects within the grace, 2 after it but within the offline
        // window: neither changes anything.
        p.opened(1, t0 + 10 * S);
        assert!(p.poll(t0 + 70 * S).is_empty());
        p.opened(2, t0 + 70 * S);
        // 3 never comes back: offline when the grace and the window are over.
        assert_eq!(p.next_deadline(), Some(t0 + 75 * S));
        assert!(p.poll(t0 + 74 * S).is_empty());
        assert_eq!(p.poll(t0 + 75 * S), vec![(3, false)]);
        assert!(p.is_online(1) && p.is_online(2) && !p.is_online(3));
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn zero_windows_publish_at_once_and_huge_ones_never() {
        let mut p = Presence::new(PresenceConfig {
            online_after: Duration::ZERO,
            offline_after: Duration::MAX,
        });
        let t0 = Instant::now();
        p.opened(1, t0);
        assert_eq!(p.poll(t0), vec![(1, true)]);
        p.closed(1, t0);
        assert_eq!(p.next_deadline(), None);
        assert!(p.is_online(1));
    }
}
