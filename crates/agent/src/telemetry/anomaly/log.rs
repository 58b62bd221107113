//! Where raised events wait: a bounded ring of the latest (`weft events`) and
//! the outbox of those the controller has not taken yet
//! (`STATE_DIR/events-outbox.json`, the same [`Outbox`](outbox::Outbox) as
//! forwarded metrics: bounded, oldest dropped first and counted, kept across
//! restarts, a damaged file moved aside and named, never silently replaced;
//! [`Tracked`] keeps its failures). What fails here is shown in `weft status`
//! (area `telemetry`, as the metrics outbox's).

use std::collections::VecDeque;
use std::path::Path;

use weft_proto::events::AnomalyEvent;
use weft_proto::local::FailureStatus;

use crate::outbox::{self, Kind, Tracked};

/// Latest events `weft events` shows.
pub(crate) const RECENT: usize = 256;
/// Events kept for the controller while it is away.
pub(crate) const PENDING: usize = 1024;
/// The outbox file in the state directory.
pub(crate) const FILE: &str = "events-outbox.json";
/// How the outbox is named in log lines and in `weft status`.
const KIND: Kind = Kind {
    file: FILE,
    what: "anomaly events",
    sent: "uploaded",
    area: "telemetry",
    status: "events outbox",
};

/// The events of this agent.
#[derive(Debug)]
pub(crate) struct EventLog {
    recent: VecDeque<AnomalyEvent>,
    pending: Tracked<AnomalyEvent>,
}

impl EventLog {
    /// Opens the outbox in `dir` (its events are still to be uploaded). A
    /// damaged file is moved aside and logged, with any moved aside before;
    /// an unreadable one (I/O) leaves an outbox in memory only, logged.
    pub(crate) fn open(dir: &Path, now_ms: u64) -> Self {
        Self::open_bounded(dir, now_ms, PENDING)
    }

    /// [`EventLog::open`] keeping at most `max` events for the controller.
    fn open_bounded(dir: &Path, now_ms: u64, max: usize) -> Self {
        let pending = Tracked::open(dir, KIND, max, now_ms);
        for f in outbox::damaged_files_of(dir, FILE) {
            tracing::error!(
                "a damaged anomaly events outbox was moved here; its events were not uploaded: {} \
                 (inspect it, then remove it)",
                f.display()
            );
        }
        Self {
            recent: VecDeque::new(),
            pending,
        }
    }

    /// For `weft status` (area `telemetry`): each damaged outbox moved aside
    /// (until the operator removes it), an outbox that could not be read or
    /// written.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.pending.failures()
    }

    /// Records a new event (written to the outbox before it returns).
    pub(crate) fn push(&mut self, e: AnomalyEvent) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(e.clone());
        self.pending.outbox_mut().push(e);
        self.pending.save();
    }

    /// The oldest `max` events not uploaded yet.
    pub(crate) fn to_upload(&self, max: usize) -> Vec<AnomalyEvent> {
        self.pending.outbox().oldest(max)
    }

    /// The controller took (or refused for good, `lost`) the oldest `n`.
    pub(crate) fn uploaded(&mut self, n: usize, lost: bool) {
        self.pending.outbox_mut().taken(n);
        if lost {
            self.pending.outbox_mut().count_dropped(n as u64);
        }
        self.pending.save();
    }

    /// The latest events, oldest first.
    pub(crate) fn recent(&self) -> Vec<AnomalyEvent> {
        self.recent.iter().cloned().collect()
    }

    /// Events waiting for the controller.
    pub(crate) fn pending(&self) -> usize {
        self.pending.outbox().len()
    }

    /// Events lost unsent (outbox full, or refused by the controller).
    pub(crate) fn dropped(&self) -> u64 {
        self.pending.outbox().dropped()
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

    fn ids(v: &[AnomalyEvent]) -> Vec<u64> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn the_ring_and_the_outbox_are_bounded_and_count_what_they_lose() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open_bounded(dir.path(), 0, 8);
        for i in 0..(RECENT as u64 + 10) {
            log.push(event(i, AnomalyKind::Scan));
        }
        log.push(event(9999, AnomalyKind::DropSpike));
        assert_eq!(log.recent().len(), RECENT);
        assert_eq!(log.recent().last().map(|e| e.id), Some(9999));
        assert_eq!(log.pending(), 8);
        assert_eq!(log.dropped(), RECENT as u64 + 3);
        // Oldest first, and taken in order.
        let first = RECENT as u64 + 3;
        assert_eq!(ids(&log.to_upload(3)), vec![first, first + 1, first + 2]);
        log.uploaded(3, false);
        assert_eq!(log.to_upload(1)[0].id, first + 3);
        log.uploaded(2, true);
        assert_eq!(log.dropped(), RECENT as u64 + 5);
        assert_eq!(PENDING, 1024);
    }

    #[test]
    fn events_not_uploaded_survive_a_restart_and_a_damaged_outbox_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), 0);
        for i in 1..=3 {
            log.push(event(i, AnomalyKind::Scan));
        }
        log.uploaded(1, false);
        drop(log);
        let log = EventLog::open(dir.path(), 0);
        assert_eq!(ids(&log.to_upload(10)), vec![2, 3]);
        assert!(log.recent().is_empty(), "the ring is this run's");
        drop(log);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let log = EventLog::open(dir.path(), 77);
        assert_eq!(log.pending(), 0);
        let aside = outbox::damaged_files_of(dir.path(), FILE);
        assert_eq!(aside, vec![dir.path().join(format!("{FILE}.damaged-77"))]);
        assert_eq!(std::fs::read(&aside[0]).unwrap(), b"{not json");
    }

    #[test]
    fn a_damaged_outbox_is_a_status_failure_until_the_operator_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let log = EventLog::open(dir.path(), 77);
        let aside = dir.path().join(format!("{FILE}.damaged-77"));
        let failures = log.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].area, "telemetry");
        assert_eq!(failures[0].what, aside.display().to_string());
        assert!(
            failures[0].error.contains("were not uploaded"),
            "{failures:?}"
        );
        assert_eq!(failures[0].since_unix_ms, 77);
        // Still listed while the file is there (also after a restart).
        drop(log);
        let log = EventLog::open(dir.path(), 99);
        assert_eq!(log.failures().len(), 1);
        std::fs::remove_file(&aside).unwrap();
        assert!(log.failures().is_empty());
    }

    #[test]
    fn an_outbox_that_cannot_be_written_is_a_status_failure_until_a_write_succeeds() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let mut log = EventLog::open(&dir, 0);
        assert!(log.failures().is_empty());
        std::fs::remove_dir(&dir).unwrap();
        log.push(event(1, AnomalyKind::Scan));
        log.push(event(2, AnomalyKind::Scan));
        let failures = log.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            (failures[0].area.as_str(), failures[0].what.as_str()),
            ("telemetry", "events outbox")
        );
        assert_eq!(log.pending(), 2, "kept in memory");
        std::fs::create_dir(&dir).unwrap();
        log.push(event(3, AnomalyKind::Scan));
        assert!(log.failures().is_empty());
        let log = EventLog::open(&dir, 0);
        assert_eq!(ids(&log.to_upload(10)), vec![1, 2, 3]);
    }
}
