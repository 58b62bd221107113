//! Retry timing: exponential backoff with a cap and jitter, driven by values passed in
//! (`now`, a seed) so it is deterministic under test.

use std::time::{Duration, Instant};

/// Shape of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay after the first failure. Default 250 ms: a refused netlink request is
    /// usually a race with the data plane creating or renaming the interface.
    pub initial: Duration,
    /// Upper bound of the delay. Default 5 s, the drift-correction promise: even while
    /// some action keeps failing, other drift is repaired within that time.
    pub max: Duration,
    /// Up to this percentage of each delay is randomly taken off (0 = no jitter), so
    /// many agents restarted together do not retry in lockstep. Default 20.
    pub jitter_percent: u8,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
            jitter_percent: 20,
        }
    }
}

/// Exponential backoff: the n-th consecutive failure waits
/// `min(initial · 2ⁿ⁻¹, max)` minus up to `jitter_percent` of it.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff with no failures yet; `seed` drives the jitter.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Self {
            config,
            failures: 0,
            rng: seed,
        }
    }

    /// Number of consecutive failures since the last [`reset`](Self::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure at `now` and returns when to retry.
    pub fn on_failure(&mut self, now: Instant) -> Instant {
        let delay = self.next_delay();
        now.checked_add(delay).unwrap_or(now)
    }

    /// Records a failure and returns the delay before the retry.
    pub fn next_delay(&mut self) -> Duration {
        let doublings = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .config
            .initial
            .saturating_mul(1u32 << doublings)
            .min(self.config.max);
        let jitter_pct = u128::from(self.config.jitter_percent.min(100));
        let random = u128::from(self.next_random() >> 32); // uniform in [0, 2³²)
        let cut = base.as_nanos() * jitter_pct * random / (100 << 32);
        let nanos = base.as_nanos() - cut;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Forgets past failures: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// splitmix64: a tiny, well-mixed generator; jitter needs no more.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter_percent: 0,
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(no_jitter(), 1);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(no_jitter(), 1);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn on_failure_adds_the_delay_to_now() {
        let now = Instant::now_for_tests();
        let mut b = Backoff::new(no_jitter(), 1);
        assert_eq!(b.on_failure(now), now + Duration::from_millis(100));
        assert_eq!(b.on_failure(now), now + Duration::from_millis(200));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default(), 7);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_depends_only_on_the_seed() {
        let config = BackoffConfig {
            jitter_percent: 50,
            ..no_jitter()
        };
        let run = |seed| {
            let mut b = Backoff::new(config, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let mut plain = Backoff::new(no_jitter(), 0);
        for d in run(42) {
            let base = plain.next_delay();
            assert!(
                d <= base && d >= base / 2,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
    }

    /// Tests may read the clock; the crate may not.
    trait NowForTests {
        fn now_for_tests() -> Instant;
    }
    impl NowForTests for Instant {
        #[expect(clippy::disallowed_methods, reason = "a test needs some base instant")]
        fn now_for_tests() -> Instant {
            Instant::now()
        }
    }
}
