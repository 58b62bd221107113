//! What is failing right now, for `weft status` and `weft up`: one entry per
//! thing that failed (a TUN device, a reconcile action, the controller's refusal
//! of advertised routes, ...), with when it started failing. Pure bookkeeping; the
//! caller passes the wall-clock time.

use std::collections::BTreeMap;

use weft_proto::local::FailureStatus;

/// Current failures, keyed by area and then by what failed.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_area: BTreeMap<&'static str, BTreeMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    error: String,
    since_unix_ms: u64,
}

impl Failures {
    /// Replaces the failures of `area` with `now_failing` (what, error). A thing
    /// that keeps failing keeps its first time; one no longer listed is gone.
    /// Returns whether the set of failing things (not their texts) changed.
    pub(crate) fn set_area(
        &mut self,
        area: &'static str,
        now_failing: impl IntoIterator<Item = (String, String)>,
        now_unix_ms: u64,
    ) -> bool {
        let old = self.by_area.remove(area).unwrap_or_default();
        let mut new = BTreeMap::new();
        for (what, error) in now_failing {
            let since_unix_ms = old.get(&what).map_or(now_unix_ms, |e| e.since_unix_ms);
            new.insert(
                what,
                Entry {
                    error,
                    since_unix_ms,
                },
            );
        }
        let changed = !old.keys().eq(new.keys());
        if !new.is_empty() {
            self.by_area.insert(area, new);
        }
        changed
    }

    /// Forgets everything (after `weft down`: nothing is configured any more).
    pub(crate) fn clear(&mut self) {
        self.by_area.clear();
    }

    /// Whether `area` has a failure.
    pub(crate) fn any_in(&self, area: &str) -> bool {
        self.by_area.contains_key(area)
    }

    /// For status: oldest first.
    pub(crate) fn list(&self) -> Vec<FailureStatus> {
        let mut v: Vec<FailureStatus> = self
            .by_area
            .iter()
            .flat_map(|(area, m)| {
                m.iter().map(move |(what, e)| FailureStatus {
                    area: (*area).to_owned(),
                    what: what.clone(),
                    error: e.error.clone(),
                    since_unix_ms: e.since_unix_ms,
                })
            })
            .collect();
        v.sort_by_key(|f| f.since_unix_ms);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(what: &str, err: &str) -> Vec<(String, String)> {
        vec![(what.to_owned(), err.to_owned())]
    }

    #[test]
    fn a_failure_keeps_its_first_time_and_goes_when_fixed() {
        let mut f = Failures::default();
        assert!(f.set_area("system", one("add route", "EPERM"), 1_000));
        assert!(!f.set_area("system", one("add route", "EPERM again"), 5_000));
        let l = f.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].area, "system");
        assert_eq!(l[0].since_unix_ms, 1_000);
        assert_eq!(l[0].error, "EPERM again");
        assert!(f.set_area("tun", one("weft0", "busy"), 6_000));
        assert_eq!(f.list().len(), 2);
        assert!(f.set_area("system", Vec::new(), 7_000));
        assert!(!f.any_in("system"));
        assert!(f.any_in("tun"));
        f.clear();
        assert!(f.list().is_empty());
    }
}
