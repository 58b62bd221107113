//! One peer's WireGuard state: its keypairs (current, previous, and next: the
//! responder's until the initiator confirms it), the handshake under way, packets
//! queued behind it, and the timers of whitepaper §6, all read from `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::handshake::{self, InitState, Initiation, Local, Remote};
use super::session::Keypair;
use super::{
    COOKIE_LIFETIME, Error, KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
};

/// Packets held while a handshake is under way (more are dropped).
pub const MAX_QUEUED: usize = 256;
/// Up to this much random jitter is added to each handshake retry.
const MAX_JITTER_MS: u64 = 333;

/// What became of a packet handed to [`Tunnel::encrypt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypted {
    /// A transport data message of this length is in the output buffer.
    Data(usize),
    /// No session: the packet is queued and a handshake initiation of this
    /// length is in the output buffer.
    Initiation(usize),
    /// Queued behind a handshake already under way.
    Queued,
}

/// What the timers want (see [`Tunnel::update_timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing.
    Idle,
    /// Send the message of this length in the output buffer: a handshake
    /// initiation (type 1) or a keepalive (type 4).
    Send(usize),
    /// The session ended: handshakes gave up after 90 s, or no new keys came for
    /// three times `REJECT_AFTER_TIME` and every key was erased.
    Expired,
}

/// The initiation we answered last and our response to it.
struct Answered {
    sender: u32,
    ephemeral: [u8; 32],
    /// Our index in the response (the keypair it made, while it waits as `next`).
    index: u32,
    response: [u8; super::RESPONSE_LEN],
}

struct Pending {
    state: InitState,
    /// The first initiation of this attempt (retries give up 90 s after it).
    since: Instant,
    retry_at: Instant,
}

/// One peer's WireGuard session.
pub struct Tunnel {
    remote: Remote,
    index_base: u32,
    index_counter: u8,
    pending: Option<Pending>,
    greatest_timestamp: [u8; 12],
    cookie: Option<([u8; 16], Instant)>,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
    answered: Option<Box<Answered>>,
    queue: VecDeque<Vec<u8>>,
    persistent_keepalive: Option<Duration>,
    persistent_at: Option<Instant>,
    established: Option<Instant>,
    last_data_sent: Option<Instant>,
    last_data_received: Option<Instant>,
    /// The first data received since we last sent anything: a keepalive is
    /// due `KEEPALIVE_TIMEOUT` after it (§6.5).
    unanswered_rx: Option<Instant>,
    /// The first data sent since we last received anything: a new handshake
    /// is due `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` after it (§6.2).
    unanswered_tx: Option<Instant>,
    gave_up: bool,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
}

fn later(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Tunnel {
    /// A session with the peer whose static key is `remote_public`. Our indices
    /// in its handshakes are `index_base << 8` plus a counter, so the caller can
    /// find the peer by `index >> 8`. `None` if the key is a low-order point.
    pub fn new(
        local: &Local,
        remote_public: [u8; 32],
        index_base: u32,
        persistent_keepalive: Option<Duration>,
        now: Instant,
    ) -> Option<Self> {
        Some(Self {
            remote: Remote::new(local, remote_public)?,
            index_base: index_base & 0x00ff_ffff,
            index_counter: 0,
            pending: None,
            greatest_timestamp: [0; 12],
            cookie: None,
            current: None,
            previous: None,
            next: None,
            answered: None,
            queue: VecDeque::new(),
            persistent_keepalive,
            persistent_at: persistent_keepalive.map(|p| now + p),
            established: None,
            last_data_sent: None,
            last_data_received: None,
            unanswered_rx: None,
            unanswered_tx: None,
            gave_up: false,
            tx_bytes: 0,
            rx_bytes: 0,
            tx_packets: 0,
            rx_packets: 0,
        })
    }

    fn fresh_index(&mut self) -> u32 {
        self.index_counter = self.index_counter.wrapping_add(1);
        (self.index_base << 8) | u32::from(self.index_counter)
    }

    /// Whether a handshake we initiated awaits its response.
    pub fn handshake_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether data can be sent now.
    pub fn can_send(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|k| k.can_send(now))
    }

    /// Writes a handshake initiation into `out`. Unless `force`, nothing is
    /// written (`Ok(None)`) while one is under way.
    pub fn initiate(
        &mut self,
        local: &mut Local,
        now: Instant,
        force: bool,
        out: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        if self.pending.is_some() && !force {
            return Ok(None);
        }
        let index = self.fresh_index();
        let cookie = self
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFETIME)
            .map(|(c, _)| c);
        let state =
            handshake::create_initiation(local, &self.remote, index, cookie.as_ref(), now, out)?;
        let jitter = Duration::from_millis(local.rng.u64() % (MAX_JITTER_MS + 1));
        let since = self.pending.as_ref().map_or(now, |p| p.since);
        self.pending = Some(Pending {
            state,
            since,
            retry_at: now + REKEY_TIMEOUT + jitter,
        });
        self.gave_up = false;
        self.sent();
        Ok(Some(super::INITIATION_LEN))
    }

    /// Encrypts `packet` (empty: a keepalive) into `out` (at least
    /// `packet.len() + 32` and 148 bytes), or queues it behind a handshake.
    pub fn encrypt(
        &mut self,
        local: &mut Local,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<Encrypted, Error> {
        self.encrypt_with(local, now, packet, out, |_| {})
    }

    /// [`Tunnel::encrypt`], with `patch` applied to the plaintext (as sealed,
    /// or as queued behind a handshake) without another copy of it.
    pub fn encrypt_with(
        &mut self,
        local: &mut Local,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
        patch: impl FnOnce(&mut [u8]),
    ) -> Result<Encrypted, Error> {
        if let Some(kp) = self.current.as_mut().filter(|k| k.can_send(now)) {
            let n = kp.seal_with(packet, out, patch)?;
            self.sent();
            if !packet.is_empty() {
                self.last_data_sent = Some(now);
                self.unanswered_tx.get_or_insert(now);
                self.tx_bytes += packet.len() as u64;
                self.tx_packets += 1;
            }
            return Ok(Encrypted::Data(n));
        }
        if !packet.is_empty() && self.queue.len() < MAX_QUEUED {
            let mut queued = packet.to_vec();
            patch(&mut queued);
            self.queue.push_back(queued);
        }
        if self.next.is_some() {
            // We answered a handshake: the initiator's first message confirms it.
            return Ok(Encrypted::Queued);
        }
        match self.initiate(local, now, false, out)? {
            Some(n) => Ok(Encrypted::Initiation(n)),
            None => Ok(Encrypted::Queued),
        }
    }

    /// How many packets wait for a session.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether packets wait and a session can carry them now.
    pub fn has_releasable(&self, now: Instant) -> bool {
        !self.queue.is_empty() && self.can_send(now)
    }

    /// Encrypts the queued packets into `buf` one by one, handing each message
    /// to `emit`; if none were queued and `keepalive`, sends a keepalive instead.
    pub fn flush(
        &mut self,
        now: Instant,
        keepalive: bool,
        buf: &mut [u8],
        mut emit: impl FnMut(&[u8]),
    ) {
        if self.queue.is_empty() {
            if keepalive
                && let Some(kp) = self.current.as_mut().filter(|k| k.can_send(now))
                && let Ok(n) = kp.seal(&[], buf)
            {
                self.sent();
                emit(&buf[..n]);
            }
            return;
        }
        while let Some(p) = self.queue.pop_front() {
            let Some(kp) = self.current.as_mut().filter(|k| k.can_send(now)) else {
                self.queue.push_front(p);
                return;
            };
            if let Ok(n) = kp.seal(&p, buf) {
                self.sent();
                self.last_data_sent = Some(now);
                self.unanswered_tx.get_or_insert(now);
                self.tx_bytes += p.len() as u64;
                self.tx_packets += 1;
                emit(&buf[..n]);
            }
        }
    }

    /// Answers an authenticated initiation from this peer: the response goes into
    /// `out`, and the new keypair waits as `next` until the initiator uses it.
    pub fn respond(
        &mut self,
        local: &mut Local,
        init: &Initiation,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if init.remote_static != self.remote.public {
            return Err(Error::BadAuth);
        }
        if init.timestamp <= self.greatest_timestamp {
            return Err(Error::Replay);
        }
        let index = self.fresh_index();
        let cookie = self
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFETIME)
            .map(|(c, _)| c);
        let (send, recv) =
            handshake::create_response(local, &self.remote, init, index, cookie.as_ref(), out)?;
        self.greatest_timestamp = init.timestamp;
        self.next = Some(Keypair::new(&send, &recv, index, init.sender, now, false));
        let mut response = [0u8; super::RESPONSE_LEN];
        response.copy_from_slice(&out[..super::RESPONSE_LEN]);
        self.answered = Some(Box::new(Answered {
            sender: init.sender,
            ephemeral: *init.ephemeral(),
            index,
            response,
        }));
        self.established = Some(now);
        self.gave_up = false;
        self.received();
        self.sent();
        Ok(super::RESPONSE_LEN)
    }

    /// Our response again, into `out`, if `init` (refused by [`Tunnel::respond`]
    /// as a replay) is the very initiation we answered last (same sender index
    /// and ephemeral key), the initiator has not used the keypair yet, and we
    /// answered less than `REKEY_TIMEOUT` ago (the initiator's next try is a
    /// new initiation): the same initiation sent over several paths (relay and
    /// direct) is answered on each, in case our first answer cannot reach the
    /// initiator. Changes nothing: no new keypair, no timestamp, no timer.
    pub fn repeat_response(
        &self,
        init: &Initiation,
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
        let a = self.answered.as_ref()?;
        let waiting = self.next.as_ref().is_some_and(|k| {
            k.local_index == a.index && now.saturating_duration_since(k.created) < REKEY_TIMEOUT
        });
        if !waiting
            || a.sender != init.sender
            || a.ephemeral != *init.ephemeral()
            || init.remote_static != self.remote.public
        {
            return None;
        }
        let out = out.get_mut(..super::RESPONSE_LEN)?;
        out.copy_from_slice(&a.response);
        Some(super::RESPONSE_LEN)
    }

    /// Completes our handshake with a response (MAC1 checked): the new keypair
    /// becomes current. Then [`Tunnel::flush`] sends what waited (or a keepalive,
    /// which confirms the session to the responder).
    pub fn receive_response(
        &mut self,
        local: &Local,
        msg: &[u8],
        now: Instant,
    ) -> Result<(), Error> {
        let receiver = super::le32(&msg[8..]);
        let Some(p) = self.pending.as_ref().filter(|p| p.state.index == receiver) else {
            return Err(Error::Stale);
        };
        let (send, recv) = handshake::consume_response(local, &p.state, msg)?;
        let sender = super::le32(&msg[4..]);
        let kp = Keypair::new(&send, &recv, receiver, sender, now, true);
        self.previous = self.next.take().or_else(|| self.current.take());
        self.current = Some(kp);
        self.pending = None;
        self.established = Some(now);
        self.received();
        Ok(())
    }

    /// Takes the cookie a responder under load sent for our initiation; the next
    /// retry carries it in MAC2.
    pub fn receive_cookie(&mut self, msg: &[u8], now: Instant) -> Result<(), Error> {
        let receiver = super::le32(&msg[4..]);
        let Some(p) = self.pending.as_ref().filter(|p| p.state.index == receiver) else {
            return Err(Error::Stale);
        };
        let cookie = handshake::consume_cookie(&self.remote, &p.state, msg)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    /// Decrypts a transport data message into `out` and returns the plaintext
    /// length (0: a keepalive).
    pub fn decrypt(&mut self, now: Instant, msg: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let receiver = super::le32(&msg[4..]);
        let is = |k: &Option<Keypair>| k.as_ref().is_some_and(|k| k.local_index == receiver);
        let slot = if is(&self.current) {
            &mut self.current
        } else if is(&self.next) {
            &mut self.next
        } else if is(&self.previous) {
            &mut self.previous
        } else {
            return Err(Error::UnknownSession);
        };
        let Some(kp) = slot.as_mut().filter(|k| k.usable(now)) else {
            return Err(Error::UnknownSession);
        };
        let n = kp.open(msg, out)?;
        if is(&self.next) {
            // The initiator used the keypair we answered with: it is confirmed.
            self.previous = self.current.take();
            self.current = self.next.take();
        }
        self.received();
        if n > 0 {
            self.last_data_received = Some(now);
            self.unanswered_rx.get_or_insert(now);
            self.rx_bytes += n as u64;
            self.rx_packets += 1;
        }
        Ok(n)
    }

    fn clear(&mut self) {
        self.current = None;
        self.previous = None;
        self.next = None;
        self.answered = None;
        self.pending = None;
        self.queue.clear();
        self.established = None;
        self.unanswered_rx = None;
        self.unanswered_tx = None;
    }

    /// We sent something: it answers what we received.
    fn sent(&mut self) {
        self.unanswered_rx = None;
    }

    /// Something authenticated arrived: it answers what we sent.
    fn received(&mut self) {
        self.unanswered_tx = None;
    }

    /// Runs the timers at `now` (call every 250 ms or so); a message to send is
    /// written into `out` (at least 148 bytes).
    pub fn update_timers(
        &mut self,
        local: &mut Local,
        now: Instant,
        out: &mut [u8],
    ) -> TimerAction {
        let age = |t: Instant| now.saturating_duration_since(t);
        if self
            .established
            .is_some_and(|e| age(e) >= REJECT_AFTER_TIME * 3)
        {
            // Erase every key (§6.3).
            self.clear();
            return TimerAction::Expired;
        }
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|k| !k.usable(now)) {
                *slot = None;
            }
        }
        if self
            .cookie
            .is_some_and(|(_, at)| age(at) >= COOKIE_LIFETIME)
        {
            self.cookie = None;
        }
        if self.gave_up {
            return TimerAction::Idle;
        }
        if let Some(p) = &self.pending {
            if age(p.since) >= REKEY_ATTEMPT_TIME {
                self.clear();
                self.gave_up = true;
                return TimerAction::Expired;
            }
            if now >= p.retry_at {
                return self.initiation(local, now, true, out);
            }
            return TimerAction::Idle;
        }
        let mut rekey = false;
        if let Some(kp) = self.current.as_ref().filter(|k| k.initiator) {
            let since = Some(kp.created);
            rekey |= later(self.last_data_sent, since) && age(kp.created) >= REKEY_AFTER_TIME;
            rekey |= later(self.last_data_received, since)
                && age(kp.created) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        }
        // Data sent and nothing heard since, for 15 s from the first such send.
        if self
            .unanswered_tx
            .is_some_and(|t| age(t) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)
        {
            self.unanswered_tx = None;
            rekey = true;
        }
        if !self.queue.is_empty()
            && !self.can_send(now)
            && self
                .next
                .as_ref()
                .is_none_or(|k| age(k.created) >= REKEY_TIMEOUT)
        {
            rekey = true;
        }
        if rekey {
            return self.initiation(local, now, false, out);
        }
        let mut keepalive = false;
        // Data received and nothing sent since, for 10 s from the first such
        // receive (the passive keepalive, §6.5).
        if self
            .unanswered_rx
            .is_some_and(|r| age(r) >= KEEPALIVE_TIMEOUT)
        {
            self.unanswered_rx = None;
            keepalive = true;
        }
        if let (Some(every), Some(at)) = (self.persistent_keepalive, self.persistent_at)
            && now >= at
        {
            self.persistent_at = Some(now + every);
            keepalive = true;
        }
        if !keepalive {
            return TimerAction::Idle;
        }
        match self.current.as_mut().filter(|k| k.can_send(now)) {
            Some(kp) => match kp.seal(&[], out) {
                Ok(n) => {
                    self.sent();
                    TimerAction::Send(n)
                }
                Err(_) => TimerAction::Idle,
            },
            None if self.next.is_some() => TimerAction::Idle,
            None => self.initiation(local, now, false, out),
        }
    }

    fn initiation(
        &mut self,
        local: &mut Local,
        now: Instant,
        force: bool,
        out: &mut [u8],
    ) -> TimerAction {
        match self.initiate(local, now, force, out) {
            Ok(Some(n)) => TimerAction::Send(n),
            Ok(None) | Err(_) => TimerAction::Idle,
        }
    }

    /// Time since the current keypair's handshake, plaintext bytes sent and
    /// received.
    pub fn stats(&self, now: Instant) -> (Option<Duration>, u64, u64) {
        (
            self.current
                .as_ref()
                .map(|k| now.saturating_duration_since(k.created)),
            self.tx_bytes,
            self.rx_bytes,
        )
    }

    /// Data packets (keepalives not counted) sent and received.
    pub fn packets(&self) -> (u64, u64) {
        (self.tx_packets, self.rx_packets)
    }

    /// The earliest instant the timers may act (for tests and schedulers that
    /// jump virtual time).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut t = self.established.map(|e| e + REJECT_AFTER_TIME * 3);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if let Some(p) = &self.pending {
            min(Some(p.retry_at.min(p.since + REKEY_ATTEMPT_TIME)));
        } else if !self.gave_up {
            min(self.persistent_at);
        }
        t
    }
}
