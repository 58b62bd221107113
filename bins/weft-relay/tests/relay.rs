//! End-to-end tests of the real `weft-relay` with the real `weft-controller`
//! on loopback: membership, forwarding, bad frames, slow readers, restarts,
//! removal, controller outage, STUN.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and wait on the real clock"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt as _;
use weft_proto::stun;
use weft_relay_client::{RelayClientError, RelayEvent, SendError};
use weft_relay_core::frame::{Frame, Payload, PeerGoneReason, Reason, encode_header, frame_type};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_exchange_packets_and_strangers_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let relay = Relay::start(&dir.path().join("relay"), &ctl, "127.0.0.1:0", &[]);
    let (a, b, stranger) = (identity(), identity(), identity());
    register(&ctl, &token, &a).await;
    register(&ctl, &token, &b).await;

    let (ca, mut ea) = client(&relay, &a);
    let (cb, mut eb) = client(&relay, &b);
    connected(&mut ea).await;
    connected(&mut eb).await;
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;
    exchange(&cb, a.node_key(), &mut ea, b.node_key(), T).await;
    // A burst arrives complete and in order.
    for i in 0..200u32 {
        ca.send(b.node_key(), &i.to_be_bytes()).unwrap();
    }
    let mut next = 0u32;
    while next < 200 {
        match tokio::time::timeout(T, eb.recv()).await.unwrap().unwrap() {
            RelayEvent::Packet { src, payload } if payload.len() == 4 => {
                assert_eq!(src, a.node_key());
                assert_eq!(u32::from_be_bytes(payload[..].try_into().unwrap()), next);
                next += 1;
            }
            _ => {}
        }
    }

    // The stranger (a valid identity the controller never registered) is refused.
    let (cs, mut es) = client(&relay, &stranger);
    let ev = expect_event(&mut es, T, "a refusal", |e| {
        matches!(e, RelayEvent::Disconnected { .. })
    })
    .await;
    let RelayEvent::Disconnected { error, retry_in } = ev else {
        unreachable!()
    };
    assert_eq!(error, RelayClientError::Refused(Reason::NotMember));
    assert!(retry_in >= Duration::from_millis(800), "{retry_in:?}");
    assert_eq!(cs.send(a.node_key(), b"x"), Err(SendError::NotConnected));

    // Ignoring the refusal and sending anyway gets nothing through.
    let (mut tls, mut dec, answer) = raw_login(&relay, &stranger).await;
    assert_eq!(
        answer,
        Frame::LoginRefused {
            reason: Reason::NotMember
        }
    );
    let sneak = Frame::Send {
        dst: a.node_key(),
        payload: Payload::copy_from_slice(b"sneak").unwrap(),
    };
    let _ = tls.write_all(&sneak.to_vec()).await;
    assert_eq!(raw_next(&mut tls, &mut dec).await, None, "the relay closes");
    // And a connection that sends before logging in is refused too.
    let (mut tls, _, _, mut dec) = raw_connect(&relay).await;
    tls.write_all(&sneak.to_vec()).await.unwrap();
    assert_eq!(
        raw_next(&mut tls, &mut dec).await,
        Some(Frame::LoginRefused {
            reason: Reason::Protocol
        })
    );
    // a never saw the sneaked packets.
    exchange(&cb, a.node_key(), &mut ea, b.node_key(), T).await;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), ea.recv()).await {
        if let RelayEvent::Packet { payload, .. } = ev {
            assert_ne!(&payload[..], b"sneak");
        }
    }
    drop(ca);
    // b, which sent to a recently, is told a is gone.
    let ev = expect_event(&mut eb, T, "PeerGone", |e| {
        matches!(e, RelayEvent::PeerGone { .. })
    })
    .await;
    assert!(matches!(ev, RelayEvent::PeerGone { key, .. } if key == a.node_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let mut relay = Relay::start(&dir.path().join("relay"), &ctl, "127.0.0.1:0", &[]);
    let (a, b, m) = (identity(), identity(), identity());
    for id in [&a, &b, &m] {
        register(&ctl, &token, id).await;
    }
    let (ca, mut ea) = client(&relay, &a);
    let (_cb, mut eb) = client(&relay, &b);
    connected(&mut ea).await;
    connected(&mut eb).await;

    // Before login: a header announcing 2 GiB.
    let (mut tls, _, _, mut dec) = raw_connect(&relay).await;
    let mut bad = Vec::new();
    encode_header(frame_type::SEND, 0x7fff_ffff, &mut bad);
    tls.write_all(&bad).await.unwrap();
    assert_eq!(
        raw_next(&mut tls, &mut dec).await,
        Some(Frame::LoginRefused {
            reason: Reason::Protocol
        })
    );

    // A member sends garbage between valid frames: skipped and counted, the
    // session stays up...
    let (mut tls, mut dec) = raw_login_ok(&relay, &m).await;
    let mut junk = Vec::new();
    encode_header(200, 3, &mut junk); // unknown type
    junk.extend_from_slice(b"xyz");
    encode_header(frame_type::PING, 4, &mut junk); // lying length
    junk.extend_from_slice(&[1, 2, 3, 4]);
    encode_header(frame_type::SEND, 10, &mut junk); // too short for a key
    junk.extend_from_slice(&[0; 10]);
    Frame::Restarting { retry_after_ms: 1 }.encode(&mut junk); // wrong direction
    Frame::Ping { data: [7; 8] }.encode(&mut junk);
    tls.write_all(&junk).await.unwrap();
    assert_eq!(
        raw_next(&mut tls, &mut dec).await,
        Some(Frame::Pong { data: [7; 8] })
    );
    // ...until an oversize header, which closes it.
    let mut over = Vec::new();
    encode_header(frame_type::SEND, 32 + 64 * 1024 + 1, &mut over);
    tls.write_all(&over).await.unwrap();
    assert_eq!(
        raw_next(&mut tls, &mut dec).await,
        Some(Frame::Closed {
            reason: Reason::Protocol
        })
    );
    // A member that stops in the middle of a frame.
    let (mut tls, _) = raw_login_ok(&relay, &m).await;
    let send = Frame::Send {
        dst: a.node_key(),
        payload: Payload::copy_from_slice(&[9; 100]).unwrap(),
    }
    .to_vec();
    tls.write_all(&send[..50]).await.unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);

    // Nobody else noticed.
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;
    wait_log(&relay, "truncated frame").await;
    assert!(relay.sigterm().success());
    assert_eq!(relay.counter("drop_unknown_type"), 1);
    assert_eq!(relay.counter("drop_malformed"), 2);
    assert_eq!(relay.counter("drop_unexpected"), 1);
    assert_eq!(relay.counter("drop_oversize"), 2);
    assert_eq!(relay.counter("drop_truncated"), 1);
    assert!(!relay.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_block_a_fast_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let mut relay = Relay::start(
        &dir.path().join("relay"),
        &ctl,
        "127.0.0.1:0",
        &["--queue-packets", "64", "--summary-interval-secs", "1"],
    );
    let (a, b, flood, slow) = (identity(), identity(), identity(), identity());
    for id in [&a, &b, &flood, &slow] {
        register(&ctl, &token, id).await;
    }
    // The slow node logs in and never reads again.
    let (_slow_tls, _) = raw_login_ok(&relay, &slow).await;
    let (ca, mut ea) = client(&relay, &a);
    let (_cb, mut eb) = client(&relay, &b);
    let (cf, mut ef) = client(&relay, &flood);
    connected(&mut ea).await;
    connected(&mut eb).await;
    connected(&mut ef).await;
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;

    // Flood the slow node until its queue on the relay overflows, and keep
    // flooding while a and b exchange 300 packets.
    let slow_key = slow.node_key();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let chunk = vec![0u8; 16 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if cf.send(slow_key, &chunk).is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            cf
        })
    };
    let start = Instant::now();
    while !relay.log().contains("relay summary") || relay.counter("drop_queue_full") == 0 {
        assert!(
            start.elapsed() < T,
            "the slow queue never overflowed:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    let mut got = 0u32;
    for i in 0..300u32 {
        ca.send(b.node_key(), &i.to_be_bytes()).unwrap();
        if i % 10 == 9 {
            while got <= i {
                match tokio::time::timeout(T, eb.recv()).await.unwrap().unwrap() {
                    RelayEvent::Packet { payload, .. } if payload.len() == 4 => {
                        assert_eq!(u32::from_be_bytes(payload[..].try_into().unwrap()), got);
                        got += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    let pair_time = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cf = flooder.await.unwrap();
    assert!(pair_time < Duration::from_secs(5), "{pair_time:?}");
    assert!(cf.stats().sent > 64, "{:?}", cf.stats());
    drop((ea, ef));
    assert!(relay.sigterm().success());
    assert!(relay.counter("drop_queue_full") > 0, "{}", relay.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_sigterm_and_kill9_peers_recover_within_10s() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let mut relay = Relay::start(&dir.path().join("relay"), &ctl, "127.0.0.1:0", &[]);
    let (a, b) = (identity(), identity());
    register(&ctl, &token, &a).await;
    register(&ctl, &token, &b).await;
    let (ca, mut ea) = client(&relay, &a);
    let (cb, mut eb) = client(&relay, &b);
    connected(&mut ea).await;
    connected(&mut eb).await;
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;

    // SIGTERM: both get Restarting; the relay exits cleanly.
    let fp = relay.fingerprint;
    assert!(relay.sigterm().success());
    for e in [&mut ea, &mut eb] {
        let ev = expect_event(e, T, "Restarting", |e| {
            matches!(e, RelayEvent::Restarting { .. })
        })
        .await;
        assert_eq!(
            ev,
            RelayEvent::Restarting {
                retry_after: Duration::from_millis(250)
            }
        );
    }
    let restarted = Instant::now();
    relay.restart();
    assert_eq!(relay.fingerprint, fp, "the certificate is kept");
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;
    exchange(&cb, a.node_key(), &mut ea, b.node_key(), T).await;
    let recovered = restarted.elapsed();
    assert!(recovered < Duration::from_secs(10), "{recovered:?}");

    // kill -9: no notice; the clients notice the broken connection and come back.
    relay.kill9();
    for e in [&mut ea, &mut eb] {
        expect_event(e, T, "Disconnected", |e| {
            matches!(e, RelayEvent::Disconnected { .. })
        })
        .await;
    }
    let restarted = Instant::now();
    relay.restart();
    exchange(&ca, b.node_key(), &mut eb, a.node_key(), T).await;
    exchange(&cb, a.node_key(), &mut ea, b.node_key(), T).await;
    let recovered = restarted.elapsed();
    assert!(recovered < Duration::from_secs(10), "{recovered:?}");
    assert!(ca.stats().sessions >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_on_the_controller_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let relay = Relay::start(&dir.path().join("relay"), &ctl, "127.0.0.1:0", &[]);
    let (a, b) = (identity(), identity());
    register(&ctl, &token, &a).await;
    register(&ctl, &token, &b).await;
    let (ca, mut ea) = client(&relay, &a);
    let (cb, mut eb) = client(&relay, &b);
    connected(&mut ea).await;
    connected(&mut eb).await;
    exchange(&cb, a.node_key(), &mut ea, b.node_key(), T).await;

    let start = Instant::now();
    ctl.admin()
        .remove_node(&a.node_key().to_string())
        .await
        .unwrap();
    let ev = expect_event(&mut ea, T, "Disconnected", |e| {
        matches!(e, RelayEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            &ev,
            RelayEvent::Disconnected {
                error: RelayClientError::Closed(Reason::NotMember),
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // b had sent to a: it is told, and its packets go nowhere.
    let ev = expect_event(&mut eb, T, "PeerGone", |e| {
        matches!(e, RelayEvent::PeerGone { .. })
    })
    .await;
    assert_eq!(
        ev,
        RelayEvent::PeerGone {
            key: a.node_key(),
            reason: PeerGoneReason::Disconnected
        }
    );
    let _ = ca.send(b.node_key(), b"x");
    assert!(!ca.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_when_the_controller_is_gone_past_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let relay = Relay::start(
        &dir.path().join("relay"),
        &ctl,
        "127.0.0.1:0",
        &["--membership-grace-secs", "2"],
    );
    let a = identity();
    register(&ctl, &token, &a).await;
    let (_ca, mut ea) = client(&relay, &a);
    connected(&mut ea).await;

    ctl.kill9();
    let lost = Instant::now();
    let ev = expect_event(&mut ea, T, "Disconnected", |e| {
        matches!(e, RelayEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            &ev,
            RelayEvent::Disconnected {
                error: RelayClientError::Closed(Reason::MembershipUnknown),
                ..
            }
        ),
        "{ev:?}"
    );
    let after = lost.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "{after:?}"
    );
    let (_, _, answer) = raw_login(&relay, &a).await;
    assert_eq!(
        answer,
        Frame::LoginRefused {
            reason: Reason::MembershipUnknown
        }
    );
    wait_log(&relay, "refusing every node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_binding_returns_the_clients_address_and_the_map_pins_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, token) = setup(&dir.path().join("ctl"), &dir.path().join("relay")).await;
    let relay = Relay::start(&dir.path().join("relay"), &ctl, "127.0.0.1:0", &[]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    for fingerprint in [false, true] {
        let id = [fingerprint as u8; 12];
        let mut req = Vec::new();
        stun::encode_binding_request(&id, fingerprint, &mut req);
        sock.send_to(&req, &relay.stun_addr).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let resp = stun::parse_binding_response(&buf[..n]).unwrap();
        assert_eq!(resp.transaction_id, id);
        assert_eq!(resp.mapped, me);
    }
    // Garbage is ignored (and counted), and the server keeps answering.
    sock.send_to(b"not stun at all", &relay.stun_addr)
        .await
        .unwrap();

    // The relay reported its fingerprint and STUN port: nodes get both.
    let a = identity();
    let cred = register(&ctl, &token, &a).await;
    let start = Instant::now();
    let info = loop {
        let info = ctl.admin().show_relay("r1").await.unwrap();
        if info.connected {
            break info;
        }
        assert!(start.elapsed() < T, "relay never connected: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        info.tls_fingerprint.as_deref(),
        Some(relay.fingerprint_text.as_str())
    );
    let stun_port: u16 = relay.stun_addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(info.stun_port, Some(stun_port));
    let map = ctl
        .client()
        .with_bearer(&cred)
        .unwrap()
        .map()
        .await
        .unwrap();
    assert_eq!(map.relays.len(), 1);
    assert_eq!(map.relays[0].name.as_deref(), Some("r1"));
    assert_eq!(
        map.relays[0].tls_fingerprint.as_deref(),
        Some(relay.fingerprint_text.as_str())
    );
    assert_eq!(map.relays[0].stun_port, Some(stun_port));
}
