//! Our WireGuard against itself, under virtual time: handshakes, data, replay,
//! MAC1, cookies under load, and the timers of §6 (minutes of protocol time in
//! milliseconds). Interop with boringtun is in `tests/wg_interop.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::endpoint::Endpoint;
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

pub(super) struct Side {
    ep: Endpoint,
    pub(super) addr: SocketAddr,
}

impl std::ops::Deref for Side {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

impl std::ops::DerefMut for Side {
    fn deref_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }
}

/// What one message did at its receiver.
#[derive(Debug, Default)]
pub(super) struct Got {
    pub(super) replies: Vec<Vec<u8>>,
    pub(super) plaintext: Option<Vec<u8>>,
    pub(super) err: Option<Error>,
}

#[expect(
    clippy::disallowed_methods,
    reason = "tests need one real Instant to start virtual time from"
)]
pub(super) fn start() -> Instant {
    Instant::now()
}

pub(super) fn side(me: u8, them: u8, now: Instant, persistent: Option<Duration>) -> Side {
    let remote = crypto::public_of(&x25519_dalek::StaticSecret::from([them; 32]));
    let wall = SystemTime::UNIX_EPOCH + HOUR;
    let ep = Endpoint::new(
        [me; 32],
        [me; 32],
        remote,
        u32::from(me),
        persistent,
        now,
        wall,
    )
    .expect("valid key");
    Side {
        ep,
        addr: SocketAddr::from(([192, 0, 2, me], 51820)),
    }
}

impl Side {
    pub(super) fn receive(&mut self, now: Instant, from: SocketAddr, msg: &[u8]) -> Got {
        match self.ep.receive(now, from, msg) {
            Ok(r) => Got {
                replies: r.replies,
                plaintext: r.plaintext,
                err: None,
            },
            Err(e) => Got {
                err: Some(e),
                ..Got::default()
            },
        }
    }

    pub(super) fn send(&mut self, now: Instant, packet: &[u8]) -> (Encrypted, Vec<u8>) {
        self.ep.send(now, packet).expect("encrypt")
    }
}

/// Delivers `msgs` from `from` to `to` and everything that answers back and
/// forth until quiet; returns the plaintexts each side received.
fn exchange(
    now: Instant,
    a: &mut Side,
    b: &mut Side,
    msgs: Vec<Vec<u8>>,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut to_b = msgs;
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        for m in std::mem::take(&mut to_b) {
            let g = b.receive(now, a.addr, &m);
            got_b.extend(g.plaintext);
            to_a.extend(g.replies);
        }
        for m in std::mem::take(&mut to_a) {
            let g = a.receive(now, b.addr, &m);
            got_a.extend(g.plaintext);
            to_b.extend(g.replies);
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
    }
    (got_a, got_b)
}

fn established(now: Instant) -> (Side, Side) {
    let mut a = side(1, 2, now, None);
    let mut b = side(2, 1, now, None);
    let (e, init) = a.send(now, b"hello");
    assert!(matches!(e, Encrypted::Initiation(148)));
    let (_, got_b) = exchange(now, &mut a, &mut b, vec![init]);
    assert_eq!(
        got_b,
        vec![b"hello".to_vec()],
        "the queued packet follows the handshake"
    );
    assert!(a.tunnel.can_send(now) && b.tunnel.can_send(now));
    (a, b)
}

pub(super) fn msg_type(m: &[u8]) -> u8 {
    m.first().copied().unwrap_or(0)
}

#[test]
fn handshake_and_data_both_ways() {
    let t0 = start();
    let (mut a, mut b) = established(t0);
    let (_, m) = b.send(t0, b"back");
    assert_eq!(a.receive(t0, b.addr, &m).plaintext, Some(b"back".to_vec()));
    for i in 0..100u32 {
        let (e, m) = a.send(t0, &i.to_le_bytes());
        assert!(matches!(e, Encrypted::Data(n) if n == 4 + DATA_OVERHEAD));
        assert_eq!(
            b.receive(t0, a.addr, &m).plaintext,
            Some(i.to_le_bytes().to_vec())
        );
    }
    let (_, tx, _) = a.tunnel.stats(t0);
    assert_eq!(tx, 5 + 400);
}

#[test]
fn replayed_and_tampered_data_is_refused() {
    let t0 = start();
    let (mut a, mut b) = established(t0);
    let (_, m1) = a.send(t0, b"one");
    let (_, m2) = a.send(t0, b"two");
    assert!(b.receive(t0, a.addr, &m2).plaintext.is_some());
    assert!(
        b.receive(t0, a.addr, &m1).plaintext.is_some(),
        "reordered, inside the window"
    );
    assert_eq!(b.receive(t0, a.addr, &m1).err, Some(Error::Replay));
    assert_eq!(b.receive(t0, a.addr, &m2).err, Some(Error::Replay));
    let (_, mut m3) = a.send(t0, b"three");
    let last = m3.len() - 1;
    m3[last] ^= 1;
    assert_eq!(b.receive(t0, a.addr, &m3).err, Some(Error::BadAuth));
    // A tampered message does not burn its counter.
    m3[last] ^= 1;
    assert!(b.receive(t0, a.addr, &m3).plaintext.is_some());
    // Far behind the newest counter: refused even if never seen.
    let (_, old) = a.send(t0, b"old");
    for _ in 0..=session::WINDOW_BITS {
        let (_, m) = a.send(t0, b"x");
        assert!(b.receive(t0, a.addr, &m).plaintext.is_some());
    }
    assert_eq!(b.receive(t0, a.addr, &old).err, Some(Error::Replay));
}

#[test]
fn initiation_without_valid_mac1_is_dropped_before_any_work() {
    let t0 = start();
    let mut a = side(1, 2, t0, None);
    let mut b = side(2, 1, t0, None);
    let (_, mut init) = a.send(t0, b"x");
    init[120] ^= 0x40;
    let g = b.receive(t0, a.addr, &init);
    assert_eq!(g.err, Some(Error::BadAuth));
    assert!(g.replies.is_empty());
    // An initiation for someone else (MAC1 under another key) too.
    let mut c = side(3, 2, t0, None);
    let (_, other) = c.send(t0, b"x");
    let mut a2 = side(1, 3, t0, None);
    let (_, init2) = a2.send(t0, b"x");
    assert_eq!(b.receive(t0, a.addr, &init2).err, Some(Error::BadAuth));
    assert_eq!(a.receive(t0, c.addr, &other).err, Some(Error::BadAuth));
}

#[test]
fn replayed_initiation_is_refused_by_its_timestamp() {
    let t0 = start();
    let mut a = side(1, 2, t0, None);
    let mut b = side(2, 1, t0, None);
    let (_, init) = a.send(t0, b"x");
    assert!(b.receive(t0, a.addr, &init).err.is_none());
    assert_eq!(b.receive(t0 + HOUR, a.addr, &init).err, Some(Error::Replay));
    // A fresh initiation at the same instant still counts as newer.
    let (a1, init2) = a.timers(t0 + REKEY_TIMEOUT + Duration::from_millis(400));
    assert!(matches!(a1, TimerAction::Send(148)));
    assert!(b.receive(t0, a.addr, &init2).err.is_none());
}

#[test]
fn the_initiation_just_answered_gets_the_same_response_again_and_nothing_else() {
    // The initiator sends one initiation over several paths; each copy is
    // answered with the same response, without a second session, until the
    // initiator uses the keypair or REKEY_TIMEOUT passes.
    let t0 = start();
    let mut a = side(1, 2, t0, None);
    let mut b = side(2, 1, t0, None);
    let (_, init) = a.send(t0, b"x");
    let other = SocketAddr::from(([198, 51, 100, 7], 40_000));
    let first = b.receive(t0, other, &init);
    let again = b.receive(t0 + Duration::from_millis(30), a.addr, &init);
    assert_eq!(first.err, None);
    assert_eq!(again.err, None);
    assert_eq!(first.replies.len(), 1);
    assert_eq!(
        again.replies, first.replies,
        "byte for byte the same response"
    );
    // Still too late after REKEY_TIMEOUT (a retries with a new initiation).
    let late = b.receive(t0 + REKEY_TIMEOUT, a.addr, &init);
    assert_eq!(late.err, Some(Error::Replay));
    // The response completes a's handshake and its packet reaches b with the
    // one keypair b made.
    let g = a.receive(t0, b.addr, &again.replies[0]);
    assert_eq!(g.err, None);
    assert_eq!(g.replies.len(), 1, "the queued packet");
    assert_eq!(
        b.receive(t0, a.addr, &g.replies[0]).plaintext,
        Some(b"x".to_vec())
    );
    assert!(b.tunnel.can_send(t0));
    // Confirmed: the same initiation is a replay, answered by nothing.
    let after = b.receive(t0, other, &init);
    assert_eq!(after.err, Some(Error::Replay));
    assert!(after.replies.is_empty());
}

#[test]
fn cookie_under_load_then_retry_with_mac2() {
    let t0 = start();
    let mut a = side(1, 2, t0, None);
    let mut b = side(2, 1, t0, None);
    // Spend b's allowance for this second.
    while !b.local.under_load() {}
    let (_, init) = a.send(t0, b"x");
    let g = b.receive(t0, a.addr, &init);
    assert_eq!(g.replies.len(), 1);
    assert_eq!(msg_type(&g.replies[0]), MSG_COOKIE);
    assert!(!b.tunnel.can_send(t0), "no handshake work under load");
    // The cookie is accepted only for our outstanding initiation.
    let mut forged = g.replies[0].clone();
    forged[40] ^= 1;
    assert_eq!(a.receive(t0, b.addr, &forged).err, Some(Error::BadAuth));
    assert!(a.receive(t0, b.addr, &g.replies[0]).err.is_none());
    // The retry carries MAC2 and gets through though b is still under load.
    let t1 = t0 + REKEY_TIMEOUT + Duration::from_millis(400);
    let (act, retry) = a.timers(t1);
    assert!(matches!(act, TimerAction::Send(148)));
    assert_ne!(&retry[132..148], &[0u8; 16], "MAC2 set");
    let (_, got_b) = exchange(t1, &mut a, &mut b, vec![retry]);
    assert_eq!(got_b, vec![b"x".to_vec()]);
    // From another address the cookie is worth nothing.
    let mut retry_elsewhere = side(1, 2, t0, None);
    retry_elsewhere.addr = SocketAddr::from(([198, 51, 100, 1], 1));
    let t2 = t1 + Duration::from_secs(1);
    let (_, init3) = retry_elsewhere.send(t2, b"y");
    let g = b.receive(t2, retry_elsewhere.addr, &init3);
    assert_eq!(g.replies.first().map(|m| msg_type(m)), Some(MSG_COOKIE));
    b.local.reset_load();
    let g = b.receive(t1 + HOUR, retry_elsewhere.addr, &init3);
    assert_eq!(
        g.replies.first().map(|m| msg_type(m)),
        Some(MSG_RESPONSE),
        "load over"
    );
}

/// Runs `side`'s timers every 250 ms from `from` to `to`; returns what they sent
/// and when.
fn run_timers(s: &mut Side, from: Instant, to: Instant) -> Vec<(Instant, TimerAction, Vec<u8>)> {
    let mut sent = Vec::new();
    let mut now = from;
    while now <= to {
        let (a, m) = s.timers(now);
        if a != TimerAction::Idle {
            sent.push((now, a, m));
        }
        now += Duration::from_millis(250);
    }
    sent
}

#[test]
fn initiator_rekeys_after_120_seconds_of_sending() {
    let t0 = start();
    let (mut a, mut b) = established(t0);
    // Data flows every second; the responder answers.
    let mut rekeyed = None;
    for s in 1..=130u64 {
        let now = t0 + Duration::from_secs(s);
        let (_, m) = a.send(now, b"tick");
        let got = b.receive(now, a.addr, &m);
        assert!(got.plaintext.is_some(), "data keeps flowing at {s} s");
        let (_, back) = b.send(now, b"tock");
        assert!(a.receive(now, b.addr, &back).plaintext.is_some());
        for (at, act, msg) in run_timers(&mut a, now, now + Duration::from_millis(750)) {
            if msg_type(&msg) == MSG_INITIATION {
                assert!(matches!(act, TimerAction::Send(148)));
                rekeyed.get_or_insert(at);
                let (_, _) = exchange(at, &mut a, &mut b, vec![msg]);
            }
        }
    }
    let at = rekeyed.expect("a rekeyed");
    let after = at.duration_since(t0);
    assert!(
        after >= REKEY_AFTER_TIME && after < REKEY_AFTER_TIME + Duration::from_secs(2),
        "{after:?}"
    );
    let (since, _, _) = a.tunnel.stats(t0 + Duration::from_secs(130));
    assert!(
        since.expect("session") < Duration::from_secs(11),
        "a fresh keypair"
    );
    // The responder never rekeys on its own.
    assert!(
        run_timers(&mut b, t0, t0 + Duration::from_secs(119))
            .iter()
            .all(|(_, _, m)| msg_type(m) != MSG_INITIATION)
    );
}

#[test]
fn no_data_after_180_seconds_without_rekey_and_keys_erased_at_540() {
    let t0 = start();
    let (mut a, mut b) = established(t0);
    let (_, m) = a.send(t0 + Duration::from_secs(179), b"late");
    assert!(
        b.receive(t0 + Duration::from_secs(179), a.addr, &m)
            .plaintext
            .is_some()
    );
    // 180 s: neither side sends or accepts with the old keys.
    let t180 = t0 + REJECT_AFTER_TIME;
    let (_, m_old) = b.send(t0 + Duration::from_secs(179), b"old");
    // A keepalive from a answers b's "old" (else b, its data unanswered,
    // would start a handshake 15 s later: §6.2).
    let (_, ka) = a.send(t0 + Duration::from_secs(179), b"");
    assert_eq!(
        b.receive(t0 + Duration::from_secs(179), a.addr, &ka)
            .plaintext,
        Some(Vec::new())
    );
    assert_eq!(
        a.receive(t180, b.addr, &m_old).err,
        Some(Error::UnknownSession)
    );
    let (e, msg) = a.send(t180, b"new");
    assert!(matches!(e, Encrypted::Initiation(_)), "{e:?}");
    assert_eq!(msg_type(&msg), MSG_INITIATION);
    // b never answers; a gives up after 90 s and everything is gone.
    let log = run_timers(&mut a, t180, t180 + Duration::from_secs(400));
    let expired: Vec<_> = log
        .iter()
        .filter(|(_, x, _)| *x == TimerAction::Expired)
        .collect();
    assert!(!expired.is_empty());
    assert!(!a.tunnel.can_send(t180 + Duration::from_secs(400)));
    // b heard nothing and sends nothing: its keys are erased at 3 × 180 s.
    let log_b = run_timers(
        &mut b,
        t0 + Duration::from_secs(180),
        t0 + Duration::from_secs(600),
    );
    let erased: Vec<Instant> = log_b
        .iter()
        .filter(|(_, x, _)| *x == TimerAction::Expired)
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(erased.len(), 1);
    let at = erased[0].duration_since(t0);
    assert!(
        at >= REJECT_AFTER_TIME * 3 && at < REJECT_AFTER_TIME * 3 + Duration::from_secs(1),
        "{at:?}"
    );
    assert_eq!(b.tunnel.stats(erased[0]).0, None);
}

#[test]
fn handshake_retried_every_5_seconds_with_jitter_then_given_up_at_90() {
    let t0 = start();
    let mut a = side(1, 2, t0, None);
    let (_, first) = a.send(t0, b"lost");
    assert_eq!(msg_type(&first), MSG_INITIATION);
    let log = run_timers(&mut a, t0, t0 + Duration::from_secs(120));
    let retries: Vec<Duration> = log
        .iter()
        .filter(|(_, _, m)| msg_type(m) == MSG_INITIATION)
        .map(|(t, _, _)| t.duration_since(t0))
        .collect();
    let mut prev = Duration::ZERO;
    for r in &retries {
        let gap = *r - prev;
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + Duration::from_millis(333 + 250),
            "gap {gap:?}"
        );
        prev = *r;
    }
    assert!((16..=18).contains(&retries.len()), "{retries:?}");
    let gave_up: Vec<Duration> = log
        .iter()
        .filter(|(_, x, _)| *x == TimerAction::Expired)
        .map(|(t, _, _)| t.duration_since(t0))
        .collect();
    assert_eq!(gave_up.len(), 1);
    assert!(
        gave_up[0] >= REKEY_ATTEMPT_TIME
            && gave_up[0] < REKEY_ATTEMPT_TIME + Duration::from_secs(1)
    );
    assert!(prev < REKEY_ATTEMPT_TIME);
    // Not all retries are exactly 5 s apart: the jitter comes from the seed.
    assert!(retries.windows(2).any(|w| w[1] - w[0] != retries[0]));
}

#[test]
fn keepalive_after_10_seconds_of_only_receiving() {
    let t0 = start();
    let (mut a, mut b) = established(t0);
    // b answers the handshake's packet, so the data at t1 is the first it
    // has not answered (the keepalive counts from that one, §6.5).
    let (_, ack) = b.send(t0, b"ack");
    assert!(a.receive(t0, b.addr, &ack).plaintext.is_some());
    let t1 = t0 + Duration::from_secs(1);
    let (_, m) = a.send(t1, b"one way");
    assert!(b.receive(t1, a.addr, &m).plaintext.is_some());
    let log = run_timers(&mut b, t1, t1 + Duration::from_secs(30));
    assert_eq!(
        log.len(),
        1,
        "{:?}",
        log.iter()
            .map(|l| l.0.duration_since(t0))
            .collect::<Vec<_>>()
    );
    let (at, _, msg) = &log[0];
    let after = at.duration_since(t1);
    assert!(after >= KEEPALIVE_TIMEOUT && after < KEEPALIVE_TIMEOUT + Duration::from_millis(250));
    assert_eq!(
        a.receive(*at, b.addr, msg).plaintext,
        Some(Vec::new()),
        "an empty keepalive"
    );
    // Had b answered, no keepalive.
    let t2 = t0 + Duration::from_secs(60);
    let (_, m) = a.send(t2, b"again");
    assert!(b.receive(t2, a.addr, &m).plaintext.is_some());
    let (_, reply) = b.send(t2 + Duration::from_secs(1), b"reply");
    assert!(a.receive(t2, b.addr, &reply).plaintext.is_some());
    // (Nothing came back to b's reply, so 15 s later b starts a handshake:
    // that is the "new handshake" timer, not a keepalive.)
    let later = run_timers(&mut b, t2, t2 + Duration::from_secs(30));
    assert!(
        later.iter().all(|(_, _, m)| msg_type(m) != MSG_DATA),
        "no keepalive"
    );
}

#[test]
fn a_steady_one_way_flow_is_answered_by_keepalives_and_needs_no_new_handshake() {
    // §6.5: the passive keepalive counts from the first data not yet answered,
    // not the last: a receiver hearing data every second still answers every
    // 10 s, so the sender never goes 15 s unheard.
    let t0 = start();
    let (mut a, mut b) = established(t0);
    let tick = Duration::from_millis(250);
    let mut now = t0;
    let (mut keepalives, mut initiations) = (0, 0);
    while now < t0 + Duration::from_secs(100) {
        if (now - t0).as_millis().is_multiple_of(1_000) {
            let (e, m) = a.send(now, b"one way");
            assert!(matches!(e, Encrypted::Data(_)), "{e:?} at {:?}", now - t0);
            assert!(b.receive(now, a.addr, &m).plaintext.is_some());
        }
        let (_, m) = b.timers(now);
        if msg_type(&m) == MSG_DATA {
            keepalives += 1;
            assert_eq!(a.receive(now, b.addr, &m).plaintext, Some(Vec::new()));
        }
        let (_, m) = a.timers(now);
        if msg_type(&m) == MSG_INITIATION {
            initiations += 1;
        }
        now += tick;
    }
    assert_eq!(initiations, 0, "the sender started a handshake");
    assert!((9..=10).contains(&keepalives), "{keepalives} keepalives");
}

#[test]
fn new_handshake_15_seconds_after_the_first_unanswered_send() {
    // Heard at t0, quiet, then data at t0 + 14 s: the 15 s count starts at that
    // send (not at t0), and later unanswered sends do not move it.
    let t0 = start();
    let (mut a, mut b) = established(t0);
    let (_, m) = b.send(t0, b"heard");
    assert!(a.receive(t0, b.addr, &m).plaintext.is_some());
    let first = t0 + Duration::from_secs(14);
    for s in 0..10 {
        a.send(first + Duration::from_secs(s), b"unanswered");
    }
    let log = run_timers(&mut a, t0, first + Duration::from_secs(20));
    let times: Vec<Duration> = log
        .iter()
        .map(|(t, _, _)| t.duration_since(first))
        .collect();
    assert_eq!(times, vec![KEEPALIVE_TIMEOUT + REKEY_TIMEOUT], "{log:?}");
    assert_eq!(msg_type(&log[0].2), MSG_INITIATION);
}

#[test]
fn persistent_keepalive_every_interval() {
    let t0 = start();
    let every = Duration::from_secs(25);
    let mut a = side(1, 2, t0, Some(every));
    let mut b = side(2, 1, t0, None);
    let (_, init) = a.send(t0, b"x");
    exchange(t0, &mut a, &mut b, vec![init]);
    // b answers a's "x" (else a, its data unanswered, would start a handshake
    // 15 s later: §6.2).
    let (_, ka) = b.send(t0, b"");
    assert_eq!(a.receive(t0, b.addr, &ka).plaintext, Some(Vec::new()));
    let log = run_timers(&mut a, t0, t0 + Duration::from_secs(100));
    let times: Vec<Duration> = log.iter().map(|(t, _, _)| t.duration_since(t0)).collect();
    assert_eq!(times, vec![every, every * 2, every * 3, every * 4]);
    for (at, _, m) in &log {
        assert_eq!(b.receive(*at, a.addr, m).plaintext, Some(Vec::new()));
    }
}

#[test]
fn same_seed_same_bytes() {
    let run = || {
        let t0 = start();
        let mut a = side(1, 2, t0, Some(Duration::from_secs(25)));
        let mut b = side(2, 1, t0, None);
        let mut wire = Vec::new();
        let (_, init) = a.send(t0, b"x");
        wire.push(init.clone());
        let g = b.receive(t0, a.addr, &init);
        wire.extend(g.replies.iter().cloned());
        for r in g.replies {
            wire.extend(a.receive(t0, b.addr, &r).replies);
        }
        for (_, _, m) in run_timers(&mut a, t0, t0 + Duration::from_secs(300)) {
            wire.push(m);
        }
        wire
    };
    let (x, y) = (run(), run());
    assert!(x.len() > 5);
    assert_eq!(x, y);
}
