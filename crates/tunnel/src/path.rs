//! Per-peer path selection: direct UDP when a discovery pong (or an
//! authenticated WireGuard response or data message; a handshake initiation
//! alone proves only the way to us) proves a path, the relay otherwise.
//!
//! - A new peer is reachable at once over the relay (when one is up) while every
//!   candidate address is probed with discovery pings; the first pong makes that
//!   address the direct path.
//! - A ping from the peer teaches us a peer-reflexive candidate and is answered
//!   with a pong and a ping of our own, so both NATs open a mapping (simultaneous
//!   open).
//! - The direct path is trusted while something authenticated arrived on it within
//!   [`DIRECT_TRUST`]; it is pinged every [`DIRECT_PING`] when quiet, so a dead path
//!   is abandoned for the relay within about [`DIRECT_TRUST`].
//! - Without a direct path, candidates are re-probed every [`PROBE_EVERY`]; the
//!   first rounds after the candidates change (or a direct path is lost) come
//!   sooner ([`PROBE_BACKOFF`]), so a first ping lost on the wire or dropped by
//!   a NAT whose peer side had not opened yet costs half a second, not three.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a direct path is trusted without hearing from it.
pub const DIRECT_TRUST: Duration = Duration::from_millis(3_000);
/// Ping interval on a quiet direct path.
pub const DIRECT_PING: Duration = Duration::from_millis(1_000);
/// Re-probe interval for candidates while relayed.
pub const PROBE_EVERY: Duration = Duration::from_secs(3);
/// Gaps before the first re-probes after the candidates change or a direct
/// path is lost; [`PROBE_EVERY`] after these.
pub const PROBE_BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1_000),
    Duration::from_millis(2_000),
];
/// Most candidates probed per peer (map-supplied plus learned).
pub const MAX_CANDIDATES: usize = 16;
/// Outstanding pings remembered per peer.
const MAX_PENDING: usize = 64;
/// A ping unanswered for this long counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where packets for a peer go right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The confirmed direct address.
    Direct(SocketAddr),
    /// Through the relay.
    Relay,
    /// No confirmed path and no relay: try the candidates (handshakes only).
    Candidates,
}

/// The kind of path, for events and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Direct UDP to this address.
    Direct(SocketAddr),
    /// Via the relay.
    Relay,
    /// Not reachable yet.
    None,
}

/// What was tried on one candidate (for `weft why`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CandidateStats {
    /// Pings sent.
    pub pings: u32,
    /// Pongs received.
    pub pongs: u32,
    /// Last round-trip time.
    pub last_rtt: Option<Duration>,
    /// Learned from the peer's own pings (peer-reflexive) rather than the map.
    pub learned: bool,
}

/// Path state of one peer.
#[derive(Debug, Default)]
pub(crate) struct PathState {
    mapped: Vec<SocketAddr>,
    learned: BTreeSet<SocketAddr>,
    direct: Option<SocketAddr>,
    heard: Option<Instant>,
    relay_heard: Option<Instant>,
    since: Option<Instant>,
    reported: Option<PathKind>,
    pending: BTreeMap<u64, (SocketAddr, Instant)>,
    next_probe: Option<Instant>,
    /// Probe rounds sent since the candidates changed or the path was direct.
    probe_round: usize,
    last_direct_ping: Option<Instant>,
    stats: BTreeMap<SocketAddr, CandidateStats>,
    /// Our own underlay changed: the next [`due_pings`](Self::due_pings)
    /// probes the direct address and every candidate at once.
    recheck: bool,
}

impl PathState {
    /// Replaces the candidates from the map; probes at once if they changed.
    pub(crate) fn set_candidates(&mut self, c: &[SocketAddr], now: Instant) {
        let mut c: Vec<SocketAddr> = c.to_vec();
        c.truncate(MAX_CANDIDATES);
        if c != self.mapped {
            self.mapped = c;
            self.next_probe = Some(now);
            self.probe_round = 0;
        }
    }

    /// This host's underlay changed (a link, an address, the default route):
    /// every path is checked again at once (the direct one and every
    /// candidate), and an unconfirmed peer is probed on the fast schedule
    /// from the start, so a direct path is preferred over the relay again as
    /// soon as one answers.
    pub(crate) fn underlay_changed(&mut self, now: Instant) {
        self.recheck = true;
        self.probe_round = 0;
        self.next_probe = Some(now);
    }

    /// All candidates, map-supplied first.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.mapped
            .iter()
            .copied()
            .chain(
                self.learned
                    .iter()
                    .copied()
                    .filter(|a| !self.mapped.contains(a)),
            )
            .take(MAX_CANDIDATES)
    }

    /// Whether the peer was heard recently: over a trusted direct path, or
    /// through the relay within `relay_window` (keepalives come every 25 s).
    pub(crate) fn alive(&self, now: Instant, relay_window: Duration) -> bool {
        self.direct_fresh(now)
            || self
                .relay_heard
                .is_some_and(|h| now.saturating_duration_since(h) < relay_window)
    }

    /// Whether the direct path is trusted at `now`.
    pub(crate) fn direct_fresh(&self, now: Instant) -> bool {
        self.direct.is_some()
            && self
                .heard
                .is_some_and(|h| now.saturating_duration_since(h) < DIRECT_TRUST)
    }

    /// Where data goes.
    pub(crate) fn route(&self, now: Instant, relay_up: bool) -> Route {
        match self.direct {
            Some(d) if self.direct_fresh(now) => Route::Direct(d),
            _ if relay_up => Route::Relay,
            // No relay to fall back to: a stale direct path is still the best bet.
            Some(d) => Route::Direct(d),
            None => Route::Candidates,
        }
    }

    /// The current path kind (for events/status).
    pub(crate) fn kind(&self, now: Instant, relay_up: bool) -> PathKind {
        match self.route(now, relay_up) {
            Route::Direct(a) => PathKind::Direct(a),
            Route::Relay if self.relay_heard.is_some() || relay_up => PathKind::Relay,
            _ => PathKind::None,
        }
    }

    /// Authenticated WireGuard traffic arrived directly from `from`: that is the
    /// peer's current address (WireGuard's roaming rule; a replayed packet from
    /// elsewhere never authenticates, so this cannot be hijacked).
    pub(crate) fn heard_direct(&mut self, from: SocketAddr, now: Instant) {
        self.direct = Some(from);
        self.heard = Some(now);
    }

    /// Something authenticated arrived via the relay.
    pub(crate) fn heard_relay(&mut self, now: Instant) {
        self.relay_heard = Some(now);
    }

    /// A pong for `tx` arrived from `from`. Returns whether it matched a ping.
    pub(crate) fn pong(&mut self, tx: u64, from: SocketAddr, now: Instant) -> bool {
        let Some((to, sent)) = self.pending.remove(&tx) else {
            return false;
        };
        let st = self.stats.entry(to).or_default();
        st.pongs = st.pongs.saturating_add(1);
        st.last_rtt = Some(now.saturating_duration_since(sent));
        // The pong proves the path to `to` (it may arrive from `from` == `to`).
        let addr = if from == to { to } else { from };
        if self.direct != Some(addr) && !self.direct_fresh(now) {
            self.direct = Some(addr);
        }
        if self.direct == Some(addr) {
            self.heard = Some(now);
        }
        true
    }

    /// A ping arrived from `from`: learn it as a candidate.
    pub(crate) fn pinged_from(&mut self, from: SocketAddr) {
        if !self.mapped.contains(&from) && self.learned.len() < MAX_CANDIDATES {
            self.learned.insert(from);
            self.stats.entry(from).or_default().learned = true;
        }
    }

    /// Records a ping to `to` with id `tx`.
    pub(crate) fn ping_sent(&mut self, tx: u64, to: SocketAddr, now: Instant) {
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self.pending.keys().next().copied()
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(tx, (to, now));
        let st = self.stats.entry(to).or_default();
        st.pings = st.pings.saturating_add(1);
    }

    /// Which addresses to ping now (and schedules the next round).
    pub(crate) fn due_pings(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < PING_TIMEOUT);
        if std::mem::take(&mut self.recheck) {
            let fresh = self.direct_fresh(now);
            if fresh {
                self.last_direct_ping = Some(now);
            } else {
                let gap = PROBE_BACKOFF[0];
                self.probe_round = 1;
                self.next_probe = Some(now + gap);
            }
            let mut all: Vec<SocketAddr> = self.direct.into_iter().collect();
            all.extend(self.candidates().filter(|c| Some(*c) != self.direct));
            return all;
        }
        if self.direct_fresh(now) {
            let direct = self.direct;
            let quiet = self
                .heard
                .is_none_or(|h| now.saturating_duration_since(h) >= DIRECT_PING);
            let recently = self
                .last_direct_ping
                .is_some_and(|p| now.saturating_duration_since(p) < DIRECT_PING);
            // Once direct, a later loss of the path re-probes on the fast
            // schedule again, starting at once (a probe time left in the past
            // would make `next_due` report work that `due_pings` does not do).
            self.probe_round = 0;
            self.next_probe = None;
            if quiet
                && !recently
                && let Some(d) = direct
            {
                self.last_direct_ping = Some(now);
                return vec![d];
            }
            return Vec::new();
        }
        match self.next_probe {
            Some(at) if now < at => Vec::new(),
            _ => {
                let gap = PROBE_BACKOFF
                    .get(self.probe_round)
                    .copied()
                    .unwrap_or(PROBE_EVERY);
                self.probe_round = self.probe_round.saturating_add(1);
                self.next_probe = Some(now + gap);
                self.candidates().collect()
            }
        }
    }

    /// The earliest time [`due_pings`](Self::due_pings) has work.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.recheck {
            Some(now)
        } else if self.direct_fresh(now) {
            let base = self.heard.max(self.last_direct_ping)?;
            Some(base + DIRECT_PING)
        } else {
            self.next_probe.or(Some(now))
        }
    }

    /// Returns the path kind if it changed since the last call (for events).
    pub(crate) fn changed(&mut self, now: Instant, relay_up: bool) -> Option<PathKind> {
        let k = self.kind(now, relay_up);
        if self.reported != Some(k) {
            self.reported = Some(k);
            self.since = Some(now);
            return Some(k);
        }
        None
    }

    /// When something authenticated last arrived from the peer, directly or
    /// through the relay.
    pub(crate) fn last_heard(&self) -> Option<Instant> {
        self.heard.max(self.relay_heard)
    }

    /// When the current path kind started.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Per-candidate stats.
    pub(crate) fn stats(&self) -> Vec<(SocketAddr, CandidateStats)> {
        self.candidates()
            .map(|a| (a, self.stats.get(&a).copied().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "a test needs some origin instant"
)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn relay_first_then_direct_on_pong_then_relay_when_quiet() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        p.set_candidates(&[a("192.0.2.1:51820"), a("10.0.0.2:51820")], t0);
        assert_eq!(p.route(t0, true), Route::Relay);
        assert_eq!(p.route(t0, false), Route::Candidates);
        let due = p.due_pings(t0);
        assert_eq!(due.len(), 2);
        p.ping_sent(1, due[0], t0);
        p.ping_sent(2, due[1], t0);
        let t1 = t0 + Duration::from_millis(20);
        assert!(p.pong(2, a("10.0.0.2:51820"), t1));
        assert!(!p.pong(2, a("10.0.0.2:51820"), t1), "a pong counts once");
        assert_eq!(p.route(t1, true), Route::Direct(a("10.0.0.2:51820")));
        assert_eq!(p.stats()[1].1.last_rtt, Some(Duration::from_millis(20)));
        // Quiet for DIRECT_PING: one keepalive ping to the direct path.
        let t2 = t1 + DIRECT_PING;
        assert_eq!(p.due_pings(t2), vec![a("10.0.0.2:51820")]);
        assert!(p.due_pings(t2).is_empty());
        // Nothing heard for DIRECT_TRUST: back to the relay, probing again.
        let t3 = t1 + DIRECT_TRUST;
        assert_eq!(p.route(t3, true), Route::Relay);
        assert_eq!(p.due_pings(t3).len(), 2);
        // Without a relay the stale direct path is still used.
        assert_eq!(p.route(t3, false), Route::Direct(a("10.0.0.2:51820")));
    }

    #[test]
    fn unanswered_probes_retry_fast_first_then_every_probe_interval() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        p.set_candidates(&[a("192.0.2.1:51820")], t0);
        let mut t = t0;
        assert_eq!(p.due_pings(t).len(), 1, "at once");
        for gap in PROBE_BACKOFF.iter().copied().chain([PROBE_EVERY; 2]) {
            assert!(p.due_pings(t + gap - Duration::from_millis(1)).is_empty());
            t += gap;
            assert_eq!(p.next_due(t), Some(t));
            assert_eq!(p.due_pings(t).len(), 1, "after {gap:?}");
        }
        // New candidates start the fast schedule over.
        p.set_candidates(&[a("192.0.2.2:51820")], t);
        assert_eq!(p.due_pings(t).len(), 1);
        assert_eq!(p.next_due(t), Some(t + PROBE_BACKOFF[0]));
        // So does losing a direct path.
        p.ping_sent(7, a("192.0.2.2:51820"), t);
        assert!(p.pong(7, a("192.0.2.2:51820"), t));
        assert!(p.due_pings(t).is_empty());
        let lost = t + DIRECT_TRUST;
        assert_eq!(p.due_pings(lost).len(), 1);
        assert_eq!(p.next_due(lost), Some(lost + PROBE_BACKOFF[0]));
    }

    #[test]
    fn an_underlay_change_rechecks_every_path_at_once() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        p.set_candidates(&[a("192.0.2.1:51820"), a("10.0.0.2:51820")], t0);
        p.heard_direct(a("10.0.0.2:51820"), t0);
        assert!(
            p.due_pings(t0).is_empty(),
            "a fresh, busy direct path is not pinged"
        );
        p.underlay_changed(t0);
        assert_eq!(p.next_due(t0), Some(t0));
        assert_eq!(
            p.due_pings(t0),
            vec![a("10.0.0.2:51820"), a("192.0.2.1:51820")],
            "the direct address first, then every other candidate"
        );
        assert!(p.due_pings(t0).is_empty(), "once");
        // Without a trusted direct path: every candidate now, then the fast
        // schedule.
        let t1 = t0 + DIRECT_TRUST;
        assert_eq!(p.due_pings(t1).len(), 2);
        let t2 = t1 + Duration::from_millis(100);
        p.underlay_changed(t2);
        assert_eq!(p.due_pings(t2).len(), 2);
        assert_eq!(p.next_due(t2), Some(t2 + PROBE_BACKOFF[0]));
    }

    #[test]
    fn learned_candidates_and_change_reporting() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        p.pinged_from(a("198.51.100.9:40000"));
        assert_eq!(
            p.candidates().collect::<Vec<_>>(),
            vec![a("198.51.100.9:40000")]
        );
        assert_eq!(p.changed(t0, true), Some(PathKind::Relay));
        assert_eq!(p.changed(t0, true), None);
        p.heard_direct(a("198.51.100.9:40000"), t0);
        assert_eq!(
            p.changed(t0, true),
            Some(PathKind::Direct(a("198.51.100.9:40000")))
        );
    }

    #[test]
    fn roaming_follows_authenticated_traffic_but_not_late_pongs() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        p.heard_direct(a("10.0.0.2:1"), t0);
        p.heard_direct(a("10.0.0.3:1"), t0);
        assert_eq!(p.route(t0, true), Route::Direct(a("10.0.0.3:1")));
        // A pong on another candidate does not move a fresh direct path.
        p.ping_sent(9, a("10.0.0.4:1"), t0);
        assert!(p.pong(9, a("10.0.0.4:1"), t0));
        assert_eq!(p.route(t0, true), Route::Direct(a("10.0.0.3:1")));
    }
}
