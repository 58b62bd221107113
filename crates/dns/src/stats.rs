//! The resolver's counters, for the agent's metrics: a cheap handle the
//! agent keeps across restarts of the service (so the counters are monotonic
//! for the agent's life) and reads at scrape time. Relaxed atomics: a query
//! costs a few uncontended increments; the names asked and the recent upstream
//! latencies (for `weft dns stats`) take one short lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// At most this many distinct names are counted for the top names; later new
/// names are counted in [`DnsStatsSnapshot::untracked_names`] only.
pub(crate) const MAX_TRACKED_NAMES: usize = 10_000;
/// The upstream latency percentiles are of this many latest forwarded queries.
pub(crate) const LATENCY_WINDOW: usize = 1024;
/// How many names [`DnsStatsSnapshot::top_names`] lists.
pub(crate) const TOP_NAMES: usize = 10;

/// Upper bounds (seconds) of the upstream latency buckets.
pub const UPSTREAM_BOUNDS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
struct Inner {
    queries: AtomicU64,
    cache_hits: AtomicU64,
    upstream_failures: AtomicU64,
    /// Non-cumulative, one per bound plus one above them all.
    latency: [AtomicU64; UPSTREAM_BOUNDS.len() + 1],
    latency_sum_us: AtomicU64,
    blocked: AtomicU64,
    names: Mutex<Names>,
}

#[derive(Debug, Default)]
struct Names {
    counts: BTreeMap<String, u64>,
    untracked: u64,
    recent_us: VecDeque<u64>,
}

/// A shared handle on the counters (clones count into the same ones; two
/// handles are equal when they are the same counters).
#[derive(Debug, Clone, Default)]
pub struct DnsStats(Arc<Inner>);

impl PartialEq for DnsStats {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DnsStats {}

/// A reading of [`DnsStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsStatsSnapshot {
    /// Client messages handled (answered, forwarded or refused).
    pub queries: u64,
    /// Queries answered from the forwarded-answer cache.
    pub cache_hits: u64,
    /// Forwarded queries no upstream answered usably (the client got SERVFAIL).
    pub upstream_failures: u64,
    /// Forwarded queries' time to an answer (or to giving up): counts per
    /// bucket (not cumulative), by upper bound ([`UPSTREAM_BOUNDS`], then `+Inf`).
    pub upstream_buckets: Vec<(f64, u64)>,
    /// Sum of those times, seconds.
    pub upstream_seconds: f64,
    /// Forwarded queries.
    pub upstream_count: u64,
    /// Queries answered from the blocklist.
    pub blocked: u64,
    /// The most asked names with their counts, most first (at most
    /// [`TOP_NAMES`]; ties by name).
    pub top_names: Vec<(String, u64)>,
    /// Queries for names first seen after [`MAX_TRACKED_NAMES`] were tracked.
    pub untracked_names: u64,
    /// 50th, 90th and 99th percentile of the latest [`LATENCY_WINDOW`]
    /// forwarded queries' time to an answer, milliseconds (`None`: none yet).
    pub latency_ms_p50_p90_p99: Option<(f64, f64, f64)>,
}

impl DnsStats {
    pub(crate) fn query(&self) {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// A query answered from the blocklist.
    pub fn blocked(&self) {
        self.0.blocked.fetch_add(1, Ordering::Relaxed);
    }

    /// A query for `name` (lowercase, no trailing dot).
    pub(crate) fn name(&self, name: &str) {
        let mut names = self.names();
        if let Some(n) = names.counts.get_mut(name) {
            *n += 1;
        } else if names.counts.len() < MAX_TRACKED_NAMES {
            names.counts.insert(name.to_owned(), 1);
        } else {
            names.untracked += 1;
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.0.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn cache_hit(&self) {
        self.0.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// One forwarded query, `took` to finish, answered or not.
    pub(crate) fn upstream(&self, took: Duration, answered: bool) {
        let secs = took.as_secs_f64();
        let i = UPSTREAM_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(UPSTREAM_BOUNDS.len());
        self.0.latency[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        {
            let mut names = self.names();
            if names.recent_us.len() >= LATENCY_WINDOW {
                names.recent_us.pop_front();
            }
            names.recent_us.push_back(us);
        }
        if !answered {
            self.0.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> DnsStatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let upstream_buckets: Vec<(f64, u64)> = UPSTREAM_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.0.latency)
            .map(|(bound, n)| (bound, load(n)))
            .collect();
        let total = upstream_buckets.iter().map(|(_, n)| n).sum();
        let (top_names, untracked_names, latency) = {
            let names = self.names();
            let mut top: Vec<(String, u64)> =
                names.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(TOP_NAMES);
            let mut recent: Vec<u64> = names.recent_us.iter().copied().collect();
            recent.sort_unstable();
            (top, names.untracked, percentiles(&recent))
        };
        DnsStatsSnapshot {
            blocked: load(&self.0.blocked),
            top_names,
            untracked_names,
            latency_ms_p50_p90_p99: latency,
            queries: load(&self.0.queries),
            cache_hits: load(&self.0.cache_hits),
            upstream_failures: load(&self.0.upstream_failures),
            upstream_buckets,
            upstream_seconds: load(&self.0.latency_sum_us) as f64 / 1e6,
            upstream_count: total,
        }
    }
}

/// Nearest-rank percentiles of sorted microseconds, in milliseconds.
fn percentiles(sorted_us: &[u64]) -> Option<(f64, f64, f64)> {
    if sorted_us.is_empty() {
        return None;
    }
    let at = |p: usize| {
        let rank = (p * sorted_us.len()).div_ceil(100).max(1);
        sorted_us[rank - 1] as f64 / 1000.0
    };
    Some((at(50), at(90), at(99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_times_land_in_their_buckets_and_clones_share_counters() {
        let s = DnsStats::default();
        let c = s.clone();
        assert_eq!(s, c);
        assert_ne!(s, DnsStats::default());
        c.query();
        c.cache_hit();
        s.upstream(Duration::from_micros(800), true);
        s.upstream(Duration::from_millis(30), true);
        s.upstream(Duration::from_secs(2), false);
        let snap = s.snapshot();
        assert_eq!(
            (snap.queries, snap.cache_hits, snap.upstream_failures),
            (1, 1, 1)
        );
        assert_eq!(snap.upstream_count, 3);
        let at = |b: f64| {
            snap.upstream_buckets
                .iter()
                .find(|(x, _)| *x == b)
                .map(|(_, n)| *n)
        };
        assert_eq!(at(0.001), Some(1));
        assert_eq!(at(0.025), Some(0));
        assert_eq!(at(0.05), Some(1));
        assert_eq!(at(1.0), Some(0));
        assert_eq!(at(f64::INFINITY), Some(1));
        assert!((snap.upstream_seconds - 2.0308).abs() < 1e-9);
    }

    #[test]
    fn top_names_blocked_and_latency_percentiles() {
        let s = DnsStats::default();
        assert_eq!(s.snapshot().latency_ms_p50_p90_p99, None);
        for _ in 0..3 {
            s.name("b.example");
        }
        s.name("a.example");
        s.name("c.example");
        s.blocked();
        for ms in 1..=100 {
            s.upstream(Duration::from_millis(ms), true);
        }
        let snap = s.snapshot();
        assert_eq!(snap.blocked, 1);
        assert_eq!(
            snap.top_names,
            [
                ("b.example".to_owned(), 3),
                ("a.example".to_owned(), 1),
                ("c.example".to_owned(), 1)
            ]
        );
        assert_eq!(snap.latency_ms_p50_p90_p99, Some((50.0, 90.0, 99.0)));
        // The window keeps the latest only.
        for _ in 0..LATENCY_WINDOW {
            s.upstream(Duration::from_millis(2), true);
        }
        assert_eq!(s.snapshot().latency_ms_p50_p90_p99, Some((2.0, 2.0, 2.0)));
    }

    #[test]
    fn names_beyond_the_bound_are_counted_untracked() {
        let s = DnsStats::default();
        for i in 0..MAX_TRACKED_NAMES + 5 {
            s.name(&format!("n{i}.example"));
        }
        s.name("n0.example");
        let snap = s.snapshot();
        assert_eq!(snap.untracked_names, 5);
        assert_eq!(snap.top_names[0], ("n0.example".to_owned(), 2));
        assert_eq!(snap.top_names.len(), TOP_NAMES);
    }
}
