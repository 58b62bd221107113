//! Which of a controller's addresses to try, and in what order (pure).
//!
//! A controller URL's host name may resolve to several addresses (one per
//! replica). A client tries them in turn, each with a share of the connect
//! timeout; the one that answered is tried first next time, and one the
//! caller left ([`AddrChoice::leave`]: it broke, or asked us to go) is tried
//! last. A client with no history starts at the `seed`-th address, so a
//! fleet spreads over the records instead of all taking the first.

use std::net::SocketAddr;

use crate::ClientError;

/// Addresses of one host name tried at most.
pub(crate) const MAX_ADDRS: usize = 16;

/// What a client remembers about one URL's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddrChoice {
    /// The address that answered last.
    pub(crate) last: Option<SocketAddr>,
    /// An address left on purpose: tried last until another one answers.
    avoid: Option<SocketAddr>,
}

impl AddrChoice {
    /// `resolved` in the order to try: from the address that answered last
    /// (unless it was left), else from the one after the left one, else from
    /// the `seed`-th; the left one at the end.
    pub(crate) fn order(&self, resolved: &[SocketAddr], seed: u64) -> Vec<SocketAddr> {
        if resolved.is_empty() {
            return Vec::new();
        }
        let n = resolved.len();
        let pos = |a: Option<SocketAddr>| a.and_then(|a| resolved.iter().position(|r| *r == a));
        let start = match (pos(self.last), pos(self.avoid)) {
            (Some(l), a) if a != Some(l) => l,
            (_, Some(a)) => (a + 1) % n,
            _ => (seed % n as u64) as usize,
        };
        let mut out: Vec<SocketAddr> = (0..n).map(|k| resolved[(start + k) % n]).collect();
        if let Some(a) = self.avoid
            && let Some(i) = out.iter().position(|r| *r == a)
        {
            let left = out.remove(i);
            out.push(left);
        }
        out
    }

    /// `a` answered; returns whether that moves the client off the address
    /// it used before.
    pub(crate) fn connected(&mut self, a: SocketAddr) -> bool {
        let moved = self.last.is_some_and(|l| l != a);
        self.last = Some(a);
        self.avoid = None;
        moved
    }

    /// The address in use is left: the next connection tries it last.
    pub(crate) fn leave(&mut self) {
        if self.last.is_some() {
            self.avoid = self.last;
        }
    }
}

/// Whether `e` means the URL could not be reached at all (nothing was sent):
/// then the same call may go to another URL of the controller.
pub(crate) fn unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. } | ClientError::Timeout("connect")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 443))
    }

    #[test]
    fn a_fleet_spreads_over_the_records_and_sticks_to_what_answers() {
        let resolved = [a(1), a(2), a(3)];
        let fresh = AddrChoice::default();
        // No history: the seed picks the first address tried.
        assert_eq!(fresh.order(&resolved, 0), vec![a(1), a(2), a(3)]);
        assert_eq!(fresh.order(&resolved, 4), vec![a(2), a(3), a(1)]);
        let firsts: std::collections::BTreeSet<_> = (0..30)
            .map(|seed| fresh.order(&resolved, seed)[0])
            .collect();
        assert_eq!(firsts.len(), 3, "seeds reach every record");

        // The one that answered comes first next time, whatever the seed.
        let mut c = AddrChoice::default();
        assert!(!c.connected(a(3)));
        assert_eq!(c.order(&resolved, 0), vec![a(3), a(1), a(2)]);

        // Leaving it: the next address first, the left one last.
        c.leave();
        assert_eq!(c.order(&resolved, 0), vec![a(1), a(2), a(3)]);
        assert!(c.connected(a(1)), "a move to another address is counted");
        assert_eq!(c.order(&resolved, 0), vec![a(1), a(2), a(3)]);

        // Two records: leaving one always tries the other first.
        let two = [a(1), a(2)];
        let mut c = AddrChoice::default();
        c.connected(a(2));
        c.leave();
        assert_eq!(c.order(&two, 0), vec![a(1), a(2)]);

        // The left address is gone from DNS: seed order, nothing avoided.
        let mut c = AddrChoice::default();
        c.connected(a(9));
        c.leave();
        assert_eq!(c.order(&resolved, 1), vec![a(2), a(3), a(1)]);
        assert!(AddrChoice::default().order(&[], 3).is_empty());
    }

    #[test]
    fn only_connection_failures_go_to_another_url() {
        assert!(unreachable(&ClientError::Connect {
            addr: "c:443".into(),
            why: "refused".into(),
            refused_cert: None
        }));
        assert!(unreachable(&ClientError::Timeout("connect")));
        assert!(!unreachable(&ClientError::Timeout("request")));
        assert!(!unreachable(&ClientError::Http("reset".into())));
        assert!(!unreachable(&ClientError::Api {
            status: 503,
            body: weft_proto::api::ErrorBody {
                code: "unavailable".into(),
                message: String::new()
            }
        }));
    }
}
