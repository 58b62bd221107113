//! Giving memory back after a storm of encoding.
//!
//! A policy edit at 10,000 nodes encodes a delta per node (tens of MiB), and
//! a fleet reconnecting after a restart is served 10,000 snapshots; the
//! frames are freed as soon as the streams have written them, but glibc keeps
//! the freed memory in its arenas: the fan-out bench measured 56 MiB of free
//! memory held after a reconnect and about as much after an edit. Once such a
//! storm is over, [`sweep`] asks the allocator to return free pages
//! (`malloc_trim`), at most once per storm and never while frames are still
//! being encoded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

/// Bytes encoded for streams since start (deltas and snapshots).
#[derive(Debug, Default)]
pub struct Encoded(AtomicU64);

impl Encoded {
    /// Counts `n` more bytes encoded.
    pub fn add(&self, n: usize) {
        self.0
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The total so far.
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When to trim: after at least `storm` bytes were encoded, at the first
/// check that saw less than `quiet` more (pure; one check per interval).
#[derive(Debug)]
pub struct Trigger {
    storm: u64,
    quiet: u64,
    /// The total at the last check.
    last: u64,
    /// The total when the current storm began (no trim since).
    since_trim: u64,
}

impl Trigger {
    /// A trigger starting at `total`.
    pub fn new(storm: u64, quiet: u64, total: u64) -> Self {
        Trigger {
            storm,
            quiet,
            last: total,
            since_trim: total,
        }
    }

    /// One check with the current total: whether to trim now.
    pub fn check(&mut self, total: u64) -> bool {
        let recent = total.saturating_sub(self.last);
        self.last = total;
        if total.saturating_sub(self.since_trim) >= self.storm && recent < self.quiet {
            self.since_trim = total;
            return true;
        }
        false
    }
}

/// Checks every `every`; trims after each storm of encoding (32 MiB or more)
/// once the encoding has calmed down (less than 1 MiB in an interval).
pub async fn sweep(encoded: Arc<Encoded>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut trigger = Trigger::new(32 << 20, 1 << 20, encoded.total());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if trigger.check(encoded.total()) {
            let before = rss_mib();
            let trimmed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            debug!(
                trimmed,
                rss_before_mib = before,
                rss_after_mib = rss_mib(),
                "returned free memory to the system after a storm of encoding"
            );
        }
    }
}

/// The resident set, in MiB (0 if unknown).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| {
            let page = u64::try_from(rustix::param::page_size()).unwrap_or(4096);
            pages.saturating_mul(page) / (1 << 20)
        })
}

/// Returns free memory to the system; whether any was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    #[expect(
        unsafe_code,
        reason = "malloc_trim has no preconditions: it only walks glibc's own arenas"
    )]
    // SAFETY: malloc_trim takes a plain integer and touches only the
    // allocator's internal state, under the allocator's own locks.
    let released = unsafe { libc::malloc_trim(0) };
    released != 0
}

/// Elsewhere (another libc): nothing to call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_storm_and_only_when_it_has_calmed_down() {
        let mut t = Trigger::new(100, 10, 0);
        // Small steady traffic never trims.
        assert!(!t.check(5));
        assert!(!t.check(9));
        // A storm: no trim while it goes on.
        assert!(!t.check(60));
        assert!(!t.check(150));
        // It calmed down: one trim.
        assert!(t.check(155));
        assert!(!t.check(156));
        assert!(!t.check(157));
        // The next storm, then calm: one more.
        assert!(!t.check(400));
        assert!(t.check(401));
        assert!(!t.check(402));
    }

    #[test]
    fn trimming_is_harmless_and_memory_stays_usable() {
        let big: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        drop(big);
        let _ = trim();
        let again = vec![7u8; 1 << 20];
        assert!(again.iter().all(|b| *b == 7));
        assert!(rss_mib() > 0);
    }
}
