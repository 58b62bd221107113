//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. No function here may panic on any input; the
//! assertions inside are the properties being fuzzed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;

use crate::cache::Cache;
use crate::handler::{self, EDNS_PAYLOAD, Outcome, TCP_MAX, Transport};
use crate::zone::{Record, Zone};

fn zone() -> Zone {
    let rec = |name: &str, network: &str, v4: [u8; 4], v6: Option<Ipv6Addr>| Record {
        name: name.into(),
        network: network.into(),
        domain: "weft.internal".into(),
        ipv4: Some(Ipv4Addr::from(v4)),
        ipv6: v6,
    };
    Zone::from_records(vec![
        rec("db", "prod", [100, 64, 0, 2], None),
        rec(
            "web",
            "prod",
            [100, 64, 0, 3],
            Some(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 3)),
        ),
        rec("db", "lab", [100, 65, 0, 2], None),
    ])
}

/// Checks one reply to the client message `query`: within the transport's size
/// limit and, when the query parsed, a response with the same id.
fn check_reply(bytes: &[u8], query: &[u8], transport: Transport) {
    let limit = match transport {
        Transport::Udp => usize::from(EDNS_PAYLOAD),
        Transport::Tcp => TCP_MAX,
    };
    assert!(bytes.len() <= limit, "reply of {} bytes", bytes.len());
    assert!(bytes.len() >= 12, "reply shorter than a header");
    assert_eq!(bytes.get(..2), query.get(..2), "reply id differs");
    let parsed = Message::from_vec(bytes);
    assert!(parsed.is_ok(), "our reply does not parse: {parsed:?}");
}

/// The resolver's handling of one client message (`data[1..]` after a length
/// prefix), over UDP or TCP (`data[0]`): the answer from the zone, an error,
/// silence, or a forward whose upstream answer (the bytes after the query) is
/// then checked, cached and turned into the client's reply, and the same query
/// asked again (now maybe from the cache).
pub fn dns_query(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let transport = if flags & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let (query, upstream) = match rest {
        [lo, hi, tail @ ..] => {
            tail.split_at(usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len()))
        }
        _ => (rest, &[][..]),
    };
    let zone = zone();
    let mut cache = Cache::new(4);
    #[expect(
        clippy::disallowed_methods,
        reason = "the fuzz harness needs some base instant"
    )]
    let now = Instant::now();
    for round in 0..2u32 {
        let now = now + Duration::from_secs(u64::from(round));
        match handler::handle(&zone, &mut cache, now, query, transport) {
            Outcome::Reply(bytes) => check_reply(&bytes, query, transport),
            Outcome::Drop => {}
            Outcome::Forward(pending) => {
                let id = u16::from(flags) << 8 | 0x5a;
                let sent = handler::upstream_query(&pending, id);
                assert!(sent.is_ok());
                let answer = Message::from_vec(upstream)
                    .ok()
                    .filter(|m| handler::answers(m, id, &pending.question));
                let bytes = handler::finish(&pending, answer, &mut cache, now);
                check_reply(&bytes, query, transport);
            }
        }
    }
}
