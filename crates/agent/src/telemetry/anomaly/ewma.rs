//! An exponentially weighted baseline: mean and variance of one signal, the
//! z-score of a new value against it, and a warm-up before it may judge.

use std::time::{Duration, Instant};

/// How much of the baseline one window moves (0.05: about the last 20
/// windows, 200 s at the default 10 s window, carry most of the weight).
pub(super) const ALPHA: f64 = 0.05;
/// The standard deviation used is at least this share of the mean: a very
/// steady signal (say iperf3 at a fixed rate) must still move by a good part
/// of itself to alarm.
pub(super) const REL_STDDEV_FLOOR: f64 = 0.1;

/// One signal's baseline.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ewma {
    mean: f64,
    var: f64,
    samples: u64,
    since: Instant,
}

/// What a value is, measured against a baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Score {
    /// The baseline's mean.
    pub(super) mean: f64,
    /// Its standard deviation, after the floors.
    pub(super) stddev: f64,
    /// (value − mean) / stddev.
    pub(super) z: f64,
}

impl Ewma {
    /// A baseline whose first sample arrives at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            mean: 0.0,
            var: 0.0,
            samples: 0,
            since: now,
        }
    }

    /// Whether it has seen `warmup` of samples (and at least two).
    pub(super) fn warm(&self, now: Instant, warmup: Duration) -> bool {
        self.samples >= 2 && now.saturating_duration_since(self.since) >= warmup
    }

    /// `x` against the baseline. The standard deviation is at least
    /// [`REL_STDDEV_FLOOR`] of the mean and at least `unit` (one byte, one
    /// drop, one millisecond), so a flat baseline yields a finite score.
    pub(super) fn score(&self, x: f64, unit: f64) -> Score {
        let stddev = self.var.sqrt().max(self.mean * REL_STDDEV_FLOOR).max(unit);
        Score {
            mean: self.mean,
            stddev,
            z: (x - self.mean) / stddev,
        }
    }

    /// Learns `x`. Once warm, a value is clipped to `mean + cap_z` standard
    /// deviations first, so one incident does not become the new normal at
    /// once (a lasting change is still learned, a window at a time).
    pub(super) fn update(&mut self, x: f64, clip: Option<(f64, f64)>) {
        let x = match clip {
            Some((cap_z, unit)) => {
                let s = self.score(x, unit);
                x.min(s.mean + cap_z * s.stddev)
            }
            None => x,
        };
        if self.samples == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += ALPHA * d;
            self.var = (1.0 - ALPHA) * (self.var + ALPHA * d * d);
        }
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(
        clippy::disallowed_methods,
        reason = "a test needs some origin instant"
    )]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_baseline_follows_a_steady_signal_and_scores_a_jump() {
        let t = t0();
        let mut e = Ewma::new(t);
        assert!(!e.warm(t, Duration::ZERO), "no sample yet");
        for i in 0..100 {
            e.update(1000.0 + f64::from(i % 5) * 10.0, None);
        }
        assert!(e.warm(t + Duration::from_secs(300), Duration::from_secs(300)));
        assert!(!e.warm(t + Duration::from_secs(299), Duration::from_secs(300)));
        let s = e.score(1020.0, 1.0);
        assert!((s.mean - 1020.0).abs() < 20.0, "{s:?}");
        // The floor: 10% of the mean even though the samples vary by 4%.
        assert!((s.stddev - s.mean * REL_STDDEV_FLOOR).abs() < 1.0, "{s:?}");
        assert!(s.z.abs() < 1.0, "{s:?}");
        assert!(e.score(3000.0, 1.0).z > 15.0);
        // A flat zero baseline: the unit floor keeps the score finite.
        let z = Ewma::new(t).score(5.0, 1.0);
        assert_eq!(z.z, 5.0);
    }

    #[test]
    fn a_clipped_outlier_moves_the_baseline_only_a_little() {
        let mut e = Ewma::new(t0());
        for _ in 0..50 {
            e.update(100.0, None);
        }
        e.update(1_000_000.0, Some((6.0, 1.0)));
        let s = e.score(100.0, 1.0);
        assert!(s.mean < 200.0, "{s:?}");
    }
}
