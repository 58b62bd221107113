//! Our WireGuard against boringtun's `Tunn` (a dev-dependency only): handshakes
//! started by either side, data both ways, and rekeys started by either side, so
//! we know both speak the same protocol.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::tests::{Side, msg_type, side, start};
use super::*;

fn ipv4(payload: &[u8], id: u8) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[5] = id;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 2]);
    p[16..20].copy_from_slice(&[100, 64, 0, 1]);
    p.extend_from_slice(&[]);
    p[20..].copy_from_slice(payload);
    p
}

/// boringtun with static key `[9; 32]`, talking to our side with key `[1; 32]`.
fn theirs() -> Tunn {
    let me = StaticSecret::from([9u8; 32]);
    let ours = PublicKey::from(&StaticSecret::from([1u8; 32]));
    Tunn::new(me, ours, None, None, 4242, None)
}

fn ours() -> Side {
    side(1, 9, start(), None)
}

/// Feeds one message to boringtun; returns what it writes to the network (all
/// of it, queue included) and what it hands to the tunnel.
fn to_theirs(t: &mut Tunn, msg: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 2048];
    let (mut net, mut tun) = (Vec::new(), Vec::new());
    match t.decapsulate(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), msg, &mut buf) {
        TunnResult::WriteToNetwork(m) => {
            net.push(m.to_vec());
            while let TunnResult::WriteToNetwork(m) = t.decapsulate(None, &[], &mut buf) {
                net.push(m.to_vec());
            }
        }
        TunnResult::WriteToTunnelV4(p, _) => tun.push(p.to_vec()),
        TunnResult::Done => {}
        r => panic!("boringtun refused: {r:?}"),
    }
    (net, tun)
}

fn encap(t: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    match t.encapsulate(packet, &mut buf) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        r => panic!("boringtun did not encrypt: {r:?}"),
    }
}

#[test]
fn we_initiate_boringtun_responds_data_both_ways() {
    let mut us = ours();
    let mut them = theirs();
    let t0 = start();
    let first = ipv4(b"first", 1);
    let (e, init) = us.send(t0, &first);
    assert!(matches!(e, Encrypted::Initiation(148)));
    let (resp, _) = to_theirs(&mut them, &init);
    assert_eq!(resp.len(), 1);
    assert_eq!(msg_type(&resp[0]), MSG_RESPONSE);
    let got = us.receive(t0, us.addr, &resp[0]);
    assert_eq!(got.err, None);
    // The queued packet goes out with the new keys, and boringtun opens it.
    assert_eq!(got.replies.len(), 1);
    let (_, tun) = to_theirs(&mut them, &got.replies[0]);
    assert_eq!(tun, vec![first]);
    for i in 0..20u8 {
        let p = ipv4(&[i; 100], i);
        let (_, m) = us.send(t0, &p);
        assert_eq!(to_theirs(&mut them, &m).1, vec![p.clone()]);
        let back = encap(&mut them, &p);
        assert_eq!(us.receive(t0, us.addr, &back).plaintext, Some(p));
    }
}

#[test]
fn boringtun_initiates_we_respond_data_both_ways() {
    let mut us = ours();
    let mut them = theirs();
    let t0 = start();
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = them.format_handshake_initiation(&mut buf, false) else {
        panic!("no initiation");
    };
    let init = init.to_vec();
    let got = us.receive(t0, us.addr, &init);
    assert_eq!(got.err, None);
    assert_eq!(msg_type(&got.replies[0]), MSG_RESPONSE);
    // boringtun confirms with a keepalive; we can send after it.
    let (net, _) = to_theirs(&mut them, &got.replies[0]);
    assert!(
        !us.tunnel.can_send(t0),
        "the responder waits for confirmation"
    );
    for m in &net {
        assert_eq!(us.receive(t0, us.addr, m).err, None);
    }
    assert!(us.tunnel.can_send(t0));
    for i in 0..20u8 {
        let p = ipv4(&[i; 1200], i);
        let back = encap(&mut them, &p);
        assert_eq!(us.receive(t0, us.addr, &back).plaintext, Some(p.clone()));
        let (_, m) = us.send(t0, &p);
        assert_eq!(to_theirs(&mut them, &m).1, vec![p]);
    }
}

#[test]
fn rekeys_started_by_either_side_interoperate() {
    let mut us = ours();
    let mut them = theirs();
    let t0 = start();
    let (_, init) = us.send(t0, &ipv4(b"x", 0));
    let (resp, _) = to_theirs(&mut them, &init);
    for m in us.receive(t0, us.addr, &resp[0]).replies {
        to_theirs(&mut them, &m);
    }
    // Our side rekeys after 120 s of sending (virtual time for us).
    let t1 = t0 + REKEY_AFTER_TIME + Duration::from_secs(1);
    let (_, m) = us.send(t1, &ipv4(b"old keys", 1));
    assert_eq!(to_theirs(&mut them, &m).1.len(), 1);
    let (act, rekey) = us.timers(t1);
    assert!(matches!(act, TimerAction::Send(148)), "{act:?}");
    let (resp, _) = to_theirs(&mut them, &rekey);
    let got = us.receive(t1, us.addr, &resp[0]);
    assert_eq!(got.err, None);
    let (since, _, _) = us.tunnel.stats(t1);
    assert_eq!(since, Some(Duration::ZERO), "new keys");
    for m in got.replies {
        to_theirs(&mut them, &m);
    }
    let p = ipv4(b"new keys", 2);
    let (_, m) = us.send(t1, &p);
    assert_eq!(to_theirs(&mut them, &m).1, vec![p.clone()]);
    assert_eq!(
        us.receive(t1, us.addr, &encap(&mut them, &p)).plaintext,
        Some(p)
    );

    // boringtun rekeys: we answer, and its data under the new keys gets through.
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = them.format_handshake_initiation(&mut buf, true) else {
        panic!("no initiation");
    };
    let init = init.to_vec();
    let t2 = t1 + Duration::from_secs(1);
    let got = us.receive(t2, us.addr, &init);
    assert_eq!(got.err, None);
    let (net, _) = to_theirs(&mut them, &got.replies[0]);
    for m in &net {
        assert_eq!(us.receive(t2, us.addr, m).err, None);
    }
    let p = ipv4(b"their new keys", 3);
    assert_eq!(
        us.receive(t2, us.addr, &encap(&mut them, &p)).plaintext,
        Some(p.clone())
    );
    let (_, m) = us.send(t2, &p);
    assert_eq!(to_theirs(&mut them, &m).1, vec![p]);
    assert_eq!(
        us.tunnel.stats(t2).0,
        Some(Duration::ZERO),
        "their keys are current"
    );
}

#[test]
fn our_timestamps_follow_boringtuns_after_it() {
    // A node that ran boringtun (a weft before this module, or a rogue copy of
    // its key) and then runs ours at the same wall time must not look like a
    // replay to its peers: both count TAI64N from the same base.
    #[expect(
        clippy::disallowed_methods,
        reason = "boringtun reads the real wall clock"
    )]
    let wall = std::time::SystemTime::now();
    let t0 = start();
    let mut peer = side(1, 9, t0, None);
    let mut buf = vec![0u8; 2048];
    let mut them = theirs();
    let TunnResult::WriteToNetwork(init) = them.format_handshake_initiation(&mut buf, false) else {
        panic!("no initiation");
    };
    assert_eq!(peer.receive(t0, peer.addr, init).err, None);
    let remote = crypto::public_of(&StaticSecret::from([1u8; 32]));
    let mut same_key =
        endpoint::Endpoint::new([9; 32], [9; 32], remote, 5, None, t0, wall).expect("valid key");
    let (_, ours) = same_key
        .send(t0 + Duration::from_secs(1), b"x")
        .expect("initiation");
    assert_eq!(msg_type(&ours), MSG_INITIATION);
    assert_eq!(peer.receive(t0, peer.addr, &ours).err, None, "not a replay");
}
