use std::time::{Duration, Instant};

use crate::frame::{Frame, FrameError, Payload, PeerGoneReason, Reason};
use proptest::prelude::*;
use weft_identity::{Identity, ProofOfWork};
use weft_proto::NodeKey;

use super::*;

fn identity(seed: u8) -> Identity {
    Identity::from_parts(&[seed; 32], ProofOfWork { nonce: 0 })
}

fn nonce_of(conn: ConnId) -> [u8; 32] {
    [conn as u8; 32]
}

fn binding_of(conn: ConnId) -> [u8; 32] {
    [(conn as u8).wrapping_add(100); 32]
}

struct H {
    core: RelayCore,
    now: Instant,
}

#[expect(clippy::disallowed_methods, reason = "a test needs some base instant")]
fn t0() -> Instant {
    Instant::now()
}

impl H {
    fn new(cfg: CoreConfig) -> Self {
        Self {
            core: RelayCore::new(cfg),
            now: t0(),
        }
    }

    /// A relay that knows `members`.
    fn with_members(members: &[&Identity]) -> Self {
        let mut h = Self::new(CoreConfig::default());
        h.members(members);
        h
    }

    fn members(&mut self, members: &[&Identity]) {
        let keys = members.iter().map(|i| i.node_key()).collect();
        self.core
            .handle_membership(self.now, MembershipUpdate::Snapshot(keys));
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    fn connect(&mut self, conn: ConnId) {
        self.core
            .handle_connect(self.now, conn, nonce_of(conn), binding_of(conn));
        assert_eq!(
            self.drain(conn),
            vec![Frame::ServerChallenge {
                nonce: nonce_of(conn)
            }]
        );
    }

    fn login_frame(conn: ConnId, id: &Identity) -> Frame {
        let msg = login_signed_message(&nonce_of(conn), &binding_of(conn));
        Frame::ClientLogin {
            node_key: id.node_key(),
            signature: id.sign(LOGIN_SIGNATURE_CONTEXT, &msg),
            version: PROTOCOL_VERSION,
        }
    }

    /// Connects and logs in; returns what the relay answered.
    fn login(&mut self, conn: ConnId, id: &Identity) -> Vec<Frame> {
        self.connect(conn);
        self.frame(conn, Self::login_frame(conn, id));
        self.drain(conn)
    }

    fn frame(&mut self, conn: ConnId, f: Frame) {
        self.core.handle_frame(self.now, conn, f);
    }

    fn send(&mut self, conn: ConnId, dst: &Identity, payload: &[u8]) {
        self.frame(
            conn,
            Frame::Send {
                dst: dst.node_key(),
                payload: Payload::copy_from_slice(payload).unwrap(),
            },
        );
    }

    fn drain(&mut self, conn: ConnId) -> Vec<Frame> {
        let mut out = Vec::new();
        self.core.take_outbound(conn, usize::MAX, &mut out);
        out
    }

    fn outbound_state(&mut self, conn: ConnId) -> Outbound {
        self.core.take_outbound(conn, 0, &mut Vec::new())
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }
}

fn recv(src: &Identity, payload: &[u8]) -> Frame {
    Frame::Recv {
        src: src.node_key(),
        payload: Payload::copy_from_slice(payload).unwrap(),
    }
}

#[test]
fn members_log_in_and_exchange_packets() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    assert_eq!(h.login(1, &a), vec![Frame::LoginOk]);
    assert_eq!(h.login(2, &b), vec![Frame::LoginOk]);
    h.send(1, &b, b"hello");
    h.send(2, &a, b"world");
    assert_eq!(h.drain(2), vec![recv(&a, b"hello")]);
    assert_eq!(h.drain(1), vec![recv(&b, b"world")]);
    assert_eq!(h.core.session_count(), 2);
    assert_eq!(h.core.counters().forwarded_packets, 2);
    assert_eq!(h.core.counters().forwarded_bytes, 10);
    assert_eq!(h.core.counters().logins_ok, 2);
    // Pings are answered.
    h.frame(1, Frame::Ping { data: [3; 8] });
    assert_eq!(h.drain(1), vec![Frame::Pong { data: [3; 8] }]);
}

#[test]
fn writers_are_woken_only_when_a_queue_becomes_non_empty() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    h.login(1, &a);
    h.login(2, &b);
    h.actions();
    h.send(1, &b, b"x");
    h.send(1, &b, b"y");
    assert_eq!(h.actions(), vec![Action::Wake(2)]);
}

#[test]
fn logins_fail_closed_until_the_member_set_is_known() {
    let a = identity(1);
    let mut h = H::new(CoreConfig::default());
    assert_eq!(
        h.login(1, &a),
        vec![Frame::LoginRefused {
            reason: Reason::MembershipUnknown
        }]
    );
    assert_eq!(h.outbound_state(1), Outbound::Closing);
    assert!(h.actions().contains(&Action::Close(1)));
    h.core.handle_disconnect(h.now, 1);
    h.members(&[&a]);
    assert_eq!(h.login(2, &a), vec![Frame::LoginOk]);
}

#[test]
fn refusals_not_member_bad_signature_wrong_channel_and_version() {
    let (a, stranger) = (identity(1), identity(9));
    let mut h = H::with_members(&[&a]);
    assert_eq!(
        h.login(1, &stranger),
        vec![Frame::LoginRefused {
            reason: Reason::NotMember
        }]
    );
    // A signature made for another connection (other nonce and TLS binding).
    h.connect(2);
    h.frame(2, H::login_frame(3, &a));
    assert_eq!(
        h.drain(2),
        vec![Frame::LoginRefused {
            reason: Reason::BadSignature
        }]
    );
    // Someone else's key with our signature.
    h.connect(4);
    let Frame::ClientLogin { signature, .. } = H::login_frame(4, &stranger) else {
        unreachable!()
    };
    h.frame(
        4,
        Frame::ClientLogin {
            node_key: a.node_key(),
            signature,
            version: PROTOCOL_VERSION,
        },
    );
    assert_eq!(
        h.drain(4),
        vec![Frame::LoginRefused {
            reason: Reason::BadSignature
        }]
    );
    h.connect(5);
    let Frame::ClientLogin {
        node_key,
        signature,
        ..
    } = H::login_frame(5, &a)
    else {
        unreachable!()
    };
    h.frame(
        5,
        Frame::ClientLogin {
            node_key,
            signature,
            version: 99,
        },
    );
    assert_eq!(
        h.drain(5),
        vec![Frame::LoginRefused {
            reason: Reason::UnsupportedVersion
        }]
    );
    let c = h.core.counters();
    assert_eq!(c.logins_ok, 0);
    assert_eq!(c.logins_refused.get(&Reason::NotMember), Some(&1));
    assert_eq!(c.logins_refused.get(&Reason::BadSignature), Some(&2));
    // A refused connection cannot send.
    h.send(1, &a, b"x");
    assert_eq!(h.core.counters().dropped(DropReason::NotMember), 1);
    assert_eq!(h.core.counters().forwarded_packets, 0);
}

#[test]
fn a_frame_before_login_is_refused() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    h.login(2, &b);
    h.connect(1);
    h.send(1, &b, b"sneaky");
    assert_eq!(
        h.drain(1),
        vec![Frame::LoginRefused {
            reason: Reason::Protocol
        }]
    );
    assert!(h.drain(2).is_empty());
    assert_eq!(h.core.counters().dropped(DropReason::Unauthenticated), 1);
}

#[test]
fn a_new_login_replaces_the_old_session() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    h.login(1, &a);
    h.login(2, &b);
    h.send(2, &a, b"old");
    assert_eq!(h.login(3, &a), vec![Frame::LoginOk]);
    // The old session's queued packet is discarded; it gets the notice only.
    assert_eq!(
        h.drain(1),
        vec![Frame::Closed {
            reason: Reason::Replaced
        }]
    );
    // b had sent to the old session: it learns that session ended.
    assert_eq!(
        h.drain(2),
        vec![Frame::PeerGone {
            key: a.node_key(),
            reason: PeerGoneReason::Disconnected
        }]
    );
    h.send(2, &a, b"new");
    assert_eq!(h.drain(3), vec![recv(&b, b"new")]);
    // The old connection ending later does not remove the new session.
    h.core.handle_disconnect(h.now, 1);
    assert_eq!(h.core.session_count(), 2);
    h.send(2, &a, b"still");
    assert_eq!(h.drain(3), vec![recv(&b, b"still")]);
}

#[test]
fn a_slow_reader_loses_its_own_packets_only() {
    let (a, slow, c) = (identity(1), identity(2), identity(3));
    let cfg = CoreConfig {
        queue_frames: 4,
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    h.members(&[&a, &slow, &c]);
    h.login(1, &a);
    h.login(2, &slow);
    h.login(3, &c);
    for i in 0..10u8 {
        h.send(1, &slow, &[i]);
        h.send(1, &c, &[i]);
        // c reads as it goes; slow never reads.
        assert_eq!(h.drain(3), vec![recv(&a, &[i])]);
    }
    assert_eq!(
        h.core
            .client_stats(&slow.node_key())
            .unwrap()
            .dropped_queue_full,
        6
    );
    assert_eq!(
        h.core
            .client_stats(&c.node_key())
            .unwrap()
            .dropped_queue_full,
        0
    );
    assert_eq!(h.core.counters().dropped(DropReason::QueueFull), 6);
    // Its full queue is what the relay's queue gauges read.
    let full = QueueDepths {
        frames: 4,
        bytes: 4,
        max_frames: 4,
    };
    assert_eq!(h.core.queue_depths(), full);
    // The slow reader gets the first four, in order.
    let got = h.drain(2);
    assert_eq!(got, (0..4u8).map(|i| recv(&a, &[i])).collect::<Vec<_>>());
    assert_eq!(h.core.queue_depths(), QueueDepths::default());
}

#[test]
fn byte_cap_applies_too() {
    let (a, b) = (identity(1), identity(2));
    let cfg = CoreConfig {
        queue_bytes: 1000,
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    h.members(&[&a, &b]);
    h.login(1, &a);
    h.login(2, &b);
    for _ in 0..3 {
        h.send(1, &b, &[0; 400]);
    }
    assert_eq!(h.core.counters().dropped(DropReason::QueueFull), 1);
    assert_eq!(h.drain(2).len(), 2);
    h.send(1, &b, &[0; 400]);
    assert_eq!(h.drain(2).len(), 1);
}

#[test]
fn unknown_destinations_get_a_rate_limited_peer_gone() {
    let (a, b, ghost) = (identity(1), identity(2), identity(7));
    let mut h = H::with_members(&[&a, &b]);
    h.login(1, &a);
    for _ in 0..5 {
        h.send(1, &b, b"x");
    }
    let gone = Frame::PeerGone {
        key: b.node_key(),
        reason: PeerGoneReason::NotConnected,
    };
    assert_eq!(h.drain(1), vec![gone.clone()]);
    assert_eq!(h.core.counters().dropped(DropReason::UnknownDestination), 5);
    h.advance(Duration::from_secs(6));
    h.send(1, &b, b"x");
    assert_eq!(h.drain(1), vec![gone]);
    // A non-member destination is refused the same way (counted as such).
    h.send(1, &ghost, b"x");
    assert_eq!(h.core.counters().dropped(DropReason::NotMember), 1);
    assert_eq!(h.drain(1).len(), 1);
}

#[test]
fn recent_senders_learn_when_a_destination_disconnects() {
    let (a, b, c) = (identity(1), identity(2), identity(3));
    let mut h = H::with_members(&[&a, &b, &c]);
    h.login(1, &a);
    h.login(2, &b);
    h.login(3, &c);
    h.send(1, &b, b"x");
    h.drain(2);
    h.core.handle_disconnect(h.now, 2);
    assert_eq!(
        h.drain(1),
        vec![Frame::PeerGone {
            key: b.node_key(),
            reason: PeerGoneReason::Disconnected
        }]
    );
    // c never sent to b: no notice.
    assert!(h.drain(3).is_empty());
    assert_eq!(h.outbound_state(2), Outbound::Gone);
}

#[test]
fn removed_members_are_disconnected_at_once() {
    let (a, b, c) = (identity(1), identity(2), identity(3));
    let mut h = H::with_members(&[&a, &b, &c]);
    h.login(1, &a);
    h.login(2, &b);
    h.login(3, &c);
    h.core.handle_membership(
        h.now,
        MembershipUpdate::Delta {
            added: vec![],
            removed: vec![b.node_key()],
        },
    );
    assert_eq!(
        h.drain(2),
        vec![Frame::Closed {
            reason: Reason::NotMember
        }]
    );
    assert_eq!(h.outbound_state(2), Outbound::Closing);
    h.send(1, &b, b"x");
    assert_eq!(h.core.counters().dropped(DropReason::NotMember), 1);
    // A snapshot without c disconnects c too.
    h.members(&[&a]);
    assert_eq!(
        h.drain(3),
        vec![Frame::Closed {
            reason: Reason::NotMember
        }]
    );
    assert_eq!(h.core.session_count(), 1);
    // And an added key can log in.
    let d = identity(4);
    h.core.handle_membership(
        h.now,
        MembershipUpdate::Delta {
            added: vec![d.node_key()],
            removed: vec![],
        },
    );
    assert_eq!(h.login(9, &d), vec![Frame::LoginOk]);
}

#[test]
fn the_member_set_outlives_its_source_only_for_the_grace_period() {
    let (a, b) = (identity(1), identity(2));
    let cfg = CoreConfig {
        membership_grace: Duration::from_secs(60),
        ..CoreConfig::default()
    };
    let mut h = H::new(cfg);
    h.members(&[&a, &b]);
    h.login(1, &a);
    h.core.handle_membership(h.now, MembershipUpdate::LinkDown);
    assert!(matches!(
        h.core.membership_state(),
        MembershipState::Stale { members: 2, .. }
    ));
    assert_eq!(h.core.poll_timeout().map(|t| t.1), Some("membership grace"));
    h.advance(Duration::from_secs(30));
    // Still serving: keepalive, and a new login.
    h.frame(1, Frame::Ping { data: [0; 8] });
    h.drain(1);
    assert_eq!(h.login(2, &b), vec![Frame::LoginOk]);
    h.advance(Duration::from_secs(31));
    assert_eq!(h.core.membership_state(), MembershipState::Unknown);
    for conn in [1, 2] {
        assert_eq!(
            h.drain(conn),
            vec![Frame::Closed {
                reason: Reason::MembershipUnknown
            }]
        );
    }
    assert_eq!(
        h.login(3, &a),
        vec![Frame::LoginRefused {
            reason: Reason::MembershipUnknown
        }]
    );
    // The link comes back.
    h.members(&[&a]);
    assert_eq!(h.login(4, &a), vec![Frame::LoginOk]);
}

#[test]
fn login_and_idle_timeouts() {
    let a = identity(1);
    let mut h = H::with_members(&[&a]);
    h.connect(1);
    h.login(2, &a);
    h.advance(Duration::from_secs(11));
    assert_eq!(
        h.drain(1),
        vec![Frame::LoginRefused {
            reason: Reason::LoginTimeout
        }]
    );
    assert!(h.drain(2).is_empty());
    h.advance(Duration::from_secs(80));
    assert_eq!(
        h.drain(2),
        vec![Frame::Closed {
            reason: Reason::IdleTimeout
        }]
    );
}

#[test]
fn shutdown_tells_everyone_to_reconnect() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    h.login(1, &a);
    h.login(2, &b);
    h.send(1, &b, b"in flight");
    h.connect(3);
    h.core.shutdown(h.now, Duration::from_millis(250));
    // Queued packets are still delivered before the notice.
    assert_eq!(
        h.drain(2),
        vec![
            recv(&a, b"in flight"),
            Frame::Restarting {
                retry_after_ms: 250
            }
        ]
    );
    for conn in [1, 3] {
        assert_eq!(
            h.drain(conn),
            vec![Frame::Restarting {
                retry_after_ms: 250
            }]
        );
        assert_eq!(h.outbound_state(conn), Outbound::Closing);
    }
    // New connections are refused.
    h.core.handle_connect(h.now, 4, nonce_of(4), binding_of(4));
    assert_eq!(
        h.drain(4),
        vec![Frame::LoginRefused {
            reason: Reason::Overloaded
        }]
    );
}

#[test]
fn bad_frames_are_counted_and_fatal_ones_close() {
    let (a, b) = (identity(1), identity(2));
    let mut h = H::with_members(&[&a, &b]);
    h.login(1, &a);
    h.login(2, &b);
    let now = h.now;
    h.core
        .handle_frame_error(now, 1, &FrameError::BadLength { ty: 9, len: 3 });
    h.core
        .handle_frame_error(now, 1, &FrameError::UnknownType { ty: 77, len: 0 });
    h.frame(1, Frame::LoginOk);
    h.send(1, &b, b"still fine");
    assert_eq!(h.drain(2), vec![recv(&a, b"still fine")]);
    h.core
        .handle_frame_error(now, 1, &FrameError::Oversize { len: u32::MAX });
    assert_eq!(
        h.drain(1),
        vec![Frame::Closed {
            reason: Reason::Protocol
        }]
    );
    let c = h.core.counters();
    assert_eq!(c.dropped(DropReason::Malformed), 1);
    assert_eq!(c.dropped(DropReason::UnknownType), 1);
    assert_eq!(c.dropped(DropReason::Unexpected), 1);
    assert_eq!(c.dropped(DropReason::Oversize), 1);
    assert!(c.summary().contains("drop_oversize=1"));
    // b keeps being served.
    h.login(3, &a);
    h.send(3, &b, b"after");
    assert_eq!(h.drain(2), vec![recv(&a, b"after")]);
}

#[derive(Debug, Clone)]
enum Op {
    Connect(u8),
    Login(u8, u8),
    Send(u8, u8, u8),
    Drain(u8),
    Disconnect(u8),
    Members(Vec<u8>),
    Remove(u8),
    LinkDown,
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Connect),
        (0u8..6, 0u8..4).prop_map(|(c, i)| Op::Login(c, i)),
        (0u8..6, 0u8..4, 0u8..8).prop_map(|(c, i, n)| Op::Send(c, i, n)),
        (0u8..6).prop_map(Op::Drain),
        (0u8..6).prop_map(Op::Disconnect),
        proptest::collection::vec(0u8..4, 0..4).prop_map(Op::Members),
        (0u8..4).prop_map(Op::Remove),
        Just(Op::LinkDown),
        (0u16..200).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever happens: no panic, every session belongs to an open connection
    /// of a member, and queues stay within their caps (plus the final notice).
    #[test]
    fn invariants_hold_under_arbitrary_sequences(ops in proptest::collection::vec(op(), 1..60)) {
        let ids: Vec<Identity> = (1..=4).map(identity).collect();
        let cfg = CoreConfig { queue_frames: 3, membership_grace: Duration::from_secs(100), ..CoreConfig::default() };
        let mut h = H::new(cfg);
        let mut open = BTreeSet::new();
        for op in ops {
            match op {
                Op::Connect(c) => {
                    let c = ConnId::from(c);
                    if open.insert(c) {
                        h.core.handle_connect(h.now, c, nonce_of(c), binding_of(c));
                    }
                }
                Op::Login(c, i) => h.frame(ConnId::from(c), H::login_frame(ConnId::from(c), &ids[usize::from(i)])),
                Op::Send(c, i, n) => h.send(ConnId::from(c), &ids[usize::from(i)], &vec![n; usize::from(n)]),
                Op::Drain(c) => { h.drain(ConnId::from(c)); }
                Op::Disconnect(c) => {
                    h.core.handle_disconnect(h.now, ConnId::from(c));
                    open.remove(&ConnId::from(c));
                }
                Op::Members(m) => {
                    let keys: Vec<NodeKey> = m.iter().map(|i| ids[usize::from(*i)].node_key()).collect();
                    h.core.handle_membership(h.now, MembershipUpdate::Snapshot(keys));
                }
                Op::Remove(i) => h.core.handle_membership(h.now, MembershipUpdate::Delta { added: vec![], removed: vec![ids[usize::from(i)].node_key()] }),
                Op::LinkDown => h.core.handle_membership(h.now, MembershipUpdate::LinkDown),
                Op::Advance(s) => h.advance(Duration::from_secs(u64::from(s))),
            }
            while h.core.poll_action().is_some() {}
            while h.core.poll_event().is_some() {}
            for (key, conn) in &h.core.sessions {
                let c = h.core.conns.get(conn);
                prop_assert!(c.is_some());
                let active = matches!(c.map(|c| &c.state), Some(ConnState::Active { key: k }) if k == key);
                prop_assert!(active);
                prop_assert!(h.core.membership.contains(key));
            }
            for c in h.core.conns.values() {
                prop_assert!(c.out.len() <= 3 + 2, "queue {}", c.out.len());
                prop_assert_eq!(c.out_bytes, c.out.iter().map(payload_len).sum::<usize>());
            }
        }
    }
}

/// The crate stays sans-IO: no async runtime, sockets, files, processes, clock
/// or OS randomness.
#[test]
fn the_core_imports_no_io() {
    let sources = [
        ("lib.rs", include_str!("../lib.rs")),
        ("machine.rs", include_str!("../machine.rs")),
        ("machine/types.rs", include_str!("types.rs")),
        ("outage.rs", include_str!("../outage.rs")),
        ("fuzzing.rs", include_str!("../fuzzing.rs")),
        ("frame.rs", include_str!("../frame.rs")),
        ("frame/codec.rs", include_str!("../frame/codec.rs")),
        ("frame/decoder.rs", include_str!("../frame/decoder.rs")),
        ("frame/payload.rs", include_str!("../frame/payload.rs")),
        ("frame/reason.rs", include_str!("../frame/reason.rs")),
    ];
    for (file, text) in sources {
        // Test modules may read a base instant; the code above them may not.
        let text = text.split("#[cfg(test)]").next().unwrap_or(text);
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [
            "tokio",
            "std::net",
            "std::fs",
            "std::io",
            "std::process",
            "OsRng",
            "Instant::now",
            "SystemTime",
        ] {
            assert!(!code.contains(banned), "{file} uses {banned}");
        }
    }
}
