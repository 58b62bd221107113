//! Rate limiting of drop logs: at most one line per key (a peer) per interval,
//! with a count of what was suppressed in between.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Default interval between two log lines about the same peer.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides whether a drop may be logged now. Bounded: when `capacity` keys are
/// tracked, keys whose interval has passed are forgotten first, then the one
/// logged longest ago.
#[derive(Debug, Clone)]
pub struct LogLimiter<K> {
    interval: Duration,
    capacity: usize,
    /// Per key: when it was last logged, and drops suppressed since.
    last: BTreeMap<K, (Instant, u64)>,
}

impl<K: Ord + Clone> LogLimiter<K> {
    /// A limiter allowing one line per key per `interval`, tracking at most
    /// `capacity` keys.
    pub fn new(interval: Duration, capacity: usize) -> Self {
        LogLimiter {
            interval,
            capacity: capacity.max(1),
            last: BTreeMap::new(),
        }
    }

    /// Records a drop for `key`. Returns `Some(suppressed)` when a line may be
    /// logged now (`suppressed` drops were not logged since the previous line),
    /// or None when this drop must only be counted.
    pub fn check(&mut self, key: &K, now: Instant) -> Option<u64> {
        if let Some((at, suppressed)) = self.last.get_mut(key) {
            if now.saturating_duration_since(*at) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *at = now;
            *suppressed = 0;
            return Some(n);
        }
        if self.last.len() >= self.capacity {
            let interval = self.interval;
            self.last
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < interval);
        }
        if self.last.len() >= self.capacity
            && let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.last.remove(&oldest);
        }
        self.last.insert(key.clone(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval() {
        let t0 = crate::tests::t0();
        let mut l = LogLimiter::new(DROP_LOG_INTERVAL, 2);
        assert_eq!(l.check(&"a", t0), Some(0));
        assert_eq!(l.check(&"a", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check(&"a", t0 + Duration::from_secs(9)), None);
        assert_eq!(l.check(&"b", t0 + Duration::from_secs(9)), Some(0));
        assert_eq!(l.check(&"a", t0 + Duration::from_secs(10)), Some(2));
        // Full: "c" evicts the oldest ("b", logged at 9 s).
        assert_eq!(l.check(&"c", t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(l.check(&"b", t0 + Duration::from_secs(12)), Some(0));
    }
}
