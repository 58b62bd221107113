//! Where raised events wait: a bounded ring of the latest (`weft events`) and
//! a bounded queue of those the controller has not taken yet (oldest dropped
//! first, counted).

use std::collections::VecDeque;

use weft_proto::events::AnomalyEvent;

/// Latest events `weft events` shows.
pub(crate) const RECENT: usize = 256;
/// Events kept for the controller while it is away.
pub(crate) const PENDING: usize = 1024;

/// The events of one agent run.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    recent: VecDeque<AnomalyEvent>,
    pending: VecDeque<AnomalyEvent>,
    dropped: u64,
}

impl EventLog {
    /// Records a new event.
    pub(crate) fn push(&mut self, e: AnomalyEvent) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(e.clone());
        if self.pending.len() == PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(e);
    }

    /// The oldest `max` events not uploaded yet.
    pub(crate) fn to_upload(&self, max: usize) -> Vec<AnomalyEvent> {
        self.pending.iter().take(max).cloned().collect()
    }

    /// The controller took (or refused for good, `lost`) the oldest `n`.
    pub(crate) fn uploaded(&mut self, n: usize, lost: bool) {
        let n = n.min(self.pending.len());
        self.pending.drain(..n);
        if lost {
            self.dropped += n as u64;
        }
    }

    /// The latest events, oldest first.
    pub(crate) fn recent(&self) -> Vec<AnomalyEvent> {
        self.recent.iter().cloned().collect()
    }

    /// Events waiting for the controller.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Events lost unsent.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::events::{AnomalyKind, Baseline};

    fn event(id: u64, kind: AnomalyKind) -> AnomalyEvent {
        AnomalyEvent {
            id,
            at_ms: id,
            kind,
            peer: None,
            peer_key: None,
            target: None,
            observed: 1.0,
            unit: "drops".into(),
            baseline: Baseline::Threshold {
                threshold: 1.0,
                ratio: 1.0,
            },
            window_secs: 10,
            details: Default::default(),
            summary: "x".into(),
        }
    }

    #[test]
    fn the_ring_and_the_queue_are_bounded_and_count_what_they_lose() {
        let mut log = EventLog::default();
        for i in 0..(PENDING as u64 + 10) {
            log.push(event(i, AnomalyKind::Scan));
        }
        log.push(event(9999, AnomalyKind::DropSpike));
        assert_eq!(log.recent().len(), RECENT);
        assert_eq!(log.recent().last().map(|e| e.id), Some(9999));
        assert_eq!(log.pending(), PENDING);
        assert_eq!(log.dropped(), 11);
        // Oldest first, and taken in order.
        let first = log.to_upload(3);
        assert_eq!(
            first.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![11, 12, 13]
        );
        log.uploaded(3, false);
        assert_eq!(log.to_upload(1)[0].id, 14);
        log.uploaded(2, true);
        assert_eq!(log.dropped(), 13);
    }
}
