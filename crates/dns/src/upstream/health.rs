//! Which upstreams are healthy, and in which order a query tries them. Pure:
//! every call takes `now`.
//!
//! An upstream that fails at the transport level (timeout, refused connection,
//! TLS handshake, a malformed answer) is *down* for a backoff: 5 s after its
//! first failure, doubling with each further one up to 60 s. While down it is
//! tried only after every healthy upstream (so a query still gets an answer when
//! all are down). When its backoff is over it is *due*: the service's health
//! check probes it at once (see [`Health::due_for_probe`]); one answer makes it healthy again.
//! Client queries keep skipping it until then, so none of them waits out a
//! dead server's timeout more than once.
//! SERVFAIL and REFUSED are answers, not failures: they say something about the
//! name, not about the server.

use std::time::{Duration, Instant};

pub use weft_proto::local::DnsUpstreamHealth as UpstreamHealth;

/// The first backoff after a failure.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// The longest backoff.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One upstream's health.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Failures since its last answer.
    failures: u32,
    /// Down until then (`None`: healthy).
    down_until: Option<Instant>,
    last_error: Option<String>,
    last_latency: Option<Duration>,
    answered: u64,
    failed: u64,
}

impl Health {
    /// Healthy: never failed, or answered since.
    pub(crate) fn usable(&self) -> bool {
        self.down_until.is_none()
    }

    /// Down, with its backoff over: the health check probes it.
    pub(crate) fn due_for_probe(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| now >= until)
    }

    pub(crate) fn answered(&mut self, took: Duration) {
        self.failures = 0;
        self.down_until = None;
        self.last_latency = Some(took);
        self.answered += 1;
    }

    pub(crate) fn failed(&mut self, error: String, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.failed += 1;
        let shift = self.failures.saturating_sub(1).min(8);
        let backoff = (BACKOFF_MIN * (1u32 << shift)).min(BACKOFF_MAX);
        self.down_until = Some(now + backoff);
        self.last_error = Some(error);
    }

    pub(crate) fn report(&self, upstream: String, now: Instant) -> UpstreamHealth {
        let healthy = self.down_until.is_none();
        UpstreamHealth {
            upstream,
            healthy,
            consecutive_failures: self.failures,
            retry_in_secs: self
                .down_until
                .map(|u| u.saturating_duration_since(now).as_secs()),
            answered: self.answered,
            failed: self.failed,
            last_latency_ms: self
                .last_latency
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            last_error: if healthy {
                None
            } else {
                self.last_error.clone()
            },
        }
    }
}

/// The order in which a query tries the upstreams: the healthy ones in their
/// configured order, then the failed ones (soonest due first).
pub(crate) fn order(health: &[Health]) -> Vec<usize> {
    let (mut usable, mut down): (Vec<usize>, Vec<usize>) =
        (0..health.len()).partition(|&i| health[i].usable());
    down.sort_by_key(|&i| health[i].down_until);
    usable.append(&mut down);
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(clippy::disallowed_methods, reason = "tests need a base instant")]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_failed_upstream_goes_last_for_a_doubling_backoff_and_comes_back() {
        let t0 = t0();
        let s = Duration::from_secs;
        let mut h = vec![Health::default(), Health::default(), Health::default()];
        assert_eq!(order(&h), [0, 1, 2]);
        h[0].failed("timed out".into(), t0);
        assert_eq!(order(&h), [1, 2, 0]);
        assert!(!h[0].due_for_probe(t0 + s(4)));
        // Backoff over: probed, still skipped by queries until a probe answers.
        assert!(h[0].due_for_probe(t0 + s(5)));
        assert_eq!(order(&h), [1, 2, 0]);
        // The probe fails: 10 s, then 20, 40, 60, 60.
        let mut t = t0 + s(5);
        for want in [10, 20, 40, 60, 60] {
            h[0].failed("refused".into(), t);
            assert!(!h[0].due_for_probe(t + s(want - 1)), "{want}");
            assert!(h[0].due_for_probe(t + s(want)), "{want}");
            t += s(want);
        }
        let r = h[0].report("udp://192.0.2.1:53".into(), t);
        assert!(!r.healthy);
        assert_eq!(r.consecutive_failures, 6);
        assert_eq!(r.last_error.as_deref(), Some("refused"));
        // One answer: healthy, first again.
        h[0].answered(Duration::from_millis(7));
        assert_eq!(order(&h), [0, 1, 2]);
        assert!(!h[0].due_for_probe(t));
        let r = h[0].report("udp://192.0.2.1:53".into(), t);
        assert!(r.healthy && r.last_error.is_none());
        assert_eq!((r.answered, r.failed, r.last_latency_ms), (1, 6, Some(7)));
    }

    #[test]
    fn when_all_are_down_the_soonest_back_is_tried_first() {
        let t0 = t0();
        let mut h = vec![Health::default(), Health::default()];
        h[0].failed("x".into(), t0);
        h[0].failed("x".into(), t0); // 10 s
        h[1].failed("x".into(), t0); // 5 s
        assert_eq!(order(&h), [1, 0]);
    }
}
