//! [`OutageLog`]: when to log about something that fails and retries on its
//! own. Pure: the shells (the relay server, the relay client's users) pass `now`.

use std::time::{Duration, Instant};

/// While a failure lasts, a reminder at most this often.
pub const OUTAGE_REMIND: Duration = Duration::from_secs(300);

/// State-change logging for something that fails and retries on its own (the
/// relay link, an accept loop): one line when it starts failing, a reminder
/// at most every [`OUTAGE_REMIND`] while it lasts, one when it works again
/// (with how long it failed), instead of a line per attempt. Pure: the caller
/// passes `now` and logs what it is told.
#[derive(Debug, Default)]
pub struct OutageLog {
    /// Since when it has been failing, when it was last said, and attempts.
    down: Option<(Instant, Instant, u64)>,
}

/// What to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageNote {
    /// It started failing.
    Down,
    /// It still fails: for this long, this many attempts.
    StillDown {
        /// Since the first failure.
        for_: Duration,
        /// Failed attempts so far.
        failures: u64,
    },
    /// It works again after failing this long, this many attempts.
    Back {
        /// From the first failure until now.
        after: Duration,
        /// Failed attempts.
        failures: u64,
    },
}

impl OutageLog {
    /// An attempt failed at `now`: what to log, if anything.
    pub fn failed(&mut self, now: Instant) -> Option<OutageNote> {
        match &mut self.down {
            None => {
                self.down = Some((now, now, 1));
                Some(OutageNote::Down)
            }
            Some((since, said, n)) => {
                *n += 1;
                if now.saturating_duration_since(*said) < OUTAGE_REMIND {
                    return None;
                }
                *said = now;
                Some(OutageNote::StillDown {
                    for_: now.saturating_duration_since(*since),
                    failures: *n,
                })
            }
        }
    }

    /// It works at `now`: what to log, if it had been failing.
    pub fn recovered(&mut self, now: Instant) -> Option<OutageNote> {
        let (since, _, failures) = self.down.take()?;
        Some(OutageNote::Back {
            after: now.saturating_duration_since(since),
            failures,
        })
    }

    /// Whether it is failing now.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::disallowed_methods, reason = "a base instant for the test")]
    fn an_outage_is_logged_when_it_starts_ends_and_rarely_between() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut log = OutageLog::default();
        assert_eq!(
            log.recovered(at(0)),
            None,
            "nothing to say when it never failed"
        );
        assert_eq!(log.failed(at(0)), Some(OutageNote::Down));
        // Retries every 5 s for four minutes: silent.
        for s in (5..240).step_by(5) {
            assert_eq!(log.failed(at(s)), None, "at {s} s");
        }
        assert!(log.is_down());
        assert_eq!(
            log.failed(at(300)),
            Some(OutageNote::StillDown {
                for_: Duration::from_secs(300),
                failures: 49
            })
        );
        assert_eq!(log.failed(at(305)), None);
        assert_eq!(
            log.recovered(at(310)),
            Some(OutageNote::Back {
                after: Duration::from_secs(310),
                failures: 50
            })
        );
        assert!(!log.is_down());
        assert_eq!(log.failed(at(400)), Some(OutageNote::Down));
    }
}
