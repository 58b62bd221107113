//! Forwarded metrics history (issue 16, part 3): per node, a ring of
//! [`HISTORY_BUCKETS`] one-minute buckets (24 h) that aggregates the samples
//! agents upload every 30 s (`POST /v1/node/metrics`), served by
//! `GET /v1/admin/nodes/{node}/metrics?since=`.
//!
//! Memory is fixed per node: the ring is allocated whole at a node's first
//! sample ([`BUCKET_BYTES`] × 1440, about 112 KiB; 1000 nodes about 110 MiB)
//! and never grows. The history lives in memory only: a controller restart
//! starts every node's history afresh, and removing a node drops its history.
//!
//! A sample lands in the bucket of the minute it was taken in, whatever order
//! it arrives in: a bucket that still holds an older minute is reset first. A
//! sample older than the window (24 h before now), or more than
//! [`MAX_FUTURE_MS`] ahead of the controller's clock, is ignored and counted
//! (`out_of_window`). Within one agent run (`agent_start_ms`) a sequence number
//! at or below the last one received is a duplicate (a retried upload) and is
//! ignored; a jump forward counts the skipped numbers as `missing`. A sample of
//! an earlier run than the last one seen counts as a duplicate too (the agent
//! replays its outbox in order, so it can only be a repeat). Counts start at a
//! run's first sample the controller sees: numbers before it (sent before this
//! controller started) are not counted as missing.
//!
//! Pure: the caller passes `now_ms`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use weft_proto::NodeKey;
use weft_proto::samples::{
    HISTORY_BUCKETS, HISTORY_RESOLUTION_MS, MetricsAccepted, MetricsPoint, NodeMetrics, Sample,
};

/// How far ahead of the controller's clock a sample may be (clock skew).
pub const MAX_FUTURE_MS: u64 = 5 * 60_000;

/// The window the ring covers, in milliseconds (24 h).
pub const WINDOW_MS: u64 = HISTORY_BUCKETS as u64 * HISTORY_RESOLUTION_MS;

/// Bytes one bucket takes (checked by a test).
pub const BUCKET_BYTES: usize = 80;

/// An RTT field with no measurement.
const NO_RTT: u32 = u32::MAX;

/// One minute. Small on purpose (1440 of them per node): drop counts and the
/// summed interval saturate at `u32::MAX` (four billion drops in a minute),
/// RTTs are microseconds in a `u32` (samples carry at most ten minutes).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Minutes since the Unix epoch; 0: empty.
    minute: u32,
    samples: u16,
    has_packets: bool,
    interval_ms: u32,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    drops: [u32; 4],
    peers_direct: u32,
    peers_relayed: u32,
    rtt_median_us: u32,
    rtt_max_us: u32,
    control_rtt_us: u32,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        minute: 0,
        samples: 0,
        has_packets: false,
        interval_ms: 0,
        rx_bytes: 0,
        tx_bytes: 0,
        rx_packets: 0,
        tx_packets: 0,
        drops: [0; 4],
        peers_direct: 0,
        peers_relayed: 0,
        rtt_median_us: NO_RTT,
        rtt_max_us: NO_RTT,
        control_rtt_us: NO_RTT,
    };

    fn add(&mut self, s: &Sample) {
        let sat32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        self.samples = self.samples.saturating_add(1);
        self.interval_ms = self.interval_ms.saturating_add(sat32(s.interval_ms));
        self.rx_bytes = self.rx_bytes.saturating_add(s.rx_bytes);
        self.tx_bytes = self.tx_bytes.saturating_add(s.tx_bytes);
        if s.rx_packets.is_some() || s.tx_packets.is_some() {
            self.has_packets = true;
            self.rx_packets = self.rx_packets.saturating_add(s.rx_packets.unwrap_or(0));
            self.tx_packets = self.tx_packets.saturating_add(s.tx_packets.unwrap_or(0));
        }
        let drops = [s.drops, s.drops_policy, s.drops_auth, s.drops_route];
        for (total, d) in self.drops.iter_mut().zip(drops) {
            *total = total.saturating_add(sat32(d));
        }
        self.peers_direct = s.peers_direct;
        self.peers_relayed = s.peers_relayed;
        let worst = |mine: &mut u32, theirs: Option<u64>| {
            if let Some(r) = theirs {
                let r = sat32(r).min(NO_RTT - 1);
                *mine = if *mine == NO_RTT { r } else { (*mine).max(r) };
            }
        };
        worst(&mut self.rtt_median_us, s.rtt_median_us);
        worst(&mut self.rtt_max_us, s.rtt_max_us);
        worst(&mut self.control_rtt_us, s.control_rtt_us);
    }

    fn point(&self) -> MetricsPoint {
        let rtt = |r: u32| (r != NO_RTT).then_some(u64::from(r));
        MetricsPoint {
            at_ms: u64::from(self.minute) * HISTORY_RESOLUTION_MS,
            samples: u32::from(self.samples),
            interval_ms: u64::from(self.interval_ms),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            rx_packets: self.has_packets.then_some(self.rx_packets),
            tx_packets: self.has_packets.then_some(self.tx_packets),
            drops: u64::from(self.drops[0]),
            drops_policy: u64::from(self.drops[1]),
            drops_auth: u64::from(self.drops[2]),
            drops_route: u64::from(self.drops[3]),
            peers_direct: self.peers_direct,
            peers_relayed: self.peers_relayed,
            rtt_median_us: rtt(self.rtt_median_us),
            rtt_max_us: rtt(self.rtt_max_us),
            control_rtt_us: rtt(self.control_rtt_us),
        }
    }
}

/// What happened to one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Added to its minute.
    Accepted,
    /// Already received (or from an earlier agent run): ignored.
    Duplicate,
    /// Too old or too far ahead: ignored.
    OutOfWindow,
}

/// One node's history: the ring and its counters.
#[derive(Debug)]
pub struct NodeHistory {
    ring: Box<[Bucket]>,
    /// The agent run last seen and its last sequence number.
    run: Option<(u64, u64)>,
    received: u64,
    missing: u64,
    duplicates: u64,
    out_of_window: u64,
    outbox_dropped: u64,
}

impl Default for NodeHistory {
    fn default() -> Self {
        Self {
            ring: vec![Bucket::EMPTY; HISTORY_BUCKETS].into_boxed_slice(),
            run: None,
            received: 0,
            missing: 0,
            duplicates: 0,
            out_of_window: 0,
            outbox_dropped: 0,
        }
    }
}

impl NodeHistory {
    /// Adds one (validated) sample received at `now_ms`.
    pub fn add(&mut self, s: &Sample, now_ms: u64) -> Verdict {
        match self.run {
            Some((start, last)) if s.agent_start_ms == start => {
                if s.seq <= last {
                    self.duplicates += 1;
                    return Verdict::Duplicate;
                }
                self.missing += s.seq - last - 1;
            }
            Some((start, _)) if s.agent_start_ms < start => {
                self.duplicates += 1;
                return Verdict::Duplicate;
            }
            _ => {}
        }
        self.run = Some((s.agent_start_ms, s.seq));
        self.received += 1;
        let now_minute = now_ms / HISTORY_RESOLUTION_MS;
        let minute = s.at_ms / HISTORY_RESOLUTION_MS;
        let too_old = minute + HISTORY_BUCKETS as u64 <= now_minute;
        let too_new = s.at_ms > now_ms.saturating_add(MAX_FUTURE_MS);
        let Ok(minute32) = u32::try_from(minute) else {
            self.out_of_window += 1;
            return Verdict::OutOfWindow;
        };
        if too_old || too_new || minute32 == 0 {
            self.out_of_window += 1;
            return Verdict::OutOfWindow;
        }
        let slot = &mut self.ring[minute as usize % HISTORY_BUCKETS];
        if slot.minute > minute32 {
            // The slot holds a minute 24 h later (accepted while the clock was
            // ahead): this sample is older than what the slot keeps.
            self.out_of_window += 1;
            return Verdict::OutOfWindow;
        }
        if slot.minute < minute32 {
            *slot = Bucket {
                minute: minute32,
                ..Bucket::EMPTY
            };
        }
        slot.add(s);
        Verdict::Accepted
    }

    /// Records the agent's outbox drop count (a running total).
    pub fn set_outbox_dropped(&mut self, n: u64) {
        self.outbox_dropped = n;
    }

    /// The minutes inside the window that end after `since_ms`, oldest first.
    pub fn points(&self, since_ms: u64, now_ms: u64) -> Vec<MetricsPoint> {
        let now_minute = now_ms / HISTORY_RESOLUTION_MS;
        let mut v: Vec<&Bucket> = self
            .ring
            .iter()
            .filter(|b| b.minute != 0)
            .filter(|b| u64::from(b.minute) + HISTORY_BUCKETS as u64 > now_minute)
            .filter(|b| (u64::from(b.minute) + 1) * HISTORY_RESOLUTION_MS > since_ms)
            .collect();
        v.sort_by_key(|b| b.minute);
        v.into_iter().map(Bucket::point).collect()
    }

    /// The API view.
    pub fn view(&self, key: NodeKey, name: String, since_ms: u64, now_ms: u64) -> NodeMetrics {
        NodeMetrics {
            node_key: key,
            name,
            resolution_ms: HISTORY_RESOLUTION_MS,
            window_ms: WINDOW_MS,
            points: self.points(since_ms, now_ms),
            agent_start_ms: self.run.map(|(s, _)| s),
            last_seq: self.run.map(|(_, q)| q),
            received: self.received,
            missing: self.missing,
            duplicates: self.duplicates,
            out_of_window: self.out_of_window,
            outbox_dropped: self.outbox_dropped,
        }
    }
}

/// Every node's history (shared by the handlers).
#[derive(Debug, Default)]
pub struct History {
    nodes: Mutex<BTreeMap<NodeKey, NodeHistory>>,
}

impl History {
    /// Adds a node's upload (samples already validated, oldest first).
    pub fn add(
        &self,
        node: NodeKey,
        samples: &[Sample],
        outbox_dropped: u64,
        now_ms: u64,
    ) -> MetricsAccepted {
        let mut nodes = self.lock();
        let h = nodes.entry(node).or_default();
        h.set_outbox_dropped(outbox_dropped);
        let mut out = MetricsAccepted::default();
        for s in samples {
            match h.add(s, now_ms) {
                Verdict::Accepted => out.accepted += 1,
                Verdict::Duplicate => out.duplicates += 1,
                Verdict::OutOfWindow => out.out_of_window += 1,
            }
        }
        out
    }

    /// A node's history view (an empty one when it sent nothing yet).
    pub fn view(&self, node: NodeKey, name: String, since_ms: u64, now_ms: u64) -> NodeMetrics {
        let nodes = self.lock();
        match nodes.get(&node) {
            Some(h) => h.view(node, name, since_ms, now_ms),
            None => NodeMetrics {
                node_key: node,
                name,
                resolution_ms: HISTORY_RESOLUTION_MS,
                window_ms: WINDOW_MS,
                points: Vec::new(),
                agent_start_ms: None,
                last_seq: None,
                received: 0,
                missing: 0,
                duplicates: 0,
                out_of_window: 0,
                outbox_dropped: 0,
            },
        }
    }

    /// Drops a removed node's history.
    pub fn forget(&self, node: &NodeKey) {
        self.lock().remove(node);
    }

    /// Nodes with a history.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no node has a history.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeKey, NodeHistory>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::samples::{SAMPLE_INTERVAL_MS, SAMPLE_VERSION};

    /// A whole minute.
    const T0: u64 = 1_800_000_000_000;

    fn sample(seq: u64, at_ms: u64) -> Sample {
        Sample {
            v: SAMPLE_VERSION,
            at_ms,
            seq,
            agent_start_ms: T0 - 3_600_000,
            interval_ms: SAMPLE_INTERVAL_MS,
            rx_bytes: 1000,
            tx_bytes: 10,
            drops: 3,
            drops_policy: 2,
            peers_direct: 2,
            peers_relayed: 1,
            rtt_median_us: Some(seq * 100),
            rtt_max_us: Some(seq * 200),
            ..Sample::default()
        }
    }

    #[test]
    fn memory_per_node_is_fixed() {
        assert_eq!(size_of::<Bucket>(), BUCKET_BYTES);
        let mut h = NodeHistory::default();
        let before = h.ring.len();
        // Two days of samples every 30 s: the ring never grows.
        for i in 0..(2 * 2880) {
            let at = T0 + i * SAMPLE_INTERVAL_MS;
            assert_eq!(h.add(&sample(i + 1, at), at), Verdict::Accepted);
        }
        assert_eq!(h.ring.len(), before);
        assert_eq!(before, HISTORY_BUCKETS);
        let now = T0 + 2 * 2880 * SAMPLE_INTERVAL_MS;
        let points = h.points(0, now);
        assert!(points.len() <= HISTORY_BUCKETS, "{}", points.len());
        assert!(points.len() >= HISTORY_BUCKETS - 1, "{}", points.len());
        // Only the last 24 h, oldest first, each minute with its two samples.
        assert!(points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(points[0].at_ms + WINDOW_MS > now);
        assert!(points.iter().all(|p| p.samples == 2 && p.rx_bytes == 2000));
    }

    #[test]
    fn samples_aggregate_per_minute_and_since_filters() {
        let mut h = NodeHistory::default();
        let now = T0 + 10 * HISTORY_RESOLUTION_MS;
        for seq in 1..=6 {
            h.add(&sample(seq, T0 + (seq - 1) * SAMPLE_INTERVAL_MS), now);
        }
        let p = h.points(0, now);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].at_ms, T0);
        assert_eq!(p[0].samples, 2);
        assert_eq!(p[0].interval_ms, 60_000);
        assert_eq!((p[0].rx_bytes, p[0].tx_bytes), (2000, 20));
        assert_eq!((p[0].drops, p[0].drops_policy, p[0].drops_auth), (6, 4, 0));
        // RTT: the worst of the minute.
        assert_eq!(p[0].rtt_median_us, Some(200));
        assert_eq!(p[0].rtt_max_us, Some(400));
        assert_eq!(p[0].control_rtt_us, None);
        assert_eq!(p[0].rx_packets, None);
        // `since` inside the second minute keeps that minute.
        let p = h.points(T0 + HISTORY_RESOLUTION_MS + 1, now);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].at_ms, T0 + HISTORY_RESOLUTION_MS);
        assert!(h.points(now, now).is_empty());
    }

    #[test]
    fn duplicates_gaps_restarts_and_the_window() {
        let mut h = NodeHistory::default();
        let now = T0 + 3_600_000;
        assert_eq!(h.add(&sample(1, T0), now), Verdict::Accepted);
        assert_eq!(h.add(&sample(2, T0 + 30_000), now), Verdict::Accepted);
        // A retried upload.
        assert_eq!(h.add(&sample(2, T0 + 30_000), now), Verdict::Duplicate);
        assert_eq!(h.add(&sample(1, T0), now), Verdict::Duplicate);
        // Two lost.
        assert_eq!(h.add(&sample(5, T0 + 120_000), now), Verdict::Accepted);
        // Out of order within the window lands in its own minute.
        let v = h.view(NodeKey::from_bytes([1; 32]), "a".into(), 0, now);
        assert_eq!((v.received, v.duplicates, v.missing), (3, 2, 2));
        assert_eq!(v.last_seq, Some(5));
        // A restart: a new run starts without counting anything missing.
        let mut r = sample(7, T0 + 150_000);
        r.agent_start_ms = T0 + 140_000;
        assert_eq!(h.add(&r, now), Verdict::Accepted);
        // The earlier run's samples now count as duplicates.
        assert_eq!(h.add(&sample(6, T0 + 150_000), now), Verdict::Duplicate);
        let v = h.view(NodeKey::from_bytes([1; 32]), "a".into(), 0, now);
        assert_eq!((v.received, v.missing, v.duplicates), (4, 2, 3));
        assert_eq!(v.agent_start_ms, Some(T0 + 140_000));
        // Older than 24 h, or too far ahead: counted, not stored.
        let mut old = r.clone();
        old.seq = 8;
        old.at_ms = now - WINDOW_MS - 1;
        old.agent_start_ms = r.agent_start_ms;
        assert_eq!(h.add(&old, now), Verdict::OutOfWindow);
        let mut ahead = r.clone();
        ahead.seq = 9;
        ahead.at_ms = now + MAX_FUTURE_MS + 1;
        assert_eq!(h.add(&ahead, now), Verdict::OutOfWindow);
        let v = h.view(NodeKey::from_bytes([1; 32]), "a".into(), 0, now);
        assert_eq!(v.out_of_window, 2);
        assert_eq!(v.points.iter().map(|p| p.samples).sum::<u32>(), 4);
        // Time passes: the ring drops minutes older than the window.
        assert!(h.points(0, T0 + WINDOW_MS + 3_600_000).is_empty());
    }

    #[test]
    fn a_removed_node_loses_its_history() {
        let h = History::default();
        let k = NodeKey::from_bytes([2; 32]);
        let got = h.add(k, &[sample(1, T0), sample(1, T0)], 4, T0);
        assert_eq!((got.accepted, got.duplicates), (1, 1));
        assert_eq!(h.view(k, "n".into(), 0, T0).outbox_dropped, 4);
        assert_eq!(h.len(), 1);
        h.forget(&k);
        assert!(h.is_empty());
        assert_eq!(h.view(k, "n".into(), 0, T0).received, 0);
    }
}
