//! The resolver's counters, for the agent's metrics: a cheap handle the
//! agent keeps across restarts of the service (so the counters are monotonic
//! for the agent's life) and reads at scrape time. Relaxed atomics: a query
//! costs a few uncontended increments, no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}

impl DnsStats {
    pub(crate) fn query(&self) {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
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
        DnsStatsSnapshot {
            queries: load(&self.0.queries),
            cache_hits: load(&self.0.cache_hits),
            upstream_failures: load(&self.0.upstream_failures),
            upstream_buckets,
            upstream_seconds: load(&self.0.latency_sum_us) as f64 / 1e6,
            upstream_count: total,
        }
    }
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
}
