//! The domains the rules in force name: their addresses and when each is
//! resolved again (pure, with injected time). A domain is re-resolved at its
//! records' smallest TTL, clamped to [`MIN_REFRESH`]..=[`MAX_REFRESH`]; a
//! failed resolution keeps the last addresses and retries after
//! [`MIN_REFRESH`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_proto::local::DomainSetStatus;

/// Shortest time between two resolutions of a domain.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Longest time between two resolutions of a domain.
pub(crate) const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// A resolution: the addresses and the smallest TTL, or why it failed.
pub(crate) type Resolution = Result<(BTreeSet<IpAddr>, Duration), String>;

/// One domain's state.
#[derive(Debug, Clone, Default)]
struct Entry {
    addrs: BTreeSet<IpAddr>,
    /// When it is due (`None`: now, never resolved).
    due: Option<Instant>,
    /// A resolution is running.
    running: bool,
    error: Option<String>,
}

/// Every domain the rules in force name.
#[derive(Debug, Default)]
pub(crate) struct Domains {
    entries: BTreeMap<String, Entry>,
}

impl Domains {
    /// The domains wanted from now on (others are forgotten; new ones are due
    /// at once). Returns whether the set of domains changed.
    pub(crate) fn set(&mut self, wanted: &[String]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|d, _| wanted.contains(d));
        let mut changed = self.entries.len() != before;
        for d in wanted {
            if !self.entries.contains_key(d) {
                self.entries.insert(d.clone(), Entry::default());
                changed = true;
            }
        }
        changed
    }

    /// Domains due at `now` and not being resolved; they are marked running.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (d, e) in &mut self.entries {
            if !e.running && e.due.is_none_or(|t| t <= now) {
                e.running = true;
                due.push(d.clone());
            }
        }
        due
    }

    /// When the next domain is due (not counting running ones; `now` for one
    /// never resolved).
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.running)
            .map(|e| e.due)
            .min()
            .map(|t| t.unwrap_or(now))
    }

    /// A resolution finished: the addresses and the smallest TTL, or why it
    /// failed. Returns whether the addresses changed.
    pub(crate) fn resolved(&mut self, domain: &str, result: Resolution, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(domain) else {
            return false;
        };
        e.running = false;
        match result {
            Ok((addrs, ttl)) => {
                e.due = Some(now + ttl.clamp(MIN_REFRESH, MAX_REFRESH));
                e.error = None;
                let changed = e.addrs != addrs;
                e.addrs = addrs;
                changed
            }
            Err(why) => {
                e.due = Some(now + MIN_REFRESH);
                e.error = Some(why);
                false
            }
        }
    }

    /// Domain -> addresses, for the table.
    pub(crate) fn addresses(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        self.entries
            .iter()
            .map(|(d, e)| (d.clone(), e.addrs.clone()))
            .collect()
    }

    /// For `weft status`.
    pub(crate) fn status(&self, now: Instant, now_ms: u64) -> Vec<DomainSetStatus> {
        self.entries
            .iter()
            .map(|(d, e)| DomainSetStatus {
                domain: d.clone(),
                addresses: e.addrs.iter().map(ToString::to_string).collect(),
                refresh_at_ms: e.due.map(|t| {
                    now_ms
                        + u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(0)
                }),
                error: e.error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_its_bounds_and_failures_keep_the_addresses() {
        let now = crate::clock::now();
        let mut d = Domains::default();
        assert!(d.set(&["a.example".into(), "b.example".into()]));
        assert!(!d.set(&["a.example".into(), "b.example".into()]));
        assert_eq!(d.take_due(now), vec!["a.example", "b.example"]);
        assert!(d.take_due(now).is_empty(), "running ones are not due again");
        let a: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap()].into();
        assert!(d.resolved("a.example", Ok((a.clone(), Duration::from_secs(5))), now));
        assert!(d.resolved(
            "b.example",
            Ok((a.clone(), Duration::from_secs(86_400))),
            now
        ));
        assert_eq!(
            d.next_due(now),
            Some(now + MIN_REFRESH),
            "a TTL of 5 s waits 30 s"
        );
        assert!(
            d.take_due(now + MIN_REFRESH - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(d.take_due(now + MIN_REFRESH), vec!["a.example"]);
        assert_eq!(
            d.next_due(now),
            Some(now + MAX_REFRESH),
            "a TTL of a day waits an hour"
        );
        // A failure keeps the addresses and retries after the minimum.
        let later = now + MIN_REFRESH;
        assert!(!d.resolved("a.example", Err("SERVFAIL".into()), later));
        assert_eq!(d.addresses()["a.example"], a);
        let st = d.status(later, 1000);
        assert_eq!(st[0].error.as_deref(), Some("SERVFAIL"));
        assert_eq!(st[0].refresh_at_ms, Some(1000 + 30_000));
        // Same answer: no change.
        assert!(!d.resolved("a.example", Ok((a, Duration::from_secs(60))), later));
        // A domain no longer named is forgotten; a late answer for it is ignored.
        assert!(d.set(&["b.example".into()]));
        assert!(!d.resolved("a.example", Ok((BTreeSet::new(), MIN_REFRESH)), later));
        assert_eq!(d.addresses().len(), 1);
    }
}
