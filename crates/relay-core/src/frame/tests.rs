use super::*;
use proptest::prelude::*;
use weft_proto::NodeKey;

fn key(b: u8) -> NodeKey {
    NodeKey::from_bytes([b; 32])
}

fn all_kinds() -> Vec<Frame> {
    vec![
        Frame::ServerChallenge { nonce: [7; 32] },
        Frame::ClientLogin {
            node_key: key(1),
            signature: [2; 64],
            version: PROTOCOL_VERSION,
        },
        Frame::LoginOk,
        Frame::LoginRefused {
            reason: Reason::NotMember,
        },
        Frame::Send {
            dst: key(3),
            payload: Payload::copy_from_slice(b"ciphertext").unwrap(),
        },
        Frame::Recv {
            src: key(4),
            payload: Payload::default(),
        },
        Frame::PeerGone {
            key: key(5),
            reason: PeerGoneReason::Disconnected,
        },
        Frame::Restarting {
            retry_after_ms: 500,
        },
        Frame::Ping { data: [9; 8] },
        Frame::Pong { data: [9; 8] },
        Frame::Closed {
            reason: Reason::Replaced,
        },
    ]
}

#[test]
fn every_kind_round_trips_and_has_the_documented_layout() {
    for f in all_kinds() {
        let bytes = f.to_vec();
        assert_eq!(bytes.len(), f.encoded_len());
        assert_eq!(bytes[0], f.frame_type());
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            f.body_len()
        );
        assert_eq!(Frame::decode(&bytes), Ok((f.clone(), bytes.len())));
    }
    let send = Frame::Send {
        dst: key(3),
        payload: Payload::copy_from_slice(b"abc").unwrap(),
    }
    .to_vec();
    let mut direct = Vec::new();
    encode_send(&key(3), b"abc", &mut direct).unwrap();
    assert_eq!(send, direct);
    assert_eq!(&send[..5], &[5, 0, 0, 0, 35]);
}

#[test]
fn payload_cap_is_enforced_on_both_sides() {
    assert!(Payload::new(vec![0u8; MAX_PAYLOAD]).is_ok());
    assert_eq!(
        Payload::new(vec![0u8; MAX_PAYLOAD + 1]),
        Err(PayloadTooLarge(MAX_PAYLOAD + 1))
    );
    assert!(encode_send(&key(1), &vec![0u8; MAX_PAYLOAD + 1], &mut Vec::new()).is_err());
    let mut d = FrameDecoder::new();
    let mut hdr = Vec::new();
    encode_header(frame_type::SEND, MAX_BODY + 1, &mut hdr);
    d.feed(&hdr);
    let e = d.next_frame().unwrap().unwrap_err();
    assert!(e.is_fatal());
    assert_eq!(
        e,
        FrameError::Oversize {
            len: (MAX_BODY + 1) as u32
        }
    );
    // Sticky: the stream is unusable.
    d.feed(&Frame::LoginOk.to_vec());
    assert_eq!(d.next_frame(), Some(Err(e)));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn bad_bodies_are_skipped_and_the_stream_stays_in_sync() {
    let mut stream = Vec::new();
    // Unknown type with a body.
    encode_header(200, 3, &mut stream);
    stream.extend_from_slice(b"xyz");
    // A ping whose length lies (4 instead of 8).
    encode_header(frame_type::PING, 4, &mut stream);
    stream.extend_from_slice(&[1, 2, 3, 4]);
    // A send too short to hold a key.
    encode_header(frame_type::SEND, 10, &mut stream);
    stream.extend_from_slice(&[0; 10]);
    Frame::LoginOk.encode(&mut stream);
    let mut d = FrameDecoder::new();
    d.feed(&stream);
    assert_eq!(
        d.next_frame(),
        Some(Err(FrameError::UnknownType { ty: 200, len: 3 }))
    );
    assert_eq!(
        d.next_frame(),
        Some(Err(FrameError::BadLength {
            ty: frame_type::PING,
            len: 4
        }))
    );
    assert!(matches!(
        d.next_frame(),
        Some(Err(FrameError::BadLength { ty: 5, len: 10 }))
    ));
    assert_eq!(d.next_frame(), Some(Ok(Frame::LoginOk)));
    assert_eq!(d.next_frame(), None);
}

#[test]
fn truncation_is_visible() {
    let bytes = Frame::Ping { data: [1; 8] }.to_vec();
    let mut d = FrameDecoder::new();
    d.feed(&bytes[..7]);
    assert_eq!(d.next_frame(), None);
    assert_eq!(d.buffered(), 7);
    assert!(matches!(
        Frame::decode(&bytes[..7]),
        Err((FrameError::Truncated { have: 7, need: 13 }, 7))
    ));
    assert!(matches!(
        Frame::decode(&bytes[..2]),
        Err((FrameError::Truncated { have: 2, need: 5 }, 2))
    ));
}

#[test]
fn reasons_round_trip_and_unknown_codes_survive() {
    for c in 0..=255u8 {
        assert_eq!(Reason::from_code(c).code(), c);
        assert_eq!(PeerGoneReason::from_code(c).code(), c);
    }
    assert_eq!(Reason::from_code(1), Reason::NotMember);
    assert!(Reason::NotMember.is_permanent());
    assert!(!Reason::MembershipUnknown.is_permanent());
    assert_eq!(Reason::Other(77).to_string(), "reason code 77");
}

#[test]
fn login_message_binds_nonce_and_channel() {
    let m = login_signed_message(&[1; 32], &[2; 32]);
    assert_ne!(m, login_signed_message(&[1; 32], &[3; 32]));
    assert_ne!(m, login_signed_message(&[4; 32], &[2; 32]));
}

fn arb_key() -> impl Strategy<Value = NodeKey> {
    any::<[u8; 32]>().prop_map(NodeKey::from_bytes)
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    proptest::collection::vec(any::<u8>(), 0..2048)
        .prop_map(|v| Payload::new(v).unwrap_or_default())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Frame::ServerChallenge { nonce }),
        (
            arb_key(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u16>()
        )
            .prop_map(|(node_key, a, b, version)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&a);
                signature[32..].copy_from_slice(&b);
                Frame::ClientLogin {
                    node_key,
                    signature,
                    version,
                }
            }),
        Just(Frame::LoginOk),
        any::<u8>().prop_map(|c| Frame::LoginRefused {
            reason: Reason::from_code(c)
        }),
        (arb_key(), arb_payload()).prop_map(|(dst, payload)| Frame::Send { dst, payload }),
        (arb_key(), arb_payload()).prop_map(|(src, payload)| Frame::Recv { src, payload }),
        (arb_key(), any::<u8>()).prop_map(|(key, c)| Frame::PeerGone {
            key,
            reason: PeerGoneReason::from_code(c)
        }),
        any::<u32>().prop_map(|retry_after_ms| Frame::Restarting { retry_after_ms }),
        any::<[u8; 8]>().prop_map(|data| Frame::Ping { data }),
        any::<[u8; 8]>().prop_map(|data| Frame::Pong { data }),
        any::<u8>().prop_map(|c| Frame::Closed {
            reason: Reason::from_code(c)
        }),
    ]
}

proptest! {
    #[test]
    fn streams_round_trip_however_they_are_cut(
        frames in proptest::collection::vec(arb_frame(), 0..12),
        cuts in proptest::collection::vec(0usize..4096, 0..8),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream);
        }
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            d.feed(&stream[w[0]..w[1]]);
            while let Some(f) = d.next_frame() {
                got.push(f.unwrap());
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
        let mut d = FrameDecoder::new();
        'outer: for c in &chunks {
            d.feed(c);
            while let Some(r) = d.next_frame() {
                match r {
                    Ok(f) => {
                        // Whatever parses re-encodes to something that parses the same.
                        let bytes = f.to_vec();
                        prop_assert_eq!(Frame::decode(&bytes), Ok((f, bytes.len())));
                    }
                    Err(e) if e.is_fatal() => break 'outer,
                    Err(_) => {}
                }
            }
            prop_assert!(d.buffered() <= MAX_FRAME + 300);
        }
        for c in &chunks {
            let _ = Frame::decode(c);
        }
    }
}
