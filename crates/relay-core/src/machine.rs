//! The relay's sans-IO core: sessions keyed by node key, the member set,
//! forwarding decisions, per-client bounded queues and drop counters.
//!
//! It does no I/O and reads no clock: every input carries `now`, randomness (the
//! login nonce) and the TLS channel binding come in as arguments.
//!
//! # Drive contract
//!
//! - Inputs (`handle_*`): a connection opened ([`RelayCore::handle_connect`]), a
//!   frame or a bad frame arrived ([`RelayCore::handle_frame`],
//!   [`RelayCore::handle_frame_error`]), the connection ended
//!   ([`RelayCore::handle_disconnect`]), the member set changed or its source
//!   went away ([`RelayCore::handle_membership`]), a deadline passed
//!   ([`RelayCore::handle_timeout`]), the relay stops ([`RelayCore::shutdown`]).
//! - After each input, drain [`RelayCore::poll_action`] (wake a connection's
//!   writer, close a connection) and [`RelayCore::poll_event`] (log lines) until
//!   `None`.
//! - A woken writer takes its frames with [`RelayCore::take_outbound`] until it
//!   reports [`Outbound::Closing`] (flush, then close the stream) or
//!   [`Outbound::Gone`].
//! - Call [`RelayCore::handle_timeout`] at [`RelayCore::poll_timeout`] (or on a
//!   coarse periodic tick: every deadline is in seconds).
//!
//! # Rules
//!
//! - One session per node key: a new login replaces the old session, which gets
//!   `Closed{Replaced}`.
//! - Fail closed: logins are refused while the member set is unknown; when its
//!   source goes away the last set is kept for [`CoreConfig::membership_grace`],
//!   then every session is closed with `Closed{MembershipUnknown}`. A key that
//!   leaves the set is disconnected at once with `Closed{NotMember}`.
//! - Each connection has a bounded outbound queue ([`CoreConfig::queue_frames`],
//!   [`CoreConfig::queue_bytes`]): a packet for a full queue is dropped and
//!   counted against the slow receiver; nobody else waits.
//! - A sender whose destination has no session gets `PeerGone{NotConnected}` (at
//!   most once per destination per [`CoreConfig::peer_gone_interval`]); when a
//!   session ends, the nodes that sent to it recently get `PeerGone{Disconnected}`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use weft_proto::NodeKey;

use crate::frame::{
    Frame, FrameError, LOGIN_SIGNATURE_CONTEXT, NONCE_LEN, PROTOCOL_VERSION, Payload,
    PeerGoneReason, Reason, login_signed_message,
};

mod types;

pub use types::{
    Action, ClientStats, ConnId, CoreConfig, Counters, DropReason, Event, MembershipState,
    MembershipUpdate, Outbound, QueueDepths,
};

enum Membership {
    Unknown,
    Known {
        members: BTreeSet<NodeKey>,
        lost_at: Option<Instant>,
    },
}

impl Membership {
    fn contains(&self, key: &NodeKey) -> bool {
        match self {
            Membership::Unknown => false,
            Membership::Known { members, .. } => members.contains(key),
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    AwaitLogin,
    Active(NodeKey),
    Closing,
}

enum ConnState {
    AwaitLogin {
        nonce: [u8; NONCE_LEN],
        binding: [u8; 32],
        since: Instant,
    },
    Active {
        key: NodeKey,
    },
    Closing,
}

struct Conn {
    state: ConnState,
    last_rx: Instant,
    out: VecDeque<Frame>,
    out_bytes: usize,
    stats: ClientStats,
    /// Destinations this sender was told are gone, and when.
    gone_sent: BTreeMap<NodeKey, Instant>,
    /// Nodes that sent to this session, and when last.
    recent_senders: BTreeMap<NodeKey, Instant>,
}

/// The relay state machine. See the module docs for the drive contract.
pub struct RelayCore {
    cfg: CoreConfig,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<NodeKey, ConnId>,
    membership: Membership,
    counters: Counters,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    shutting_down: bool,
}

/// Remembers `key` at `now` in a map bounded to `max` entries (oldest out).
fn remember(map: &mut BTreeMap<NodeKey, Instant>, key: NodeKey, now: Instant, max: usize) {
    if !map.contains_key(&key)
        && map.len() >= max.max(1)
        && let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
    {
        map.remove(&oldest);
    }
    map.insert(key, now);
}

fn payload_len(f: &Frame) -> usize {
    match f {
        Frame::Send { payload, .. } | Frame::Recv { payload, .. } => payload.len(),
        _ => 0,
    }
}

impl RelayCore {
    /// A relay with no connections and no member set (it refuses every login
    /// until [`handle_membership`](Self::handle_membership) brings one).
    pub fn new(cfg: CoreConfig) -> Self {
        Self {
            cfg,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            membership: Membership::Unknown,
            counters: Counters::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            shutting_down: false,
        }
    }

    // ---- inputs ----

    /// A TLS connection opened. `nonce` must be fresh random bytes; `binding`
    /// is the TLS exporter output of this connection
    /// ([`TLS_EXPORTER_LABEL`](crate::frame::TLS_EXPORTER_LABEL)). Queues the challenge.
    pub fn handle_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        nonce: [u8; NONCE_LEN],
        binding: [u8; 32],
    ) {
        self.counters.connections += 1;
        self.conns.insert(
            conn,
            Conn {
                state: ConnState::AwaitLogin {
                    nonce,
                    binding,
                    since: now,
                },
                last_rx: now,
                out: VecDeque::new(),
                out_bytes: 0,
                stats: ClientStats::default(),
                gone_sent: BTreeMap::new(),
                recent_senders: BTreeMap::new(),
            },
        );
        if self.shutting_down || self.conns.len() > self.cfg.max_connections {
            self.refuse(conn, None, Reason::Overloaded);
            return;
        }
        self.push(conn, Frame::ServerChallenge { nonce });
    }

    /// A frame arrived on `conn`.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) {
        let Some(st) = self.touch(now, conn) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.stats.frames_in += 1;
        }
        match (st, frame) {
            (Phase::Closing, _) => self.count(DropReason::NotMember),
            (
                Phase::AwaitLogin,
                Frame::ClientLogin {
                    node_key,
                    signature,
                    version,
                },
            ) => self.login(now, conn, node_key, &signature, version),
            (Phase::AwaitLogin, _) => {
                self.count(DropReason::Unauthenticated);
                self.refuse(conn, None, Reason::Protocol);
            }
            (Phase::Active(src), Frame::Send { dst, payload }) => {
                self.forward(now, conn, src, dst, payload);
            }
            (Phase::Active(_), Frame::Ping { data }) => {
                self.push_if_room(conn, Frame::Pong { data });
            }
            (Phase::Active(_), Frame::Pong { .. }) => {}
            (Phase::Active(_), _) => self.count(DropReason::Unexpected),
        }
    }

    /// Records activity on `conn`; returns its phase.
    fn touch(&mut self, now: Instant, conn: ConnId) -> Option<Phase> {
        let c = self.conns.get_mut(&conn)?;
        c.last_rx = now;
        Some(match c.state {
            ConnState::AwaitLogin { .. } => Phase::AwaitLogin,
            ConnState::Active { key } => Phase::Active(key),
            ConnState::Closing => Phase::Closing,
        })
    }

    /// A bad frame arrived on `conn` (counted). A fatal error closes the
    /// connection (`Closed{Protocol}`, or `LoginRefused{Protocol}` before login).
    pub fn handle_frame_error(&mut self, now: Instant, conn: ConnId, error: &FrameError) {
        self.count(DropReason::of(error));
        let Some(st) = self.touch(now, conn) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.stats.bad_frames += 1;
        }
        self.events.push_back(Event::BadFrame {
            conn,
            error: error.clone(),
        });
        if error.is_fatal() {
            match st {
                Phase::AwaitLogin => self.refuse(conn, None, Reason::Protocol),
                Phase::Active(key) => self.close_session(now, conn, key, Reason::Protocol),
                Phase::Closing => {}
            }
        }
    }

    /// The connection ended (EOF, error, or after its writer closed it).
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let key = match c.state {
            ConnState::Active { key } => {
                self.end_session(now, conn, key, &c.recent_senders);
                Some(key)
            }
            _ => None,
        };
        self.events.push_back(Event::Disconnected { conn, key });
    }

    /// The member set changed, or its source went away.
    pub fn handle_membership(&mut self, now: Instant, update: MembershipUpdate) {
        match update {
            MembershipUpdate::Snapshot(keys) => {
                let members: BTreeSet<NodeKey> = keys.into_iter().collect();
                self.events.push_back(Event::MembershipKnown {
                    members: members.len(),
                });
                self.membership = Membership::Known {
                    members,
                    lost_at: None,
                };
                let gone: Vec<(NodeKey, ConnId)> = self
                    .sessions
                    .iter()
                    .filter(|(k, _)| !self.membership.contains(k))
                    .map(|(k, c)| (*k, *c))
                    .collect();
                for (key, conn) in gone {
                    self.close_session(now, conn, key, Reason::NotMember);
                }
            }
            MembershipUpdate::Delta { added, removed } => {
                let Membership::Known { members, lost_at } = &mut self.membership else {
                    // A delta without a base set cannot be applied; the link
                    // always sends a snapshot first.
                    return;
                };
                *lost_at = None;
                members.extend(added);
                for key in &removed {
                    members.remove(key);
                }
                for key in removed {
                    if let Some(conn) = self.sessions.get(&key).copied() {
                        self.close_session(now, conn, key, Reason::NotMember);
                    }
                }
            }
            MembershipUpdate::LinkDown => {
                if let Membership::Known { lost_at, .. } = &mut self.membership
                    && lost_at.is_none()
                {
                    *lost_at = Some(now);
                    self.events.push_back(Event::MembershipStale);
                }
            }
        }
    }

    /// Applies every deadline at or before `now`: login and idle timeouts, the
    /// end of the membership grace period.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Membership::Known {
            lost_at: Some(at), ..
        } = self.membership
            && now >= at + self.cfg.membership_grace
        {
            self.membership = Membership::Unknown;
            self.events.push_back(Event::MembershipUnknown);
            let all: Vec<(NodeKey, ConnId)> = self.sessions.iter().map(|(k, c)| (*k, *c)).collect();
            for (key, conn) in all {
                self.close_session(now, conn, key, Reason::MembershipUnknown);
            }
        }
        let mut late_logins = Vec::new();
        let mut idle = Vec::new();
        for (id, c) in &self.conns {
            match c.state {
                ConnState::AwaitLogin { since, .. } if now >= since + self.cfg.login_timeout => {
                    late_logins.push(*id);
                }
                ConnState::Active { key } if now >= c.last_rx + self.cfg.idle_timeout => {
                    idle.push((*id, key));
                }
                _ => {}
            }
        }
        for id in late_logins {
            self.refuse(id, None, Reason::LoginTimeout);
        }
        for (id, key) in idle {
            self.close_session(now, id, key, Reason::IdleTimeout);
        }
    }

    /// The relay is stopping: every connection gets `Restarting{retry_after}`
    /// and is closed; new connections are refused.
    pub fn shutdown(&mut self, now: Instant, retry_after: Duration) {
        self.shutting_down = true;
        let retry_after_ms = u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(ConnState::Active { key }) = self.conns.get(&id).map(|c| &c.state) {
                let key = *key;
                self.sessions.remove(&key);
            }
            self.finish(id, Frame::Restarting { retry_after_ms }, false);
        }
        let _ = now;
    }

    // ---- outputs ----

    /// The next instruction for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next log-worthy event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves up to `max` queued frames of `conn` into `out`.
    pub fn take_outbound(&mut self, conn: ConnId, max: usize, out: &mut Vec<Frame>) -> Outbound {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Outbound::Gone;
        };
        for _ in 0..max {
            let Some(f) = c.out.pop_front() else { break };
            c.out_bytes -= payload_len(&f);
            c.stats.frames_out += 1;
            out.push(f);
        }
        match c.state {
            ConnState::Closing if c.out.is_empty() => Outbound::Closing,
            _ => Outbound::Open,
        }
    }

    /// The earliest deadline and what it is for.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Instant, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if let Membership::Known {
            lost_at: Some(at), ..
        } = self.membership
        {
            consider(at + self.cfg.membership_grace, "membership grace");
        }
        for c in self.conns.values() {
            match c.state {
                ConnState::AwaitLogin { since, .. } => {
                    consider(since + self.cfg.login_timeout, "login timeout");
                }
                ConnState::Active { .. } => consider(c.last_rx + self.cfg.idle_timeout, "idle"),
                ConnState::Closing => {}
            }
        }
        best
    }

    // ---- getters ----

    /// Relay-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counters of the session of `key`, if it has one.
    pub fn client_stats(&self, key: &NodeKey) -> Option<ClientStats> {
        self.sessions
            .get(key)
            .and_then(|c| self.conns.get(c))
            .map(|c| c.stats)
    }

    /// Logged-in sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Open connections (logged in or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// What the outbound queues hold now, over every connection.
    pub fn queue_depths(&self) -> QueueDepths {
        let mut q = QueueDepths::default();
        for c in self.conns.values() {
            q.frames += c.out.len();
            q.bytes += c.out_bytes;
            q.max_frames = q.max_frames.max(c.out.len());
        }
        q
    }

    /// Where the member set stands.
    pub fn membership_state(&self) -> MembershipState {
        match &self.membership {
            Membership::Unknown => MembershipState::Unknown,
            Membership::Known {
                members,
                lost_at: None,
            } => MembershipState::Known {
                members: members.len(),
            },
            Membership::Known {
                members,
                lost_at: Some(at),
            } => MembershipState::Stale {
                members: members.len(),
                until: *at + self.cfg.membership_grace,
            },
        }
    }

    // ---- helpers ----

    fn count(&mut self, reason: DropReason) {
        *self.counters.drops.entry(reason).or_default() += 1;
    }

    fn login(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: NodeKey,
        signature: &[u8; 64],
        version: u16,
    ) {
        let Some(Conn {
            state: ConnState::AwaitLogin { nonce, binding, .. },
            ..
        }) = self.conns.get(&conn)
        else {
            return;
        };
        let message = login_signed_message(nonce, binding);
        let refusal = if version != PROTOCOL_VERSION {
            Some(Reason::UnsupportedVersion)
        } else if weft_identity::verify_signature(
            &key,
            LOGIN_SIGNATURE_CONTEXT,
            &message,
            signature,
        )
        .is_err()
        {
            Some(Reason::BadSignature)
        } else if matches!(self.membership, Membership::Unknown) {
            Some(Reason::MembershipUnknown)
        } else if !self.membership.contains(&key) {
            Some(Reason::NotMember)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.refuse(conn, Some(key), reason);
            return;
        }
        let replaced = match self.sessions.get(&key).copied() {
            Some(old) => {
                self.close_session(now, old, key, Reason::Replaced);
                true
            }
            None => false,
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Active { key };
            c.last_rx = now;
        }
        self.sessions.insert(key, conn);
        self.counters.logins_ok += 1;
        self.push(conn, Frame::LoginOk);
        self.events.push_back(Event::LoggedIn {
            conn,
            key,
            replaced,
        });
    }

    fn forward(
        &mut self,
        now: Instant,
        conn: ConnId,
        src: NodeKey,
        dst: NodeKey,
        payload: Payload,
    ) {
        if !self.membership.contains(&dst) {
            self.count(DropReason::NotMember);
            self.peer_gone(now, conn, dst, PeerGoneReason::NotConnected);
            return;
        }
        let Some(to) = self.sessions.get(&dst).copied() else {
            self.count(DropReason::UnknownDestination);
            self.peer_gone(now, conn, dst, PeerGoneReason::NotConnected);
            return;
        };
        let len = payload.len();
        let max = self.cfg.max_tracked_peers;
        let Some(d) = self.conns.get_mut(&to) else {
            return;
        };
        remember(&mut d.recent_senders, src, now, max);
        if d.out.len() >= self.cfg.queue_frames || d.out_bytes + len > self.cfg.queue_bytes {
            d.stats.dropped_queue_full += 1;
            self.count(DropReason::QueueFull);
            return;
        }
        self.push(to, Frame::Recv { src, payload });
        self.counters.forwarded_packets += 1;
        self.counters.forwarded_bytes += len as u64;
    }

    /// Tells `conn` that `dst` is unreachable, at most once per interval.
    fn peer_gone(&mut self, now: Instant, conn: ConnId, dst: NodeKey, reason: PeerGoneReason) {
        let interval = self.cfg.peer_gone_interval;
        let max = self.cfg.max_tracked_peers;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.gone_sent
            .get(&dst)
            .is_some_and(|t| now.saturating_duration_since(*t) < interval)
        {
            return;
        }
        remember(&mut c.gone_sent, dst, now, max);
        if self.push_if_room(conn, Frame::PeerGone { key: dst, reason }) {
            self.counters.peer_gone_sent += 1;
        }
    }

    /// Removes the session of `key` (held by `conn`) and tells its recent
    /// senders it is gone.
    fn end_session(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: NodeKey,
        senders: &BTreeMap<NodeKey, Instant>,
    ) {
        if self.sessions.get(&key) == Some(&conn) {
            self.sessions.remove(&key);
        }
        let window = self.cfg.recent_sender_window;
        for (sender, at) in senders {
            if now.saturating_duration_since(*at) > window {
                continue;
            }
            if let Some(sc) = self.sessions.get(sender).copied()
                && self.push_if_room(
                    sc,
                    Frame::PeerGone {
                        key,
                        reason: PeerGoneReason::Disconnected,
                    },
                )
            {
                self.counters.peer_gone_sent += 1;
            }
        }
    }

    /// Refuses a login: `LoginRefused{reason}`, then close.
    fn refuse(&mut self, conn: ConnId, key: Option<NodeKey>, reason: Reason) {
        *self.counters.logins_refused.entry(reason).or_default() += 1;
        self.events
            .push_back(Event::LoginRefused { conn, key, reason });
        self.finish(conn, Frame::LoginRefused { reason }, true);
    }

    /// Ends an active session from the relay side: `Closed{reason}`, then close.
    fn close_session(&mut self, now: Instant, conn: ConnId, key: NodeKey, reason: Reason) {
        *self.counters.sessions_closed.entry(reason).or_default() += 1;
        self.events
            .push_back(Event::SessionClosed { conn, key, reason });
        let senders = self
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::take(&mut c.recent_senders))
            .unwrap_or_default();
        self.end_session(now, conn, key, &senders);
        self.finish(conn, Frame::Closed { reason }, true);
    }

    /// Queues `last` as the final frame (dropping queued packets if `discard`),
    /// marks the connection closing and tells the shell.
    fn finish(&mut self, conn: ConnId, last: Frame, discard: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(c.state, ConnState::Closing) {
            return;
        }
        if discard {
            c.out.clear();
            c.out_bytes = 0;
        }
        c.state = ConnState::Closing;
        // The final notice is queued even over the cap: it is small and last.
        c.out.push_back(last);
        self.actions.push_back(Action::Wake(conn));
        self.actions.push_back(Action::Close(conn));
    }

    /// Queues a frame regardless of the cap (control frames the client asked
    /// for or must see).
    fn push(&mut self, conn: ConnId, f: Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let was_empty = c.out.is_empty();
            c.out_bytes += payload_len(&f);
            c.out.push_back(f);
            if was_empty {
                self.actions.push_back(Action::Wake(conn));
            }
        }
    }

    /// Queues a notice only if the queue has room; counts a drop otherwise.
    fn push_if_room(&mut self, conn: ConnId, f: Frame) -> bool {
        let full = self
            .conns
            .get(&conn)
            .is_none_or(|c| c.out.len() >= self.cfg.queue_frames);
        if full {
            self.count(DropReason::QueueFull);
            return false;
        }
        self.push(conn, f);
        true
    }
}

#[cfg(test)]
mod tests;
